"""Hypervisor profiles, as data.

OpenNebula names a VM's hypervisor driver in ``VM_MAD`` (``kvm``, ``qemu``,
``lxc``, ``firecracker``). What this framework does for each is decided here,
by data only: which libvirt URIs to use, where OpenNebula's stock scripts and
rc file live in the remotes tree, and whether libvirt can live-migrate it at
all. The code never branches on a hypervisor's name; it reads a profile.

- ``kvm`` and ``qemu`` (QEMU without acceleration; OpenNebula runs it with the
  kvm scripts): tested against real libvirt 9.0 daemons.
- ``xen`` (alias ``libxl``): libvirt's libxl driver implements migration, so
  the profile is present, but it is untested here and OpenNebula ships no Xen
  driver any more (no stock script to hand non-shared storage over to).
- ``lxc``: OpenNebula's LXC driver runs containers with the LXC tools, not
  through libvirt, and there is no live migration for them: refused with a
  clear message before anything is touched.
- ``firecracker``: not libvirt at all: refused, saying what to use instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Profile:
    """What one hypervisor family is to the migration framework."""

    name: str
    #: libvirt can live-migrate domains of this hypervisor; when false,
    #: ``refusal`` says why and what to do instead.
    live_migration: bool
    refusal: str
    #: tested on this project's real two-daemon test bed
    tested: bool
    #: ``<remotes>/vmm/<stock_dir>/`` holds OpenNebula's scripts (None: none)
    stock_dir: Optional[str]
    #: rc files of the stock driver, relative to the remotes root; every one
    #: that exists is sourced, in this order (later ones win)
    rc_files: Tuple[str, ...]
    #: ``LIBVIRT_URI`` when no rc file sets it
    default_uri: str
    #: ``QEMU_PROTOCOL`` (the transport of the destination URI) when unset
    default_protocol: str
    #: the destination URI when ``VMM_EXEC_DEST_URI`` is unset
    default_dest_template: str


_KVM_RC = ("vmm/kvm/kvmrc", "etc/vmm/kvm/kvmrc")

PROFILES: Dict[str, Profile] = {
    "kvm": Profile(
        name="kvm", live_migration=True, refusal="", tested=True,
        stock_dir="kvm", rc_files=_KVM_RC,
        default_uri="qemu:///system", default_protocol="qemu+ssh",
        default_dest_template="{QEMU_PROTOCOL}://{host}/system",
    ),
    "qemu": Profile(
        name="qemu", live_migration=True, refusal="", tested=True,
        stock_dir="kvm", rc_files=_KVM_RC,
        default_uri="qemu:///system", default_protocol="qemu+ssh",
        default_dest_template="{QEMU_PROTOCOL}://{host}/system",
    ),
    "xen": Profile(
        name="xen", live_migration=True, refusal="", tested=False,
        stock_dir=None, rc_files=(),
        default_uri="xen:///system", default_protocol="xen+ssh",
        default_dest_template="{QEMU_PROTOCOL}://{host}/system",
    ),
    "lxc": Profile(
        name="lxc", live_migration=False, tested=False,
        refusal=("LXC containers cannot be live-migrated: OpenNebula's lxc driver runs "
                 "them with the LXC tools, not through libvirt, and neither offers live "
                 "migration. Power the container off and migrate it cold "
                 "(onevm migrate without --live)."),
        stock_dir="lxc", rc_files=(), default_uri="", default_protocol="",
        default_dest_template="",
    ),
    "firecracker": Profile(
        name="firecracker", live_migration=False, tested=False,
        refusal=("Firecracker micro-VMs are not managed by libvirt, so this libvirt "
                 "migration framework cannot move them, and Firecracker has no live "
                 "migration in OpenNebula. Power the VM off and migrate it cold "
                 "(onevm migrate without --live), which uses OpenNebula's own "
                 "firecracker driver."),
        stock_dir="firecracker", rc_files=(), default_uri="", default_protocol="",
        default_dest_template="",
    ),
}

ALIASES: Dict[str, str] = {"libxl": "xen", "xen3": "xen", "xen4": "xen"}

#: the profile used when VM_MAD names a driver this table does not know
#: (a site may call its kvm driver anything, e.g. ``kvm-prod``)
DEFAULT = "kvm"


def lookup(name: str) -> Optional[Profile]:
    """The profile called ``name`` (case-insensitive, aliases resolved), or None."""
    key = name.strip().lower()
    return PROFILES.get(ALIASES.get(key, key))
