"""``one-vmm-exec simulate``: run a VMM driver as oned does and send it requests.

The harness add-on authors use to exercise a driver (this package's by default, any
other command with ``--driver``) and their hooks without oned. Everything that talks to
the driver is :class:`~vmm_exec.testing.simoned.SimulatedOned`. This module reads the
command line and turns signals into a bounded stop; :mod:`.requests` reads the request
files, :mod:`.simulation` sends them and prints the conversation, and
:mod:`.leftovers` makes sure nothing the driver started outlives the command (Ctrl-C
included).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from typing import Dict, NoReturn, Optional, Sequence, Tuple

from vmm_exec.testing.leftovers import become_subreaper, descendants
from vmm_exec.testing.requests import PROG, UsageError, known_actions, parse_request
from vmm_exec.testing.simoned import DEFAULT_ARGS, SimulatedOned
from vmm_exec.testing.simulation import (
    EXIT_USAGE,
    Simulation,
    Stop,
    signal_name,
    write_text,
)

DEFAULT_TIMEOUT = 120.0

DESCRIPTION = """\
Run a VMM driver the way oned runs it (all ARGUMENTS in one argv element,
stderr closed, INIT first, FINALIZE last), send it REQUESTs in order and show
the conversation as oned sees it: exercise the driver and add-on hooks
without oned. The driver inherits this environment (ONE_LOCATION included)
plus --env, so it reads its hook files and reaches its hosts as under oned."""

EPILOG = """\
requests (sent in the order given; with none, just INIT and FINALIZE):
  ACTION=FILE   send ACTION (upper case, as in the protocol: DEPLOY, POLL,
                MIGRATE, ...) with FILE as its VMM_DRIVER_ACTION_DATA, either
                the XML or its base64 (as sent on the wire); '-' reads stdin.
                Its id is the XML's VM/ID, else --id. Waits for the answer
                before the next request is sent, unless --no-wait.
  cancel=ID     send DRIVER_CANCEL ID. oned expects no answer, neither to the
                cancel nor to the cancelled action: a request with that id
                still unanswered is reported CANCELLED, not waited for.
                (CANCEL=FILE, upper case, is the VMM action CANCEL.)
  sleep=SECS    pause, showing what the driver writes meanwhile (e.g. to let
                an action start before cancelling it).

output:
  '> ' lines are sent to the driver, '< ' lines come from it, '-- ' lines are
  events (driver exit, timeouts, processes killed). Sent payloads are
  shortened; --json gives the complete transcript as one JSON document. Then
  one line per request, e.g. 'DEPLOY 42: SUCCESS (1.2 s)'.

exit status:
  0    every answer was SUCCESS (cancelled requests need none) and the
       driver exited with 0 after FINALIZE
  1    some answer was FAILURE
  2    usage or input error (the driver was not started)
  3    the driver died, failed INIT, did not exit (or exited non-zero) after
       FINALIZE, or a request timed out; the message says which. Wins over 1.
  130  interrupted by Ctrl-C (128 + signal: 143 for SIGTERM, 129 for SIGHUP).
  In every case the driver and everything it started are stopped before the
  command returns: stdin EOF first (the driver stops its own children, as
  when oned dies), then SIGKILL for whatever is left, scripts that left the
  driver's process group included.

notes:
  one-vmm-exec works in $ONE_LOCATION/var (/var/lib/one), like the Ruby
  driver's wrapper: give absolute paths inside --args, e.g. --hooks-dir
  "$PWD/hooks.d". Scripts of '-l' actions run on this machine; everything
  else goes to the hosts named in the XML, over ssh, as under oned.

examples:
  one-vmm-exec simulate --args "-t 15 -r 0 -l poll kvm" POLL=poll.xml
  one-vmm-exec simulate --args "-t 15 -r 0 --hooks-dir $PWD/hooks.d kvm" \\
      MIGRATE=migrate.xml
  one-vmm-exec simulate --no-wait DEPLOY=deploy.xml sleep=2 cancel=42
  one-vmm-exec simulate --json SHUTDOWN=- < shutdown.b64 | jq .requests
  one-vmm-exec simulate --driver /usr/lib/one/mads/one_vmm_exec POLL=poll.xml
