"""``one-vmm-exec simulate``: the command add-on authors use instead of oned.

Every test runs the command as a real process (``python3 -m vmm_exec simulate``):
against the real driver in a throwaway ONE_LOCATION whose scripts run on the front-end
(``-l poll,shutdown``), against ``tests/stub_driver.py`` for what the real driver does
not do (die, refuse INIT, ignore FINALIZE), and with command lines that must be
refused before any driver starts. Every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from helpers import ROOT, make_one_location, process_alive, wait_until

SIMULATE = [sys.executable, "-m", "vmm_exec", "simulate"]
STUB_DRIVER = f"{shlex.quote(sys.executable)} {shlex.quote(str(ROOT / 'tests' / 'stub_driver.py'))}"
RUN_TIMEOUT = 60
LOCAL_ARGS = "-t 15 -r 0 -l poll,shutdown kvm"

# shutdown DEPLOY_ID HOST ID HOST, run on the front-end (-l shutdown): records its pid,
# logs on stderr; one-43 fails, one-44 takes 30 s.
SHUTDOWN_SCRIPT = r"""#!/bin/sh
echo "$$" > "$SIM_CTRL/pid.$1"
echo "INFO: shutting down $1 on $2" >&2
case "$1" in
    one-43) echo "ERROR: refusing $1" >&2; exit 1 ;;
    one-44) sleep 30 ;;
