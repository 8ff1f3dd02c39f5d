"""The entry scripts: argv, stdin, signals, exit statuses.

``migrate DEPLOY_ID DEST_HOST SRC_HOST VMID HOST`` with ``VMM_DRIVER_ACTION_DATA``
on stdin, exactly like the stock ``vmm/kvm/migrate``. Exit 0: migrated (or
found migrated); 1: failed, the VM runs on the source only (or nothing was
changed); 2: failed and exactly one running copy could not be established
(the message says what runs where; an operator is needed); 128+N: stopped by
signal N, recovery continues in the background.

Cancel and timeout: the driver sends TERM to the script's process group and
KILL one or two seconds later. The migration therefore runs in a worker
thread and the main thread only waits for it and handles SIGTERM, SIGINT and
SIGHUP: it aborts the migration job on the source at once (bounded to half a
second), starts ``recover`` for this migration in a new session (a fresh
process, not a fork of this one, which holds libvirt connections) so that
the recovery survives the KILL, says so, and exits.

``recover [--hypervisor HV] VM SRC_HOST DEST_HOST`` (VM: deploy id or UUID),
for an operator or a fail hook after a crash mid-migration: it finds the
domain on both hosts, waits for a job still running on the source to end
(a peer-to-peer migration outlives its client), then cleans up the other
side. ``recover --record FILE --abort --detached`` is the form ``migrate``
starts on a signal. Exit 0 when exactly one copy runs (the message says
where), 2 when that could not be established, 1 for usage or configuration
errors (nothing touched).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

from . import actiondata, options, profiles, settings
from .handover import exec_stock, stock_script
from .output import SYSLOG_TAG, Output

FAILED = 1
OPERATOR = 2
HYPERVISOR_ENV = "VMM_EXEC_HYPERVISOR"
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
ABORT_BUDGET = 0.5  # seconds the abort on a signal may take

_HOST_RE = re.compile(r"^[A-Za-z0-9_\[][A-Za-z0-9_.:@%\[\]-]*$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                      r"[0-9a-fA-F]{12}$")


def valid_host(name: str) -> bool:
    """A host name that cannot change the meaning of a URI template."""
    return bool(_HOST_RE.match(name))


def resolve_profile(name: str, out: Output) -> profiles.Profile:
    profile = profiles.lookup(name) if name else None
    if profile is None:
        if name:
            out.info(f"hypervisor {name!r} is not a known profile; using "
                     f"{profiles.DEFAULT!r} (set {HYPERVISOR_ENV} to choose)")
        profile = profiles.PROFILES[profiles.DEFAULT]
    if profile.live_migration and not profile.tested:
        out.info(f"the {profile.name} profile is untested")
    return profile


# --------------------------------------------------------------------------------------
# migrate
# --------------------------------------------------------------------------------------

USAGE = ("usage: migrate DEPLOY_ID DEST_HOST SRC_HOST VMID [HOST], with "
         "VMM_DRIVER_ACTION_DATA on stdin")


def migrate_main(argv: Sequence[str], stdin: bytes, script_dir: str,
                 stderr: Optional[IO[str]] = None, install_signals: bool = True) -> int:
    """The ``migrate`` entry point. Returns the exit status (never raises)."""
    out = Output(stderr if stderr is not None else sys.stderr)
    cancel = threading.Event()
    received: List[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if not received:
            received.append(signum)
        cancel.set()

    if install_signals:
        for sig in SIGNALS:
            signal.signal(sig, on_signal)

    if len(argv) < 4:
        out.summary(USAGE)
        return FAILED
    deploy_id, dest_host, src_host, vm_id = argv[0], argv[1], argv[2], argv[3]
    prefix = f"Migration of {deploy_id} from {src_host} to {dest_host}"
    try:
        data = actiondata.parse(stdin)
    except actiondata.ActionDataError as exc:
        out.summary(f"{prefix} failed: {exc}. Nothing was changed.")
        return FAILED
    for host in (dest_host, src_host):
        if not valid_host(host):
            out.summary(f"{prefix} refused: invalid host name {host!r}. Nothing was changed.")
            return FAILED
    profile = resolve_profile(
        actiondata.hypervisor_name(data, os.environ.get(HYPERVISOR_ENV, "")), out)
    if not profile.live_migration:
        out.summary(f"{prefix} refused: {profile.refusal} Nothing was changed.")
        return FAILED

    # the stock script's cases: non-shared storage, datastore move on the same host
    if src_host == dest_host or not data.shared:
        why = ("source and destination are the same host (a system datastore move)"
               if src_host == dest_host else
               "the system datastore is not shared (DATASTORE/TEMPLATE/SHARED is not YES): "
               "the disks are copied")
        stock = stock_script(profile, script_dir)
        if stock is None or not os.access(stock, os.X_OK):
            out.summary(f"{prefix} failed: {why}, which is the stock script's job, but "
                        f"{stock or 'the ' + profile.name + ' profile'} has no executable "
                        f"stock migrate script. Nothing was changed.")
            return FAILED
        if cancel.is_set():
            return _cancelled_early(out, prefix, received[0], deploy_id, src_host)
        out.info(f"{why}: handing over to the stock script {stock}")
        try:
            exec_stock(stock, list(argv), stdin)
        except OSError as exc:
            out.summary(f"{prefix} failed: cannot run {stock}: {exc}. Nothing was changed.")
        return FAILED

    try:
        conf = settings.load(profile, script_dir)
        opts = options.parse(conf.migrate_options,
                             options.per_vm_options(data.auto_converge, data.compressed))
    except (settings.SettingsError, options.OptionError) as exc:
        if cancel.is_set():  # a TERM to our process group also stops bash
            return _cancelled_early(out, prefix, received[0], deploy_id, src_host)
        out.summary(f"{prefix} refused: {exc}. Nothing was changed.")
        return FAILED
    if cancel.is_set():
        return _cancelled_early(out, prefix, received[0], deploy_id, src_host)
    if conf.sources:
        out.debug("configuration from " + ", ".join(conf.sources))

    try:
        from . import migration
    except ImportError as exc:
        out.summary(f"{prefix} failed: the libvirt Python bindings are missing on this host "
                    f"({exc}; Debian: apt install python3-libvirt). Nothing was changed.")
        return FAILED

    state = migration.RunState()
    req = migration.Request(deploy_id=deploy_id, dest_host=dest_host, src_host=src_host,
                            vm_id=vm_id, data=data)
    job = migration.LiveMigration(req, profile, conf, opts, out, state)

    def work() -> None:
        try:
            state.exit_code = job.run()
        except Exception as exc:  # the one answer must still be given
            out.summary(f"{prefix} failed: unexpected error {type(exc).__name__}: {exc}. "
                        f"Run recover to check where {deploy_id} runs.")
            state.exit_code = OPERATOR

    worker = threading.Thread(target=work, name="migrate", daemon=True)
    worker.start()
    while worker.is_alive():
        if cancel.wait(0.2):
            return _cancel(out, prefix, received[0], state, worker, script_dir, deploy_id,
                           src_host)
        worker.join(0.05)
    return state.exit_code if state.exit_code is not None else OPERATOR


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _cancelled_early(out: Output, prefix: str, signum: int, what: str, src: str) -> int:
    out.summary(f"{prefix} cancelled ({_signame(signum)}) before anything was changed: "
                f"{what} still runs on {src}.")
    return 128 + signum


def _cancel(out: Output, prefix: str, signum: int, state: Any, worker: threading.Thread,
            script_dir: str, what: str, src: str) -> int:
    """On a signal: abort the job, start the recovery in its own session, say so."""
    if state.phase in ("finishing", "done"):
        worker.join(0.5)  # the VM is on the destination; only bookkeeping is left
    with state.lock:
        phase, dom, record_path, log_path = (state.phase, state.source_dom,
                                             state.record_path, state.log_path)
        finished = state.exit_code is not None
    if finished:
        return int(state.exit_code)
    if record_path is None:
        return _cancelled_early(out, prefix, signum, what, src)
    done = []
    if dom is not None and phase in ("migrating", "recovering"):
        from .connection import call_bounded, describe_error

        ok, _res, err = call_bounded(dom.abortJob, ABORT_BUDGET)
        if not ok:
            done.append(f"the abort of the job on {src} did not answer within "
                        f"{ABORT_BUDGET:g} s")
        elif err is not None:
            done.append(f"no job to abort on {src} ({describe_error(err)})")
        else:
            done.append(f"aborted the migration job on {src}")
    try:
        pid = spawn_recovery(script_dir, record_path)
        done.append(f"recovery continues in the background (pid {pid}; syslog tag "
                    f"{SYSLOG_TAG}, log {log_path})")
    except OSError as exc:
        done.append(f"the background recovery could not be started ({exc}): run "
                    f"{os.path.join(script_dir, 'recover')} --record {record_path}")
    if phase == "finishing":
        # the migration itself succeeded: the VM runs on the destination
        out.summary(f"{prefix} succeeded, but was cancelled ({_signame(signum)}) while "
                    f"defining the snapshot metadata there: " + "; ".join(done) + ".")
        return 0
    out.summary(f"{prefix} cancelled ({_signame(signum)}) while {phase}: "
                + "; ".join(done) + ".")
    return 128 + signum


def spawn_recovery(script_dir: str, record_path: str) -> int:
    """Start ``recover --record FILE --abort --detached`` in a new session."""
    argv = [sys.executable, os.path.join(script_dir, "recover"), "--record", record_path,
            "--abort", "--detached"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, close_fds=True,
                            start_new_session=True, cwd="/")
    return proc.pid


# --------------------------------------------------------------------------------------
# recover
# --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"recover: {message}\n")
        raise SystemExit(FAILED)


def recover_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="recover", description=(
        "Find where a VM really runs after a failed or interrupted live migration and "
        "clean up the other side, so that exactly one copy runs. Run it on the source "
        "host (LIBVIRT_URI), or give --source-uri."))
    p.add_argument("vm", nargs="?", help="deploy id (e.g. one-42) or domain UUID")
    p.add_argument("source_host", nargs="?", help="the migration's source host")
    p.add_argument("dest_host", nargs="?", help="the migration's destination host")
    p.add_argument("--hypervisor", default="", help="kvm (default), qemu, xen, ...")
    p.add_argument("--source-uri", default="", help="libvirt URI of the source "
                   "(default: LIBVIRT_URI from the rc files)")
    p.add_argument("--dest-uri", default="", help="libvirt URI of the destination "
                   "(default: VMM_EXEC_DEST_URI / QEMU_PROTOCOL with the host)")
    p.add_argument("--record", default="", help="a migration record (as left by migrate)")
    p.add_argument("--abort", action="store_true",
                   help="abort a job running on the source instead of waiting for it")
    p.add_argument("--wait", type=float, default=None,
                   help="seconds to wait for a running job to end (VMM_EXEC_JOB_WAIT)")
    p.add_argument("--detached", action="store_true",
                   help="log to syslog and the record's log file (no stderr)")
    return p


def recover_main(argv: Sequence[str], script_dir: str,
                 stderr: Optional[IO[str]] = None) -> int:
    """The ``recover`` entry point. Returns the exit status."""
    args = recover_parser().parse_args(list(argv))
    outs = [Output(stderr if stderr is not None else sys.stderr)]
    try:
        return _recover(args, script_dir, outs)
    finally:
        outs[-1].close()


def _recover(args: argparse.Namespace, script_dir: str, outs: List[Output]) -> int:
    out = outs[-1]
    try:  # everything below needs libvirt
        from . import migration
        from . import record as records
        from .connection import Endpoint
        from .recovery import Recovery, inspect
        from .snapshots import SnapshotSet
    except ImportError as exc:
        out.summary(f"Recovery impossible: the libvirt Python bindings are missing on this "
                    f"host ({exc}; Debian: apt install python3-libvirt).")
        return FAILED

    rec: Optional[records.Record] = None
    if args.record:
        try:
            rec = records.load(args.record)
        except records.RecordError as exc:
            out.summary(f"Recovery impossible: {exc}.")
            return FAILED
    elif not (args.vm and args.source_host and args.dest_host):
        out.summary("usage: recover [--hypervisor HV] VM SOURCE_HOST DEST_HOST "
                    "(or --record FILE)")
        return FAILED
    vm = rec.deploy_id if rec else args.vm
    src_host = rec.source_host if rec else args.source_host
    dest_host = rec.dest_host if rec else args.dest_host
    for host in (src_host, dest_host):
        if not valid_host(host):
            out.summary(f"Recovery of {vm} refused: invalid host name {host!r}.")
            return FAILED
    hv = args.hypervisor or (rec.hypervisor if rec else os.environ.get(HYPERVISOR_ENV, ""))
    profile = resolve_profile(hv, out)
    if not profile.live_migration:
        out.summary(f"Recovery of {vm} refused: {profile.refusal}")
        return FAILED
    try:
        conf = settings.load(profile, script_dir)
    except settings.SettingsError as exc:
        out.summary(f"Recovery of {vm} refused: {exc}.")
        return FAILED
    record_path: Optional[str] = args.record or None
    if args.detached:
        # the migrate process that started us is gone, and its stderr with it
        state_dir = os.path.dirname(record_path) if record_path else conf.state_dir
        log_file = records.log_path_for(state_dir, rec.uuid if rec else vm)
        out.close()
        out = Output(None, syslog=True, log_file=log_file)
        outs.append(out)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    keepalive = (conf.keepalive_interval, conf.keepalive_count)
    src_uri = args.source_uri or (rec.source_uri if rec else conf.libvirt_uri)
    dst_uri = args.dest_uri or (rec.dest_uri if rec else conf.dest_uri(dest_host))
    src = Endpoint(src_host, src_uri, conf.connect_timeout, keepalive)
    dst = Endpoint(dest_host, dst_uri, conf.connect_timeout, keepalive)

    if rec is not None:
        uuid = rec.uuid
    else:
        resolved, status = _resolve_uuid(vm, src, dst, conf.state_dir, out)
        if resolved is None:
            return status
        uuid = resolved
        found = records.find(conf.state_dir, uuid)
        if found:
            try:
                rec = records.load(found)
                record_path = found
                out.info(f"using the migration record {found}")
            except records.RecordError as exc:
                out.info(f"ignoring {found}: {exc}")
    what = rec.deploy_id if rec else (uuid if _UUID_RE.match(vm) else vm)
    paused_before = rec.paused_before if rec else False
    if rec is None:
        # without a record, a VM its user paused is one to leave paused
        first = inspect(src, uuid)
        if first.paused and first.reason == "user":
            paused_before = True
            out.info(f"{what} is paused by its user on {src_host}: it stays paused")

    def snapshots_back(_host: str) -> None:
        if rec is not None and record_path:
            rec.snapshots = SnapshotSet()
            try:
                records.save(rec, record_path)
            except records.RecordError:
                pass

    recovery = Recovery(
        src, dst, uuid, what, out,
        paused_before=paused_before,
        dest_defined_before=rec.dest_defined_before if rec else False,
        abort_running_job=args.abort,
        snapshots=rec.snapshots if rec else SnapshotSet(),
        job_wait=args.wait if args.wait is not None else conf.job_wait,
        reconnect_wait=conf.reconnect_wait, on_snapshots_back=snapshots_back)
    result = recovery.run()
    _code, text = migration.conclude(result, what, record_path)
    out.summary(f"Recovery of {what} (uuid {uuid}) between {src_host} and {dest_host}: "
                f"Found: {result.found}. Done: {result.done_text()}. {text}")
    return 0 if result.outcome.settled else OPERATOR


def _resolve_uuid(vm: str, src: Any, dst: Any, state_dir: str,
                  out: Output) -> Tuple[Optional[str], int]:
    """The UUID of ``vm`` (a UUID already, a record's, or looked up by name), or None
    and the exit status."""
    from . import record as records

    if _UUID_RE.match(vm):
        return vm.lower(), 0
    found = records.find(state_dir, vm)
    if found:
        try:
            return records.load(found).uuid, 0
        except records.RecordError:
            pass
    uuids: Dict[str, str] = {}
    for ep in (src, dst):
        if ep.connect():
            dom = ep.lookup_name(vm)
            if dom is not None:
                uuids[ep.name] = dom.UUIDString()
        else:
            out.info(f"{ep.name} unreachable: {ep.error}")
    if len(set(uuids.values())) > 1:
        out.summary(f"Recovery of {vm} refused: the name belongs to different domains "
                    + ", ".join(f"(uuid {u} on {h})" for h, u in uuids.items())
                    + "; give the UUID.")
        return None, FAILED
    if not uuids:
        unreachable = [ep.name for ep in (src, dst) if ep.conn is None]
        if unreachable:
            out.summary(f"Recovery of {vm}: not found on the reachable host(s); "
                        f"{' and '.join(unreachable)} could not be checked.")
        else:
            out.summary(f"Recovery of {vm}: found on neither {src.name} nor {dst.name} "
                        f"(it runs nowhere, or give its UUID if it was renamed).")
        return None, OPERATOR
    return next(iter(uuids.values())), 0
