"""Fixtures of the end-to-end tests: one test bed for the package, a fresh world per test."""

from __future__ import annotations

import shutil
import sys
from typing import Callable, Iterator

import pytest
from testbed import Testbed

from .kit import World

HOSTS = ("host01", "host02", "host03", "host04")


@pytest.fixture(scope="package")
def e2e_bed(make_testbed: Callable[..., Testbed]) -> Iterator[Testbed]:
    """host01..host04: real sshds on loopback addresses (skips where sshd cannot be had).
    Stopped when the e2e tests are done."""
    if sys.platform != "linux":
        pytest.skip("the OpenSSH test bed needs Linux")
    bed = make_testbed(names=HOSTS)
    yield bed
    bed.stop()


@pytest.fixture
def world(e2e_bed: Testbed) -> Iterator[World]:
    """A fresh world; every host emptied and given this world's remotes (tests that
    want a host without scripts call ``world.reset_hosts`` again). Afterwards: drivers
    stopped, every host up again, whatever a failed test left running killed."""
    for name in HOSTS:
        if not e2e_bed.running(name):
            e2e_bed.start_host(name)
    made = World(e2e_bed)
    made.reset_hosts(with_remotes=HOSTS)
    yield made
    made.stop_drivers()
    for name in HOSTS:
        info = e2e_bed.hosts[name]
        if not e2e_bed.running(name) or e2e_bed.host_pids(name) - {info.sshd_pid or -1}:
            e2e_bed.kill_host(name)  # the listener and every session process
            e2e_bed.start_host(name)
    shutil.rmtree(made.root, ignore_errors=True)