esac
echo "done $1"
"""

POLL_SCRIPT = r"""#!/bin/sh
echo "STATE=a NAME=$1"
"""


def message(vmid: int, host: str = "host01") -> str:
    return (f"<VMM_DRIVER_ACTION_DATA><HOST>{host}</HOST><MIGR_HOST/>"
            f"<DEPLOY_ID>one-{vmid}</DEPLOY_ID><VM><ID>{vmid}</ID>"
            f"<DEPLOY_ID>one-{vmid}</DEPLOY_ID><TEMPLATE/></VM></VMM_DRIVER_ACTION_DATA>")


def base_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    for name in ("ONE_MAD_DEBUG", "LIVE_DISK_SNAPSHOTS", "VNMAD_LOCAL_ACTIONS", "ONE_LOCATION"):
        env.pop(name, None)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) if not old else f"{ROOT}{os.pathsep}{old}"
    env.update(extra)
    return env


def simulate(*args: str, env: Optional[Dict[str, str]] = None, stdin: Optional[str] = None,
             timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIMULATE, *args], cwd=ROOT, env=env or base_env(), input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def out_lines(result: subprocess.CompletedProcess[str]) -> List[str]:
    return result.stdout.splitlines()


def index_of(lines: List[str], wanted: str) -> int:
    assert wanted in lines, f"{wanted!r} not in output:\n" + "\n".join(lines)
    return lines.index(wanted)


class Front:
    """A throwaway ONE_LOCATION with local shutdown/poll scripts and request files."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ctrl = base / "ctrl"
        self.ctrl.mkdir()
        self.one = make_one_location(base, {"shutdown": SHUTDOWN_SCRIPT, "poll": POLL_SCRIPT})
        self.env = base_env(ONE_LOCATION=str(self.one), PRIORITY="0", SIM_CTRL=str(self.ctrl))

    def xml(self, vmid: int) -> str:
        path = self.base / f"vm{vmid}.xml"
        path.write_text(message(vmid))
        return str(path)

    def b64(self, vmid: int) -> str:
        path = self.base / f"vm{vmid}.b64"
        path.write_text(base64.encodebytes(message(vmid).encode()).decode())
        return str(path)

    def script_pid(self, vmid: int) -> Optional[int]:
        path = self.ctrl / f"pid.one-{vmid}"
        text = path.read_text().strip() if path.exists() else ""
        return int(text) if text else None

    def run(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return simulate(*args, env=self.env, **kwargs)  # type: ignore[arg-type]


@pytest.fixture()
def front(tmp_path: Path) -> Front:
    return Front(tmp_path)


def stub(*args: str, env: Optional[Dict[str, str]] = None,
         **kwargs: object) -> subprocess.CompletedProcess[str]:
    return simulate("--driver", STUB_DRIVER, *args, env=base_env(**(env or {})),
                    **kwargs)  # type: ignore[arg-type]


def payload_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------------------
# (a) the real driver, scripts on the front-end
# --------------------------------------------------------------------------------------


def test_success_failure_and_log_lines_in_order_exit_1(front: Front) -> None:
    result = front.run("--args", LOCAL_ARGS, f"SHUTDOWN={front.xml(42)}",
                       f"SHUTDOWN={front.b64(43)}", "POLL=-", stdin=message(42))
    assert result.returncode == 1, result.stderr
    lines = out_lines(result)
    assert lines[:2] == ["> INIT", "< INIT SUCCESS - -"]
    sent = [line for line in lines if line.startswith("> ")]
    assert [line.split(" ")[1] for line in sent] == ["INIT", "SHUTDOWN", "SHUTDOWN", "POLL",
                                                      "FINALIZE"]
    assert sent[1].startswith("> SHUTDOWN  42 ") and sent[2].startswith("> SHUTDOWN  43 ")
    assert sent[3].startswith("> POLL  42 ")  # the id of the XML read from stdin
    # each answer comes after its request and its LOG lines, before the next request
    ok = index_of(lines, "< SHUTDOWN SUCCESS 42 done one-42")
    refused = index_of(lines, "< LOG E 43 refusing one-43")
    failed = index_of(lines, "< SHUTDOWN FAILURE 43 -")
    polled = index_of(lines, "< POLL SUCCESS 42 STATE=a NAME=one-42")
    assert lines.index(sent[1]) < ok < lines.index(sent[2]) < refused < failed
    assert failed < lines.index(sent[3]) < polled < lines.index("> FINALIZE")
    assert "< LOG I 43 Failed to execute virtualization driver operation: shutdown." in lines
    assert "-- driver exited with status 0" in lines
    summary = lines[-3:]
    assert re.fullmatch(r"SHUTDOWN 42: SUCCESS \([0-9.]+ s\)", summary[0])
    assert re.fullmatch(r"SHUTDOWN 43: FAILURE \([0-9.]+ s\)", summary[1])
    assert re.fullmatch(r"POLL 42: SUCCESS \([0-9.]+ s\)", summary[2])
    assert result.stderr == ""
    assert front.script_pid(42) and front.script_pid(43)  # the scripts really ran


def test_all_success_exits_0_and_json_is_the_complete_transcript(front: Front) -> None:
    result = front.run("--json", "--args", LOCAL_ARGS, f"POLL={front.xml(42)}",
                       f"SHUTDOWN={front.b64(42)}")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["exit_status"] == 0 and run["error"] is None
    assert run["driver"]["exit_status"] == 0
    assert run["driver"]["argv"][-1] == LOCAL_ARGS  # one argv element, as oned passes it
    conversation = [(entry["dir"], entry["line"]) for entry in run["conversation"]]
    assert conversation[0] == (">", "INIT") and conversation[1] == ("<", "INIT SUCCESS - -")
    assert (">", "FINALIZE") in conversation
    sent = [line for direction, line in conversation if direction == ">"]
    action, empty, vmid, payload = sent[1].split(" ")
    assert (action, empty, vmid) == ("POLL", "", "42")
    assert base64.b64decode(payload).decode() == message(42)  # not shortened in JSON
    poll, shutdown = run["requests"]
    assert poll["status"] == "SUCCESS" and poll["info"] == "STATE=a NAME=one-42"
    assert shutdown["result"] == "SUCCESS" and shutdown["info"] == "done one-42"
    assert shutdown["seconds"] is not None and 0 <= shutdown["seconds"] < RUN_TIMEOUT
    assert {"severity": "I",
            "text": "Successfully execute virtualization driver operation: shutdown."
            } in shutdown["log"]
    assert run["leftover_processes"] == []


def test_addon_hooks_are_run_and_a_failing_pre_hook_fails_the_action(front: Front,
                                                                     tmp_path: Path) -> None:
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    audit = hooks / "audit"
    audit.write_text('#!/bin/sh\necho "INFO: audit $1 $VMM_HOOK_ACTION $VMM_HOOK_POINT" >&2\n'
                     '[ "$1" != one-46 ]\n')
    audit.chmod(0o755)
    (hooks / "10-audit.toml").write_text(
        '[addon]\nactions = ["SHUTDOWN"]\n\n[[hook]]\npoint = "pre"\naction = "audit"\n'
        'script = "audit"\nwhere = "frontend"\nparameters = [":deploy_id"]\n')
    args = f"-t 15 -r 0 -l poll,shutdown --hooks-dir {shlex.quote(str(hooks))} kvm"
    result = front.run("--args", args, f"SHUTDOWN={front.xml(45)}", f"SHUTDOWN={front.xml(46)}")
    assert result.returncode == 1, result.stderr
    lines = out_lines(result)
    # the hook's INFO line (on the driver's log, id -1, when it succeeds), its step
    assert "< LOG I -1 audit one-45 SHUTDOWN pre" in lines
    assert "< LOG I 45 Successfully execute add-on hook operation: audit." in lines
    assert "< SHUTDOWN SUCCESS 45 done one-45" in lines
    assert "< LOG I 46 audit one-46 SHUTDOWN pre" in lines
    assert "< LOG I 46 Failed to execute add-on hook operation: audit." in lines
    assert "< SHUTDOWN FAILURE 46 -" in lines
    assert front.script_pid(45) and front.script_pid(46) is None  # pre failed: no shutdown
    assert lines[-1].startswith("SHUTDOWN 46: FAILURE (")


def test_cancel_of_a_running_action_kills_it_and_expects_no_answer(front: Front) -> None:
    started = time.monotonic()
    result = front.run("--no-wait", "--args", LOCAL_ARGS, f"SHUTDOWN={front.xml(44)}",
                       "sleep=2", "cancel=44", f"POLL={front.xml(42)}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 20  # not the script's 30 s
    lines = out_lines(result)
    assert "> DRIVER_CANCEL 44" in lines
    assert "< LOG I 44 Driver command for 44 cancelled" in lines
    assert not any(line.startswith("< SHUTDOWN") for line in lines)
    assert lines[-3:-1] == ["SHUTDOWN 44: CANCELLED (no answer, as oned expects)",
                            "DRIVER_CANCEL 44: sent"]
    assert re.fullmatch(r"POLL 42: SUCCESS \([0-9.]+ s\)", lines[-1])
    pid = front.script_pid(44)
    assert pid is not None and not process_alive(pid)


def test_request_timeout_exits_3_names_it_and_stops_the_scripts(front: Front) -> None:
    result = front.run("--timeout", "2", "--args", LOCAL_ARGS, f"SHUTDOWN={front.xml(44)}",
                       f"POLL={front.xml(42)}")
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1] == (
        "one-vmm-exec simulate: SHUTDOWN 44: no answer within 2 s (--timeout); "
        "stopping the driver")
    lines = out_lines(result)
    assert "-- closed the driver's stdin (as when oned exits)" in lines
    assert "-- driver exited with status 255" in lines  # the real driver's EOF status
    assert lines[-2:] == ["SHUTDOWN 44: TIMEOUT (no answer within 2 s)", "POLL 42: NOT SENT"]
    assert not any(line.startswith("> POLL") for line in lines)
    pid = front.script_pid(44)
    assert pid is not None and not process_alive(pid)


def test_ctrl_c_stops_the_driver_and_its_scripts(front: Front, tmp_path: Path) -> None:
    out = (tmp_path / "out.txt").open("w+")
    proc = subprocess.Popen([*SIMULATE, "--args", LOCAL_ARGS, f"SHUTDOWN={front.xml(44)}"],
                            cwd=ROOT, env=front.env, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: front.script_pid(44) is not None, 20, what="shutdown script start")
        pid = front.script_pid(44)
        assert pid is not None and process_alive(pid)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130
    assert stderr.strip() == "one-vmm-exec simulate: interrupted (SIGINT)"
    out.seek(0)
    lines = out.read().splitlines()
    assert "-- interrupted (SIGINT): stopping the driver" in lines
    assert lines[-1] == "SHUTDOWN 44: NO ANSWER (run stopped)"
    assert not process_alive(pid)


def test_walkthrough_of_the_addon_testing_guide_works(tmp_path: Path) -> None:
    """drivers/addons/storage-cache/TESTING.md: its sh blocks, run in order as written."""
    guide = (ROOT / "drivers" / "addons" / "storage-cache" / "TESTING.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```", guide, re.S | re.M)
    assert len(blocks) >= 4
    script = ("set -e\n"
              f'one-vmm-exec() {{ {shlex.quote(sys.executable)} -m vmm_exec "$@"; }}\n'
              + "\n".join(blocks) + "\necho \"T=$T\"\n")
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, env=base_env(TMPDIR=str(tmp_path)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = out_lines(result)
    summaries = [line for line in lines if line.startswith("MIGRATE 42:")]
    assert summaries[0].startswith("MIGRATE 42: SUCCESS")
    assert summaries[1].startswith("MIGRATE 42: FAILURE")
    assert summaries[2] == "MIGRATE 42: CANCELLED (no answer, as oned expects)"
    assert "exit status 1" in lines
    for text in ("storage cache ready for one-42",
                 "storage cache of one-42 removed from the source",
                 "storage cache of one-42 reverted (vmm:migrate failed)"):
        assert f"< LOG I 42 {text}" in lines
    assert "storage-cache: MIGRATE ok" in lines
    sandbox = Path(lines[-1].split("=", 1)[1])
    assert sandbox.parent == tmp_path
    # after the cancel: setup's cache is still on the target, nothing on the source
    assert sorted(p.name for p in (sandbox / "hosts/host02/var/cache/storage-cache").iterdir()
                  ) == ["42.cache", "42.xml"]
    assert list((sandbox / "hosts/host01/var/cache/storage-cache").iterdir()) == []


# --------------------------------------------------------------------------------------
# (b) another driver: tests/stub_driver.py
# --------------------------------------------------------------------------------------


def test_arguments_reach_the_driver_as_one_argv_element_with_stderr_closed() -> None:
    default = stub()
    assert default.returncode == 0, default.stderr
    assert '< LOG I -1 ARGV ["-t 15 -r 0 kvm"]' in out_lines(default)
    assert "< LOG I -1 FD2 closed" in out_lines(default)
    custom = stub("--args", "-t 2 kvm -p")
    assert '< LOG I -1 ARGV ["-t 2 kvm -p"]' in out_lines(custom)
    # no REQUEST: INIT and FINALIZE only
    assert [line for line in out_lines(custom) if line.startswith("> ")] == ["> INIT",
                                                                          "> FINALIZE"]


def test_cancel_is_sent_and_the_cancelled_request_is_not_waited_for(tmp_path: Path) -> None:
    secs = payload_file(tmp_path, "secs", "20")
    started = time.monotonic()
    result = stub("--raw", "--no-wait", "--id", "9", f"SLEEP={secs}", "cancel=9")
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 15  # the 20 s answer was not awaited
    lines = out_lines(result)
    assert lines.index("> SLEEP  9 MjA=") < lines.index("> DRIVER_CANCEL 9")
    assert "< LOG I 9 Driver command for 9 cancelled" in lines
    assert lines[-2:] == ["SLEEP 9: CANCELLED (no answer, as oned expects)",
                          "DRIVER_CANCEL 9: sent"]


def test_an_answer_that_arrived_before_the_cancel_is_kept(tmp_path: Path) -> None:
    result = stub("--raw", "--id", "9", f"ECHO={payload_file(tmp_path, 'p', 'hi')}",
                  "cancel=9")
    assert result.returncode == 0
    echoed, cancelled = out_lines(result)[-2:]
    assert re.fullmatch(r"ECHO 9: SUCCESS \([0-9.]+ s\)", echoed)  # not CANCELLED
    assert cancelled == "DRIVER_CANCEL 9: sent"


def test_driver_death_exits_3_and_later_requests_are_not_sent(tmp_path: Path) -> None:
    code = payload_file(tmp_path, "code", "7")
    xml = payload_file(tmp_path, "vm.xml", message(42))
    result = stub("--raw", f"EXIT={code}", f"DEPLOY={xml}")
    assert result.returncode == 3
    assert result.stderr.strip() == ("one-vmm-exec simulate: driver exited with status 7 "
                                     "before answering EXIT 0")
    lines = out_lines(result)
    assert not any(line.startswith("> DEPLOY") or line == "> FINALIZE" for line in lines)
    assert lines[-2:] == ["EXIT 0: NO ANSWER (driver exited with status 7)",
                          "DEPLOY 42: NOT SENT"]


def test_driver_death_in_json(tmp_path: Path) -> None:
    result = stub("--json", "--raw", f"EXIT={payload_file(tmp_path, 'code', '4')}")
    assert result.returncode == 3
    run = json.loads(result.stdout)
    assert run["exit_status"] == 3 and run["driver"]["exit_status"] == 4
    assert run["error"] == "driver exited with status 4 before answering EXIT 0"
    assert run["requests"][0]["status"] == "NO ANSWER"


@pytest.mark.parametrize("init, message_text", [
    ("fail", "driver failed INIT: answered INIT with 'INIT FAILURE - stub refuses'"),
    ("garbage", "driver failed INIT: answered INIT with 'hello from a chatty driver'"),
])
def test_init_failure_exits_3(tmp_path: Path, init: str, message_text: str) -> None:
    result = stub(f"POLL={payload_file(tmp_path, 'vm.xml', message(42))}",
                  env={"STUB_INIT": init})
    assert result.returncode == 3
    assert result.stderr.strip() == f"one-vmm-exec simulate: {message_text}"
    assert out_lines(result)[-1] == "POLL 42: NOT SENT"


def test_init_without_answer_exits_3_within_the_timeout() -> None:
    started = time.monotonic()
    result = stub("--timeout", "1", env={"STUB_INIT": "none"})
    assert result.returncode == 3
    assert time.monotonic() - started < 15
    assert result.stderr.strip() == ("one-vmm-exec simulate: driver failed INIT: "
                                     "no INIT SUCCESS within 1s")


def test_env_reaches_the_driver_and_a_bad_exit_after_finalize_exits_3(tmp_path: Path) -> None:
    result = stub("--env", "STUB_FINALIZE_CODE=5",
                  f"DEPLOY={payload_file(tmp_path, 'vm.xml', message(42))}")
    assert result.returncode == 3
    assert result.stderr.strip() == ("one-vmm-exec simulate: driver exited with status 5 "
                                     "after FINALIZE (expected 0)")
    assert out_lines(result)[-1].startswith("DEPLOY 42: SUCCESS (")  # answered before


def test_driver_that_ignores_finalize_is_killed_and_exits_3() -> None:
    started = time.monotonic()
    result = stub("--timeout", "1", env={"STUB_FINALIZE": "ignore", "STUB_EOF": "ignore"})
    assert result.returncode == 3
    assert time.monotonic() - started < 20
    assert result.stderr.strip() == ("one-vmm-exec simulate: driver did not exit within 1 s "
                                     "after FINALIZE (killed)")


def test_request_timeout_with_another_driver_exits_3(tmp_path: Path) -> None:
    started = time.monotonic()
    result = stub("--raw", "--timeout", "1", f"SLEEP={payload_file(tmp_path, 's', '30')}")
    assert result.returncode == 3
    assert time.monotonic() - started < 15
    assert "SLEEP 0: no answer within 1 s" in result.stderr
    assert out_lines(result)[-1] == "SLEEP 0: TIMEOUT (no answer within 1 s)"


def test_process_left_behind_is_killed_and_named(tmp_path: Path) -> None:
    result = stub("--raw", f"SPAWN_ESCAPE={payload_file(tmp_path, 'p', 'x')}")
    assert result.returncode == 0, result.stderr
    lines = out_lines(result)
    answer = next(line for line in lines if line.startswith("< SPAWN_ESCAPE SUCCESS 0 "))
    pid = int(answer.rsplit(" ", 1)[1])
    assert f"-- killed 1 process(es) the driver left behind: {pid} (sleep)" in lines
    assert not process_alive(pid)


def test_multi_line_answer_is_one_answer(tmp_path: Path) -> None:
    result = stub("--json", "--raw", f"MULTI={payload_file(tmp_path, 'p', 'x')}")
    assert result.returncode == 0
    [request] = json.loads(result.stdout)["requests"]
    assert request["info"] == "first\nsecond\nthird" and request["status"] == "SUCCESS"


def test_raw_sends_other_actions_and_payloads_as_they_are(tmp_path: Path) -> None:
    result = stub("--raw", "--id", "3", f"ECHO={payload_file(tmp_path, 'p', 'hello there')}")
    assert result.returncode == 0
    assert "< ECHO SUCCESS 3 hello there" in out_lines(result)


def test_driver_not_found_is_a_usage_error(tmp_path: Path) -> None:
    result = simulate("--driver", str(tmp_path / "no-such-driver"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == ("one-vmm-exec simulate: cannot run the driver: driver "
                                     f"executable not found: {tmp_path / 'no-such-driver'}")


# --------------------------------------------------------------------------------------
# (c) usage errors: one line on stderr, exit 2, no driver started
# --------------------------------------------------------------------------------------


USAGE_CASES = [
    (["FOO={tmp}/vm.xml"], "unknown action FOO (known: ATTACHDISK, "),
    (["deploy={tmp}/vm.xml"], "'deploy' is not an action name (did you mean DEPLOY?)"),
    (["DEPLOY={tmp}/missing.xml"], "cannot read {tmp}/missing.xml: No such file"),
    (["DEPLOY={tmp}"], "cannot read {tmp}: Is a directory"),
    (["DEPLOY={tmp}/text.txt"], "{tmp}/text.txt: neither XML nor base64"),
    (["DEPLOY={tmp}/bad.xml"], "{tmp}/bad.xml: not well-formed XML: mismatched tag"),
    (["DEPLOY={tmp}/b64text"], "{tmp}/b64text: base64 of something that is not XML"),
    (["DEPLOY={tmp}/empty"], "{tmp}/empty: empty"),
    (["DEPLOY"], "request 'DEPLOY' is not ACTION=FILE, cancel=ID or sleep=SECS"),
    (["DEPLOY="], "DEPLOY=: no FILE after '='"),
    (["cancel=abc"], "cancel=abc: cancel needs a numeric VM id"),
    (["sleep=soon"], "sleep=soon: sleep needs SECS between 0 and 3600"),
    (["DEPLOY=-", "POLL=-"], "'-' (stdin) can be given only once"),
    (["--env", "NOEQUALS", "POLL={tmp}/vm.xml"], "argument --env: expected NAME=VALUE"),
    (["--timeout", "0", "POLL={tmp}/vm.xml"], "argument --timeout: must be more than 0"),
    (["--id", "x", "POLL={tmp}/vm.xml"], "argument --id: invalid int value"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--driver", "", "POLL={tmp}/vm.xml"], "--driver: empty command"),
]


@pytest.mark.parametrize("args, expected", USAGE_CASES,
                         ids=[" ".join(args) for args, _ in USAGE_CASES])
def test_usage_errors_exit_2_with_one_line_and_start_nothing(
        tmp_path: Path, args: List[str], expected: str) -> None:
    (tmp_path / "vm.xml").write_text(message(42))
    (tmp_path / "text.txt").write_text("hello world\n")
    (tmp_path / "bad.xml").write_text("<VMM_DRIVER_ACTION_DATA><VM></VMM_DRIVER_ACTION_DATA>")
    (tmp_path / "b64text").write_text(base64.b64encode(b"hello world").decode())
    (tmp_path / "empty").write_text("")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    marker = tmp_path / "driver-started"
    if "--driver" not in argv:  # a "driver" that would leave a trace if it were started
        argv = ["--driver", f"touch {shlex.quote(str(marker))}", *argv]
    result = simulate(*argv, stdin=message(42))
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("one-vmm-exec simulate: "), line
    assert expected.replace("{tmp}", str(tmp_path)) in line, line
    assert not marker.exists()


def test_help_explains_requests_output_and_exit_statuses() -> None:
    result = simulate("--help")
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    assert text.startswith("usage: one-vmm-exec simulate [--driver CMD] [--args ARGUMENTS]")
    for part in ("ACTION=FILE", "cancel=ID", "sleep=SECS", "--no-wait", "--json", "--raw",
                 "exit status:", "  3    the driver died", "default: '-t 15 -r 0 kvm'"):
        assert part in text
