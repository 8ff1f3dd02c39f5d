"""Shell quoting (``vmm_exec.quoting``), checked against a real POSIX shell.

``single_quoted`` and ``bare`` must give back exactly the value after ``/bin/sh``
has parsed them (no splitting, no expansion, no injection), ``bare`` must keep
the Ruby text for ordinary words, ``heredoc_delimiter`` must never end a
here-document early, and ``shellwords`` is Ruby's ``Shellwords.escape``.
"""

from __future__ import annotations

import re
import subprocess
from typing import List

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmm_exec.quoting import (
    bare,
    check_operand,
    heredoc_delimiter,
    host_problem,
    name_problem,
    one_line,
    shellwords,
    single_quoted,
)

SH = "/bin/sh"
SAFE = r"[A-Za-z0-9_@%+=:,./-]+"
# arbitrary text a shell argument can carry: no NUL, no lone surrogates (not text)
text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
               max_size=40)
nasty = st.sampled_from(["'", '"', "\\", "$(touch X)", "`id`", " ", "\t", "\n", "*", "?",
                         "~", "#", ";", "&", "|", "<", ">", "!", "{a,b}", "$HOME", "-n",
                         "%s", "\r", "é", "\u2028"])
words = st.one_of(text, st.lists(st.one_of(text, nasty), max_size=6).map("".join))


def sh_printf(*shell_words: str) -> str:
    """What ``printf '<%s>' WORD...`` prints when /bin/sh parses the words."""
    script = "printf '<%s>' " + " ".join(shell_words)
    out = subprocess.run([SH, "-c", script], capture_output=True, timeout=10, check=True)
    return out.stdout.decode("utf-8", "surrogateescape")


def sh_heredoc(body: str, delimiter: str) -> str:
    """A here-document as the stream writes it (``cat << 'D'``, the body, ``D``) to the
    stream's shell, bash (dash drops the byte 0xC2 before 0x80 in here-documents)."""
    script = f"cat << '{delimiter}'\n{body}\n{delimiter}\necho AFTER\n"
    out = subprocess.run(["bash", "-c", script], capture_output=True, timeout=10, check=True)
    return out.stdout.decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------
# single_quoted, bare
# ---------------------------------------------------------------------------
@settings(max_examples=150, deadline=None, database=None)
@given(words)
@example("it's")
@example("'")
@example("''''")
@example("$(touch X)")
@example("a\nb")
@example("")
def test_single_quoted_round_trips_through_sh(value: str) -> None:
    """``single_quoted(v)`` is one shell word whose value is exactly ``v``."""
    assert sh_printf(single_quoted(value)) == f"<{value}>"


@settings(max_examples=150, deadline=None, database=None)
@given(words.filter(bool))
@example("one-42")
@example("with space")
@example("it's")
@example("$(touch X)")
@example("~root")
@example("a=b")
def test_bare_round_trips_through_sh(value: str) -> None:
    """``bare(v)`` of a non-empty value is one shell word whose value is exactly ``v``."""
    assert sh_printf(bare(value)) == f"<{value}>"


def test_bare_empty_value_disappears_like_ruby() -> None:
    """An empty value stays empty: the word vanishes, as Ruby's interpolation did."""
    assert bare("") == ""
    assert sh_printf("a", bare(""), "b") == "<a><b>"


@settings(max_examples=200, deadline=None, database=None)
@given(st.from_regex(SAFE, fullmatch=True))
@example("/var/lib/one//datastores/0/42")
@example("host01")
@example("02:00:0a:00:00:2a")
@example("a,b+c@d%e=f")
def test_bare_keeps_ordinary_words_unchanged(value: str) -> None:
    """Values made only of ``[A-Za-z0-9_@%+=:,./-]`` are the Ruby text, byte for byte."""
    assert bare(value) == value


@settings(max_examples=200, deadline=None, database=None)
@given(words.filter(lambda v: v != "" and not re.fullmatch(SAFE, v)))
@example(" ")
@example("é")
@example("x\n")
@example("~")
def test_bare_quotes_everything_else(value: str) -> None:
    """Any other non-empty value is single-quoted."""
    assert bare(value) == single_quoted(value)


@pytest.mark.parametrize("value, quoted", [
    ("abc", "'abc'"),
    ("", "''"),
    ("it's", "'it'\\''s'"),
    ("''", "''\\'''\\'''"),
    ("$(touch X)", "'$(touch X)'"),
])
def test_single_quoted_text(value: str, quoted: str) -> None:
    """The Ruby ``'value'`` text, with ``'`` written as ``'\\''``."""
    assert single_quoted(value) == quoted


# ---------------------------------------------------------------------------
# heredoc_delimiter
# ---------------------------------------------------------------------------
lines = st.lists(st.one_of(st.sampled_from(["EOT", "EOT_0", "EOT_1", "EOT_2", "EOT ", " EOT",
                                            "EOT\r", "eot", "", "$(touch X)", "'EOT'"]),
                           st.text(st.characters(blacklist_characters="\0\n",
                                                 blacklist_categories=("Cs",)), max_size=12)),
                 max_size=8)


