"""Property tests of vmm_exec.rubyisms against oracles written from the Ruby rules.

The oracles live in tests/helpers.py and never call the code under test; where a rule
has a sharp edge (octal ids, base64 padding, File.dirname's root) there are explicit
examples as well.
"""

from __future__ import annotations

import base64
import subprocess

import pytest
from helpers import (
    oracle_decode64,
    oracle_dirname,
    oracle_each_line,
    oracle_encode64,
    oracle_first_byte_signed,
    oracle_integer,
    oracle_parse_actions_list,
    oracle_shell_escape,
    oracle_split_regex_ws,
    oracle_split_words,
    oracle_strip,
    oracle_to_i,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmm_exec import rubyisms

# Characters that make the whitespace rules interesting: Ruby's own whitespace, NUL,
# and Unicode/ASCII separators that Python's str.split()/strip() would (wrongly) use.
TRICKY_SPACE = " \t\n\v\f\r\0\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2003\u2028\u3000"
tricky_text = st.text(alphabet=st.sampled_from(TRICKY_SPACE + "ab1_=,-+xé"), max_size=40)
any_text = st.one_of(tricky_text, st.text(max_size=40))


# --------------------------------------------------------------------------------------
# to_i / integer
# --------------------------------------------------------------------------------------

to_i_text = st.text(alphabet=st.sampled_from(" \t\n\v\f\r\0\xa0+-_0123456789ax"), max_size=20)


@given(st.one_of(to_i_text, st.text(max_size=20).filter(lambda s: "d" not in s.lower())))
@example("  -12_345xyz")
@example("1__2")
@example("_12")
@example("+-1")
@example("- 1")
@example("\v\f42")
@example("\xa042")
@example("٣")  # an Arabic-Indic digit is not a digit for Ruby
def test_to_i_matches_ruby_rule(text: str) -> None:
    assert rubyisms.to_i(text) == oracle_to_i(text)


@pytest.mark.parametrize("text, value", [
    ("42", 42), ("007", 7), ("-3", -3), ("+5", 5), ("abc", 0), ("", 0), ("12abc", 12),
    ("1_000", 1000), ("1__0", 1), ("1_", 1), ("  \n 9", 9), ("0x1A", 0), ("0b1", 0),
])
def test_to_i_examples(text: str, value: int) -> None:
    assert rubyisms.to_i(text) == value


def test_to_i_accepts_ruby_0d_prefix() -> None:
    assert rubyisms.to_i("0d12") == 12
    assert rubyisms.to_i("-0D7") == -7


@given(st.text(alphabet="0123456789", min_size=1, max_size=25))
@example("0")
@example("00")
@example("042")
@example("09")
@example("0778")
def test_integer_matches_ruby_rule_on_digit_strings(digits: str) -> None:
    assert rubyisms.integer(digits) == oracle_integer(digits)


@given(st.text(max_size=10))
def test_integer_rejects_what_ruby_rejects(text: str) -> None:
    assert rubyisms.integer(text) == oracle_integer(text)


@pytest.mark.parametrize("digits, value", [
    ("42", 42), ("042", 34), ("0", 0), ("00", 0), ("09", None), ("0778", None),
    ("010", 8), ("", None), ("1a", None), ("٣", None), (" 1", None),
])
def test_integer_examples(digits: str, value: object) -> None:
    assert rubyisms.integer(digits) == value


# --------------------------------------------------------------------------------------
# splitting, stripping, lines
# --------------------------------------------------------------------------------------


@given(any_text)
@example("")
@example("   ")
@example("a\xa0b")
@example("a\x1cb\x85c")
@example("\0a b\0")
def test_split_words_is_awk_split_on_ascii_whitespace(text: str) -> None:
    assert rubyisms.split_words(text) == oracle_split_words(text)


def test_split_words_examples() -> None:
    assert rubyisms.split_words("  kvm-qcow2\tkvm-ceph \n") == ["kvm-qcow2", "kvm-ceph"]
    assert rubyisms.split_words("a\u3000b\xa0c") == ["a\u3000b\xa0c"]
    assert rubyisms.split_words("a\vb\fc") == ["a", "b", "c"]
    assert rubyisms.split_words("") == []


@given(any_text)
@example(" a b ")
@example("  ")
@example("\ta")
@example("a\x1cb")
def test_split_regex_ws_matches_ruby(text: str) -> None:
    assert rubyisms.split_regex_ws(text) == oracle_split_regex_ws(text)


def test_split_regex_ws_examples() -> None:
    assert rubyisms.split_regex_ws(" a  b \n") == ["", "a", "b"]
    assert rubyisms.split_regex_ws("DEPLOY  42 X\n") == ["DEPLOY", "42", "X"]
    assert rubyisms.split_regex_ws("   ") == []
    assert rubyisms.split_regex_ws("") == []
    assert rubyisms.split_regex_ws("a\xa0b") == ["a\xa0b"]


@given(any_text)
@example("\0 a \0")
@example("\xa0a\xa0")
@example("\u3000")
def test_strip_only_ruby_whitespace_and_nul(text: str) -> None:
    assert rubyisms.strip(text) == oracle_strip(text)


def test_strip_examples() -> None:
    ruby_strip = rubyisms.strip
    assert ruby_strip("\0\t\n\v\f\r x \r\n\0") == "x"
    assert ruby_strip("\xa0x\u2003") == "\xa0x\u2003"
    assert ruby_strip("\x1cx") == "\x1cx"


@given(st.text(alphabet=st.sampled_from("ab\n\r \0"), max_size=30))
@example("")
@example("\n")
@example("a\n\nb")
@example("a\r\nb\n")
def test_each_line_matches_ruby(text: str) -> None:
    lines = rubyisms.each_line(text)
    assert lines == oracle_each_line(text)
    assert "".join(lines) == text


# --------------------------------------------------------------------------------------
# Shellwords.escape
# --------------------------------------------------------------------------------------

shell_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                     max_size=30)


