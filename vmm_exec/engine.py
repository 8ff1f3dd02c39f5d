"""Running a plan: ``VmmAction#execute_steps`` and ``#run``, and the single answer.

Every accepted request ends here in exactly one answer (or, if cancelled, in
silence): whatever goes wrong while building or running a plan becomes a
FAILURE with a reason an operator can read. Rollback steps never raise.
"""

from __future__ import annotations

import logging
from typing import Callable, List, Optional, Tuple

from vmm_exec import message as messages
from vmm_exec import rubyisms
from vmm_exec.cancel import Cancelled, CancelScope
from vmm_exec.context import ActionContext, Services
from vmm_exec.message import MessageError
from vmm_exec.planning import plan_request
from vmm_exec.protocol import RESULT_FAILURE, RESULT_SUCCESS, Gate, Request, Writer
from vmm_exec.request import ActionError, BuildRequest, StepError
from vmm_exec.rollback import never_stop
from vmm_exec.runners import run_direct, run_ds, run_hook, run_tm, run_vmm, run_vnm
from vmm_exec.steps import DRIVER_NAMES, DirectCall, HookedCall, Immediate, Plan, Step, Sym

LOG = logging.getLogger(__name__)

__all__ = ["Services", "perform", "execute_plan", "StepRunner", "one_line"]


class StepRunner:
    """``execute_steps``: run, store infos, roll back, stop unless ``no_fail``."""

    def __init__(self, ctx: ActionContext) -> None:
        self.ctx = ctx

    def run_steps(self, steps: Tuple[Step, ...]) -> bool:
        ok = False
        for step in steps:
            self.ctx.scope.check()
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
            LOG.exception("%s %s: step %s crashed", self.ctx.action, self.ctx.msg_id, step.label)
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


def perform(services: Services, request: Request, scope: CancelScope, gate: Gate,
            well_formed: bool = False) -> None:
    """Carry out one request and send its single answer (none if cancelled).

    The payload is decoded here, in the action's own thread: the queue holds
    only the request line's text. ``well_formed``: the payload already passed
    the XML well-formedness check (the scheduler's HOST lookup ran it).
    """
    writer, config = services.writer, services.config
    action, msg_id = request.action, request.msg_id
    message: Optional[messages.Message] = None
    try:
        try:
            message = messages.decode(request.payload, well_formed=well_formed)
        except MessageError as exc:
            raise ActionError(f"Cannot perform {action}: {exc}") from exc
        planned = plan_request(BuildRequest(action, msg_id, message, config, request.payload),
                               services.hooks)
        if isinstance(planned, Immediate):
            answer(writer, gate, planned.action, msg_id, planned.result == RESULT_SUCCESS,
                   planned.info)
            return
        ctx = ActionContext(services, action, msg_id, message, scope, gate, request.payload)
        if isinstance(planned, Plan):
            ctx.forward = planned.main_action.upper() in config.delegate_actions
        if isinstance(planned, HookedCall):
            ok, info = execute_call_with_hooks(ctx, planned)
        elif isinstance(planned, DirectCall):
            ok, info = run_direct(ctx, planned)
        else:
            ok, info = execute_plan(ctx, planned)
        scope.check()
        answer(writer, gate, action, msg_id, ok, ctx.mask(info))
    except Cancelled:
        return
    except (ActionError, MessageError, StepError) as exc:
        if not scope.cancelled:
            answer(writer, gate, action, msg_id, False, one_line(str(exc)))
    except Exception as exc:  # noqa: BLE001 - every request gets its answer
        if not scope.cancelled:
            LOG.exception("%s %s: internal error", action, msg_id)
            answer(writer, gate, action, msg_id, False,
                   one_line(f"Internal error in the driver: {type(exc).__name__}: {exc}"))
    finally:
        if message is not None:
            message.dispose()  # freed now, not by the cyclic collector later


def one_line(text: str) -> str:
    """Answers are single lines: a multi-line reason would break the protocol."""
    return " ".join(text.split()) or "-"
