"""Running a plan: ``VmmAction#execute_steps`` and ``#run``, and the single answer.

Every accepted request ends here in exactly one answer (or, if cancelled, in
silence): whatever goes wrong while building or running a plan becomes a
FAILURE with a reason an operator can read. Rollback steps never raise.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from vmm_exec import message as messages
from vmm_exec import rubyisms
from vmm_exec.config import DriverConfig
from vmm_exec.hooks import Hook, HookedCall, weave
from vmm_exec.message import Message, MessageError
from vmm_exec.protocol import RESULT_FAILURE, RESULT_SUCCESS, Gate, Writer
from vmm_exec.rollback import harden, never_stop
from vmm_exec.runners import StepError, run_direct, run_ds, run_hook, run_tm, run_vmm, run_vnm
from vmm_exec.steps import DRIVER_NAMES, DirectCall, Immediate, Plan, Step, Sym
from vmm_exec.transports.api import Transport
from vmm_exec.transports.base import Cancelled, Tracker
from vmm_exec.transports.remote import update_remotes
from vmm_exec.transports.stream import SshStream, StreamCommand


class ActionError(Exception):
    """A request that cannot be carried out; the message is the FAILURE info."""


# Message fields copied into the step data (``get_data`` in Ruby).
DATA_FIELDS = {
    "host": "HOST",
    "deploy_id": "DEPLOY_ID",
    "checkpoint_file": "CHECKPOINT_FILE",
    "local_dfile": "LOCAL_DEPLOYMENT_FILE",
    "remote_dfile": "REMOTE_DEPLOYMENT_FILE",
    "dest_host": "MIGR_HOST",
    "disk_target_path": "DISK_TARGET_PATH",
    "tm_command": "TM_COMMAND",
}


class ActionContext:
    """State of one running action: ``@data``, streams, network views, output gate."""

    def __init__(self, config: DriverConfig, writer: Writer, msg_id: str, action: str,
                 message: Message, tracker: Tracker, gate: Gate, transport: Transport) -> None:
        self.config = config
        self.transport = transport
        self.writer = writer
        self.msg_id = msg_id
        self.action = action
        self.message = message
        self.tracker = tracker
        self.gate = gate
        self.data: Dict[str, Optional[str]] = {}
        for name, path in DATA_FIELDS.items():
            if message.element(path) is not None:
                self.data[name] = message.text(path)
        self.data["vm"] = rubyisms.strict_encode64(
            message.element_xml("VM").encode("utf-8", "surrogateescape"))
        self._streams: Dict[bool, StreamCommand] = {}
        self._vnm: Dict[bool, Tuple[list, str]] = {}
        # -d names the Ruby method (attach_disk), not the protocol word (ATTACHDISK)
        self.forward = False

    # -- data ---------------------------------------------------------------
    @property
    def default_timeout(self) -> Optional[float]:
        """The -w timeout where Ruby applies none (network, tm, ds); default mode bounds all."""
        return None if self.config.strict else self.config.timeout

    def value(self, name: str) -> str:
        """A symbol's value, ``nil.to_s`` (empty) when unknown."""
        value = self.data.get(name)
        return "" if value is None else value

    def log(self, message: str, all_lines: bool = True) -> None:
        self.writer.log(self.msg_id, message, all_lines, self.gate)

    def hook_data(self) -> Dict[str, Optional[str]]:
        data = dict(self.data)
        data["vm_id"] = self.msg_id
        data["failed_info_text"] = rubyisms.strip(self.data.get("failed_info") or "")
        return data

    # -- resources ----------------------------------------------------------
    def vnm_view(self, destination: bool) -> Tuple[list, str]:
        if destination not in self._vnm:
            self._vnm[destination] = self.message.vnm_view()
        return self._vnm[destination]

    def stream(self, destination: bool) -> StreamCommand:
        """The action's persistent shell on the host (or the migration target)."""
        if destination and not self.value("dest_host"):
            raise StepError("this step runs on the migration target but MIGR_HOST is empty")
        if destination not in self._streams:
            host = self.value("dest_host" if destination else "host")

            def opener(h: str, shell: str, forward: bool) -> object:
                return self.transport.open_stream(self.tracker, h, shell, forward)

            killer = None
            if not self.config.strict:
                def killer(pgid: int, h: str = host) -> None:
                    self.transport.kill_remote(h, pgid)

            stream = SshStream(host, self.config.shell, opener,  # type: ignore[arg-type]
                               self.tracker, forward=self.forward, remote_killer=killer,
                               identify_timeout=self.default_timeout)

            def refresh(h: str = host) -> None:
                update_remotes(self.transport, self.tracker, h, self.config.scripts_remote_dir,
                               self.config.paths.remotes_for_update, self.log)

            self._streams[destination] = StreamCommand(
                stream, self.config.scripts_remote_dir, self.log, refresh,
                reconnect=not self.config.strict)
        return self._streams[destination]

    def close(self) -> None:
        for command in self._streams.values():
            try:
                command.close()
            except Exception:  # noqa: BLE001 - closing must never fail an action
                pass


