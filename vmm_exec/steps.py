"""The step DSL: what an action does, as data.

A :class:`Step` is the Python spelling of one hash of the Ruby driver's step
lists (``{:driver => :vnm, :action => :post, :parameters => [:deploy_info,
:host], :fail_actions => [...]}``), with the same keys. An action builder
returns a :class:`Plan`; nothing here runs anything, so a plan can be printed
(``one-vmm-exec explain``), compared in tests, or extended by hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple, Union

DRIVERS = ("vmm", "vnm", "tm", "ds", "hook")

DRIVER_NAMES = {
    "vmm": "virtualization driver",
    "vnm": "network driver",
    "tm": "transfer manager driver",
    "ds": "datastore driver",
    "hook": "add-on hook",
}


@dataclass(frozen=True)
class Sym:
    """A Ruby symbol parameter (``:host``, ``:deploy_info``): resolved when the step runs.

    Values come from the message (``host``, ``deploy_id``, ``dest_host``,
    ``checkpoint_file``, ``local_dfile``, ``remote_dfile``,
    ``disk_target_path``, ``tm_command``, ``vm``) or from the stripped info of
    an earlier step (``<action>_info``); an unknown symbol is the empty string,
    as Ruby's ``nil.to_s``.
    """

    name: str

    def __str__(self) -> str:
        return f":{self.name}"


Param = Union[Sym, str]


@dataclass(frozen=True)
class Step:
    """One step of an action, with the keys of the Ruby DSL.

    ``driver``: ``vmm`` (hypervisor script on the host), ``vnm`` (one run per
    VN_MAD of the VM), ``tm`` (transfer-manager script on the front-end) or
    ``ds`` (datastore script on the front-end). For ``tm``/``ds`` the
    parameters are the words of the TM/DS command (``CONTEXT ssh arg...``).
    ``stdin``: text for the script; None means the driver default (the whole
    message for vmm, the filtered VM for vnm, nothing for tm/ds).
    ``fail_actions`` run when this step fails; ``no_fail`` lets the action go
    on after a failure; ``destination`` runs the step on the migration target.
    ``origin`` names where a step came from (``stock`` or a hook file) for
    ``explain``; it does not change execution.
    """

    driver: str
    action: str
    parameters: Tuple[Param, ...] = ()
    stdin: Optional[str] = None
    destination: bool = False
    fail_actions: Tuple[Step, ...] = ()
    no_fail: bool = False
    script_name: Optional[str] = None
    no_extra_params: bool = False
    is_local: Optional[bool] = None
    skip: Tuple[str, ...] = ()
    origin: str = "stock"
    rollback: bool = False
    hook_point: str = ""

    def __post_init__(self) -> None:
        if self.driver not in DRIVERS:
            raise ValueError(f"unknown step driver {self.driver!r} (expected one of {DRIVERS})")

    @property
    def info_key(self) -> str:
        """Where the step's info is stored: ``<action>_info``."""
        return f"{self.action}_info"

    @property
    def label(self) -> str:
        """``driver:action``, how hooks name a step."""
        return f"{self.driver}:{self.action}"


def step(driver: str, action: str, *parameters: Param, stdin: Optional[str] = None,
         destination: bool = False, fail_actions: Sequence[Step] = (), no_fail: bool = False,
         script_name: Optional[str] = None, no_extra_params: bool = False,
         is_local: Optional[bool] = None, skip: Sequence[str] = ()) -> Step:
    """Shorthand so step lists read like the Ruby hashes: ``step("vnm", "post", HOST, ...)``."""
    return Step(driver, action, tuple(parameters), stdin=stdin, destination=destination,
                fail_actions=tuple(fail_actions), no_fail=no_fail, script_name=script_name,
                no_extra_params=no_extra_params, is_local=is_local, skip=tuple(skip))


@dataclass(frozen=True)
class Plan:
    """An action's step list plus what its final answer needs.

    ``main_action`` is the ``@main_action`` of ``VmmAction``: its step info is
    the SUCCESS answer. ``extra_info`` is prepended to the answer (UPDATESG's
    security group id, UPDATENIC's network id).
    """

    action: str
    main_action: str
    steps: Tuple[Step, ...]
    extra_info: Optional[str] = None
    pre_hooks: Tuple[Step, ...] = ()
    post_hooks: Tuple[Step, ...] = ()
    fail_hooks: Tuple[Step, ...] = ()

    def walk(self) -> Iterator[Tuple[int, Step]]:
        """Every step with its depth (fail actions nested one level deeper)."""

        def visit(steps: Tuple[Step, ...], depth: int) -> Iterator[Tuple[int, Step]]:
            for s in steps:
                yield depth, s
                yield from visit(s.fail_actions, depth + 1)

        yield from visit(self.steps, 0)


@dataclass(frozen=True)
class DirectCall:
    """An action that is one script call answered directly (POLL, RESIZE, EXEC...).

    Ruby runs these through ``do_action`` with ``:respond => true``: a one-shot
    remote command (``RemotesCommand``, with the ``-x`` check and retries) or
    a local one for -l actions, whose outcome is sent as the answer.
    """

    action: str
    script_action: str
    parameters: Tuple[str, ...]
    host: Optional[str]
    stdin: str
    script_name: Optional[str] = None
    no_extra_params: bool = False
    raw_parameters: Optional[str] = None


@dataclass(frozen=True)
class Immediate:
    """An answer decided before any script runs (a failed precondition)."""

    action: str
    result: str
    info: str


ActionPlan = Union[Plan, DirectCall, Immediate]


@dataclass(frozen=True)
class HookedCall:
    """A one-call action (POLL, RESIZE, ...) with add-on hooks around the call."""

    call: DirectCall
    pre_hooks: Tuple[Step, ...]
    post_hooks: Tuple[Step, ...]
    fail_hooks: Tuple[Step, ...]

    @property
    def action(self) -> str:
        return self.call.action

HOST = Sym("host")
DEPLOY_ID = Sym("deploy_id")
DEST_HOST = Sym("dest_host")
CHECKPOINT_FILE = Sym("checkpoint_file")
DISK_TARGET_PATH = Sym("disk_target_path")
DEPLOY_INFO = Sym("deploy_info")
