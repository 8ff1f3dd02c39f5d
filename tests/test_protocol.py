"""oned's line protocol: request parsing (OpenNebulaDriver#loop), the writer
(DriverExecHelper#send_message / #log) and the stderr rule of get_info_from_execution."""

from __future__ import annotations

import io
import os
import re
import threading
import time
from typing import List

import pytest
from helpers import ROOT, oracle_split_regex_ws, oracle_strip, oracle_to_i
from hypothesis import example, given
from hypothesis import strategies as st

from vmm_exec.protocol import (
    ActionLine,
    DriverCancel,
    Empty,
    Finalize,
    Gate,
    Init,
    Malformed,
    Writer,
    format_message,
    parse_line,
    split_stderr,
)

# --------------------------------------------------------------------------------------
# parse_line
# --------------------------------------------------------------------------------------


@given(st.text())
@example("")
@example("\n")
@example("\udcff\udcfe POLL")
@example("DRIVER_CANCEL")
@example(" \x00")
def test_parse_line_never_raises_and_follows_the_ruby_split(line: str) -> None:
    command = parse_line(line)
    fields = oracle_split_regex_ws(line)
    if not fields:
        assert command == Empty()
    elif fields[0] == "":
        assert command == Malformed(line)
    else:
        name = fields[0].upper()
        args = fields[1:]
        action_id = oracle_to_i(args[0]) if args else 0
        if name == "DRIVER_CANCEL":
            assert command == DriverCancel(action_id)
        elif name == "FINALIZE":
            assert command == Finalize()
        elif name == "INIT":
            assert command == Init(tuple(args))
        else:
            assert command == ActionLine(name, action_id, tuple(args))


@given(st.text(alphabet=st.sampled_from("POLL DEPLOY drv_cancel 0123456789-_\t\n\x0b\x0c\r"
                                        "\xa0\u3000=ABC+/"), max_size=40))
def test_parse_line_never_raises_on_protocol_like_text(line: str) -> None:
    parse_line(line)


@pytest.mark.parametrize("line, expected", [
    ("DEPLOY  42 PAYLOAD", ActionLine("DEPLOY", 42, ("42", "PAYLOAD"))),
    ("DEPLOY  42 PAYLOAD\n", ActionLine("DEPLOY", 42, ("42", "PAYLOAD"))),
    ("deploy 42 PAYLOAD", ActionLine("DEPLOY", 42, ("42", "PAYLOAD"))),
    ("Poll\t7\x0bX\x0c", ActionLine("POLL", 7, ("7", "X"))),
    ("POLL 007 P", ActionLine("POLL", 7, ("007", "P"))),
    ("POLL abc P", ActionLine("POLL", 0, ("abc", "P"))),
    ("POLL -3 P", ActionLine("POLL", -3, ("-3", "P"))),
    ("POLL 1_000 P", ActionLine("POLL", 1000, ("1_000", "P"))),
    ("POLL", ActionLine("POLL", 0, ())),
    ("POLL\xa01 P", ActionLine("POLL\xa01", 0, ("P",))),
    ("NOSUCH 5 a b c", ActionLine("NOSUCH", 5, ("5", "a", "b", "c"))),
    (" DEPLOY 42 P", Malformed(" DEPLOY 42 P")),
    ("\tDEPLOY 42 P\n", Malformed("\tDEPLOY 42 P\n")),
    ("", Empty()),
    ("\n", Empty()),
    ("   \t \n", Empty()),
    ("DRIVER_CANCEL", DriverCancel(0)),
    ("DRIVER_CANCEL 12", DriverCancel(12)),
    ("driver_cancel 012\n", DriverCancel(12)),
    ("DRIVER_CANCEL x", DriverCancel(0)),
    ("FINALIZE", Finalize()),
    ("finalize 3", Finalize()),
    ("INIT", Init(())),
    ("INIT a b", Init(("a", "b"))),
])
def test_parse_line_examples(line: str, expected: object) -> None:
    assert parse_line(line) == expected


# --------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------


def test_format_message_is_ruby_puts() -> None:
    assert format_message("DEPLOY", "SUCCESS", "42", "one-42") == "DEPLOY SUCCESS 42 one-42\n"
    assert format_message("POLL", "SUCCESS", 3, "STATE=a\n") == "POLL SUCCESS 3 STATE=a\n"
    assert format_message("POLL", "FAILURE", 3, None) == "POLL FAILURE 3 \n"
    assert format_message("LOG", "I", 3, "") == "LOG I 3 \n"
    assert format_message("X", "SUCCESS", 1, "a\nb") == "X SUCCESS 1 a\nb\n"


def writer_output(stream: io.BytesIO) -> str:
    return stream.getvalue().decode("utf-8", "surrogateescape")


