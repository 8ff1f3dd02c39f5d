"""The command line: oned's single-argv call, GetoptLong parsing, the configuration,
the rc files of the bash wrapper, and the entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import pytest
from helpers import ROOT, Journal, driver_env, make_one_location, poll_xml

from vmm_exec import __version__
from vmm_exec.cli import (
    USAGE,
    UsageError,
    build_config,
    getopt_long,
    main,
    split_oned_argv,
    wrapper_environment,
)
from vmm_exec.config import DEFAULT_SCRIPTS_REMOTE_DIR, Paths, read_one_config
from vmm_exec.testing.simoned import SimulatedOned

# --------------------------------------------------------------------------------------
# split_oned_argv
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["-t 15 -r 0 kvm -p"], ["-t", "15", "-r", "0", "kvm", "-p"]),
    (["-t 15\t-r 0\nkvm"], ["-t", "15", "-r", "0", "kvm"]),
    (["  -t   2  kvm  "], ["-t", "2", "kvm"]),
    (["-l deploy,poll=poll_local kvm"], ["-l", "deploy,poll=poll_local", "kvm"]),
    (["kvm"], ["kvm"]),
    ([], []),
    (["-t", "15", "kvm"], ["-t", "15", "kvm"]),
    (["-t", "1 5", "kvm"], ["-t", "1 5", "kvm"]),
])
def test_split_oned_argv(argv: List[str], words: List[str]) -> None:
    assert split_oned_argv(argv) == words


# --------------------------------------------------------------------------------------
# getopt_long
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("words, options, operands", [
    (["-t", "15", "-r", "0", "kvm", "-p"],
     [("threads", "15"), ("retries", "0"), ("parallel", "")], ["kvm"]),
    (["kvm"], [], ["kvm"]),
    (["kvm", "extra"], [], ["kvm", "extra"]),
    # optional arguments: the next word only if it does not start with "-"
    (["-r", "-t", "5", "kvm"], [("retries", ""), ("threads", "5")], ["kvm"]),
    (["kvm", "-r"], [("retries", "")], ["kvm"]),
    (["-r", "kvm"], [("retries", "kvm")], []),
    (["-r3", "kvm"], [("retries", "3")], ["kvm"]),
    (["-w", "30", "kvm"], [("timeout", "30")], ["kvm"]),
    (["-w", "-p", "kvm"], [("timeout", ""), ("parallel", "")], ["kvm"]),
    # long options, with "=" and as unique prefixes
    (["--retries=3", "kvm"], [("retries", "3")], ["kvm"]),
    (["--retries", "3", "kvm"], [("retries", "3")], ["kvm"]),
    (["--ret", "3", "kvm"], [("retries", "3")], ["kvm"]),
    (["--re=4", "kvm"], [("retries", "4")], ["kvm"]),
    (["--thr", "2", "kvm"], [("threads", "2")], ["kvm"]),
    (["--timeout=", "kvm"], [("timeout", "")], ["kvm"]),
    (["--par", "kvm"], [("parallel", "")], ["kvm"]),
    (["--local=deploy,poll=poll_local", "kvm"], [("local", "deploy,poll=poll_local")], ["kvm"]),
    # required arguments take the next word whatever it is
    (["-l", "-p", "kvm"], [("local", "-p")], ["kvm"]),
    (["-lpoll", "kvm"], [("local", "poll")], ["kvm"]),
    (["-d", "migrate,save", "-s", "zsh", "kvm"],
     [("delegate", "migrate,save"), ("shell", "zsh")], ["kvm"]),
    # clusters of short options
    (["-pt5", "kvm"], [("parallel", ""), ("threads", "5")], ["kvm"]),
    (["-pr", "kvm"], [("parallel", ""), ("retries", "kvm")], []),
    # end of options, lone dash
    (["--", "-p"], [], ["-p"]),
    (["kvm", "--", "-x"], [], ["kvm", "-x"]),
    (["-p", "-"], [("parallel", "")], ["-"]),
])
def test_getopt_long_permute(words: List[str], options: list, operands: List[str]) -> None:
    args = getopt_long(words)
    assert args.options == options
    assert args.operands == operands


@pytest.mark.parametrize("words", [
    ["-x", "kvm"],
    ["-px", "kvm"],
    ["--bogus", "kvm"],
    ["--t", "3", "kvm"],          # ambiguous: threads, timeout, ...
    ["--parallel=yes", "kvm"],    # no argument allowed
    ["kvm", "-l"],                # missing required argument
    ["kvm", "--local"],
    ["kvm", "-s"],
    ["--=x", "kvm"],
])
def test_getopt_long_rejects(words: List[str]) -> None:
    with pytest.raises(UsageError):
        getopt_long(words)


def test_getopt_long_optional_argument_may_be_a_lone_dash() -> None:
    args = getopt_long(["-r", "-", "kvm"])
    assert args.options == [("retries", "-")]
    assert args.operands == ["kvm"]


# --------------------------------------------------------------------------------------
# build_config
# --------------------------------------------------------------------------------------


def base_environ(one: Path, **extra: str) -> Dict[str, str]:
    environ = {"ONE_LOCATION": str(one), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    environ.update(extra)
    return environ


def config_for(words: Sequence[str], environ: Dict[str, str]):  # noqa: ANN201
    return build_config(getopt_long(list(words)), environ)


def test_build_config_defaults(tmp_path: Path) -> None:
    one = make_one_location(tmp_path, config="SCRIPTS_REMOTE_DIR=/srv/one-remote\n")
    config = config_for(["kvm"], base_environ(one))
    assert config.hypervisor == "kvm"
    assert config.threads == 15
    assert config.retries == 0
    assert config.timeout is None
    assert dict(config.local_actions) == {}
    assert dict(config.delegate_actions) == {"MIGRATE": None}
    assert config.shell == "bash"
    assert config.single_host is True
    assert config.strict is False
    assert config.transport == "openssh"
    assert config.scripts_remote_dir == "/srv/one-remote"
    assert config.paths.remotes == f"{one}/var/remotes"
    assert config.live_disk_snapshots == ()
    assert config.vnmad_local_actions == ()
    assert config.vmm_directory == "vmm/kvm"


def test_build_config_all_options(tmp_path: Path) -> None:
    one = make_one_location(tmp_path)
    config = config_for(["-t", "2", "-r", "3", "-w", "30", "-l", "poll, shutdown=shut",
                         "-d", "migrate,save", "-s", "zsh", "-p", "--compat", "strict",
                         "--transport", "paramiko", "--hooks-dir", "/h1", "--hooks-dir",
                         "/h2", "qemu"], base_environ(one))
    assert config.hypervisor == "qemu"
    assert config.threads == 2
    assert config.retries == 3
    assert config.timeout == 30
    assert dict(config.local_actions) == {"POLL": None, "SHUTDOWN": "shut"}
    assert dict(config.delegate_actions) == {"MIGRATE": None, "SAVE": None}
    assert config.shell == "zsh"
    assert config.single_host is False
    assert config.strict is True
    assert config.transport == "paramiko"
    assert config.hook_dirs == ("/h1", "/h2")
    assert config.action_is_local("poll") and not config.action_is_local("deploy")
    assert config.script_name("SHUTDOWN") == "shut"
    assert config.script_name("poll") == "poll"


@pytest.mark.parametrize("words, threads, retries, timeout", [
    (["-t", "0", "kvm"], 1, 0, None),
    (["-t", "-p", "kvm"], 1, 0, None),
    (["-t", "7x", "kvm"], 7, 0, None),
    (["-r", "-w", "-p", "kvm"], 15, 0, None),
    (["-w", "0", "kvm"], 15, 0, None),
    (["--timeout=-5", "kvm"], 15, 0, None),
    (["--threads=04", "--retries=1_0", "kvm"], 4, 10, None),
])
def test_build_config_numbers_are_ruby_to_i(tmp_path: Path, words: List[str], threads: int,
                                            retries: int, timeout: object) -> None:
    one = make_one_location(tmp_path)
    config = config_for(words, base_environ(one))
    assert (config.threads, config.retries, config.timeout) == (threads, retries, timeout)


@pytest.mark.parametrize("words", [
    [], ["-p"], ["-t", "kvm"], ["-w", "kvm"], ["--compat", "bogus", "kvm"],
    ["--transport", "telnet", "kvm"],
])
def test_build_config_usage_errors(tmp_path: Path, words: List[str]) -> None:
    one = make_one_location(tmp_path)
    with pytest.raises(UsageError):
        config_for(words, base_environ(one))


def test_build_config_environment_lists(tmp_path: Path) -> None:
    one = make_one_location(tmp_path)
    environ = base_environ(one, LIVE_DISK_SNAPSHOTS="  kvm-qcow2 \tkvm-ceph\nqemu-qcow2 ",
                           VNMAD_LOCAL_ACTIONS="elastic-pre\u00a0x elastic-clean")
    config = config_for(["kvm"], environ)
    assert config.live_disk_snapshots == ("kvm-qcow2", "kvm-ceph", "qemu-qcow2")
    assert config.vnmad_local_actions == ("elastic-pre\u00a0x", "elastic-clean")


def test_read_one_config_is_tolerant(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("A=1\n a = 2 \nA=3\n b = x y \n=skip\nnoequals\nc=d=e\n\nEMPTY=\n"
                    "  spaced key =v\n")
    assert read_one_config(str(path)) == {
        "A": ["1", "2", "3"], "B": "x y", "C": "d=e", "EMPTY": "", "SPACED KEY": "v"}


def test_scripts_remote_dir_repeated_and_lowercase(tmp_path: Path) -> None:
    one = make_one_location(tmp_path, config=(
        "scripts_remote_dir = /first \nOTHER=1\nSCRIPTS_REMOTE_DIR=/second\n"))
    assert config_for(["kvm"], base_environ(one)).scripts_remote_dir == "/second"


def test_missing_config_file_uses_default_with_a_note(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    one = make_one_location(tmp_path)
    (one / "var" / "config").unlink()
    config = config_for(["kvm"], base_environ(one))
    assert config.scripts_remote_dir == DEFAULT_SCRIPTS_REMOTE_DIR == "/var/tmp/one"
    notes = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("config" in n.lower() for n in notes)
    assert any(DEFAULT_SCRIPTS_REMOTE_DIR in n for n in notes)


def test_config_without_scripts_remote_dir_uses_default(tmp_path: Path) -> None:
    one = make_one_location(tmp_path, config="VM_MAD=kvm\n")
    assert config_for(["kvm"], base_environ(one)).scripts_remote_dir == "/var/tmp/one"


# --------------------------------------------------------------------------------------
# rc files
# --------------------------------------------------------------------------------------


def test_rc_option_is_sourced_and_exported(tmp_path: Path) -> None:
    one = make_one_location(tmp_path)
    first = tmp_path / "first.rc"
    first.write_text('# a comment\nLIVE_DISK_SNAPSHOTS="kvm-qcow2 kvm-ceph"\n'
                     "RC_A=1\nRC_B=\"${RC_A}2\"\nRC_SPACES='a  b'\n")
    second = tmp_path / "second.rc"
    second.write_text("RC_A=override\nRC_C=\"$RC_B-$RC_A\"\nVNMAD_LOCAL_ACTIONS=elastic-pre\n")
    environ = base_environ(one)
    config = config_for(["--rc", str(first), "--rc", str(second), "kvm"], environ)
    assert environ["RC_A"] == "override"
    assert environ["RC_B"] == "12"
    assert environ["RC_C"] == "12-override"
    assert environ["RC_SPACES"] == "a  b"
    assert config.live_disk_snapshots == ("kvm-qcow2", "kvm-ceph")
    assert config.vnmad_local_actions == ("elastic-pre",)


def test_missing_rc_option_file_is_ignored(tmp_path: Path) -> None:
    one = make_one_location(tmp_path)
    environ = base_environ(one)
    before = dict(environ)
    config_for(["--rc", str(tmp_path / "nope"), "kvm"], environ)
    assert environ == before


def test_wrapper_environment_sources_defaultrc_then_vmm_execrc(tmp_path: Path) -> None:
    one = make_one_location(tmp_path, vmm_execrc="RC_X=vmm\nRC_Y=\"$RC_Z+vmm\"\n")
    (one / "etc" / "defaultrc").write_text("RC_X=default\nRC_Z=from-default\n")
    environ = base_environ(one)
    wrapper_environment(Paths(str(one)), environ)
    assert environ["RC_X"] == "vmm"
    assert environ["RC_Z"] == "from-default"
    assert environ["RC_Y"] == "from-default+vmm"


@pytest.mark.parametrize("rc_text, name, value", [
    ("export RC_EXPORTED=yes\n", "RC_EXPORTED", "yes"),
    ("if true; then\n    RC_PRESET=changed\nfi\n", "RC_PRESET", "changed"),
])
def test_wrapper_environment_exports_what_the_rc_file_exports(
        tmp_path: Path, rc_text: str, name: str, value: str) -> None:
    one = make_one_location(tmp_path, vmm_execrc=rc_text)
    environ = base_environ(one, RC_PRESET="original")
    wrapper_environment(Paths(str(one)), environ)
    assert environ.get(name) == value


def test_rc_files_reach_the_scripts_of_the_real_driver(tmp_path: Path) -> None:
    """End to end: vmm_execrc is sourced first, then --rc (which sees its variables),
    and the result is in the environment of the scripts the driver runs."""
    ctrl = tmp_path / "ctrl"
    journal = Journal(ctrl)
    journal.release_all()
    one = make_one_location(tmp_path, vmm_execrc="RC_ONE=execrc\n")
    rc = tmp_path / "extra.rc"
    rc.write_text('VMM_TEST_EXTRA="$RC_ONE+option"\n')
    env = driver_env(one, ctrl)
    env.pop("VMM_TEST_EXTRA", None)
    with SimulatedOned(["-t", "2", "-l", "poll", "--rc", str(rc), "kvm"], env=env,
                       cwd=tmp_path).start() as driver:
        driver.send_action("POLL", 3, poll_xml(3, "h1"))
        answer = driver.wait_answer(3, timeout=10)
        assert answer.success
        assert answer.info == "STATE=a execrc+option"


def test_scripts_run_in_var_location_like_the_wrapper(tmp_path: Path) -> None:
    one = make_one_location(tmp_path, scripts={"poll": '#!/bin/sh\necho "STATE=a CWD=$(pwd)"\n'})
    env = driver_env(one, tmp_path / "ctrl")
    with SimulatedOned(["-l", "poll", "kvm"], env=env, cwd=tmp_path).start() as driver:
        driver.send_action("POLL", 4, poll_xml(4, "h1"))
        answer = driver.wait_answer(4, timeout=10)
        assert answer.success
        assert answer.info == f"STATE=a CWD={one / 'var'}"


def _nice_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    return int(data[data.rfind(b")") + 2:].split()[16])


@pytest.mark.parametrize("env_priority, defaultrc, increment", [
    (None, None, 19),       # madcommon.sh: PRIORITY defaults to 19
    ("0", None, 0),
    (None, "PRIORITY=5\n", 5),
])
def test_priority_like_the_wrapper(tmp_path: Path, env_priority: object, defaultrc: object,
                                   increment: int) -> None:
    one = make_one_location(tmp_path)
    if defaultrc is not None:
        (one / "etc" / "defaultrc").write_text(str(defaultrc))
    env = driver_env(one, tmp_path / "ctrl")
    env.pop("PRIORITY", None)
    if env_priority is not None:
        env["PRIORITY"] = str(env_priority)
    own = os.nice(0)
    with SimulatedOned(["kvm"], env=env, cwd=tmp_path).start() as driver:
        assert driver.pid is not None
        assert _nice_of(driver.pid) == min(own + increment, 19)


def test_debug_log_receives_diagnostics(tmp_path: Path) -> None:
    one = make_one_location(tmp_path)
    env = driver_env(one, tmp_path / "ctrl", ONE_MAD_DEBUG="1")
    with SimulatedOned(["-t", "2", "kvm"], env=env, cwd=tmp_path).start() as driver:
        driver.send_raw(" malformed line")
        driver.send_raw("NOSUCH  1 x")
        assert driver.finalize(timeout=10) == 0
        assert driver.lines == ["INIT SUCCESS - -"]
    logs = list((one / "var").glob("*.log"))
    assert len(logs) == 1, logs
    text = logs[0].read_text()
    assert "Malformed" in text and "NOSUCH" in text


def test_debug_log_from_defaultrc_named_after_the_hypervisor(tmp_path: Path) -> None:
    """``ONE_MAD_DEBUG`` set the usual way (in ``etc/defaultrc``, which the wrapper
    sources) opens the debug log; its name comes from the HYPERVISOR operand, not
    from the last word of ARGUMENTS (``-w 30`` last)."""
    one = make_one_location(tmp_path)
    (one / "etc" / "defaultrc").write_text("ONE_MAD_DEBUG=1\n")
    env = driver_env(one, tmp_path / "ctrl")
    env.pop("ONE_MAD_DEBUG", None)
    with SimulatedOned(["-t", "15", "-r", "0", "kvm", "-w", "30"], env=env,
                       cwd=tmp_path).start() as driver:
        driver.send_raw(" malformed line")
        assert driver.finalize(timeout=10) == 0
    logs = sorted(p.name for p in (one / "var").glob("*.log"))
    assert logs == ["one_vmm_exec_kvm.log"]
    text = (one / "var" / "one_vmm_exec_kvm.log").read_text()
    assert "Malformed message" in text
    # timestamps and thread names: a line an operator can place
    line = next(x for x in text.splitlines() if "Malformed message" in x)
    assert line[:4].isdigit() and "[oned-reader]" in line


def test_no_debug_log_without_one_mad_debug(tmp_path: Path) -> None:
    one = make_one_location(tmp_path)
    env = driver_env(one, tmp_path / "ctrl")
    env.pop("ONE_MAD_DEBUG", None)
    with SimulatedOned(["kvm"], env=env, cwd=tmp_path).start() as driver:
        driver.send_raw(" malformed line")
        assert driver.finalize(timeout=10) == 0
    assert list((one / "var").glob("*.log")) == []


# --------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------

ALL_OPTIONS = ["--retries", "--threads", "--local", "--delegate", "--shell", "--parallel",
               "--timeout", "--compat", "--transport", "--rc", "--hooks-dir", "--help",
               "--version", "-r", "-t", "-l", "-d", "-s", "-p", "-w", "-h"]


def test_usage_mentions_every_option() -> None:
    from vmm_exec.cli import _OPTIONS

    for option in ALL_OPTIONS:
        assert option in USAGE, option
    for name, (short, _) in _OPTIONS.items():
        assert f"--{name}" in USAGE
        if short:
            assert f"-{short}," in USAGE


def test_main_help_in_process(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    assert capsys.readouterr().out == USAGE
    assert main(["-h"]) == 0
    assert capsys.readouterr().out == USAGE
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"one-vmm-exec {__version__}\n"


def run_cli(command: List[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, ONE_LOCATION=str(tmp_path / "none"), PRIORITY="0",
               PYTHONPATH=str(ROOT))
    return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                          cwd=tmp_path, timeout=30, check=False)


def test_python_m_vmm_exec_help(tmp_path: Path) -> None:
    result = run_cli([sys.executable, "-m", "vmm_exec", "--help"], tmp_path)
    assert result.returncode == 0
    out = result.stdout.decode()
    for option in ALL_OPTIONS:
        assert option in out


def test_console_script_exists_and_works(tmp_path: Path) -> None:
    script = shutil.which("one-vmm-exec")
    assert script is not None, "the one-vmm-exec console script is not installed"
    result = run_cli([script, "--help"], tmp_path)
    assert result.returncode == 0
    assert "--threads" in result.stdout.decode()
    result = run_cli([script, "--version"], tmp_path)
    assert result.stdout.decode() == f"one-vmm-exec {__version__}\n"


def test_help_through_oned_style_argv(tmp_path: Path) -> None:
    with SimulatedOned("--help", env=dict(os.environ, PRIORITY="0"),
                       cwd=tmp_path).start(init=False) as driver:
        assert driver.wait_exit(10) == 0
        assert "--threads" in "\n".join(driver.lines)


def test_split_oned_argv_empty_arguments_give_no_words() -> None:
    assert split_oned_argv(["   "]) == []


def test_split_oned_argv_empty_string() -> None:
    assert split_oned_argv([""]) == []


@pytest.mark.parametrize("args", ["-t 15", "-t 15 -p", "",
                                  " ", "-x kvm", "--bogus kvm", "--t 3 kvm",
                                  "-t 2 --compat nope kvm", "kvm -l"])
def test_bad_command_line_exits_255_without_stdout(tmp_path: Path, args: str) -> None:
    one = make_one_location(tmp_path)
    env = driver_env(one, tmp_path / "ctrl")
    with SimulatedOned(args, env=env, cwd=tmp_path).start(init=False) as driver:
        assert driver.wait_exit(5) == 255
        assert driver.lines == []


def test_bad_command_line_subprocess(tmp_path: Path) -> None:
    result = run_cli([sys.executable, "-m", "vmm_exec", "-t", "15"], tmp_path)
    assert result.returncode == 255
    assert result.stdout == b""
    assert b"HYPERVISOR" in result.stderr
    result = run_cli([sys.executable, "-m", "vmm_exec", "--nope", "kvm"], tmp_path)
    assert result.returncode == 255
    assert result.stdout == b""
