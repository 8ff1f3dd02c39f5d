"""Command line of ``one-vmm-exec``: the Ruby driver's options, parsed the Ruby way.

oned starts a driver with ``execlp(EXECUTABLE, EXECUTABLE, ARGUMENTS)``: all
ARGUMENTS arrive as one argv element and file descriptor 2 is closed. This
module undoes both (shell-like split; a safe fd 2) and then does what the bash
wrapper of the original does (rc files, ``nice``, the debug log) before handing
over to :mod:`vmm_exec.driver`.
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import signal
import sys
from dataclasses import dataclass
from typing import Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

from vmm_exec import __version__, logs, rubyisms
from vmm_exec.config import (
    KNOWN_HYPERVISORS,
    DriverConfig,
    Paths,
    read_one_config,
    scripts_remote_dir,
    source_rc_file,
)

LOG = logging.getLogger(__name__)

USAGE = """\
usage: one-vmm-exec [options] HYPERVISOR
       one-vmm-exec explain ACTION [--message FILE] [--hypervisor HV] [--format text|dot]

OpenNebula VMM exec driver (Python port of one_vmm_exec.rb). Reads oned's
driver protocol on stdin and answers on stdout.

Options of the original driver:
  -r, --retries [N]      retries of one-shot remote commands (default 0); a
                         missing remote script (exit 42) triggers a remotes update
  -t, --threads [N]      actions run at the same time (default 15)
  -l, --local ACTIONS    actions run on the front-end, e.g. deploy,poll=poll_local
  -d, --delegate ACTIONS actions run with SSH agent forwarding (default migrate)
  -s, --shell SHELL      shell of the persistent remote stream (default bash)
  -p, --parallel         allow several actions on the same host at once
                         (default: one action per host at a time)
  -w, --timeout [SECS]   kill a script that runs longer than SECS

Options of this port:
      --compat MODE      strict: reproduce the Ruby driver's transcripts;
                         default: documented improvements (see README)
      --transport NAME   openssh (default: the ssh binary) or paramiko
      --rc FILE          source FILE like the bash wrapper sources vmm_execrc
                         (may be repeated)
      --hooks-dir DIR    extra directory of add-on hook files (may be repeated)
      --max-connections N
                         paramiko: SSH connections kept open over all hosts
                         (default: the -t value); idle ones beyond are closed,
                         least recently used first
      --max-handshakes N paramiko: SSH connections being set up at once, over
                         all hosts (default 4)
  -h, --help             show this help and exit
      --version          show the version and exit

HYPERVISOR is kvm, qemu, lxc, firecracker, or any name with a directory in
the remotes (vmm/HYPERVISOR).
"""

# name: (short, takes_argument) where takes_argument is "none", "optional" or "required"
_OPTIONS: Dict[str, Tuple[Optional[str], str]] = {
    "retries": ("r", "optional"),
    "threads": ("t", "optional"),
    "local": ("l", "required"),
    "delegate": ("d", "required"),
    "shell": ("s", "required"),
    "parallel": ("p", "none"),
    "timeout": ("w", "optional"),
    "compat": (None, "required"),
    "transport": (None, "required"),
    "rc": (None, "required"),
    "hooks-dir": (None, "required"),
    "max-connections": (None, "required"),
    "max-handshakes": (None, "required"),
    "help": ("h", "none"),
    "version": (None, "none"),
}
_SHORT = {short: name for name, (short, _) in _OPTIONS.items() if short}


class UsageError(Exception):
    """A command line the Ruby driver would reject (it exits with status 255)."""


@dataclass
class Arguments:
    options: List[Tuple[str, str]]
    operands: List[str]


def split_oned_argv(argv: Sequence[str]) -> List[str]:
    """Undo oned's single-argv-element call: ``["-t 15 -r 0 kvm -p"]`` → words."""
    if len(argv) == 1 and (not argv[0].strip() or any(c in argv[0] for c in " \t\n")):
        try:
            return shlex.split(argv[0])
        except ValueError:
            return argv[0].split()
    return list(argv)