def test_writer_send_defaults_and_info() -> None:
    stream = io.BytesIO()
    writer = Writer(stream)
    writer.send("INIT", "SUCCESS")
    writer.send("POLL", "SUCCESS", "7", "STATE=a\n")
    writer.send("DEPLOY", "FAILURE", 8, "bad\udcff")
    assert stream.getvalue() == (b"INIT SUCCESS - -\nPOLL SUCCESS 7 STATE=a\n"
                                 b"DEPLOY FAILURE 8 bad\xff\n")


def test_writer_log_maps_prefixes_like_driver_exec_helper() -> None:
    stream = io.BytesIO()
    writer = Writer(stream)
    message = ("\n  ERROR: it broke  \nplain line\n\nDEBUG:dbg\nINFO:  info \n"
               "WARN: not mapped\n  ERROR: indented\n")
    writer.log(5, message)
    assert writer_output(stream).splitlines() == [
        "LOG E 5 it broke",
        "LOG I 5 plain line",
        "LOG I 5 ",
        "LOG D 5 dbg",
        "LOG I 5 info",
        "LOG I 5 WARN: not mapped",
        "LOG I 5 ERROR: indented",
    ]


def test_writer_log_all_lines_false_keeps_only_prefixed_lines() -> None:
    stream = io.BytesIO()
    Writer(stream).log("9", "ERROR: e\nplain\n\nDEBUG: d\nINFO: i", all_lines=False)
    assert writer_output(stream).splitlines() == ["LOG E 9 e", "LOG D 9 d", "LOG I 9 i"]


def test_writer_log_empty_message_writes_nothing() -> None:
    stream = io.BytesIO()
    Writer(stream).log(1, " \n\t\n")
    Writer(stream).log(1, "")
    assert stream.getvalue() == b""


@given(st.text(alphabet=st.sampled_from("ab \t\n\r:EROIFDBUGW\0"), max_size=60),
       st.booleans())
def test_writer_log_line_per_line(message: str, all_lines: bool) -> None:
    """One LOG line per line of the stripped message (all_lines), each text stripped."""
    stream = io.BytesIO()
    Writer(stream).log(4, message, all_lines)
    out = writer_output(stream)
    expected: List[str] = []
    stripped = oracle_strip(message)
    for line in (stripped.split("\n") if stripped else []):
        m = re.match(r"(ERROR|DEBUG|INFO):(.*)", line)
        if m:
            severity = {"ERROR": "E", "DEBUG": "D", "INFO": "I"}[m.group(1)]
            expected.append(f"LOG {severity} 4 {oracle_strip(m.group(2))}\n")
        elif all_lines:
            expected.append(f"LOG I 4 {oracle_strip(line)}\n")
    assert out == "".join(expected)


class SlowStream:
    """Writes byte by byte with thread switches, so an unlocked writer interleaves."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        for i in range(len(data)):
            self.data += data[i:i + 1]
            if i % 7 == 0:
                time.sleep(0)
        return len(data)

    def flush(self) -> None:
        pass


def test_writer_is_thread_safe() -> None:
    stream = SlowStream()
    writer = Writer(stream)  # type: ignore[arg-type]
    threads_n, lines_n = 8, 40

    def work(tid: int) -> None:
        for i in range(lines_n):
            if i % 2:
                writer.send("POLL", "SUCCESS", tid, f"line-{i}-" + "x" * 50)
            else:
                writer.log(tid, f"INFO: a-{i}\nb-{i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    lines = bytes(stream.data).decode().splitlines()
    assert len(lines) == threads_n * (lines_n // 2) * 3
    pattern = re.compile(r"POLL SUCCESS (\d+) line-(\d+)-x{50}|LOG I (\d+) [ab]-(\d+)")
    assert all(pattern.fullmatch(line) for line in lines), lines
    for tid in range(threads_n):
        mine = [line for line in lines if f" {tid} " in line]
        assert len(mine) == (lines_n // 2) * 3


class BrokenStream:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    def write(self, data: bytes) -> int:
        self.calls += 1
        raise self.exc

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("exc", [BrokenPipeError(32, "Broken pipe"), OSError(5, "EIO"),
                                 ValueError("I/O operation on closed file")])
def test_writer_on_broken_stream_is_a_noop(exc: Exception) -> None:
    stream = BrokenStream(exc)
    writer = Writer(stream)  # type: ignore[arg-type]
    writer.send("POLL", "SUCCESS", 1, "x")
    assert writer.closed
    writer.send("POLL", "SUCCESS", 2, "x")
    writer.log(3, "a\nb")
    assert stream.calls == 1


def test_writer_on_closed_pipe() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    stream = os.fdopen(write_fd, "wb", buffering=0)
    try:
        writer = Writer(stream)
        writer.send("INIT", "SUCCESS")
        writer.log(1, "hello")
        assert writer.closed
    finally:
        stream.close()


def test_writer_on_closed_file_object() -> None:
    stream = io.BytesIO()
    stream.close()
    writer = Writer(stream)
    writer.send("INIT", "SUCCESS")
    assert writer.closed


def test_shut_gate_suppresses_lines() -> None:
    stream = io.BytesIO()
    writer = Writer(stream)
    gate = Gate()
    writer.send("POLL", "SUCCESS", 1, "before", gate=gate)
    writer.log(1, "ERROR: before", gate=gate)
    gate.shut()
    writer.send("POLL", "SUCCESS", 1, "after", gate=gate)
    writer.log(1, "ERROR: after", gate=gate)
    writer.log_line("I", 1, "after", gate=gate)
    writer.send("POLL", "SUCCESS", 2, "other")
    assert writer_output(stream).splitlines() == [
        "POLL SUCCESS 1 before", "LOG E 1 before", "POLL SUCCESS 2 other"]
    assert not writer.closed


# --------------------------------------------------------------------------------------
# split_stderr (get_info_from_execution)
# --------------------------------------------------------------------------------------

SCENARIO = ROOT / "compat" / "scenarios" / "stderr_log_lines"


def _fault_stderrs() -> List[str]:
    """The stderr texts injected by the scenario's faults file."""
    out = []
    for line in (SCENARIO / "faults").read_text().splitlines():
        m = re.search(r'stderr="((?:[^"\\]|\\.)*)"', line)
        if m:
            out.append(m.group(1).encode().decode("unicode_escape"))
    return out


