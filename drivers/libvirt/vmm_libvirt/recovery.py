"""Recovery after a failed, cancelled or timed-out migration (or a crash mid-way).

The goal: exactly one running copy of the VM, on the source unless the
migration actually completed, and nothing half-made on the destination.

It works in rounds of three separate steps:

1. **inspect** both ends by domain UUID (never by name: a domain of the same
   name on the destination may be somebody else's): does it exist, is it
   active, running or paused and why, is it persistent, does a job run on it.
   A daemon that does not answer is "unreachable", which is an observation
   too. The result is an :class:`Observation`, plain data.
2. **decide**: :func:`decide` is a pure function of the observation (plus
   what was true before the migration and which acts were already tried);
   it returns the acts to do next, or the final :class:`Outcome`. The whole
   case table of libvirt's failure modes is in that one function and is
   unit-tested with fabricated observations.
3. **act**: each act is idempotent and tolerates libvirt cleaning up at the
   same time (a domain that vanished or already stopped is fine). An act that
   fails is reported and the recovery goes on; it never raises.

Then it inspects again, until :func:`decide` gives an outcome. Acts are
never repeated, so it always ends.

Cases and what :func:`decide` does (libvirt 9.0 behaviour, see the FACTS
measurements): a job still running on the source is aborted (after a failure
or cancel) or waited for (a stand-alone recovery: a peer-to-peer migration
outlives its client and may still complete); an incoming domain (paused, for
the migration) on the destination is destroyed; a definition left on the
destination that was not there before is undefined; a source left paused is
resumed -- unless its user had paused it before, and never while the
destination cannot be inspected (it might have started there); snapshot
metadata goes back to wherever the VM runs; when the destination runs and the
source is only a paused or stopped remnant, the migration completed:
the stale source copy is stopped. Two running copies are never resolved
automatically: the destination's is paused (oned believes the VM is on the
source after a failure) and an operator is needed.
"""

from __future__ import annotations

import enum
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, FrozenSet, List, Optional, Tuple

import libvirt

from .connection import ConnectError, Endpoint, describe_error, error_code, gone_ok
from .output import Output
from .snapshots import SnapshotError, SnapshotSet, redefine

# --------------------------------------------------------------------------------------
# Observations (plain data)
# --------------------------------------------------------------------------------------

RUNNING = "running"
PAUSED = "paused"
SHUTOFF = "shut off"
OTHER = "other"
ABSENT = "absent"


@dataclass(frozen=True)
class Side:
    """What was seen of the VM (by UUID) on one host."""

    host: str
    reachable: bool = True
    #: why the host's libvirt could not be asked (when not reachable)
    error: str = ""
    exists: bool = False
    active: bool = False
    #: RUNNING, PAUSED, SHUTOFF, OTHER (active, e.g. blocked) or ABSENT
    state: str = ABSENT
    #: why it is in that state, for the cases that matter: "migration" (paused
    #: for/by a migration; an incoming domain), "migration canceled" (running
    #: again after a failed migration), "migrated" (running after one), "user"
    #: (paused by its user) or ""
    reason: str = ""
    persistent: bool = False
    #: a job (the migration) is running on it
    job: bool = False

    @property
    def runs(self) -> bool:
        """Active and not paused: the guest executes here."""
        return self.reachable and self.active and self.state != PAUSED

    @property
    def paused(self) -> bool:
        return self.reachable and self.active and self.state == PAUSED

    @property
    def incoming(self) -> bool:
        """A half-made incoming domain: paused for a migration."""
        return self.paused and self.reason == "migration"


class Act(enum.Enum):
    ABORT_JOB = "abort the job on the source"
    WAIT_JOB = "wait for the job on the source to end"
    DESTROY_DEST = "destroy the incoming domain on the destination"
    UNDEFINE_DEST = "undefine the definition left on the destination"
    PAUSE_DEST = "pause the second running copy, on the destination"
    RESUME_SOURCE = "resume the paused source"
    DESTROY_SOURCE = "stop the stale paused copy on the source"
    RESTORE_SNAPSHOTS_SOURCE = "put the snapshot metadata back on the source"
    REDEFINE_SNAPSHOTS_DEST = "define the snapshot metadata on the destination"
    SETTLE = "give libvirt a moment to finish"


