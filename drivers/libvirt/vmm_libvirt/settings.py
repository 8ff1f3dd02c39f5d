"""Configuration: the stock driver's rc file plus an optional rc of our own.

The stock ``migrate`` reads ``kvmrc`` (``load_remote_env``) for
``LIBVIRT_URI`` (default ``qemu:///system``), ``QEMU_PROTOCOL`` (default
``qemu+ssh``; the destination is ``<protocol>://<host>/system``) and
``MIGRATE_OPTIONS`` (extra ``virsh migrate`` options), and ``VIRSH_TRIES``
(default 3: attempts while libvirt refuses because of an active block job). We
read the same file,
found relative to our own place in the remotes tree, so a site's existing
settings apply unchanged. rc files are shell: they are *sourced with bash*
(``set -a``), as the stock bash scripts do, rather than parsed.

Our own rc, ``<remotes>/vmm_exec/libvirt/libvirtrc`` (next to the entry
scripts; ``VMM_EXEC_LIBVIRTRC`` in the environment names another), is sourced
after the stock one, so it may override anything. Its own variables:

==============================  =============================================
``VMM_EXEC_DEST_URI``           destination URI template; ``{host}`` is the
                                destination host, ``{QEMU_PROTOCOL}`` (or
                                ``{protocol}``) the protocol. Default
                                ``{QEMU_PROTOCOL}://{host}/system``
``VMM_EXEC_STATE_DIR``          where migration records (snapshot metadata
                                set aside, recovery logs) are kept. Default
                                ``~/.local/state/vmm_exec/libvirt``
``VMM_EXEC_PROGRESS_INTERVAL``  seconds between progress lines (5)
``VMM_EXEC_JOB_WAIT``           seconds to wait for a migration job to end
                                after an abort, or before judging (60)
``VMM_EXEC_CONNECT_TIMEOUT``    seconds to open a libvirt connection (20)
``VMM_EXEC_KEEPALIVE``          ``interval,count`` of libvirt keepalives: a
                                daemon that stops answering is given up after
                                about interval x (count + 1) seconds (2,3)
``VMM_EXEC_RECONNECT_WAIT``     seconds recovery keeps trying to reach a
                                daemon whose connection broke (10)
``VMM_EXEC_MIGRATE_TIMEOUT``    abort a migration running longer than this
                                many seconds; 0 = no limit (0)
==============================  =============================================
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .profiles import Profile

OWN_RC = "libvirtrc"
RC_ENV = "VMM_EXEC_LIBVIRTRC"
_SENTINEL = "__vmm_exec_rc_sourced__"
_BASH_TIMEOUT = 15.0

#: sources every file given as an argument (all assignments exported), then
#: prints a sentinel and the environment, NUL-separated; an rc that exits or
#: fails to parse never reaches the sentinel
_BASH_SOURCE = (
    'set -a\n'
    'for __vmm_exec_rc in "$@"; do . "$__vmm_exec_rc"; done </dev/null >/dev/null\n'
    f"printf '%s\\0' {_SENTINEL}\n"
    'exec env -0\n'
)


class SettingsError(Exception):
    """The configuration cannot be read or is invalid; nothing was touched."""


@dataclass(frozen=True)
class Settings:
    """Everything configurable, resolved."""

    libvirt_uri: str
    qemu_protocol: str
    migrate_options: str
    dest_uri_template: str
    state_dir: str
    progress_interval: float = 5.0
    job_wait: float = 60.0
    connect_timeout: float = 20.0
    keepalive_interval: int = 2
    keepalive_count: int = 3
    reconnect_wait: float = 10.0
    migrate_timeout: float = 0.0
    #: attempts while libvirt refuses with an active block job (the stock VIRSH_TRIES)
    virsh_tries: int = 3
    #: the rc files that were sourced, in order
    sources: Tuple[str, ...] = field(default=())

    def dest_uri(self, host: str) -> str:
        """The libvirt URI of ``host`` (from the template)."""
        return expand_template(self.dest_uri_template, host, self.qemu_protocol)

    def uri_for(self, host: str, local_host: str) -> str:
        """``LIBVIRT_URI`` for the host this runs on, the template for any other."""
        return self.libvirt_uri if host == local_host else self.dest_uri(host)


def expand_template(template: str, host: str, protocol: str) -> str:
    """``{host}``, ``{QEMU_PROTOCOL}``/``{protocol}`` substituted; anything else
    in braces is an error (a typo must not become a URI)."""
    try:
        return template.format(host=host, QEMU_PROTOCOL=protocol, protocol=protocol)
    except (KeyError, IndexError, ValueError) as exc:
        raise SettingsError(
            f"VMM_EXEC_DEST_URI={template!r} is not a valid template: use {{host}} and "
            f"{{QEMU_PROTOCOL}} only ({exc!s})") from None


def remotes_root(script_dir: str) -> str:
    """The remotes tree this framework was installed into.

    The entry scripts live in ``<remotes>/vmm_exec/libvirt/``.
    """
    return os.path.dirname(os.path.dirname(os.path.abspath(script_dir)))


def rc_paths(profile: Profile, script_dir: str, environ: Mapping[str, str]) -> List[str]:
    """The rc files to source, in order: the stock ones that exist, then ours."""
    root = remotes_root(script_dir)
    paths = [os.path.join(root, rel) for rel in profile.rc_files]
    paths = [p for p in paths if os.path.isfile(p)]
    own = environ.get(RC_ENV) or os.path.join(os.path.abspath(script_dir), OWN_RC)
    if os.path.isfile(own):
        paths.append(own)
    elif environ.get(RC_ENV):
        raise SettingsError(f"{RC_ENV}={own} does not exist")
    return paths


def source_with_bash(paths: Sequence[str], environ: Mapping[str, str]) -> Dict[str, str]:
    """The environment after sourcing ``paths`` with bash, starting from ``environ``."""
    if not paths:
        return dict(environ)
    try:
        proc = subprocess.run(
            ["bash", "-c", _BASH_SOURCE, "bash", *paths],
            env=dict(environ), stdin=subprocess.DEVNULL, capture_output=True,
            timeout=_BASH_TIMEOUT, check=False)
    except FileNotFoundError:
        raise SettingsError("bash is needed to read " + ", ".join(paths)) from None
    except subprocess.TimeoutExpired:
        raise SettingsError(f"sourcing {', '.join(paths)} did not finish within "
                            f"{_BASH_TIMEOUT:.0f} s") from None
    items = proc.stdout.decode("utf-8", "surrogateescape").split("\0")
    if not items or items[0] != _SENTINEL:
        err = proc.stderr.decode("utf-8", "replace").strip().replace("\n", " ")
        raise SettingsError(f"cannot source {', '.join(paths)}: {err or 'it exited'}")
    result: Dict[str, str] = {}
    for item in items[1:]:
        name, sep, value = item.partition("=")
        if sep:
            result[name] = value
    return result


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def _keepalive(env: Mapping[str, str]) -> Tuple[int, int]:
    raw = env.get("VMM_EXEC_KEEPALIVE", "").strip() or "2,3"
    parts = raw.split(",")
    try:
        interval, count = (int(p) for p in parts)
    except ValueError:
        raise SettingsError(f"VMM_EXEC_KEEPALIVE={raw!r} must be 'interval,count'") from None
    if interval < 1 or count < 1:
        raise SettingsError(f"VMM_EXEC_KEEPALIVE={raw!r}: both must be at least 1")
    return interval, count


def default_state_dir(environ: Mapping[str, str]) -> str:
    home = environ.get("HOME") or ""
    if home and os.path.isabs(home):
        return os.path.join(home, ".local", "state", "vmm_exec", "libvirt")
    return f"/var/tmp/vmm_exec-libvirt-{os.getuid()}"


def from_environment(env: Mapping[str, str], profile: Profile,
                     sources: Sequence[str] = ()) -> Settings:
    """Settings from an already sourced environment (pure; used by :func:`load`)."""
    protocol = env.get("QEMU_PROTOCOL", "").strip() or profile.default_protocol
    template = env.get("VMM_EXEC_DEST_URI", "").strip() or profile.default_dest_template
    expand_template(template, "host", protocol)  # fail early on a bad template
    interval, count = _keepalive(env)
    return Settings(
        libvirt_uri=env.get("LIBVIRT_URI", "").strip() or profile.default_uri,
        qemu_protocol=protocol,
        migrate_options=env.get("MIGRATE_OPTIONS", ""),
        dest_uri_template=template,
        state_dir=env.get("VMM_EXEC_STATE_DIR", "").strip() or default_state_dir(env),
        progress_interval=_number(env, "VMM_EXEC_PROGRESS_INTERVAL", 5.0, 0.5),
        job_wait=_number(env, "VMM_EXEC_JOB_WAIT", 60.0),
        connect_timeout=_number(env, "VMM_EXEC_CONNECT_TIMEOUT", 20.0, 1.0),
        keepalive_interval=interval,
        keepalive_count=count,
        reconnect_wait=_number(env, "VMM_EXEC_RECONNECT_WAIT", 10.0),
        migrate_timeout=_number(env, "VMM_EXEC_MIGRATE_TIMEOUT", 0.0),
        virsh_tries=int(_number(env, "VIRSH_TRIES", 3.0, 1.0)),
        sources=tuple(sources),
    )


def load(profile: Profile, script_dir: str,
         environ: Optional[Mapping[str, str]] = None) -> Settings:
    """Source the rc files for ``profile`` and resolve the settings."""
    base = dict(os.environ if environ is None else environ)
    paths = rc_paths(profile, script_dir, base)
    return from_environment(source_with_bash(paths, base), profile, paths)
