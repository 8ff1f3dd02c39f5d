"""The shell function that reads /proc/PID/stat fields on the hosts (watchdog and group
announcements) gives what ``sed 's/.*) //' | cut`` gave, in bash and dash, whatever the
process's command name holds (blanks, parentheses: the reason fields are counted after
the last ") ")."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm_exec.transports.base import IDENTIFY_GROUP, STAT_FIELD_FUNCTION

SHELLS = [sh for sh in ("bash", "dash") if shutil.which(sh)]
SLEEP = shutil.which("sleep") or "/bin/sleep"


def fields_both_ways(shell: str, pid: int) -> tuple:
    script = STAT_FIELD_FUNCTION + "".join(
        f"__vmm_f {pid} {n}; a=$__vmm_r; "
        f"b=$(sed 's/.*) //' /proc/{pid}/stat 2>/dev/null | cut -d' ' -f{n}); "
        'echo "$a|$b"; '
        for n in (2, 3, 20))  # ppid, pgrp, starttime (the state may change between reads)
    out = subprocess.run([shell, "-c", script], capture_output=True, text=True, timeout=10)
    assert out.stderr == ""
    return tuple(line.split("|") for line in out.stdout.splitlines())


@pytest.mark.skipif(not SHELLS, reason="needs bash or dash")
@settings(max_examples=15, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("a) (b") + [" ", ")", "(", "x"]),
               min_size=1, max_size=14).filter(lambda s: s.strip() and "/" not in s))
def test_fields_match_sed_and_cut_for_any_command_name(name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        link = os.path.join(tmp, name)
        os.symlink(SLEEP, link)
        proc = subprocess.Popen([link, "30"])
        try:
            for shell in SHELLS:
                for ours, theirs in fields_both_ways(shell, proc.pid):
                    assert ours == theirs and ours, (shell, name)
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_gone_process_gives_empty_and_the_caller_s_arguments_stay(shell: str) -> None:
    script = (STAT_FIELD_FUNCTION + '__vmm_f 999999999 3; echo "rc=$? [$__vmm_r] $# $1"')
    out = subprocess.run([shell, "-c", script, "x", "keep"], capture_output=True, text=True,
                         timeout=10)
    assert (out.stdout, out.stderr) == ("rc=1 [] 1 keep\n", "")


@pytest.mark.parametrize("shell", SHELLS)
def test_identify_group_names_the_shell_s_group_and_its_leader(shell: str) -> None:
    # a new session: the shell leads its own group, so the answer is its pid and start
    script = (f'echo "$({IDENTIFY_GROUP})"; '
              "echo \"$$ $(sed 's/.*) //' /proc/$$/stat | cut -d' ' -f20)\"")
    out = subprocess.run([shell, "-c", script], capture_output=True, text=True, timeout=10,
                         start_new_session=True)
    ours, reference = out.stdout.splitlines()
    assert ours == reference and out.stderr == ""