class Outcome(enum.Enum):
    #: exactly one copy, on the source; the destination checked and clean
    SOURCE = "source"
    #: exactly one copy, on the destination; the source checked
    DESTINATION = "destination"
    #: both copies ran (the destination's is paused now)
    BOTH = "both"
    #: the VM runs nowhere
    NONE = "none"
    #: one end could not be inspected, or something could not be removed
    UNKNOWN = "unknown"
    #: the job on the source did not end within the wait
    JOB_RUNNING = "job running"

    @property
    def settled(self) -> bool:
        """Exactly one copy runs (or is paused as its user left it), verified."""
        return self in (Outcome.SOURCE, Outcome.DESTINATION)


@dataclass(frozen=True)
class Observation:
    source: Side
    dest: Side
    #: the VM was paused by its user before the migration started
    paused_before: bool = False
    #: an inactive definition of this UUID was on the destination before
    dest_defined_before: bool = False
    #: abort a job still running on the source (after a failure or cancel);
    #: otherwise wait for it (stand-alone recovery: gotcha 9)
    abort_running_job: bool = True
    #: snapshots set aside and not yet put back anywhere
    snapshots_pending: int = 0
    #: acts already tried (each is tried at most once)
    attempted: FrozenSet[Act] = field(default=frozenset())


@dataclass(frozen=True)
class Decision:
    acts: Tuple[Act, ...] = ()
    outcome: Optional[Outcome] = None


def decide(obs: Observation) -> Decision:
    """The next acts, or the outcome, for what was observed. Pure."""
    s, d, tried = obs.source, obs.dest, obs.attempted

    def todo(*acts: Act) -> Tuple[Act, ...]:
        return tuple(a for a in acts if a not in tried)

    # 1. A job still runs on the source: it must end before anything is judged.
    if s.reachable and s.exists and s.job:
        if obs.abort_running_job and Act.ABORT_JOB not in tried:
            return Decision(acts=todo(Act.ABORT_JOB, Act.WAIT_JOB))
        if Act.WAIT_JOB not in tried:
            return Decision(acts=(Act.WAIT_JOB,))
        return Decision(outcome=Outcome.JOB_RUNNING)

    # 2. The source cannot be asked. An incoming (never started) copy on the
    # destination can still go, which leaves the source as the only candidate.
    if not s.reachable:
        if d.incoming and todo(Act.DESTROY_DEST):
            return Decision(acts=(Act.DESTROY_DEST,))
        return Decision(outcome=Outcome.UNKNOWN)

    leftover_def = (d.reachable and d.exists and not d.active and d.persistent
                    and not obs.dest_defined_before)

    # 3. The source is active and not paused: the guest runs there.
    if s.active and s.state != PAUSED:
        if d.runs:
            acts = todo(Act.PAUSE_DEST)
            return Decision(acts=acts) if acts else Decision(outcome=Outcome.BOTH)
        if d.paused and not d.incoming:
            # a copy paused for another reason (e.g. by an earlier recovery
            # that found two running copies): not ours to destroy
            return Decision(outcome=Outcome.BOTH)
        acts = ()
        if d.incoming:
            acts += todo(Act.DESTROY_DEST)
        if leftover_def:
            acts += todo(Act.UNDEFINE_DEST)
        if obs.snapshots_pending:
            acts += todo(Act.RESTORE_SNAPSHOTS_SOURCE)
        if acts:
            return Decision(acts=acts)
        if not d.reachable or d.active or leftover_def:
            return Decision(outcome=Outcome.UNKNOWN)
        return Decision(outcome=Outcome.SOURCE)

    # 4. The source is paused.
    if s.active and s.state == PAUSED:
        if d.runs:
            # the destination runs: the migration went through, the source is a
            # stale, frozen remnant (libvirt could not finish it: FACTS 5b/6b)
            acts = todo(Act.DESTROY_SOURCE)
            if obs.snapshots_pending:
                acts += todo(Act.REDEFINE_SNAPSHOTS_DEST)
            return Decision(acts=acts) if acts else Decision(outcome=Outcome.BOTH)
        if not d.reachable:
            # it might have started there: resuming could make two running copies
            return Decision(outcome=Outcome.UNKNOWN)
        if d.paused and not d.incoming:
            return Decision(outcome=Outcome.BOTH)
        acts = ()
        if d.incoming:
            acts += todo(Act.DESTROY_DEST)
        if leftover_def:
            acts += todo(Act.UNDEFINE_DEST)
        if not obs.paused_before:
            acts += todo(Act.RESUME_SOURCE)
        if obs.snapshots_pending:
            acts += todo(Act.RESTORE_SNAPSHOTS_SOURCE)
        if acts:
            return Decision(acts=acts)
        if d.active or leftover_def:
            return Decision(outcome=Outcome.UNKNOWN)
        if not obs.paused_before:
            return Decision(outcome=Outcome.NONE)  # the resume did not work
        return Decision(outcome=Outcome.SOURCE)  # paused, as its user left it

    # 5. The source is gone (or shut off).
    if not d.reachable:
        return Decision(outcome=Outcome.UNKNOWN)
    if d.runs or (d.paused and obs.paused_before and not d.incoming):
        # the migration completed (a paused VM arrives paused)
        if obs.snapshots_pending:
            acts = todo(Act.REDEFINE_SNAPSHOTS_DEST)
            if acts:
                return Decision(acts=acts)
        return Decision(outcome=Outcome.DESTINATION)
    if d.paused:
        # an incoming copy and no source: maybe libvirt is just resuming it
        acts = todo(Act.SETTLE)
        return Decision(acts=acts) if acts else Decision(outcome=Outcome.NONE)
    return Decision(outcome=Outcome.NONE)