"""


class _Interrupted(Exception):
    """SIGINT (Ctrl-C), SIGTERM or SIGHUP while running."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _assignment(text: str) -> Tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or "\0" in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [--driver CMD] [--args ARGUMENTS] [--env NAME=VALUE]...\n"
              f"{' ' * 28}[--timeout SECS] [--id N] [--no-wait] [--raw] [--json]\n"
              f"{' ' * 28}[REQUEST ...]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("requests", nargs="*", metavar="REQUEST",
                        help="ACTION=FILE, cancel=ID or sleep=SECS (see below)")
    parser.add_argument("--driver", metavar="CMD",
                        help="the driver command, split like a shell would (default: this "
                             "package's one-vmm-exec, run by this Python)")
    parser.add_argument("--args", metavar="ARGUMENTS", default=" ".join(DEFAULT_ARGS),
                        help="the driver's ARGUMENTS, passed as ONE argv element like oned "
                             "does (default: %(default)r)")
    parser.add_argument("--env", metavar="NAME=VALUE", action="append", default=[],
                        type=_assignment, help="set a variable in the driver's environment "
                                               "(repeatable)")
    parser.add_argument("--timeout", metavar="SECS", type=_positive, default=DEFAULT_TIMEOUT,
                        help="longest wait for each answer, counted from its request, and "
                             "for the driver to exit after FINALIZE (default: %(default)g); "
                             "INIT gets oned's 10 s at most")
    parser.add_argument("--id", metavar="N", type=int, default=0,
                        help="id of requests whose XML has no VM/ID (default: 0)")
    parser.add_argument("--no-wait", action="store_true",
                        help="send every request at once, as a busy oned does, then wait for "
                             "all answers (needed to cancel a running action)")
    parser.add_argument("--raw", action="store_true",
                        help="do not check what is sent: any upper-case ACTION name, and a "
                             "FILE that is neither XML nor base64 is sent as it is (drivers "
                             "with actions of their own; testing bad input)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document at the end (complete transcript, "
                             "requests, answers, LOG lines per request) instead of text")
    return parser


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise _Interrupted(signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``one-vmm-exec simulate ARGS...``; returns the exit status."""
    parser = build_parser()
    try:
        options = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    try:
        command = shlex.split(options.driver) if options.driver is not None else None
        if command is not None and not command:
            raise UsageError("--driver: empty command")
        known = known_actions()
        stdin_state: Dict[str, bool] = {}
        requests = [parse_request(text, default_id=options.id, raw=options.raw,
                                  stdin_state=stdin_state, known=known)
                    for text in options.requests]
    except (UsageError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE

    env = dict(os.environ)
    env.update(dict(options.env))
    oned = SimulatedOned(options.args, command=command, env=env)
    out = None if options.json else sys.stdout
    sim = Simulation(oned, requests, timeout=options.timeout, wait=not options.no_wait, out=out)
    sim.spare = tuple(descendants(os.getpid()))
    become_subreaper()
    interrupted: Optional[int] = None
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in _SIGNALS}
    try:
        try:
            sim.run()
        except FileNotFoundError as exc:
            print(f"{PROG}: cannot run the driver: {exc.strerror}: {exc.filename}",
                  file=sys.stderr)
            return EXIT_USAGE
        except Stop as exc:
            sim.error = str(exc)
            sim.event(sim.error)
        except _Interrupted as exc:
            interrupted = exc.signum
        except KeyboardInterrupt:
            interrupted = signal.SIGINT
    except (_Interrupted, KeyboardInterrupt):  # a second signal while handling the first
        interrupted = interrupted or signal.SIGINT
    finally:
        # Stopping is bounded; a second Ctrl-C must not cut it short.
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        try:
            if interrupted is not None:
                sim.error = f"interrupted ({signal_name(interrupted)})"
                sim.event(f"{sim.error}: stopping the driver")
            sim.stop()
            sim.pump()
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
    sim.settle_cancelled()

    status = 128 + interrupted if interrupted is not None else sim.exit_status()
    if options.json:
        write_text(sys.stdout, json.dumps(sim.as_json(status), indent=2) + "\n")
    elif sim.out is not None:
        write_text(sys.stdout, "".join(line + "\n" for line in sim.summary_lines()))
    if sim.error is not None:
        print(f"{PROG}: {sim.error}", file=sys.stderr)
    return status
