"""Fake OpenSSH client.

``ssh [options] HOST CMD...`` runs ``bash -c "CMD"`` locally in the fake
host's home ``<world>/hosts/HOST`` with ``COMPAT_HOST=HOST``.  Options are
journaled but have no effect, except ``-n`` (stdin from /dev/null).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

from compat.fakes import common

#: Single-letter options without / with an argument (OpenSSH's getopt set).
FLAG_OPTIONS = frozenset("46AaCfGgKkMNnqsTtVvXxYy")
ARG_OPTIONS = frozenset("BbcDEeFIiJLlmOopQRSWw")

DEFAULT_REMOTE_DIR = "var/tmp/one"
NO_ROUTE = "ssh: connect to host %s port 22: No route to host\r\n"
#: How long a failed connection keeps the stream's stdin readable.
UNREACHABLE_LINGER = "2"


@dataclass
class SshCall:
    """A parsed ssh command line."""

    opts: List[str] = field(default_factory=list)
    host: str = ""
    command: str = ""
    no_stdin: bool = False


def _split_cluster(arg: str, rest: List[str], call: SshCall) -> int:
    """Record one ``-xyz`` option cluster; return how many extra args it used."""
    for j in range(1, len(arg)):
        letter = arg[j]
        if letter in ARG_OPTIONS:
            value = arg[j + 1:]
            used = 0
            if not value:
                used = 1
                value = rest[0] if rest else ""
            call.opts.append(f"-{letter} {value}")
            return used
        call.opts.append("-" + letter)
        if letter == "n":
            call.no_stdin = True
    return 0


def parse_args(args: List[str]) -> SshCall:
    """Split options, destination and remote command like OpenSSH does."""
    call = SshCall()
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            break
        if arg == "--":
            i += 1
            break
        i += 1 + _split_cluster(arg, args[i + 1:], call)
    host = args[i] if i < len(args) else ""
    call.host = host.split("@", 1)[1] if "@" in host else host
    call.command = " ".join(args[i + 1:])
    return call


def ensure_home(world: str, host: str, noremotes: Set[str]) -> str:
    """Create the host's home on first contact, with the remotes copied in.

    The copy is built aside and renamed so that concurrent first contacts
    never see a half-copied remotes dir.
    """
    home = os.path.join(world, "hosts", host)
    if os.path.isdir(home):
        return home
    lock_path = os.path.join(world, common.RUN_DIR_NAME, "hosts.lock")
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(home):
            staging = home + ".tmp"
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
            remote_dir = os.environ.get("COMPAT_REMOTE_DIR", DEFAULT_REMOTE_DIR)
            if host not in noremotes and not os.path.isabs(remote_dir):
                source = os.path.join(os.environ["ONE_LOCATION"], "var", "remotes")
                shutil.copytree(source, os.path.join(staging, remote_dir), symlinks=True)
            os.rename(staging, home)
    return home


def _linger_stdin() -> None:
    """Keep the stream's stdin readable for a moment after a failure.

    Like a real client still tearing down: a driver that writes into the
    dead stream right after reading the error must not get EPIPE depending
    on scheduling.
    """
    subprocess.Popen(
        ["sleep", UNREACHABLE_LINGER], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _remote_env(host: str, home: str, call: SshCall) -> Dict[str, str]:
    """Environment of the remote shell; marks a ``X -s`` stream's stdin."""
    env = dict(os.environ)
    env["COMPAT_HOST"] = host
    env["PWD"] = home
    env.pop("COMPAT_STREAM_STDIN", None)
    words = call.command.split()
    if len(words) == 2 and words[1] == "-s" and not call.no_stdin:
        stream = _stdin_identity()
        if stream is not None:
            env["COMPAT_STREAM_STDIN"] = stream
    return env


def _stdin_identity() -> Optional[str]:
    """What fd 0 is (``pipe:[N]``...), to recognise scripts reading the stream."""
    try:
        return os.readlink("/proc/self/fd/0")
    except OSError:
        return None


def main(argv: List[str]) -> int:
    """Run one fake ssh invocation; return its exit status."""
    world = common.world_from_env()
    call = parse_args(argv)
    common.journal_append(
        world, {"host": "frontend", "ssh": call.host, "opts": call.opts, "cmd": call.command}
    )
    faults = common.load_faults(world)
    if not call.host:
        sys.stderr.write("usage: ssh [options] destination [command]\n")
        return 255
    if call.host in faults.unreachable:
        if not call.no_stdin:
            _linger_stdin()
        sys.stderr.write(NO_ROUTE % call.host)
        return 255
    home = ensure_home(world, call.host, faults.noremotes)
    env = _remote_env(call.host, home, call)
    command = call.command or "bash -s"
    stdin = subprocess.DEVNULL if call.no_stdin else None
    rc = subprocess.call(["bash", "-c", command], cwd=home, env=env, stdin=stdin)
    return 255 if rc < 0 else rc