# --------------------------------------------------------------------------------------
# Describing observations (for the messages)
# --------------------------------------------------------------------------------------


def describe_side(side: Side, what: str, incoming_here: bool = False) -> str:
    """What a side holds, e.g. "one-42 running on host01", "a paused incoming copy
    on host02" (``incoming_here``: the destination, where a domain paused for the
    migration is the half-made incoming one)."""
    host = side.host
    if not side.reachable:
        return f"{host} unreachable ({side.error})"
    if not side.exists:
        return f"nothing of {what} on {host}"
    job = ", its migration job still active" if side.job else ""
    if not side.active:
        kind = "a persistent definition" if side.persistent else "an inactive domain"
        return f"{kind} of {what} (shut off) on {host}{job}"
    if incoming_here and side.incoming:
        return f"a paused incoming copy on {host}{job}"
    if side.state == PAUSED:
        why = {"migration": " for the migration", "user": " by its user"}.get(side.reason, "")
        return f"{what} paused{why} on {host}{job}"
    note = {"migration canceled": " (libvirt resumed it after the failure)",
            "migrated": " (arrived by migration)"}.get(side.reason, "")
    return f"{what} running on {host}{note}{job}"


def is_clause(side: Side, what: str) -> str:
    """``describe_side`` as a sentence: "one-42 is paused for the migration on host01"."""
    text = describe_side(side, what)
    if text.startswith(f"{what} paused"):
        return f"{what} is{text[len(what):]}"
    if text.startswith(f"{what} running"):
        return f"{what} runs{text[len(what) + len(' running'):]}"
    return f"there is {text}"


def describe(obs: Observation, what: str) -> str:
    text = (f"{describe_side(obs.source, what)}, "
            f"{describe_side(obs.dest, what, incoming_here=True)}")
    if obs.snapshots_pending:
        text += f"; {obs.snapshots_pending} snapshots set aside"
    return text


