"""Shared pytest fixtures."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest
from testbed import Testbed, Unavailable

# --------------------------------------------------------------------------------------
# The OpenSSH test bed (tests/testbed.py): real sshds on loopback addresses
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def make_testbed() -> Iterator[Callable[..., Testbed]]:
    """A factory: ``make_testbed(names=..., remotes=..., without_remotes=...)`` starts a
    :class:`Testbed` (skipping the test cleanly when sshd cannot be had); every test
    bed it started is stopped at the end of the session (earlier ``stop()`` is fine)."""
    started: List[Testbed] = []

    def factory(**kwargs: Any) -> Testbed:
        bed = Testbed(**kwargs)
        try:
            bed.start()
        except Unavailable as exc:
            pytest.skip(f"no OpenSSH test bed here: {exc}")
        started.append(bed)
        return bed

    yield factory
    for bed in reversed(started):
        bed.stop()


@pytest.fixture(scope="session")
def testbed(make_testbed: Callable[..., Testbed]) -> Testbed:
    """Four hosts, ``host01``..``host04``, none with remote scripts (tests that need
    them copy a tree with ``testbed.populate(name, tree)``)."""
    return make_testbed(names=("host01", "host02", "host03", "host04"))
