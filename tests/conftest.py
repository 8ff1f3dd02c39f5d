"""Shared pytest fixtures."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest
from testbed import Testbed, Unavailable

# --------------------------------------------------------------------------------------
# Lanes: markers set from what a test uses (declared in setup.cfg)
# --------------------------------------------------------------------------------------

HOST_FIXTURES = {"testbed", "make_testbed", "e2e_bed", "bed", "world"}
CORPUS_MODULES = {"test_compat.py", "test_compat_runner.py"}
DRIVER_MODULES = {"test_driver_process.py", "test_simoned.py", "test_simulate.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """``hosts``: real sshd hosts; ``corpus``: the recorded Ruby corpus; ``driver``: the
    driver (or a stub) as a real process. The fast lane deselects all three."""
    for item in items:
        name = item.path.name
        if HOST_FIXTURES & set(getattr(item, "fixturenames", ())) or "e2e" in item.path.parts:
            item.add_marker(pytest.mark.hosts)
        if name in CORPUS_MODULES:
            item.add_marker(pytest.mark.corpus)
        if name in DRIVER_MODULES:
            item.add_marker(pytest.mark.driver)


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
