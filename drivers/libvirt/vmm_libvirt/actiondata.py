"""The few values the migration reads from ``VMM_DRIVER_ACTION_DATA``.

oned sends the whole action data (the VM, its system datastore, the hosts)
on stdin. The stock script reads the datastore's ``SHARED`` flag, its base
path, ``DISK_TARGET_PATH`` and the per-VM ``FEATURES``; we read the same, plus
the driver name (``VM_MAD`` of the newest history record) to choose the
hypervisor profile. Standard library only (``xml.etree``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Optional


class ActionDataError(Exception):
    """stdin is not a usable VMM_DRIVER_ACTION_DATA document."""


@dataclass(frozen=True)
class ActionData:
    deploy_id: str
    vm_id: str
    host: str
    migr_host: str
    #: ``DATASTORE/TEMPLATE/SHARED`` is YES (case-insensitive)
    shared: bool
    ds_base_path: str
    disk_target_path: str
    #: ``VM/TEMPLATE/FEATURES/MIGRATE_AUTO_CONVERGE``, stripped ("" when unset)
    auto_converge: str
    #: ``VM/TEMPLATE/FEATURES/MIGRATE_COMPRESSED`` is YES
    compressed: bool
    #: ``VM_MAD`` of the newest history record ("" when absent)
    vm_mad: str
    #: ``VM/TEMPLATE/OS/UUID`` ("" when absent)
    os_uuid: str


def _text(root: ET.Element, path: str) -> str:
    node = root.find(path)
    return (node.text or "").strip() if node is not None else ""


def parse(data: bytes) -> ActionData:
    """Parse the action data; only a missing or broken document is an error."""
    if not data.strip():
        raise ActionDataError("no VMM_DRIVER_ACTION_DATA on stdin")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ActionDataError(f"stdin is not valid XML: {exc}") from None
    if root.tag != "VMM_DRIVER_ACTION_DATA":
        raise ActionDataError(f"stdin is <{root.tag}>, not <VMM_DRIVER_ACTION_DATA>")
    histories = root.findall("VM/HISTORY_RECORDS/HISTORY")
    vm_mad = ""
    if histories:
        newest = max(histories, key=lambda h: _int(_text(h, "SEQ")))
        vm_mad = _text(newest, "VM_MAD")
    return ActionData(
        deploy_id=_text(root, "DEPLOY_ID"),
        vm_id=_text(root, "VM/ID"),
        host=_text(root, "HOST"),
        migr_host=_text(root, "MIGR_HOST"),
        shared=_text(root, "DATASTORE/TEMPLATE/SHARED").upper() == "YES",
        ds_base_path=_text(root, "DATASTORE/BASE_PATH"),
        disk_target_path=_text(root, "DISK_TARGET_PATH"),
        auto_converge=_text(root, "VM/TEMPLATE/FEATURES/MIGRATE_AUTO_CONVERGE"),
        compressed=_text(root, "VM/TEMPLATE/FEATURES/MIGRATE_COMPRESSED").upper() == "YES",
        vm_mad=vm_mad,
        os_uuid=_text(root, "VM/TEMPLATE/OS/UUID"),
    )


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1


def hypervisor_name(data: Optional[ActionData], override: str = "") -> str:
    """The hypervisor to use: an explicit override, else the VM's ``VM_MAD``."""
    if override.strip():
        return override.strip()
    return data.vm_mad if data is not None else ""