def now_text(outcome: Outcome, obs: Observation, what: str) -> str:
    """The closing clause, to follow "Now ": what runs where."""
    s, d = obs.source, obs.dest
    if outcome is Outcome.SOURCE:
        if s.state == PAUSED:
            return f"{what} is on {s.host} only (paused, as before the migration)"
        return f"{what} runs on {s.host} only"
    if outcome is Outcome.DESTINATION:
        return f"{what} runs on {d.host} only"
    if outcome is Outcome.BOTH:
        return (f"{what} has run on both {s.host} and {d.host} ({describe_side(s, what)}, "
                f"{describe_side(d, what)}): an operator must decide which copy to keep")
    if outcome is Outcome.JOB_RUNNING:
        return (f"a job is still running on {what} on {s.host}; nothing was judged: run "
                f"recover again once it has ended")
    if outcome is Outcome.NONE:
        return f"{what} runs nowhere ({describe(obs, what)}): an operator is needed"
    # UNKNOWN
    if not s.reachable:
        return (f"{s.host} could not be checked ({s.error}), and there is "
                f"{describe_side(d, what, incoming_here=True)}: run recover once "
                f"{s.host}'s libvirt answers")
    if not d.reachable:
        if s.runs:
            return (f"{what} runs on {s.host}, but {d.host} could not be checked "
                    f"({d.error}): an incoming copy may be left there (paused; its "
                    f"libvirtd removes it when it restarts): run recover once {d.host}'s "
                    f"libvirt answers")
        return (f"{is_clause(s, what)}, and {d.host} could not be checked ({d.error}): "
                f"the VM might have started there, so it was not resumed; run recover once "
                f"{d.host}'s libvirt answers")
    return f"{describe(obs, what)}: an operator is needed"


# --------------------------------------------------------------------------------------
# Inspecting and acting (libvirt)
# --------------------------------------------------------------------------------------

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: OTHER,
    libvirt.VIR_DOMAIN_PAUSED: PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: OTHER,
    libvirt.VIR_DOMAIN_SHUTOFF: SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: OTHER,
    libvirt.VIR_DOMAIN_PMSUSPENDED: OTHER,
}


def _reason(state: int, reason: int) -> str:
    if state == libvirt.VIR_DOMAIN_PAUSED:
        if reason in (libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
                      getattr(libvirt, "VIR_DOMAIN_PAUSED_POSTCOPY_FAILED", -1)):
            return "migration"
        if reason == libvirt.VIR_DOMAIN_PAUSED_USER:
            return "user"
    if state == libvirt.VIR_DOMAIN_RUNNING:
        if reason == libvirt.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED:
            return "migration canceled"
        if reason == libvirt.VIR_DOMAIN_RUNNING_MIGRATED:
            return "migrated"
    return ""


_JOB_ACTIVE = (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED)


def job_active(dom: Any) -> bool:
    """A job runs on ``dom`` (False when gone or when the driver has no jobs).

    Only meaningful on a migration's source: on the destination, libvirt refuses
    job queries on an incoming domain ("migration statistics are available only on
    the source host").
    """
    try:
        info = dom.jobInfo()
    except libvirt.libvirtError as exc:
        if error_code(exc) in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID,
                               libvirt.VIR_ERR_NO_SUPPORT):
            return False
        raise
    return bool(info) and info[0] in _JOB_ACTIVE


def inspect(ep: Endpoint, uuid: str, jobs: bool = True) -> Side:
    """What ``ep`` holds of domain ``uuid`` (unreachable on any connection error);
    ``jobs``: also ask whether a job runs (the source only)."""
    if not ep.connect():
        return Side(ep.name, reachable=False, error=ep.error)
    try:
        dom = ep.lookup(uuid)
        if dom is None:
            return Side(ep.name)
        state = gone_ok(dom.state)
        persistent = gone_ok(dom.isPersistent)
        if state is None or persistent is None:
            return Side(ep.name)  # vanished while we looked
        code, why = int(state[0]), int(state[1])
        active = code != libvirt.VIR_DOMAIN_SHUTOFF
        return Side(ep.name, exists=True, active=active,
                    state=_STATES.get(code, OTHER), reason=_reason(code, why),
                    persistent=bool(persistent), job=jobs and active and job_active(dom))
    except (libvirt.libvirtError, ConnectError) as exc:
        return Side(ep.name, reachable=False, error=describe_error(exc))


@dataclass
class RecoveryResult:
    outcome: Outcome
    found: str
    done: List[str]
    final: Observation

    def done_text(self) -> str:
        return ", ".join(self.done) if self.done else "nothing was needed"