def getopt_long(argv: Sequence[str]) -> Arguments:
    """Ruby ``GetoptLong`` in PERMUTE order: options anywhere, unique long prefixes.

    An optional argument is taken from the next word only when that word does
    not start with ``-``, exactly like GetoptLong.
    """
    options: List[Tuple[str, str]] = []
    operands: List[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            operands.extend(argv[i:])
            break
        if word.startswith("--"):
            name, sep, value = word[2:].partition("=")
            full = _long_name(name)
            kind = _OPTIONS[full][1]
            if sep:
                if kind == "none":
                    raise UsageError(f"option `--{full}' doesn't allow an argument")
            elif kind == "required":
                if i >= len(argv):
                    raise UsageError(f"option `--{full}' requires an argument")
                value, i = argv[i], i + 1
            elif kind == "optional" and i < len(argv) and not _looks_like_option(argv[i]):
                value, i = argv[i], i + 1
            options.append((full, value))
        elif word.startswith("-") and word != "-":
            j = 1
            while j < len(word):
                short = word[j]
                if short not in _SHORT:
                    raise UsageError(f"invalid option -- {short}")
                full = _SHORT[short]
                kind = _OPTIONS[full][1]
                rest = word[j + 1:]
                if kind == "none":
                    options.append((full, ""))
                    j += 1
                    continue
                if rest:
                    options.append((full, rest))
                elif kind == "required":
                    if i >= len(argv):
                        raise UsageError(f"option requires an argument -- {short}")
                    options.append((full, argv[i]))
                    i += 1
                elif i < len(argv) and not _looks_like_option(argv[i]):
                    options.append((full, argv[i]))
                    i += 1
                else:
                    options.append((full, ""))
                break
        else:
            operands.append(word)
    return Arguments(options, operands)


def _looks_like_option(word: str) -> bool:
    """GetoptLong's test for "the next word is an option": ``/\\A-./``."""
    return len(word) > 1 and word[0] == "-"


def _long_name(prefix: str) -> str:
    if prefix in _OPTIONS:
        return prefix
    matches = [name for name in _OPTIONS if name.startswith(prefix)] if prefix else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"option `--{prefix}' is ambiguous between {', '.join(matches)}")
    raise UsageError(f"unrecognized option `--{prefix}'")


def build_config(args: Arguments, environ: MutableMapping[str, str]) -> DriverConfig:
    """Turn parsed arguments and the environment into the driver's configuration."""
    defaults = DriverConfig(hypervisor="")
    retries, threads, timeout = defaults.retries, defaults.threads, 0
    local_actions, delegate_actions = defaults.local_actions, defaults.delegate_actions
    shell, single_host, strict = defaults.shell, defaults.single_host, defaults.strict
    transport = defaults.transport
    rc_files: List[str] = []
    hook_dirs: List[str] = []
    max_connections, max_handshakes = defaults.max_connections, defaults.max_handshakes
    for name, value in args.options:
        if name == "retries":
            retries = rubyisms.to_i(value)
        elif name == "threads":
            threads = rubyisms.to_i(value)
        elif name == "timeout":
            timeout = rubyisms.to_i(value)
        elif name == "local":
            local_actions = rubyisms.parse_actions_list(value)
        elif name == "delegate":
            delegate_actions = rubyisms.parse_actions_list(value)
        elif name == "shell":
            shell = value
        elif name == "parallel":
            single_host = False
        elif name == "compat":
            if value not in ("strict", "default"):
                raise UsageError("--compat must be strict or default")
            strict = value == "strict"
        elif name == "transport":
            if value not in ("openssh", "paramiko"):
                raise UsageError("--transport must be openssh or paramiko")
            transport = value
        elif name == "rc":
            rc_files.append(value)
        elif name == "hooks-dir":
            hook_dirs.append(value)
        elif name in ("max-connections", "max-handshakes"):
            if not value.isdigit() or int(value) < 1:
                raise UsageError(f"--{name} must be a positive number")
            if name == "max-connections":
                max_connections = int(value)
            else:
                max_handshakes = int(value)
    if not args.operands:
        raise UsageError("missing HYPERVISOR argument")
    paths = Paths(environ.get("ONE_LOCATION") or None)
    for rc in rc_files:
        environ.update(source_rc_file(rc, environ))
    if threads < 1:
        LOG.warning("--threads %d would never run an action; using 1", threads)
    return DriverConfig(
        hypervisor=args.operands[0],
        retries=retries,
        threads=max(threads, 1),
        local_actions=local_actions,
        delegate_actions=delegate_actions,
        shell=shell,
        single_host=single_host,
        timeout=timeout if timeout > 0 else None,
        strict=strict,
        transport=transport,
        paths=paths,
        scripts_remote_dir=scripts_remote_dir(read_one_config(paths.config_file)),
        live_disk_snapshots=tuple(rubyisms.split_words(environ.get("LIVE_DISK_SNAPSHOTS", ""))),
        vnmad_local_actions=tuple(rubyisms.split_words(environ.get("VNMAD_LOCAL_ACTIONS", ""))),
        hook_dirs=tuple(hook_dirs),
        max_connections=max_connections,
        max_handshakes=max_handshakes,
    )


