"""The migration record: what a migration leaves on disk for a later recovery.

Written (atomically, mode 0600) before the first change to the VM, i.e.
before its snapshot metadata is removed, and deleted once the outcome is
final (exactly one copy runs and the snapshot metadata is back). While it
exists, a ``recover`` run, the detached one started on SIGTERM or an
operator's, knows the VM's UUID, both ends, what was true before the
migration started (so it does not resume a VM its user had paused, nor
remove a definition that was already on the destination) and the snapshot
metadata to put back.

One file per VM UUID in the state directory: ``<uuid>.json``, and the
detached recovery's log beside it, ``<uuid>.log``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .snapshots import SnapshotSet


class RecordError(Exception):
    """A record cannot be written or read."""


@dataclass
class Record:
    uuid: str
    deploy_id: str
    hypervisor: str
    source_host: str
    dest_host: str
    source_uri: str
    dest_uri: str
    #: the VM was paused (by its user) before the migration started
    paused_before: bool = False
    #: an inactive definition of this UUID was already on the destination
    dest_defined_before: bool = False
    #: the snapshot metadata set aside (empty once put back)
    snapshots: SnapshotSet = field(default_factory=SnapshotSet)
    started: float = field(default_factory=time.time)
    pid: int = field(default_factory=os.getpid)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["snapshots"] = self.snapshots.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Record:
        try:
            return cls(
                uuid=str(data["uuid"]), deploy_id=str(data["deploy_id"]),
                hypervisor=str(data.get("hypervisor", "kvm")),
                source_host=str(data["source_host"]), dest_host=str(data["dest_host"]),
                source_uri=str(data["source_uri"]), dest_uri=str(data["dest_uri"]),
                paused_before=bool(data.get("paused_before", False)),
                dest_defined_before=bool(data.get("dest_defined_before", False)),
                snapshots=SnapshotSet.from_dict(data.get("snapshots") or {}),
                started=float(data.get("started", 0.0)), pid=int(data.get("pid", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"malformed migration record: {exc!r}") from None


def path_for(state_dir: str, uuid: str) -> str:
    return os.path.join(state_dir, f"{uuid}.json")


def log_path_for(state_dir: str, uuid: str) -> str:
    return os.path.join(state_dir, f"{uuid}.log")


def save(record: Record, path: str) -> None:
    """Write ``record`` to ``path`` atomically (temporary file + rename)."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".record-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record.to_dict(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        raise RecordError(f"cannot write the migration record {path}: {exc}") from None


def load(path: str) -> Record:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise RecordError(f"cannot read the migration record {path}: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path} is not a migration record")
    return Record.from_dict(data)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def find(state_dir: str, vm: str) -> Optional[str]:
    """The record of ``vm`` (a UUID or a deploy id) in ``state_dir``: the newest one."""
    direct = path_for(state_dir, vm)
    if os.path.isfile(direct):
        return direct
    try:
        names = os.listdir(state_dir)
    except OSError:
        return None
    found: List[Tuple[float, str]] = []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        path = os.path.join(state_dir, name)
        try:
            rec = load(path)
        except RecordError:
            continue
        if rec.deploy_id == vm:
            found.append((rec.started, path))
    return max(found)[1] if found else None
