"""Handing a migration over to OpenNebula's stock script.

This framework does the live migration over a shared system datastore. The
other two cases stay the stock script's, which already handles them:
non-shared storage (disks copied with the migration: placeholders created on
the destination, rsync of read-only disks and snapshot files before and
after) and a move between system datastores on the same host (blockcopy).
The hand-over is explicit (the caller says so in an ``INFO:`` line) and
complete: ``<remotes>/vmm/<hv>/migrate`` replaces this process (``exec``) with
the same argv and the same stdin, so its output, exit status and the
driver's signals are its own. No libvirt needed here.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

from .profiles import Profile
from .settings import remotes_root


def stock_script(profile: Profile, script_dir: str) -> Optional[str]:
    """``<remotes>/vmm/<hv>/migrate`` for this profile, or None when it has none."""
    if not profile.stock_dir:
        return None
    return os.path.join(remotes_root(script_dir), "vmm", profile.stock_dir, "migrate")


def exec_stock(path: str, argv: Sequence[str], stdin: bytes) -> None:
    """Replace this process with the stock script: same argv, same stdin.

    Returns only by raising ``OSError`` (the script cannot be executed).
    """
    with tempfile.TemporaryFile() as fh:
        fh.write(stdin)
        fh.flush()
        fh.seek(0)
        os.dup2(fh.fileno(), 0)
    os.execv(path, [path, *argv])
