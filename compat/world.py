"""A world: the directory a scenario runs in.

Layout::

    one/var/config        SCRIPTS_REMOTE_DIR=var/tmp/one + scenario config
    one/var/remotes/      generated fake remotes (ONE_LOCATION/var/remotes)
    hosts/HOST/           fake host homes, created on first ssh contact
    run/                  locks and nth counters of the fakes
    journal.jsonl         every script / ssh / scp call
    faults                the scenario's faults ({WORLD} substituted)
    driver.stderr         the driver's stderr
    ...                   the scenario's files/ tree ({WORLD} substituted)

The driver runs with the world as cwd and ``ONE_LOCATION=<world>/one``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import tempfile
from typing import Dict, Iterable, Mapping, Optional, Set

from compat.fakes import common
from compat.fakes.remotes import FAKES_DIR, install_remotes

REMOTE_DIR = "var/tmp/one"
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKES_BIN = os.path.join(FAKES_DIR, "bin")
WORLD_TOKEN = "{WORLD}"

#: Defaults equal to the values of the driver's rc file (vmm_execrc).
DEFAULT_ENV: Dict[str, str] = {
    "LIVE_DISK_SNAPSHOTS": (
        "kvm-qcow2 kvm-shared kvm-ceph kvm-ssh kvm-local kvm-lvm_thin kvm-lvm "
        "kvm-netapp qemu-qcow2 qemu-shared qemu-ceph qemu-ssh qemu-local "
        "qemu-netapp kvm-purefa lxc-qcow2 lxc-shared lxc-ceph lxc-ssh "
        "lxc-local lxc-lvm_thin lxc-lvm"
    ),
    "VNMAD_LOCAL_ACTIONS": "elastic-post elastic-clean",
}

#: World files that are bookkeeping, not effects of the driver.
_SKIPPED_FILES = frozenset(("journal.jsonl", "faults", "driver.stderr", "one/var/config"))
_SKIPPED_PREFIXES = ("one/var/remotes/", "run/")


def subst(text: str, world: str) -> str:
    """Replace the ``{WORLD}`` placeholder by the world path."""
    return text.replace(WORLD_TOKEN, world)


def new_world_dir() -> str:
    """A fresh, empty temporary world directory."""
    return tempfile.mkdtemp(prefix="compat-")


def build_world(
    world: str,
    *,
    config: Iterable[str] = (),
    faults: str = "",
    files_dir: Optional[str] = None,
) -> None:
    """Lay out the world: config, remotes, hosts, journal, faults, files.

    ``config`` lines and ``faults`` are given with ``{WORLD}`` placeholders.
    """
    os.makedirs(os.path.join(world, "one", "var"))
    os.makedirs(os.path.join(world, "hosts"))
    os.makedirs(os.path.join(world, common.RUN_DIR_NAME))
    install_remotes(os.path.join(world, "one", "var", "remotes"))
    with open(os.path.join(world, "one", "var", "config"), "w", encoding="utf-8") as f:
        f.write(f"SCRIPTS_REMOTE_DIR={REMOTE_DIR}\n")
        for line in config:
            f.write(subst(line, world) + "\n")
    with open(os.path.join(world, common.FAULTS_NAME), "w", encoding="utf-8") as f:
        f.write(subst(faults, world))
    open(os.path.join(world, common.JOURNAL_NAME), "w").close()
    if files_dir and os.path.isdir(files_dir):
        copy_files_tree(files_dir, world)


def copy_files_tree(src_root: str, world: str) -> None:
    """Copy a scenario's ``files/`` into the world, ``{WORLD}`` substituted
    in UTF-8 files (other files are copied as they are)."""
    for root, _dirs, files in os.walk(src_root):
        for name in files:
            src = os.path.join(root, name)
            dst = os.path.join(world, os.path.relpath(src, src_root))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(src, "rb") as f:
                data = f.read()
            try:
                data = subst(data.decode("utf-8"), world).encode("utf-8")
            except UnicodeDecodeError:
                pass
            with open(dst, "wb") as f:
                f.write(data)
            shutil.copymode(src, dst)


def driver_env(
    world: str,
    vm_ids: Set[str],
    extra: Optional[Mapping[str, str]] = None,
    base: Optional[Mapping[str, str]] = None,
) -> Dict[str, str]:
    """The driver's environment: like oned's plus the fakes' contract.

    The project root is prepended to PYTHONPATH so that ``python -m
    vmm_exec`` works from the world dir without installing the package.
    ``extra`` values (the scenario's ``env``) may use ``{WORLD}``.
    """
    source = os.environ if base is None else base
    env = {
        k: v for k, v in source.items() if not k.startswith("COMPAT_") and k != "ONE_LOCATION"
    }
    env.update(DEFAULT_ENV)
    env["LANG"] = "C.UTF-8"
    env["LC_ALL"] = "C.UTF-8"
    env["ONE_LOCATION"] = os.path.join(world, "one")
    env["PATH"] = FAKES_BIN + os.pathsep + env.get("PATH", "")
    pythonpath = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PROJECT_ROOT + (os.pathsep + pythonpath if pythonpath else "")
    env["COMPAT_WORLD"] = world
    env["COMPAT_KIT"] = FAKES_DIR
    env["COMPAT_REMOTE_DIR"] = REMOTE_DIR
    env["COMPAT_VM_IDS"] = " ".join(sorted(vm_ids))
    for key, value in (extra or {}).items():
        env[key] = subst(value, world)
    return env


# ---------------------------------------------------------------------------
# snapshot: which files did the run create or change?
# ---------------------------------------------------------------------------
def is_bookkeeping(rel: str) -> bool:
    """Files that are not the driver's doing (journal, remotes copies...)."""
    if rel in _SKIPPED_FILES or rel.startswith(_SKIPPED_PREFIXES):
        return True
    parts = rel.split("/")
    return (
        len(parts) > 2
        and parts[0] == "hosts"
        and "/".join(parts[2:]).startswith(REMOTE_DIR + "/")
    )


def _sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def snapshot(world: str) -> Dict[str, str]:
    """sha256 of every regular file of the world that is not bookkeeping."""
    snap: Dict[str, str] = {}
    for root, _dirs, files in os.walk(world):
        for name in files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, world)
            if is_bookkeeping(rel) or os.path.islink(full):
                continue
            snap[rel] = _sha256_file(full)
    return snap


# ---------------------------------------------------------------------------
# input lines
# ---------------------------------------------------------------------------
def payload_b64(path: str, world: str) -> str:
    """Base64 (one line, as oned writes it) of a payload, ``{WORLD}`` set."""
    with open(path, encoding="utf-8") as f:
        data = subst(f.read(), world)
    return base64.b64encode(data.encode("utf-8")).decode("ascii")


def encode_input_line(line: str, scenario_dir: str, world: str) -> str:
    """Replace ``@NAME`` tokens naming a scenario file by its base64 payload;
    spacing is kept exactly and ``{WORLD}`` is substituted."""

    def token(tok: str) -> str:
        if tok.startswith("@") and len(tok) > 1:
            path = os.path.join(scenario_dir, tok[1:])
            if os.path.isfile(path):
                return payload_b64(path, world)
        return tok

    parts = re.split(r"(\s+)", line)
    return subst("".join(p if p.isspace() else token(p) for p in parts), world)