@settings(max_examples=150, deadline=None, database=None)
@given(lines)
@example(["EOT"])
@example(["EOT", "EOT_0", "EOT_1"])
@example(["x", "EOT", ""])
@example(["E\x80"])  # U+0080 (bytes C2 80): dash would drop the C2
def test_heredoc_delimiter_never_ends_the_body_early(body_lines: List[str]) -> None:
    """The delimiter is no line of the body, and the stream's shell reads the whole body
    back."""
    body = "\n".join(body_lines)
    delimiter = heredoc_delimiter(body)
    assert delimiter not in body.split("\n")
    assert re.fullmatch(r"EOT(_[0-9]+)?", delimiter)
    assert sh_heredoc(body, delimiter) == body + "\nAFTER\n"


@pytest.mark.parametrize("body", ["", "<VM><ID>42</ID></VM>", "a\nEOT_0\nb", "xEOT\nEOTx",
                                  "EOT \n EOT", "EOT\r\n"])
def test_heredoc_delimiter_is_rubys_eot_for_ordinary_bodies(body: str) -> None:
    """Only a body with a line exactly ``EOT`` gets another delimiter (transcripts unchanged)."""
    assert heredoc_delimiter(body) == "EOT"


def test_heredoc_delimiter_skips_every_taken_name() -> None:
    """``EOT``, ``EOT_0``, ``EOT_1`` taken: ``EOT_2``."""
    assert heredoc_delimiter("EOT_1\nEOT\nEOT_0\n") == "EOT_2"


# ---------------------------------------------------------------------------
# shellwords (Ruby Shellwords.escape)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("value, escaped", [
    # "An empty argument will be skipped, so return empty quotes."
    ("", "''"),
    # the example of the Ruby documentation
    ("It's better to give than to receive",
     "It\\'s\\ better\\ to\\ give\\ than\\ to\\ receive"),
    # the safe set [A-Za-z0-9_\-.,:+/@] (and \n) is left alone
    ("/usr/bin/foo-1.2_3,4:5+6@host", "/usr/bin/foo-1.2_3,4:5+6@host"),
    # every other character gets a backslash, multibyte characters included
    ("uname -a", "uname\\ -a"),
    ("$(touch X)", "\\$\\(touch\\ X\\)"),
    ("a=b%c", "a\\=b\\%c"),
    ("\"'`\\", "\\\"\\'\\`\\\\"),
    ("*?[]~#!&;|<>{}^", "\\*\\?\\[\\]\\~\\#\\!\\&\\;\\|\\<\\>\\{\\}\\^"),
    ("a\tb", "a\\\tb"),
    ("café", "caf\\é"),
    # "A LF cannot be escaped with a backslash": it is put in single quotes
    ("a\nb", "a'\n'b"),
    ("\n", "'\n'"),
])
def test_shellwords_is_rubys_shellwords_escape(value: str, escaped: str) -> None:
    """``Shellwords.escape`` per its documented rules."""
    assert shellwords(value) == escaped


@settings(max_examples=150, deadline=None, database=None)
@given(words)
def test_shellwords_round_trips_through_sh(value: str) -> None:
    """Escaped text is one word whose value is exactly the input (empty included)."""
    assert sh_printf(shellwords(value)) == f"<{value}>"


# ---------------------------------------------------------------------------
# host names, driver names, values echoed into lines, -x operands
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["host01", "node-1.example.com", "10.0.0.1", "::1",
                                  "fe80::1%eth0", "[fe80::1]", "h_1", "oneadmin@host01"])
def test_host_names_pass(host: str) -> None:
    assert host_problem(host) is None


@pytest.mark.parametrize("host", ["-V", "-oProxyCommand=touch X", "a b", "h;id", "$(x)",
                                  "`x`", "h\nid", "x" * 300, "", "@host"])
def test_values_that_are_no_host_names_are_refused(host: str) -> None:
    problem = host_problem(host)
    assert problem is not None and problem.startswith("invalid host name")


@settings(max_examples=300, deadline=None, database=None)
@given(text)
def test_a_host_name_that_passes_is_one_word_and_no_option(value: str) -> None:
    """Whatever passes reaches ssh as exactly one argv word that is not an option."""
    if host_problem(value) is None:
        assert not value.startswith("-")
        assert shlex_split_one(value) == [value]


def shlex_split_one(value: str) -> List[str]:
    import shlex

    return shlex.split(value)


@settings(max_examples=300, deadline=None, database=None)
@given(text)
def test_a_driver_name_that_passes_stays_in_its_directory(value: str) -> None:
    if name_problem("driver", value) is None:
        assert "/" not in value and value not in (".", "..")
        assert bare(value) == value  # nothing for a shell to interpret


@settings(max_examples=300, deadline=None, database=None)
@given(text)
def test_one_line_leaves_no_line_break(value: str) -> None:
    assert "\n" not in one_line(value) and "\r" not in one_line(value)


@settings(max_examples=150, deadline=None, database=None)
@given(text)
@example("$(touch X)")
@example('a"b')
@example("/var/tmp/one/vmm/kvm/poll")
def test_check_operand_tests_exactly_that_path(path: str) -> None:
    """``[ -x OPERAND ]`` looks at the literal path (bash, the stream's shell)."""
    script = f'printf %s {check_operand(path)}'
    out = subprocess.run(["bash", "-c", script], capture_output=True, timeout=10, check=True)
    assert out.stdout.decode("utf-8", "surrogateescape") == path
    if path == "/var/tmp/one/vmm/kvm/poll":
        assert check_operand(path) == '"/var/tmp/one/vmm/kvm/poll"'  # Ruby's text
