"""Hypervisor-side live migration on libvirt-python, for vmm_exec.

This package runs on the hypervisor hosts, inside OpenNebula's remotes tree
(``<remotes>/vmm_exec/libvirt/vmm_libvirt/``), started by the ``migrate`` and
``recover`` entry scripts next to it. It needs nothing but Python 3 and the
distribution's libvirt bindings (Debian: ``python3-libvirt``); it never imports
``vmm_exec``, which lives on the front-end.

Modules, one job each:

- ``profiles``: what each hypervisor is to this framework (data, no code paths).
- ``settings``: the stock rc files (``kvmrc``) and our own ``libvirtrc``.
- ``actiondata``: the few values read from ``VMM_DRIVER_ACTION_DATA``.
- ``options``: ``MIGRATE_OPTIONS`` and per-VM features -> libvirt flags/params.
- ``output``: stderr lines the driver understands; syslog for detached runs.
- ``connection``: libvirt connections whose every call is bounded.
- ``snapshots``: snapshot metadata set aside before and put back after.
- ``record``: what a migration leaves on disk for a later recovery.
- ``migration``: the live migration itself (shared storage).
- ``handover``: the other cases, handed to the stock script.
- ``recovery``: inspect both ends -> decide -> act, after any failure.
- ``cli``: the entry scripts' argv, stdin, signals and exit statuses.

Importing ``libvirt`` is deferred to the modules that talk to libvirt, so the
refusals that need no libvirt (LXC, Firecracker, bad options) work on a host
without the bindings.
"""

__version__ = "1.0"
