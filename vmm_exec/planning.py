"""What actually runs for a request: the stock plan, default mode's rollbacks, the hooks.

One function builds it, for the engine (which runs it) and for ``explain``
(which prints it), so the printed tree can never drift from the executed one.
"""

from __future__ import annotations

from typing import Sequence, Union

from vmm_exec.actions import build
from vmm_exec.config import DriverConfig
from vmm_exec.hooks import Hook, weave
from vmm_exec.quoting import host_problem
from vmm_exec.request import ActionError, BuildRequest
from vmm_exec.rollback import harden
from vmm_exec.steps import DirectCall, HookedCall, Immediate, Plan

Effective = Union[Plan, DirectCall, HookedCall]

# a host name ssh would read as an option, or that is no host name, fails the request
# before anything runs (CLEANUP's steps are all no_fail: it would answer SUCCESS)
HOST_FIELDS = ("HOST", "MIGR_HOST")


def effective(plan: Union[Plan, DirectCall], config: DriverConfig,
              hooks: Sequence[Hook]) -> Effective:
    """A stock plan made effective: default-mode rollbacks (not in strict mode), then hooks."""
    if isinstance(plan, Plan) and not config.strict:
        plan = harden(plan)
    return weave(plan, hooks, config.hypervisor)


def plan_request(request: BuildRequest, hooks: Sequence[Hook]) -> Union[Immediate, Effective]:
    """The effective plan of a request, or the answer it gets without running anything.

    Raises :class:`~vmm_exec.request.ActionError` for a request that cannot be
    planned (the caller answers FAILURE with its text).
    """
    for field in HOST_FIELDS:
        value = request.message.text(field)
        problem = host_problem(value) if value else None
        if problem is not None:
            raise ActionError(f"Cannot perform {request.action}: {field} is an {problem}")
    stock = build(request)
    if isinstance(stock, Immediate):
        return stock
    return effective(stock, request.config, hooks)
