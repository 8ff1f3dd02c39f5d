"""The live migration (shared storage), and the hand-over to the stock script.

Shared system datastore (``DATASTORE/TEMPLATE/SHARED=YES``) between two
hosts: a live migration of memory and device state only. The steps:

1. checks that change nothing: the source domain (by name, then by UUID from
   there on), no job already running on it, the destination daemon answers,
   no *other* domain of the same name there (libvirt would refuse: FACTS 4a),
   not already active there; the options resolve with these bindings;
2. the migration record is written, then the snapshot metadata removed
   (libvirt refuses to migrate a domain with snapshots);
3. ``VIR_MIGRATE_LIVE`` plus the options: client-managed by default
   (``migrate3`` with our own connection to the destination, what ``virsh
   migrate`` without ``--p2p`` does, using the caller's credentials), or
   peer-to-peer with ``--p2p`` (``migrateToURI3``: the source daemon
   connects to the destination itself). The call runs in a thread while this
   one reports progress from ``jobStats()`` as ``INFO:`` lines, at most every
   ``VMM_EXEC_PROGRESS_INTERVAL`` seconds;
4. success: the snapshot metadata is defined on the destination and the
   record removed. Failure: :mod:`recovery`.

Anything else is the stock script's (a non-shared datastore, a datastore move
on the same host): see ``handover``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import libvirt

from . import record as records
from . import snapshots as snapmod
from .actiondata import ActionData
from .connection import ConnectError, Endpoint, call_bounded, describe_error, gone_ok
from .options import OptionError, Options
from .output import Output
from .profiles import Profile
from .recovery import Act, Outcome, Recovery, RecoveryResult, job_active, now_text
from .settings import Settings

# exit statuses
OK = 0
FAILED = 1  # failed, the VM runs on the source only (or nothing was changed)
OPERATOR = 2  # failed, and exactly one running copy could not be established


# --------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------

_MIB = 1024.0 * 1024.0


def format_progress(stats: Mapping[str, Any]) -> Optional[str]:
    """One line about a running migration job, or None when there is nothing to say."""
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) not in (
            libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED):
        return None
    total = int(stats.get("data_total") or stats.get("memory_total") or 0)
    remaining = int(stats.get("data_remaining", stats.get("memory_remaining", 0)) or 0)
    processed = int(stats.get("data_processed", stats.get("memory_processed", 0)) or 0)
    if total == 0 and processed == 0:
        return None  # the job has only just started: nothing to tell yet
    parts: List[str] = []
    if total > 0:
        done = max(0, min(total, total - remaining))
        parts.append(f"{100.0 * done / total:.0f}%")
    parts.append(f"{processed / _MIB:.1f} MiB sent")
    if total > 0:
        parts.append(f"{remaining / _MIB:.1f} of {total / _MIB:.1f} MiB remaining")
    bps = int(stats.get("memory_bps") or 0)
    if bps > 0:
        parts.append(f"{bps / _MIB:.1f} MiB/s")
    elapsed = stats.get("time_elapsed")
    if elapsed is not None:
        parts.append(f"{int(elapsed) / 1000.0:.0f} s elapsed")
    return ", ".join(parts)


class ProgressReporter:
    """Turns ``jobStats()`` samples into at most one line every ``interval`` s."""

    def __init__(self, label: str, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.interval = interval
        self.clock = clock
        self._last = clock()

    def update(self, stats: Mapping[str, Any]) -> Optional[str]:
        now = self.clock()
        if now - self._last < self.interval:
            return None
        text = format_progress(stats)
        if text is None:
            return None
        self._last = now
        return f"{self.label}: {text}"


# --------------------------------------------------------------------------------------
# The migration call
# --------------------------------------------------------------------------------------


@dataclass
class CallResult:
    ok: bool
    error: Optional[BaseException] = None
    elapsed: float = 0.0
    timed_out: bool = False


def run_call(dom: Any, dest: Endpoint, flags: int, params: Dict[str, Any], p2p: bool,
             reporter: ProgressReporter, out: Output, timeout: float = 0.0,
             poll: float = 0.5) -> CallResult:
    """Run the migration call in a thread; report progress; abort after ``timeout``."""
    box: Dict[str, Any] = {}

    def call() -> None:
        try:
            if p2p:
                dom.migrateToURI3(dest.uri, params, flags)
            else:
                dom.migrate3(dest.conn, params, flags)
            box["ok"] = True
        except BaseException as exc:  # handed to the recovery
            box["error"] = exc

    start = time.monotonic()
    thread = threading.Thread(target=call, name="libvirt-migrate", daemon=True)
    thread.start()
    aborted = False
    while True:
        thread.join(poll)
        if not thread.is_alive():
            break
        try:
            line = reporter.update(dom.jobStats())
        except libvirt.libvirtError:
            line = None
        if line:
            out.info(line)
        if timeout > 0 and not aborted and time.monotonic() - start > timeout:
            out.info(f"the migration has run for more than {timeout:g} s "
                     f"(VMM_EXEC_MIGRATE_TIMEOUT): aborting it")
            call_bounded(dom.abortJob, 5.0)
            aborted = True
    elapsed = time.monotonic() - start
    if box.get("ok"):
        return CallResult(ok=True, elapsed=elapsed)
    return CallResult(ok=False, error=box.get("error"), elapsed=elapsed, timed_out=aborted)


#: the stock script retries ``virsh migrate`` when libvirt refuses because of this
#: (e.g. a backup's block job): nothing has started, so trying again is safe
RETRY_ON = "active block job"
RETRY_PAUSE = 5.0


def with_retries(attempt: Callable[[], CallResult], tries: int, out: Output,
                 sleep: Callable[[float], None] = time.sleep) -> CallResult:
    """``attempt()`` again (up to ``tries`` in all, ``RETRY_PAUSE`` s apart) while
    libvirt refuses with an active block job, as the stock ``virsh_retry``."""
    result = attempt()
    for number in range(2, max(1, tries) + 1):
        if result.ok or result.error is None or RETRY_ON not in describe_error(result.error):
            break
        out.info(f"libvirt refused: {describe_error(result.error)}; trying again in "
                 f"{RETRY_PAUSE:g} s (attempt {number} of {tries})")
        sleep(RETRY_PAUSE)
        result = attempt()
    return result


# --------------------------------------------------------------------------------------
# The whole live migration
# --------------------------------------------------------------------------------------


@dataclass
class RunState:
    """What a signal handler needs to know about the migration in progress."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    phase: str = "checking"
    uuid: Optional[str] = None
    source_dom: Any = None
    record_path: Optional[str] = None
    log_path: Optional[str] = None
    exit_code: Optional[int] = None

    def set(self, **kwargs: Any) -> None:
        with self.lock:
            for key, value in kwargs.items():
                setattr(self, key, value)


