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
LIBVIRT_FIXTURES = {"make_libvirt_bed", "libvirt_bed"}


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """``hosts``: real sshd hosts; ``corpus``: the recorded Ruby corpus; ``driver``: the
    driver (or a stub) as a real process; ``libvirt``: real libvirtds and QEMUs. (A
    real oned's tests carry ``oned`` themselves.) The fast lane deselects all five."""
    for item in items:
        name = item.path.name
        if LIBVIRT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.libvirt)
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


# --------------------------------------------------------------------------------------
# The libvirt test bed (tests/libvirt_bed.py): session libvirtds of dedicated users
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def make_libvirt_bed() -> Iterator[Callable[..., Any]]:
    """A factory: ``make_libvirt_bed(names=..., extra_group_members=..., ...)`` starts a
    :class:`libvirt_bed.LibvirtBed` (skipping the test cleanly when it cannot be had
    here, e.g. not root or no libvirt-python); every bed it started is stopped at the
    end of the session (earlier ``stop()`` is fine)."""
    from libvirt_bed import LibvirtBed
    from libvirt_bed import Unavailable as LibvirtUnavailable

    started: List[Any] = []
    unavailable: List[str] = []

    def factory(**kwargs: Any) -> Any:
        if unavailable:
            pytest.skip(unavailable[0])
        bed = LibvirtBed(**kwargs)
        try:
            bed.start()
        except LibvirtUnavailable as exc:
            unavailable.append(f"no libvirt test bed here: {exc}")
            pytest.skip(unavailable[0])
        started.append(bed)
        return bed

    yield factory
    for bed in reversed(started):
        bed.stop()


@pytest.fixture(scope="module")
def libvirt_bed(make_libvirt_bed: Callable[..., Any]) -> Iterator[Any]:
    """One bed per module: ``host01`` and ``host02`` (127.0.0.2 and .3), with the sshd
    test bed's user (``vmmtest``, created when missing) in the shared group, so that a
    script run as that user can open both hosts' sockets."""
    import os

    from testbed import Unavailable as TestbedUnavailable
    from testbed import ensure_user

    if os.geteuid() != 0:
        pytest.skip("no libvirt test bed here: it needs root (users, daemons)")
    try:
        member = ensure_user().pw_name
    except TestbedUnavailable as exc:
        pytest.skip(f"no libvirt test bed here: {exc}")
    bed = make_libvirt_bed(names=("host01", "host02"), extra_group_members=(member,))
    yield bed
    bed.stop()
