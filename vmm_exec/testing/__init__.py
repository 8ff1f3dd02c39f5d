"""Tools for testing a VMM driver and add-on hooks without oned (not used by the driver itself).

:class:`~vmm_exec.testing.simoned.SimulatedOned` starts a driver exactly as
oned does (one argv element for all ARGUMENTS, file descriptor 2 closed) and
speaks the driver protocol with it; ``one-vmm-exec simulate``
(:mod:`vmm_exec.testing.cli`, built on it) does the same from the command
line. Add-on authors use it to run an action against their hooks and hosts
and read every LOG line and the answer (see
``drivers/addons/storage-cache/TESTING.md``).
"""

from vmm_exec.testing.simoned import (
    DEFAULT_ARGS,
    Answer,
    DriverGoneError,
    DriverInitError,
    LogLine,
    SimulatedOned,
    parse_driver_line,
    pids_in_group,
)

__all__ = ["DEFAULT_ARGS", "Answer", "DriverGoneError", "DriverInitError", "LogLine",
           "SimulatedOned", "parse_driver_line", "pids_in_group"]