def test_split_stderr_scenario_faults() -> None:
    shutdown, clean, reboot = _fault_stderrs()
    assert split_stderr(shutdown) == ([
        ("I", "42", "shutting down"),
        ("D", "42", "virsh shutdown one-42"),
        ("W", "42", "slow guest"),
        ("E", "42", "not really an error"),
    ], "plain line on stderr")
    assert split_stderr(clean) == ([
        ("I", "-1", "cleaning"),
        ("E", "42", "iptables failed"),
    ], "first reasonsecond reason")
    assert split_stderr(reboot) == ([("I", "43", "spaced   message")], "ERROR:no-space")


def test_split_stderr_scenario_expected_stdout_lines() -> None:
    """The LOG lines split_stderr yields appear verbatim in the recorded transcript."""
    expected = (SCENARIO / "expected.stdout").read_text().splitlines()
    for stderr in _fault_stderrs():
        logs, _ = split_stderr(stderr)
        for severity, msg_id, text in logs:
            assert f"LOG {severity} {msg_id} {text}" in expected
    assert any(line.endswith(" bridge: first reasonsecond reasonExitCode: 1")
               for line in expected)


@pytest.mark.parametrize("stderr, logs, err", [
    ("INFO: 042 octal", [("I", "34", "octal")], ""),
    ("INFO: 09 bad octal", [("I", "-1", "bad octal")], ""),
    ("WARN: no id", [("W", "-1", "no id")], ""),
    ("DEBUG: 7", [("D", "7", "")], ""),
    ("ERROR: 5abc", [("E", "5", "abc")], ""),
    ("INFO:x", [], "INFO:x"),
    ("NOTICE: 1 x", [], "NOTICE: 1 x"),
    ("  INFO: 3 indented  \n", [("I", "3", "indented")], ""),
    ("xINFO: 3 y", [], "xINFO: 3 y"),
    ("a\n\nb\n", [], "ab"),
    ("", [], ""),
    ("one\r\ntwo", [], "onetwo"),
])
def test_split_stderr_examples(stderr: str, logs: list, err: str) -> None:
    assert split_stderr(stderr) == (logs, err)


@given(st.sampled_from(["ERROR", "INFO", "WARN", "DEBUG"]),
       st.integers(min_value=0, max_value=10**12),
       st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)),
               max_size=40),
       st.sampled_from(["", " ", "\t", "  \r"]))
def test_split_stderr_roundtrips_formatted_lines(level: str, vmid: int, msg: str,
                                                 pad: str) -> None:
    line = f"{pad}{level}: {vmid} {msg}{pad}\n"
    logs, err = split_stderr(line + "not a log line\n")
    assert logs == [(level[0], str(vmid), oracle_strip(msg))]
    assert err == "not a log line"



def test_ids_of_thousands_of_digits_are_read_and_written() -> None:
    """Ruby reads any number of digits (a bignum); CPython refuses over 4300 by default."""
    digits = "9" * 5000
    command = parse_line(f"DRIVER_CANCEL {digits}")
    assert isinstance(command, DriverCancel)
    assert format_message("LOG", "I", command.action_id, "x") == f"LOG I {digits} x\n"
    logs, _ = split_stderr(f"ERROR: {digits} boom\n")
    assert logs == [("E", digits, "boom")]