class StepRunner:
    """``execute_steps``: run, store infos, roll back, stop unless ``no_fail``."""

    def __init__(self, ctx: ActionContext) -> None:
        self.ctx = ctx

    def run_steps(self, steps: Tuple[Step, ...]) -> bool:
        ok = False
        for step in steps:
            self.ctx.tracker.check()
            ok, info = self.run_one(step)
            key = f"hook_{step.info_key}" if step.driver == "hook" else step.info_key
            self.ctx.data[key] = rubyisms.strip(info)
            name = DRIVER_NAMES[step.driver]
            if not ok:
                self.ctx.data["failed_step"] = step.label
                if step.fail_actions:
                    self.rollback(step.fail_actions)
                self.ctx.data["failed_info"] = info
                self.ctx.log(f"Failed to execute {name} operation: {step.action}.")
                if not step.no_fail:
                    break
                ok = True
            else:
                self.ctx.log(f"Successfully execute {name} operation: {step.action}.")
        return ok

    def rollback(self, steps: Tuple[Step, ...]) -> None:
        """Fail actions: never raise, so the failure being handled is still answered.

        In default mode a failing rollback step does not stop the rollback.
        """
        if not self.ctx.config.strict:
            steps = never_stop(steps)
        try:
            self.run_steps(steps)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001
            self.ctx.log(f"Rollback step failed: {exc}")

    def run_one(self, step: Step) -> Tuple[bool, str]:
        try:
            if step.driver == "vmm":
                return run_vmm(self.ctx, step)
            if step.driver == "vnm":
                return run_vnm(self.ctx, step)
            if step.driver == "hook":
                return run_hook(self.ctx, step)
            words = [self.ctx.value(p.name) if isinstance(p, Sym) else p for p in step.parameters]
            if step.driver == "tm":
                return run_tm(self.ctx, words, step.stdin)
            return run_ds(self.ctx, words, step.stdin)
        except StepError as exc:
            return False, str(exc)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - a crashing step fails, and is rolled back
            traceback.print_exc()
            return False, one_line(f"Internal error in the driver: {type(exc).__name__}: {exc}")


def answer(ctx_writer: Writer, gate: Gate, action: str, msg_id: str, ok: bool,
           info: Optional[str]) -> None:
    ctx_writer.send(action, RESULT_SUCCESS if ok else RESULT_FAILURE, msg_id, info, gate)


def run_hooks_around(ctx: ActionContext, runner: StepRunner, pre: Tuple[Step, ...],
                     body: Callable[[], bool], post: Tuple[Step, ...],
                     fail: Tuple[Step, ...]) -> bool:
    """Pre hooks (a failure vetoes the action: nothing else runs, not even fail
    hooks, as there is nothing to revert), the body, then post or fail hooks,
    whose outcome never changes the result."""
    if pre and not runner.run_steps(pre):
        return False
    ok = body()
    after = post if ok else fail
    if after:
        saved = {k: ctx.data.get(k) for k in ("failed_info", "failed_step")}
        runner.rollback(after)
        ctx.data.update(saved)
    return ok


