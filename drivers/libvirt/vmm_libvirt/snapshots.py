"""Snapshot metadata, set aside for the migration and put back afterwards.

libvirt refuses to live-migrate a domain that has snapshots, so the stock
script deletes the domain's snapshot *metadata* (``snapshot-delete
--metadata``; the snapshot data stays in the disk images) before migrating
and redefines it on the destination after a success. It never puts it back
on the source after a failure, so a failed migration silently loses every
snapshot of the VM.

Here the metadata is captured first (each snapshot's XML, parents before
children, and which one is current), kept in memory, and written into the
migration record (see ``record``) before anything is deleted, so that a later
recovery, even in another process, can restore it. Redefining is idempotent:
a snapshot that already exists is simply redefined again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import libvirt

from .connection import describe_error


class SnapshotError(Exception):
    """Snapshot metadata could not be set aside or put back."""


@dataclass(frozen=True)
class SnapshotSet:
    """A domain's snapshot metadata: ``(name, xml)`` parents first, and the current one."""

    snapshots: Tuple[Tuple[str, str], ...] = field(default=())
    current: Optional[str] = None

    def __len__(self) -> int:
        return len(self.snapshots)

    def names(self) -> List[str]:
        return [name for name, _xml in self.snapshots]

    def to_dict(self) -> Dict[str, Any]:
        return {"snapshots": [{"name": n, "xml": x} for n, x in self.snapshots],
                "current": self.current}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> SnapshotSet:
        items = tuple((str(s["name"]), str(s["xml"])) for s in data.get("snapshots", []))
        current = data.get("current")
        return cls(snapshots=items, current=str(current) if current else None)


def capture(dom: Any) -> SnapshotSet:
    """The domain's snapshot metadata (XML with security info, parents first)."""
    try:
        snaps = dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)
        items = tuple((s.getName(), s.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE))
                      for s in snaps)
        current = None
        if items and dom.hasCurrentSnapshot():
            current = dom.snapshotCurrent().getName()
    except libvirt.libvirtError as exc:
        raise SnapshotError(f"cannot read the snapshot metadata: {describe_error(exc)}") from None
    return SnapshotSet(snapshots=items, current=current)


def delete_metadata(dom: Any, snaps: SnapshotSet) -> None:
    """Delete the metadata (not the data) of every snapshot, children first.

    All or nothing: when one deletion fails, the ones already deleted are
    redefined and :class:`SnapshotError` is raised.
    """
    done: List[Tuple[str, str]] = []
    for name, xml in reversed(snaps.snapshots):
        try:
            dom.snapshotLookupByName(name).delete(
                libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                continue  # already gone
            error = describe_error(exc)
            if done:
                try:
                    redefine(dom, SnapshotSet(tuple(reversed(done)), snaps.current))
                except SnapshotError as exc2:
                    error += f"; putting back the ones already removed failed too: {exc2}"
            raise SnapshotError(f"cannot remove the metadata of snapshot {name}: {error}") from None
        done.append((name, xml))


def redefine(dom: Any, snaps: SnapshotSet) -> int:
    """Define every snapshot from its XML (parents first), then mark the current one.

    Returns how many were defined. Safe to repeat.
    """
    flag = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
    count = 0
    for name, xml in snaps.snapshots:
        try:
            dom.snapshotCreateXML(xml, flag)
        except libvirt.libvirtError as exc:
            raise SnapshotError(f"cannot redefine snapshot {name}: {describe_error(exc)}") from None
        count += 1
    if snaps.current is not None:
        current_xml = dict(snaps.snapshots).get(snaps.current)
        if current_xml is not None:
            try:
                dom.snapshotCreateXML(current_xml,
                                      flag | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT)
            except libvirt.libvirtError as exc:
                raise SnapshotError(f"cannot mark snapshot {snaps.current} current: "
                                    f"{describe_error(exc)}") from None
    return count
