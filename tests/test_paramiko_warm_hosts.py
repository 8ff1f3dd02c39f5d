"""The pool's ``warm_hosts``: what the scheduler's connection affinity reads.

It must name exactly the hosts with a pooled connection that takes new channels,
through every way a connection enters or leaves the pool. Fake connections (no
network): only the pool's books are under test here; tests/test_scale_bounds.py
checks the same set against real sshds.
"""

from __future__ import annotations

from typing import List

import pytest

pytest.importorskip("paramiko")

from vmm_exec.cancel import CancelScope  # noqa: E402
from vmm_exec.transports.paramiko.connect import Deadline  # noqa: E402
from vmm_exec.transports.paramiko.pool import Pool  # noqa: E402


class FakeConnection:
    """What the pool reads and sets on a connection."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.reserved = 0
        self.open = 0
        self.capacity = None
        self.retired = False
        self.released_at = 0.0
        self.closed = False

    def alive(self) -> bool:
        return not self.closed

    def close(self, wait: float = 0.0) -> None:
        self.closed = True


@pytest.fixture
def pool() -> Pool:
    made: List[FakeConnection] = []

    def connect(host: str, deadline: Deadline, scope: CancelScope) -> FakeConnection:
        made.append(FakeConnection(host))
        return made[-1]

    return Pool(connect, max_connections=2)  # type: ignore[arg-type]


def take(pool: Pool, host: str) -> FakeConnection:
    return pool.reserve(host, Deadline(5), CancelScope())  # type: ignore[return-value]


def test_warm_hosts_follow_connections_in_and_out(pool: Pool) -> None:
    assert pool.warm_hosts == frozenset()
    a = take(pool, "a")
    assert pool.warm_hosts == {"a"}
    b = take(pool, "b")
    assert pool.warm_hosts == {"a", "b"}
    pool.release(a, opened=False)  # type: ignore[arg-type]
    pool.release(b, opened=False)  # type: ignore[arg-type]
    assert pool.warm_hosts == {"a", "b"}  # idle connections stay warm
    c = take(pool, "c")  # the pool is full: the least recently used idle one goes
    assert a.closed and not b.closed
    assert pool.warm_hosts == {"b", "c"}
    pool.retire(c)  # type: ignore[arg-type]  # no new channels on it: not warm
    assert pool.warm_hosts == {"b"}
    pool.release(c, opened=False)  # type: ignore[arg-type]
    assert c.closed and pool.warm_hosts == {"b"}
    b.closed = True  # dead: pruned when its host is next asked for
    again = take(pool, "b")
    assert again is not b and pool.warm_hosts == {"b"}
    pool.close()
    assert pool.warm_hosts == frozenset()


def test_a_host_whose_only_connection_is_retired_is_cold_until_a_new_one(
        pool: Pool) -> None:
    first = take(pool, "a")
    pool.retire(first)  # type: ignore[arg-type]
    assert pool.warm_hosts == frozenset()
    second = take(pool, "a")
    assert second is not first and pool.warm_hosts == {"a"}