def execute_plan(ctx: ActionContext, plan: Plan) -> Tuple[bool, str]:
    """``VmmAction#run``: the steps (with any hooks), then the answer's info."""
    runner = StepRunner(ctx)
    try:
        ok = run_hooks_around(ctx, runner, plan.pre_hooks,
                              lambda: runner.run_steps(plan.steps),
                              plan.post_hooks, plan.fail_hooks)
    finally:
        ctx.close()
    info = "" if plan.extra_info is None else plan.extra_info + " "
    if not ok:
        info += ctx.data.get("failed_info") or "-"
    else:
        main = ctx.data.get(f"{plan.main_action}_info")
        if main is not None:
            info += main
    return ok, info


def effective(plan: Union[Plan, DirectCall], config: DriverConfig,
              hooks: Sequence[Hook]) -> Union[Plan, DirectCall, HookedCall]:
    """What actually runs: the stock plan, default mode's rollbacks, the hooks."""
    if isinstance(plan, Plan) and not config.strict:
        plan = harden(plan)
    return weave(plan, hooks, config.hypervisor)


def execute_call_with_hooks(ctx: ActionContext, hooked: HookedCall) -> Tuple[bool, str]:
    """A one-call action with hooks: the call's own outcome is the answer."""
    runner = StepRunner(ctx)
    outcome: List[Tuple[bool, str]] = []

    def body() -> bool:
        outcome.append(run_direct(ctx, hooked.call))
        return outcome[-1][0]

    try:
        ok = run_hooks_around(ctx, runner, hooked.pre_hooks, body, hooked.post_hooks,
                              hooked.fail_hooks)
    finally:
        ctx.close()
    if not outcome:
        return False, ctx.data.get("failed_info") or "-"
    return ok, outcome[-1][1]


Builder = Callable[["BuildRequest"], object]


@dataclass(frozen=True)
class BuildRequest:
    """What an action builder gets: the decoded message and the driver's settings.

    ``payload`` is the base64 text as received (some scripts get it verbatim);
    ``explain`` builds without reading files (the deployment is a placeholder).
    """

    action: str
    msg_id: str
    message: Message
    config: DriverConfig
    payload: str
    explain: bool = False


def perform(action: str, msg_id: str, payload: str, config: DriverConfig, writer: Writer,
            tracker: Tracker, gate: Gate, transport: Transport,
            hooks: Sequence[Hook] = (), message: Optional[Message] = None) -> None:
    """Carry out one request and send its single answer (none if cancelled).

    ``message`` is the payload already decoded (by the scheduler's host lookup).
    """
    from vmm_exec.actions import build

    try:
        if message is None:
            try:
                message = messages.decode(payload)
            except MessageError as exc:
                raise ActionError(f"Cannot perform {action}: {exc}") from exc
        request = BuildRequest(action, msg_id, message, config, payload)
        plan = build(request)
        if isinstance(plan, Immediate):
            answer(writer, gate, plan.action, msg_id, plan.result == RESULT_SUCCESS, plan.info)
            return
        ctx = ActionContext(config, writer, msg_id, action, message, tracker, gate, transport)
        if isinstance(plan, Plan):
            ctx.forward = plan.main_action.upper() in config.delegate_actions
        woven = effective(plan, config, hooks)
        if isinstance(woven, HookedCall):
            ok, info = execute_call_with_hooks(ctx, woven)
        elif isinstance(woven, DirectCall):
            ok, info = run_direct(ctx, woven)
        else:
            ok, info = execute_plan(ctx, woven)
        tracker.check()
        answer(writer, gate, action, msg_id, ok, info)
    except Cancelled:
        return
    except (ActionError, MessageError, StepError) as exc:
        if not tracker.cancelled:
            answer(writer, gate, action, msg_id, False, one_line(str(exc)))
    except Exception as exc:  # noqa: BLE001 - every request gets its answer
        if not tracker.cancelled:
            traceback.print_exc()
            answer(writer, gate, action, msg_id, False,
                   one_line(f"Internal error in the driver: {type(exc).__name__}: {exc}"))


def one_line(text: str) -> str:
    """Answers are single lines: a multi-line reason would break the protocol."""
    return " ".join(text.split()) or "-"
