"""The remotes copy over SFTP: what ``scp -rp LOCAL/* HOST:DIR`` does.

Contents, modes and times; the top level is the shell glob ``LOCAL/*`` (no
dot files there), directories below are copied whole; symlinks are followed.
An error on one file is reported and the copy goes on, as with scp; a lost
connection fails the whole copy.
"""

from __future__ import annotations

import os
import posixpath
import stat
from typing import List

import paramiko

from vmm_exec.cancel import CancelScope


class Copier:
    """The recursive copy of ``scp -rp``; errors are collected and the copy goes on."""

    def __init__(self, sftp: paramiko.SFTPClient, scope: CancelScope, errors: List[str]) -> None:
        self.sftp = sftp
        self.scope = scope
        self.errors = errors

    def run(self, local_dir: str, remote_dir: str) -> None:
        try:
            # the shell glob LOCAL/*: no dot files at the top
            names = sorted(n for n in os.listdir(local_dir) if not n.startswith("."))
        except OSError as exc:
            self.errors.append(f"sftp: {local_dir}: {exc.strerror}")
            return
        if not names:
            self.errors.append(f"sftp: {local_dir}/*: No such file or directory")
            return
        self._makedirs(remote_dir)
        for name in names:
            self._put(os.path.join(local_dir, name), posixpath.join(remote_dir, name))

    def _makedirs(self, path: str) -> None:
        """``mkdir -p`` (update_remotes does one first; a direct call may not)."""
        if self._is_dir(path):
            return
        parent = posixpath.dirname(path.rstrip("/"))
        if parent and parent != path:
            self._makedirs(parent)
        try:
            self.sftp.mkdir(path)
        except OSError:
            pass  # reported by the puts that follow

    def _is_dir(self, path: str) -> bool:
        try:
            mode = self.sftp.stat(path).st_mode
        except OSError:
            return False
        return mode is not None and stat.S_ISDIR(mode)

    def _put(self, local: str, remote: str) -> None:
        self.scope.check()
        try:
            st = os.stat(local)  # symlinks are followed, as scp -r does
        except OSError as exc:
            self.errors.append(f"sftp: {local}: {exc.strerror}")
            return
        mode = stat.S_IMODE(st.st_mode)
        try:
            if stat.S_ISDIR(st.st_mode):
                if not self._is_dir(remote):
                    self.sftp.mkdir(remote, mode | 0o700)
                for name in sorted(os.listdir(local)):
                    self._put(os.path.join(local, name), posixpath.join(remote, name))
            elif stat.S_ISREG(st.st_mode):
                self.sftp.put(local, remote, confirm=False)
            else:
                self.errors.append(f"sftp: {local}: not a regular file")
                return
            self.sftp.chmod(remote, mode)
            self.sftp.utime(remote, (st.st_atime, st.st_mtime))
        except OSError as exc:
            if self.sftp.sock.closed:
                raise  # the connection is gone: the whole copy failed
            self.errors.append(f"sftp: {remote}: {exc.strerror or exc}")