@dataclass(frozen=True)
class Request:
    deploy_id: str
    dest_host: str
    src_host: str
    vm_id: str
    data: ActionData


class LiveMigration:
    """One ``migrate`` request over shared storage, from checks to recovery."""

    def __init__(self, req: Request, profile: Profile, settings: Settings, options: Options,
                 out: Output, state: RunState) -> None:
        self.req = req
        self.profile = profile
        self.settings = settings
        self.options = options
        self.out = out
        self.state = state
        keepalive = (settings.keepalive_interval, settings.keepalive_count)
        self.source = Endpoint(req.src_host, settings.libvirt_uri,
                               settings.connect_timeout, keepalive)
        self.dest = Endpoint(req.dest_host, settings.dest_uri(req.dest_host),
                             settings.connect_timeout, keepalive)
        self.what = req.deploy_id

    # -- messages -----------------------------------------------------------------
    def _fail(self, code: int, text: str) -> int:
        self.out.summary(text)
        return code

    def _prefix(self) -> str:
        return f"Migration of {self.what} from {self.req.src_host} to {self.req.dest_host}"

    # -- main ---------------------------------------------------------------------
    def run(self) -> int:
        try:
            return self._run()
        except (libvirt.libvirtError, ConnectError) as exc:
            # only the checks, before anything changes, let libvirt errors through
            if self.state.record_path is not None:
                raise
            return self._fail(FAILED, f"{self._prefix()} failed while checking both hosts: "
                                      f"{describe_error(exc)}. Nothing was changed.")

    def _run(self) -> int:
        src, dst, what = self.source, self.dest, self.what
        if not src.connect():
            return self._fail(FAILED, f"{self._prefix()} failed: cannot connect to libvirt on "
                                      f"{src.name} ({src.uri}): {src.error}. Nothing was changed.")
        dom = src.lookup_name(what)
        if dom is None:
            return self._not_on_source()
        uuid = dom.UUIDString()
        self.state.set(uuid=uuid)
        state = gone_ok(dom.state)
        if state is None or state[0] == libvirt.VIR_DOMAIN_SHUTOFF:
            return self._fail(FAILED, f"{self._prefix()} failed: {what} is not running on "
                                      f"{src.name}, there is nothing to live-migrate. "
                                      f"Nothing was changed.")
        if job_active(dom):
            return self._fail(FAILED, f"{self._prefix()} refused: a job is already running on "
                                      f"{what} on {src.name} (another migration?). Nothing "
                                      f"was changed.")
        paused_before = state[0] == libvirt.VIR_DOMAIN_PAUSED

        if not dst.connect():
            return self._fail(FAILED, f"{self._prefix()} failed: cannot connect to libvirt on "
                                      f"{dst.name} ({dst.uri}): {dst.error}. Nothing was "
                                      f"changed: {what} still runs on {src.name}.")
        clash = dst.lookup_name(what)
        if clash is not None and gone_ok(clash.UUIDString) not in (None, uuid):
            other = "running" if gone_ok(clash.isActive) else "defined, not running"
            return self._fail(FAILED, f"{self._prefix()} refused: another domain named {what} "
                                      f"(uuid {clash.UUIDString()}, {other}) already exists on "
                                      f"{dst.name}. Nothing was changed: {what} still runs on "
                                      f"{src.name} and that domain was not touched.")
        same = dst.lookup(uuid)
        if same is not None and gone_ok(same.isActive):
            return self._fail(OPERATOR, f"{self._prefix()} refused: {what} (uuid {uuid}) is "
                                        f"already active on {dst.name} while it is active on "
                                        f"{src.name}. Nothing was changed; an operator must "
                                        f"decide which copy to keep.")
        dest_defined_before = same is not None
        try:
            flags, params = self.options.resolve(libvirt)
        except OptionError as exc:
            return self._fail(FAILED, f"{self._prefix()} refused: {exc}. Nothing was changed.")

        # -- from here on, things change: record first -----------------------------
        try:
            snaps = snapmod.capture(dom)
        except snapmod.SnapshotError as exc:
            return self._fail(FAILED, f"{self._prefix()} failed: {exc}. Nothing was changed.")
        rec = records.Record(
            uuid=uuid, deploy_id=what, hypervisor=self.profile.name,
            source_host=src.name, dest_host=dst.name, source_uri=src.uri, dest_uri=dst.uri,
            paused_before=paused_before, dest_defined_before=dest_defined_before,
            snapshots=snaps)
        path = records.path_for(self.settings.state_dir, uuid)
        try:
            records.save(rec, path)
        except records.RecordError as exc:
            return self._fail(FAILED, f"{self._prefix()} failed: {exc}. Nothing was changed.")
        self.state.set(record_path=path, log_path=records.log_path_for(self.settings.state_dir,
                                                                         uuid),
                       source_dom=dom, phase="preparing")
        if len(snaps):
            try:
                snapmod.delete_metadata(dom, snaps)
            except snapmod.SnapshotError as exc:
                records.remove(path)
                self.state.set(record_path=None)
                return self._fail(FAILED, f"{self._prefix()} failed: {exc}. Nothing was "
                                          f"changed.")
            self.out.info(f"set aside the metadata of {len(snaps)} snapshot(s) "
                          f"({', '.join(snaps.names())}) of {what}; kept in {path}")

        # -- migrate ---------------------------------------------------------------
        self.out.info(f"migrating {what} (uuid {uuid}) from {src.name} to {dst.name}: "
                      f"{self.options.describe()}; destination {dst.uri}")
        for name, why in self.options.ignored:
            self.out.info(f"MIGRATE_OPTIONS: ignoring {name}: {why}")
        self.state.set(phase="migrating")
        reporter = ProgressReporter(f"{what} to {dst.name}", self.settings.progress_interval)
        result = with_retries(
            lambda: run_call(dom, dst, flags, params, self.options.p2p, reporter, self.out,
                             self.settings.migrate_timeout),
            self.settings.virsh_tries, self.out)
        if result.ok:
            landed = self._landed(uuid)
            if landed is not None:
                self.state.set(phase="finishing")
                return self._success(landed, rec, path, result.elapsed)
            error = ("libvirt reported success, but the domain is not running on "
                     f"{dst.name}")
        elif result.timed_out:
            error = (f"it did not finish within {self.settings.migrate_timeout:g} s "
                     f"(VMM_EXEC_MIGRATE_TIMEOUT) and was aborted")
        else:
            error = describe_error(result.error) if result.error else "unknown error"
        self.state.set(phase="recovering")
        self.out.info(f"migration failed after {result.elapsed:.1f} s: {error}")
        return self._recover(rec, path, error)

    def _not_on_source(self) -> int:
        """The domain is not on the source: maybe it already runs on the destination."""
        src, dst, what = self.source, self.dest, self.what
        if dst.connect():
            there = dst.lookup_name(what)
            if there is not None:
                st = gone_ok(there.state)
                if st is not None and st[0] == libvirt.VIR_DOMAIN_RUNNING:
                    self.out.summary(f"{what} is not on {src.name} but already runs on "
                                     f"{dst.name} (uuid {there.UUIDString()}): nothing to "
                                     f"migrate.")
                    return OK
        return self._fail(FAILED, f"{self._prefix()} failed: no domain {what} on {src.name} "
                                  f"({src.uri}). Nothing was changed.")

    def _landed(self, uuid: str) -> Any:
        """The destination's domain if it runs there (it should, after success)."""
        try:
            if not self.dest.connect():
                return None
            dom = self.dest.lookup(uuid)
            if dom is None:
                return None
            state = gone_ok(dom.state)
        except (libvirt.libvirtError, ConnectError):
            return None
        if state is None or state[0] not in (libvirt.VIR_DOMAIN_RUNNING,
                                             libvirt.VIR_DOMAIN_PAUSED):
            return None
        return dom

    def _success(self, dom: Any, rec: records.Record, path: str, elapsed: float) -> int:
        moved = ""
        if len(rec.snapshots):
            try:
                count = snapmod.redefine(dom, rec.snapshots)
            except snapmod.SnapshotError as exc:
                self.out.error(f"{exc}; the metadata is kept in {path}: run recover to "
                               f"define it on {self.dest.name}")
                self.out.summary(f"Migrated {self.what} from {self.source.name} to "
                                 f"{self.dest.name} in {elapsed:.1f} s, but its snapshot "
                                 f"metadata could not be defined there ({exc}); it is kept in "
                                 f"{path}.")
                self.state.set(phase="done")
                return OK
            moved = f"; moved {count} snapshot(s)"
        records.remove(path)
        self.state.set(phase="done", record_path=None)
        self.out.summary(f"Migrated {self.what} from {self.source.name} to {self.dest.name} "
                         f"in {elapsed:.1f} s ({self.options.describe()}){moved}.")
        return OK

    def _recover(self, rec: records.Record, path: str, error: str) -> int:
        def snapshots_back(_host: str) -> None:
            rec.snapshots = snapmod.SnapshotSet()
            try:
                records.save(rec, path)
            except records.RecordError:
                pass

        recovery = Recovery(
            self.source, self.dest, rec.uuid, self.what, self.out,
            paused_before=rec.paused_before, dest_defined_before=rec.dest_defined_before,
            abort_running_job=True, snapshots=rec.snapshots,
            job_wait=self.settings.job_wait, reconnect_wait=self.settings.reconnect_wait,
            on_snapshots_back=snapshots_back)
        result = recovery.run()
        code, text = conclude(result, self.what, path)
        if result.outcome is Outcome.DESTINATION:
            head = (f"{self._prefix()} reported an error ({error}) but completed")
        else:
            head = f"{self._prefix()} failed: {error}"
        self.state.set(phase="done")
        self.out.summary(f"{head}. Found: {result.found}. Done: {result.done_text()}. {text}")
        return code


def conclude(result: RecoveryResult, what: str,
             record_path: Optional[str]) -> Tuple[int, str]:
    """The migrate exit status and the closing sentences after a recovery; removes the
    record once the outcome is final and nothing is left to put back."""
    text = f"Now {now_text(result.outcome, result.final, what)}."
    pending = result.final.snapshots_pending
    if pending:
        tried = {Act.RESTORE_SNAPSHOTS_SOURCE, Act.REDEFINE_SNAPSHOTS_DEST}
        if tried & result.final.attempted:
            text += f" The metadata of {pending} snapshot(s) could not be put back"
        else:
            text += (f" The metadata of {pending} snapshot(s) waits until it is known where "
                     f"{what} runs")
        text += f"; it is kept in {record_path}: recover puts it back."
    elif result.outcome.settled and record_path:
        records.remove(record_path)
    code = {Outcome.SOURCE: FAILED, Outcome.DESTINATION: OK}.get(result.outcome, OPERATOR)
    return code, text
