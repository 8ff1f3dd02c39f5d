"""What an action builder gets, and the two ways a request fails before any step runs.

These types sit in the model layer so that the action catalogue, the planner
and the engine can all name them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmm_exec.config import DriverConfig
from vmm_exec.message import Message


class ActionError(Exception):
    """A request that cannot be carried out; the message is the FAILURE info.

    Raised where the Ruby driver's thread would crash (a missing element an
    action needs, an unreadable deployment file): oned gets an answer instead
    of waiting forever.
    """


class StepError(Exception):
    """A step that cannot even be started (bad parameters, no migration target).

    The step fails with this reason and its fail actions run, like any
    failing script.
    """


@dataclass(frozen=True)
class BuildRequest:
    """The decoded request and the driver's settings, as an action builder sees them.

    ``payload`` is the base64 text as received (some scripts get it verbatim);
    ``explain`` builds without reading files (the deployment is a placeholder).
    """

    action: str
    msg_id: str
    message: Message
    config: DriverConfig
    payload: str
    explain: bool = False