def ensure_stderr(log_path: Optional[str]) -> None:
    """Give the process a usable fd 2.

    oned starts drivers with fd 2 closed; then ``sys.stderr`` is None and a
    stray ``print(file=sys.stderr)`` would go to *stdout*, corrupting the
    protocol, while the next file opened would silently become fd 2. Like the
    bash wrapper: the debug log when ONE_MAD_DEBUG is set, else /dev/null.
    """
    try:
        os.fstat(2)
        closed = False
    except OSError:
        closed = True
    if not closed and log_path is None:
        return
    target = log_path or os.devnull
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    except OSError:
        if not closed:
            return
        fd = os.open(os.devnull, os.O_WRONLY)
    if fd != 2:
        os.dup2(fd, 2)
        os.close(fd)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)


def wrapper_environment(paths: Paths, environ: MutableMapping[str, str]) -> None:
    """Export ``defaultrc`` and ``vmm_execrc`` variables, as ``madcommon.sh`` does."""
    for rc in paths.rc_files:
        environ.update(source_rc_file(rc, environ))


def apply_priority(environ: Mapping[str, str]) -> None:
    """``nice -n $PRIORITY`` (default 19), like the wrapper."""
    try:
        increment = int(environ.get("PRIORITY") or 19)
    except ValueError:
        increment = 19
    if increment:
        try:
            os.nice(increment)
        except OSError:
            pass


def debug_log_path(paths: Paths, args: Optional[Arguments],
                   environ: Mapping[str, str]) -> Optional[str]:
    """The debug log when ``ONE_MAD_DEBUG`` is set (by the environment or an rc file):
    ``one_vmm_exec_<hypervisor>.log`` in the log directory."""
    if not environ.get("ONE_MAD_DEBUG"):
        return None
    hypervisor = args.operands[0] if args is not None and args.operands else "exec"
    return os.path.join(paths.log_dir, f"one_vmm_exec_{os.path.basename(hypervisor)}.log")


def clear_signal_mask() -> None:
    """Unblock every signal, as the Ruby driver does at start.

    oned blocks all signals before it creates its threads, and a child
    inherits the mask: left as is, SIGTERM from oned's stop could never reach
    the driver, and every script it starts would inherit the same mask. This
    must run before any thread or child exists (both inherit the mask).
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def main(argv: Optional[Sequence[str]] = None) -> int:
    clear_signal_mask()
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw and raw[0] == "explain":
        from vmm_exec.explain import main as explain_main

        return explain_main(raw[1:])
    if raw and raw[0] == "simulate":
        from vmm_exec.testing.cli import main as simulate_main

        return simulate_main(raw[1:])
    words = split_oned_argv(raw)
    environ = os.environ
    paths = Paths(environ.get("ONE_LOCATION") or None)
    try:
        args: Optional[Arguments] = getopt_long(words)
        usage_error = None
    except UsageError as exc:
        args, usage_error = None, exc
    # like the wrapper: the rc files first, so that ONE_MAD_DEBUG may come from them
    wrapper_environment(paths, environ)
    debug_log = debug_log_path(paths, args, environ)
    ensure_stderr(debug_log)
    logs.setup(sys.stderr, debug=debug_log is not None)
    if args is None:
        print(f"one-vmm-exec: {usage_error}", file=sys.stderr)
        return 255
    names = {name for name, _ in args.options}
    if "help" in names:
        sys.stdout.write(USAGE)
        return 0
    if "version" in names:
        sys.stdout.write(f"one-vmm-exec {__version__}\n")
        return 0
    try:
        config = build_config(args, environ)
    except UsageError as exc:
        print(f"one-vmm-exec: {exc}", file=sys.stderr)
        return 255
    remotes_dir = os.path.join(config.paths.remotes, config.vmm_directory)
    if config.hypervisor not in KNOWN_HYPERVISORS and not os.path.isdir(remotes_dir):
        print(f"one-vmm-exec: warning: no remotes directory {remotes_dir} for "
              f"hypervisor {config.hypervisor!r}", file=sys.stderr)
    apply_priority(environ)
    try:
        os.chdir(paths.var)  # the wrapper's `cd $VAR_LOCATION`: local scripts run there
    except OSError:
        pass
    from vmm_exec.driver import run_driver

    return run_driver(config)