class Recovery:
    """Inspect -> decide -> act, in rounds, for domain ``uuid`` between two endpoints."""

    MAX_ROUNDS = 8
    SETTLE_SECONDS = 3.0
    DESTROY_WAIT = 10.0

    def __init__(self, source: Endpoint, dest: Endpoint, uuid: str, what: str,
                 out: Output, *, paused_before: bool = False,
                 dest_defined_before: bool = False, abort_running_job: bool = True,
                 snapshots: Optional[SnapshotSet] = None, job_wait: float = 60.0,
                 reconnect_wait: float = 10.0,
                 on_snapshots_back: Optional[Callable[[str], None]] = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.source = source
        self.dest = dest
        self.uuid = uuid
        self.what = what
        self.out = out
        self.paused_before = paused_before
        self.dest_defined_before = dest_defined_before
        self.abort_running_job = abort_running_job
        self.snapshots = snapshots if snapshots is not None else SnapshotSet()
        self.job_wait = job_wait
        self.reconnect_wait = reconnect_wait
        self.on_snapshots_back = on_snapshots_back
        self.sleep = sleep

    # -- inspect ------------------------------------------------------------------
    def observe(self, attempted: FrozenSet[Act], patient: bool = False) -> Observation:
        if patient:
            # a broken connection may be a daemon restarting (FACTS 7): give it a moment
            for ep in (self.source, self.dest):
                if not ep.alive():
                    ep.connect_retrying(self.reconnect_wait)
        return Observation(
            source=inspect(self.source, self.uuid),
            dest=inspect(self.dest, self.uuid, jobs=False),
            paused_before=self.paused_before, dest_defined_before=self.dest_defined_before,
            abort_running_job=self.abort_running_job,
            snapshots_pending=len(self.snapshots), attempted=attempted)

    # -- the loop -----------------------------------------------------------------
    def run(self) -> RecoveryResult:
        attempted: FrozenSet[Act] = frozenset()
        obs = self.observe(attempted, patient=True)
        found = describe(obs, self.what)
        self.out.info(f"recovery: found {found}")
        done: List[str] = []
        for _ in range(self.MAX_ROUNDS):
            decision = decide(obs)
            if decision.outcome is not None:
                return RecoveryResult(decision.outcome, found, done, obs)
            for act in decision.acts:
                text = self.do(act)
                self.out.info(f"recovery: {text}")
                done.append(text)
            attempted = attempted | frozenset(decision.acts)
            obs = self.observe(attempted)
        return RecoveryResult(Outcome.UNKNOWN, found, done, obs)

    # -- act ----------------------------------------------------------------------
    def do(self, act: Act) -> str:
        """Do ``act``; the text says what happened. Never raises."""
        handler = {
            Act.ABORT_JOB: self._abort_job,
            Act.WAIT_JOB: self._wait_job,
            Act.DESTROY_DEST: self._destroy_dest,
            Act.UNDEFINE_DEST: self._undefine_dest,
            Act.PAUSE_DEST: self._pause_dest,
            Act.RESUME_SOURCE: self._resume_source,
            Act.DESTROY_SOURCE: self._destroy_source,
            Act.RESTORE_SNAPSHOTS_SOURCE: lambda: self._snapshots_to(self.source, "restored"),
            Act.REDEFINE_SNAPSHOTS_DEST: lambda: self._snapshots_to(self.dest, "redefined"),
            Act.SETTLE: self._settle,
        }[act]
        try:
            return handler()
        except (libvirt.libvirtError, ConnectError, SnapshotError) as exc:
            return f"could not {act.value} ({describe_error(exc)})"

    def _domain(self, ep: Endpoint) -> Any:
        if not ep.connect():
            raise ConnectError(f"{ep.name} unreachable: {ep.error}")
        return ep.lookup(self.uuid)

    def _abort_job(self) -> str:
        dom = self._domain(self.source)
        if dom is None:
            return f"the job on {self.source.name} had already ended"
        try:
            dom.abortJob()
        except libvirt.libvirtError as exc:
            if error_code(exc) in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                return f"the job on {self.source.name} had already ended"
            raise
        return f"aborted the migration job on {self.source.name}"

    def _wait_job(self) -> str:
        start = time.monotonic()
        dom = self._domain(self.source)
        while dom is not None and job_active(dom):
            if time.monotonic() - start >= self.job_wait:
                return (f"the job on {self.source.name} was still running after "
                        f"{self.job_wait:g} s")
            self.sleep(0.25)
        return f"waited {time.monotonic() - start:.1f} s for the job on {self.source.name} to end"

    def _destroy_dest(self) -> str:
        dom = self._domain(self.dest)
        if dom is None or not gone_ok(dom.isActive):
            return f"the incoming domain on {self.dest.name} had already gone"
        gone_ok(dom.destroy)
        undefined = ""
        if gone_ok(dom.isPersistent) and not self.dest_defined_before:
            _undefine(dom)
            undefined = " and undefined"
        # libvirt removes a transient domain after destroy; wait for it (bounded)
        deadline = time.monotonic() + self.DESTROY_WAIT
        while time.monotonic() < deadline:
            again = self.dest.lookup(self.uuid)
            if again is None or not gone_ok(again.isActive):
                break
            self.sleep(0.2)
        return f"destroyed{undefined} the incoming domain on {self.dest.name}"

    def _undefine_dest(self) -> str:
        dom = self._domain(self.dest)
        if dom is None:
            return f"the definition on {self.dest.name} had already gone"
        if gone_ok(dom.isActive):
            return f"left the domain on {self.dest.name} alone: it became active"
        _undefine(dom)
        return f"undefined the definition left on {self.dest.name}"

    def _pause_dest(self) -> str:
        dom = self._domain(self.dest)
        if dom is None:
            return f"the copy on {self.dest.name} had already gone"
        gone_ok(dom.suspend)
        return (f"paused the second running copy on {self.dest.name} (oned believes the VM is "
                f"on {self.source.name})")

    def _resume_source(self) -> str:
        dom = self._domain(self.source)
        if dom is None:
            return f"{self.what} had gone from {self.source.name}: nothing to resume"
        state = gone_ok(dom.state)
        if state is None or state[0] != libvirt.VIR_DOMAIN_PAUSED:
            return f"{self.what} was no longer paused on {self.source.name}"
        gone_ok(dom.resume)
        return f"resumed {self.what} on {self.source.name}"

    def _destroy_source(self) -> str:
        dom = self._domain(self.source)
        if dom is None or not gone_ok(dom.isActive):
            return f"the stale copy on {self.source.name} had already gone"
        gone_ok(dom.destroy)
        return f"stopped the stale paused copy on {self.source.name} (the migration had completed)"

    def _snapshots_to(self, ep: Endpoint, verb: str) -> str:
        dom = self._domain(ep)
        if dom is None:
            return f"could not put the snapshot metadata back: {self.what} is not on {ep.name}"
        count = redefine(dom, self.snapshots)
        self.snapshots = SnapshotSet()
        if self.on_snapshots_back is not None:
            self.on_snapshots_back(ep.name)
        return f"{verb} {count} snapshot{'s' if count != 1 else ''} on {ep.name}"

    def _settle(self) -> str:
        self.sleep(self.SETTLE_SECONDS)
        return f"waited {self.SETTLE_SECONDS:g} s for libvirt to settle"


def _undefine(dom: Any) -> None:
    """Undefine a leftover definition without deleting files it shares with the source
    (NVRAM and TPM state may live on the shared datastore).

    Drivers that do not know the KEEP flags reject them ("unsupported flags"); they
    do not delete those files either, so the call is repeated without them.
    """
    keep = 0
    for name in ("VIR_DOMAIN_UNDEFINE_KEEP_NVRAM", "VIR_DOMAIN_UNDEFINE_KEEP_TPM"):
        keep |= int(getattr(libvirt, name, 0))
    metadata = int(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    for flags in (keep | metadata, metadata):
        try:
            gone_ok(functools.partial(dom.undefineFlags, flags))
            return
        except libvirt.libvirtError as exc:
            if error_code(exc) not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                raise
    gone_ok(dom.undefine)