SHELL_SPECIAL = "a'\"\\$`\n !*?~#&;|<>(){}[]=%^+@,.:/-_"


@given(st.one_of(shell_text, st.text(alphabet=st.sampled_from(SHELL_SPECIAL), max_size=30)))
@example("")
@example("\n")
@example("a b")
@example("it's")
@example("é")
@example("$(id)")
def test_shell_escape_matches_shellwords(text: str) -> None:
    assert rubyisms.shell_escape(text) == oracle_shell_escape(text)


@settings(max_examples=60, deadline=None)
@given(st.one_of(shell_text, st.text(alphabet=st.sampled_from("a'\"\\$`\n \t!*?~#&;|<>(){}"),
                                     max_size=30)))
@example("")
@example("\n\n")
@example("-n")
@example("'\\''")
@example("~root")
@example("*")
@example("é ü")
def test_shell_escape_survives_sh(text: str) -> None:
    escaped = rubyisms.shell_escape(text)
    result = subprocess.run(["/bin/sh", "-c", "printf %s " + escaped], capture_output=True,
                            timeout=10, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == text.encode("utf-8")


# --------------------------------------------------------------------------------------
# Base64
# --------------------------------------------------------------------------------------

b64_text = st.text(alphabet=st.sampled_from(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n\r !-_é"), max_size=40)


@given(st.one_of(b64_text, st.text(max_size=30)))
@example("")
@example("Q")
@example("QQ")
@example("QUI")
@example("QUJD")
@example("QQ==QUJD")
@example("QUI=QUJD")
@example("==QUJD")
@example("Q=Q=")
@example("QU#=")
@example("QUJDR")
@example("Q U\nJ\r\nD")
def test_decode64_matches_unpack_m(text: str) -> None:
    assert rubyisms.decode64(text) == oracle_decode64(text)


@pytest.mark.parametrize("text, expected", [
    ("QUJD", b"ABC"), ("QUI=", b"AB"), ("QQ==", b"A"), ("QUI", b"AB"), ("QQ", b"A"),
    ("Q", b""), ("QQ==QUJD", b"A"), ("==QUJD", b"ABC"), ("Q!U@J#D$", b"ABC"), ("", b""),
])
def test_decode64_examples(text: str, expected: bytes) -> None:
    assert rubyisms.decode64(text) == expected


junk_char = st.sampled_from(list("\n\r\t !#$%&*-_.~é\0"))


@given(st.binary(max_size=200), st.data())
def test_decode64_inverts_strict_base64_with_junk_and_no_padding(data: bytes,
                                                                 draw: st.DataObject) -> None:
    strict = base64.b64encode(data).decode("ascii")
    assert rubyisms.decode64(strict) == data
    assert rubyisms.decode64(strict.rstrip("=")) == data
    chars = list(strict)
    for _ in range(draw.draw(st.integers(0, 10))):
        position = draw.draw(st.integers(0, len(chars)))
        chars.insert(position, draw.draw(junk_char))
    noisy = "".join(chars)
    assert rubyisms.decode64(noisy) == data
    assert rubyisms.decode64(noisy.replace("=", "")) == data


@given(st.binary(max_size=300))
@example(b"")
@example(b"x" * 45)
@example(b"x" * 46)
def test_encode64_is_pack_m(data: bytes) -> None:
    encoded = rubyisms.encode64(data)
    assert encoded == oracle_encode64(data)
    lines = encoded.split("\n")
    assert lines[-1] == ""
    assert all(len(line) == 60 for line in lines[:-2])
    assert all(0 < len(line) <= 60 for line in lines[:-1])
    assert rubyisms.decode64(encoded) == data


# --------------------------------------------------------------------------------------
# parse_actions_list
# --------------------------------------------------------------------------------------


def test_parse_actions_list_examples() -> None:
    assert rubyisms.parse_actions_list("deploy,poll=poll_local") == {
        "DEPLOY": None, "POLL": "poll_local"}
    assert rubyisms.parse_actions_list(" deploy , shutdown ,poll=poll_ganglia, cancel ") == {
        "DEPLOY": None, "SHUTDOWN": None, "POLL": "poll_ganglia", "CANCEL": None}
    # Ruby's /([^=]+)(=(.*))?/ is unanchored: a leading "=" is skipped.
    assert rubyisms.parse_actions_list("=foo") == {"FOO": None}
    assert rubyisms.parse_actions_list("migrate") == {"MIGRATE": None}
    assert rubyisms.parse_actions_list("") == {}
    assert rubyisms.parse_actions_list(",,") == {}
    assert rubyisms.parse_actions_list("a=b=c") == {"A": "b=c"}
    assert rubyisms.parse_actions_list("poll=") == {"POLL": ""}
    assert rubyisms.parse_actions_list("poll = x") == {"POLL ": "x"}
    assert rubyisms.parse_actions_list("==") == {}


@given(st.text(alphabet=st.sampled_from("ab=, \t\n\0x_"), max_size=30))
@example("a=\nb")
@example("\0a,b\0")
def test_parse_actions_list_matches_ruby(text: str) -> None:
    assert rubyisms.parse_actions_list(text) == oracle_parse_actions_list(text)


# --------------------------------------------------------------------------------------
# File.dirname, unpack('c')
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, expected", [
    ("/var/lib/one/datastores/0/1/deployment.0", "/var/lib/one/datastores/0/1"),
    ("a/b", "a"), ("a/b/", "a"), ("a//b", "a"), ("a", "."), ("a/", "."), ("", "."),
    ("/", "/"), ("//", "/"), ("///", "/"), ("/a", "/"), ("//a", "/"), ("/a/b//", "/a"),
    ("a//b//c", "a//b"),
])
def test_dirname_examples(path: str, expected: str) -> None:
    assert rubyisms.dirname(path) == expected == oracle_dirname(path)


@given(st.text(alphabet=st.sampled_from("/ab."), max_size=12).filter(
    lambda p: not p.startswith("//")))
def test_dirname_matches_ruby(path: str) -> None:
    assert rubyisms.dirname(path) == oracle_dirname(path)


@pytest.mark.parametrize("path, expected", [("//a/b", "/a"), ("///x/y/z", "/x/y")])
def test_dirname_collapses_leading_slashes(path: str, expected: str) -> None:
    assert oracle_dirname(path) == expected
    assert rubyisms.dirname(path) == expected


@given(st.characters(blacklist_categories=("Cs",)))
@example("a")
@example("z")
@example("é")
@example("\x7f")
def test_first_byte_signed(char: str) -> None:
    assert rubyisms.first_byte_signed(char) == oracle_first_byte_signed(char)


def test_first_byte_signed_examples() -> None:
    assert rubyisms.first_byte_signed("a") == 97
    assert rubyisms.first_byte_signed("é") == 0xC3 - 256
    with pytest.raises(ValueError):
        rubyisms.first_byte_signed("")


# -- integers of any length (Ruby bignums; CPython refuses > 4300 digits by default) --
@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=9).flatmap(
    lambda first: st.text("0123456789", min_size=1, max_size=9000).map(
        lambda rest: str(first) + rest)))
def test_to_i_and_decimal_of_any_length(digits: str) -> None:
    """``to_i`` then ``to_s`` gives the digits back without leading zeros, at any length."""
    expected = digits.lstrip("0") or "0"
    assert rubyisms.decimal(rubyisms.to_i(digits)) == expected
    assert rubyisms.decimal(-rubyisms.to_i(digits)) == ("-" + expected if expected != "0"
                                                        else "0")


def test_integer_of_many_digits_is_read() -> None:
    assert rubyisms.decimal(rubyisms.integer("7" * 5000) or 0) == "7" * 5000
