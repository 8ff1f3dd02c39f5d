"""vmm_exec.rubyhash: the strict reader of Ruby step-list literals.

Examples pin the accepted syntax and the exact error positions; property tests
render random nested values as Ruby literals (with random spacing, comments and
escapes) and read them back, and feed arbitrary text to check that nothing but
RubyHashError ever escapes.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
import subprocess
from typing import Any, List, Tuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmm_exec.rubyhash import MAX_DEPTH, RubyHashError, Symbol, parse

S = Symbol
ERROR = object()  # an expected value meaning "this is rejected"


def same(a: Any, b: Any) -> bool:
    """Equal, with types compared exactly (Symbol vs str, bool vs int) at every level."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return (len(a) == len(b)
                and all(same(ka, kb) and same(va, vb)
                        for (ka, va), (kb, vb) in zip(a.items(), b.items())))
    return bool(a == b)


def error_of(text: str, filename: str = "<string>") -> RubyHashError:
    with pytest.raises(RubyHashError) as info:
        parse(text, filename)
    return info.value


# ---------------------------------------------------------------------------------------
# accepted syntax
# ---------------------------------------------------------------------------------------

DEPLOY = """\
steps = [
    # Execute pre-boot networking setup
    {
        :driver   => :vnm,
        :action   => :pre
    },
    # Boot the Virtual Machine
    {
        :driver       => :vmm,
        :action       => :deploy,
        :parameters   => ["/var/lib/one/datastores/0/42/deployment.0", :host],
        :stdin        => "<domain/>",
        :fail_actions => [
            {
                :driver     => :vnm,
                :action     => :clean,
                :parameters => [:host]
            }
        ]
    },
]
"""


def test_deploy_step_list() -> None:
    value = parse(DEPLOY)
    expected = [
        {S("driver"): S("vnm"), S("action"): S("pre")},
        {S("driver"): S("vmm"), S("action"): S("deploy"),
         S("parameters"): ["/var/lib/one/datastores/0/42/deployment.0", S("host")],
         S("stdin"): "<domain/>",
         S("fail_actions"): [{S("driver"): S("vnm"), S("action"): S("clean"),
                              S("parameters"): [S("host")]}]},
    ]
    assert same(value, expected)
    assert list(value[1]) == ["driver", "action", "parameters", "stdin", "fail_actions"]


def test_assignment_is_optional_and_gives_the_value() -> None:
    bare = DEPLOY.replace("steps = ", "")
    assert same(parse(bare), parse(DEPLOY))
    assert parse("hooks=[1]") == [1]
    assert parse("_x1 =\n  :a") == S("a")


NESTED = """
{ driver: :vmm, action: :migrate, "quoted key": 1, 'single': 2, ok?: 3, done!: 4,
  fail_actions: [ { driver: :vmm, action: :cancel, fail_actions: [ { driver: :vnm,
    action: :clean, no_fail: true } ] } ],
  :old => nil, 7 => false, "plain" => 'string', nil: 0, if: 1, Cap: 2, :q? => :a!, }
"""

COMMENTS = """\
# leading comment
=begin
anything here: [ } "unterminated
=end trailing words are part of the comment
steps = # after the assignment
[ # after [
  :a, # after a value
  # own line
  { # after {
    :k => # after =>
      "v#x", # the # inside a string is not a comment
    # before }
  }, # after }
=begin
=end
] # after ]
=begin
=end
# trailing comment"""

# Accepted texts and their values; Ruby (when installed) must read the same values.
ACCEPTED = [
    (NESTED, {
        S("driver"): S("vmm"), S("action"): S("migrate"), S("quoted key"): 1, S("single"): 2,
        S("ok?"): 3, S("done!"): 4,
        S("fail_actions"): [{S("driver"): S("vmm"), S("action"): S("cancel"), S("fail_actions"): [
            {S("driver"): S("vnm"), S("action"): S("clean"), S("no_fail"): True}]}],
        S("old"): None, 7: False, "plain": "string", S("nil"): 0, S("if"): 1, S("Cap"): 2,
        S("q?"): S("a!")}),
    (COMMENTS, [S("a"), {S("k"): "v#x"}]),
    ("[1]\n=begin\n=end", [1]), ("=begin\tx\n=endless\n=end\n2", 2),
    ("x = \n=begin\n=end\n 3", 3), ("[1 # c\n]", [1]),
    # escapes
    (r'"\\"', "\\"), (r'"\""', '"'), (r"'\''", "'"), (r'"\'"', "'"), (r'"\#{x}"', "#{x}"),
    (r'"\n\t\r\e\s"', "\n\t\r\x1b "), (r'"\a\b\f\v"', "\a\b\f\v"),
    (r'"\0"', "\0"), (r'"a\0b"', "a\0b"), (r'"\012"', "\n"), (r'"\101\1010"', "AA0"),
    (r'"\x41\x4"', "A\x04"), (r'"\x411"', "A1"), (r'"\xC3\xA9"', "é"),
    (r'"\u00e9\u00E9"', "éé"), (r'"\u{1F600}"', "\U0001F600"), (r'"\u{41 42  43}"', "ABC"),
    (r'"\u{ 9 }"', "\t"), (r'"\u00411"', "A1"), ('"multi\nline"', "multi\nline"),
    ('"crlf\r\nline"', "crlf\nline"), ('"# not interpolated #"', "# not interpolated #"),
    ('"é😀"', "é😀"), ('""', ""),
    (r"'a\\b'", "a\\b"), (r"'it\'s'", "it's"), (r"'\n'", "\\n"), (r"'\\\\'", "\\\\"),
    (r"'\x'", "\\x"), ("'#{x}'", "#{x}"), ("'#@x #$y'", "#@x #$y"),
    # symbols
    (r':"a b\n"', S("a b\n")), (r":'a\'b'", S("a'b")), (':""', S("")), (":a?", S("a?")),
    (":save!", S("save!")), (":Const", S("Const")), (":_", S("_")), (":café", S("café")),
    (":if", S("if")), (":nil", S("nil")), ("{:a? =>1}", {S("a?"): 1}),
    # numbers and the rest
    ("0", 0), ("-0", 0), ("+7", 7), ("-42", -42), ("1_000_000", 1000000), ("-1_2", -12),
    ("+1_000", 1000), ("123456789012345678901234567890", 123456789012345678901234567890),
    ("true", True), ("false", False), ("nil", None), ("[]", []), ("{}", {}),
    ("[1,2,]", [1, 2]), ("{a: 1,}", {S("a"): 1}), ("{:a=>1,:b=>:c}", {S("a"): 1, S("b"): S("c")}),
    ("{a:1}", {S("a"): 1}), ('{"a"=>1}', {"a": 1}), ("{-1=>2}", {-1: 2}), ("[-1,+2]", [-1, 2]),
    ("{a:\n1}", {S("a"): 1}), ("[\n1,\n2\n]", [1, 2]), ("steps=[1]", [1]), ("x =\n [1]", [1]),
    ("[\r\n1,\f\v\t2\r\n]\r\n", [1, 2]), ("{a: -1}", {S("a"): -1}), ("\ufeff[1]", [1]),
]

# Accepted here but rejected by Ruby: line breaks are whitespace everywhere here.
LENIENT = [
    ("{ :k # comment\n => 1 }", {S("k"): 1}), ("[1\n, 2]", [1, 2]),
    ("[\n[\n{\n}\n,\n]\n,\n]", [[{}]]), ("{\n:a\n=>\n1\n,\n}", {S("a"): 1}),
]

# Valid Ruby giving other values than a naive reader would, or unsupported: rejected here.
REJECTED = [
    r'"\377\277"', r'"\400"', r'"\u{}"', r'"\q"', '"a\\\nb"', r'"\M-a"', r'"#@"', r'"#@ x"',
    "'a\\'", "- 1", "-00", "017", ":a=", "{:a?=>1}", "{:a!=>1}", '"a" "b"', "[ , ]", "[a: 1]",
    "{ a: 1, :a => 2 }", "{ :a => 1, 'a' => 2 }",
]


@pytest.mark.parametrize("text, expected", ACCEPTED + LENIENT)
def test_accepted(text: str, expected: Any) -> None:
    assert same(parse(text), expected)


@pytest.mark.parametrize("text", REJECTED)
def test_rejected(text: str) -> None:
    error_of(text)


def test_symbol_type() -> None:
    sym = S("driver")
    assert sym == "driver" and hash(sym) == hash("driver") and isinstance(sym, str)
    assert {"driver": 1}[sym] == 1 and str(sym) == "driver" and type(str(sym)) is str
    assert repr(sym) == ":driver" and repr(S("a?")) == ":a?"
    assert repr(S("two words")) == ':"two words"' and repr(S("")) == ':""'
    assert repr(S('q"#\\\n')) == r':"q\"\#\\\u{a}"'
    assert type(parse(":x")) is Symbol and type(parse('"x"')) is str


@given(st.text())
def test_symbol_repr_reads_back(name: str) -> None:
    assert same(parse(repr(Symbol(name))), Symbol(name))


# ---------------------------------------------------------------------------------------
# errors: message, line and column
# ---------------------------------------------------------------------------------------

def test_error_format_names_file_line_column_and_shows_a_caret() -> None:
    text = DEPLOY.replace('"/var/lib/one/datastores/0/42/deployment.0"', "dfile")
    err = error_of(text, "hooks.rb")
    assert str(err) == (
        "hooks.rb:11:27: unexpected identifier 'dfile' (only literals are allowed: symbols, "
        "strings, numbers, true/false/nil, arrays and hashes)\n"
        "        :parameters   => [dfile, :host],\n"
        "                          ^")
    assert (err.line, err.column, err.filename) == (11, 27, "hooks.rb")
    assert err.source_line == "        :parameters   => [dfile, :host],"
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.line == 11


def test_caret_follows_tabs() -> None:
    assert str(error_of("\t[\t1, x]")).splitlines()[2] == "\t \t   ^"


def test_stdin_variable_is_rejected() -> None:
    err = error_of(DEPLOY.replace('"<domain/>"', "domain"))
    assert (err.line, err.column) == (12, 26) and "identifier 'domain'" in err.msg


ERRORS = [
    # (text, line, column, words in the message)
    ('[1, "abc', 1, 5, 'unterminated string: the " here'),
    ("[\n  'abc\n", 2, 3, "unterminated string: the ' here"),
    ('"abc\\', 1, 1, "unterminated string"),
    (':"abc', 1, 2, "unterminated string"),
    ("{ :a 1 }", 1, 6, "expected '=>' after the hash key symbol :a, found integer 1"),
    ("{ :a, :b }", 1, 5, "expected '=>'"),
    ('{ "k" :v }', 1, 7, "expected '=>' after the hash key string \"k\", found symbol :v"),
    ("{a : 1}", 1, 2, "identifier 'a'"),
    ("[1, 2}", 1, 6, "expected ',' or ']' after an array element, found '}'"),
    ("}", 1, 1, "expected a value, found '}'"),
    ("{ :a => 1 ]", 1, 11, "expected ',' or '}' after a hash value, found ']'"),
    ("[1, 2", 1, 1, "'[' is never closed"),
    ("{\n :a => [1,\n", 2, 8, "'[' is never closed (reached the end of input, expected ']')"),
    ("{ :a => ", 1, 1, "'{' is never closed"),
    ("[dfile]", 1, 2, "unexpected identifier 'dfile' (only literals are allowed"),
    ("[foo(1)]", 1, 2, "unexpected method call 'foo'"),
    ("[:a, foo.bar]", 1, 6, "unexpected identifier 'foo'"),
    ("File.join('a')", 1, 1, "unexpected constant 'File'"),
    ("STEPS = [1]", 1, 1, "unexpected constant 'STEPS'"),
    ("[:a.to_s]", 1, 4, "'.' (method calls are not allowed)"),
    ('["a".freeze]', 1, 5, "method calls"),
    ("[if]", 1, 2, "unexpected keyword 'if'"),
    ("if = 1", 1, 1, "keyword 'if'"),
    ("true = 1", 1, 6, "'='"),
    ('"abc #{x}"', 1, 6, "string interpolation '#{' is not allowed"),
    ('"#@x"', 1, 2, "interpolation '#@'"),
    ('{ s: "a\n #$0" }', 2, 2, "interpolation '#$'"),
    (':"#{x}"', 1, 3, "interpolation"),
    ("{ :a => 1,\n  :a => 2 }", 2, 3, "duplicate hash key :a (first at line 1, column 3)"),
    ("{ a: 1, :a => 2 }", 1, 9, "duplicate hash key :a"),
    ('{ "a" => 1, "a": 2 }', 1, 13, ":a has the same name as the key \"a\" at line 1, column 3"),
    ("{ 1 => 1, 1 => 2 }", 1, 11, "duplicate hash key 1"),
    ("[1] [2]", 1, 5, "expected the end of input"),
    ("[1]\n]", 2, 1, "expected the end of input"),
    ("[1] foo", 1, 5, "identifier 'foo'"),
    ("[1];", 1, 4, "';'"),
    ("steps = [1]\nother = [2]", 2, 1, "unexpected assignment 'other ='"),
    ("x = y = 1", 1, 5, "unexpected assignment 'y ='"),
    ("x\n= 1", 1, 1, "identifier 'x'"),
    ("", 1, 1, "empty input"),
    ("  # nothing\n", 2, 1, "empty input"),
    ("steps =", 1, 8, "expected a value after 'steps ='"),
    ("1.5", 1, 1, "float"),
    ("[-2.0]", 1, 2, "float"),
    ("0x1F", 1, 1, "unsupported number '0x1F'"),
    ("1e5", 1, 1, "unsupported number '1e5'"),
    ("[1_]", 1, 2, "unsupported number '1_'"),
    ("1__0", 1, 1, "unsupported number"),
    ("017", 1, 1, "leading zero"),
    ("-00", 1, 1, "leading zero"),
    ("9" * 5000, 1, 1, "integer too long"),
    ("- 1", 1, 1, "operators are not allowed"),
    ("1 + 2", 1, 3, "operators"),
    ("%w[a b]", 1, 1, "percent literals"),
    ("<<~EOS\nx\nEOS", 1, 1, "heredocs"),
    ("1..3", 1, 2, "ranges"),
    ("?a", 1, 1, "character literals"),
    ("@x", 1, 1, "instance"),
    ("$x", 1, 1, "global"),
    ("::A", 1, 1, "'::'"),
    (":", 1, 1, "unexpected ':'"),
    (":+", 1, 1, "unexpected ':'"),
    ("[1,,2]", 1, 4, "expected a value, found ','"),
    ("[a: 1]", 1, 2, "found the label 'a:'"),
    ("a: 1", 1, 1, "label"),
    ("{a: 1 b: 2}", 1, 7, "expected ',' or '}' after a hash value, found the label 'b:'"),
    ("{a:}", 1, 4, "expected a value, found '}'"),
    ("{a::b}", 1, 2, "identifier 'a'"),
    ("{ [1] => 2 }", 1, 3, "hash keys must be symbols, strings or integers"),
    ("{ true => 2 }", 1, 3, "hash keys must be"),
    ("{ nil => 2 }", 1, 3, "hash keys must be"),
    ('"a" "b"', 1, 5, "found string \"b\""),
    ('"a"\n"b"', 2, 1, "expected the end of input"),
    (r'"\q"', 1, 2, r"unsupported escape '\q'"),
    ('"a\\\nb"', 1, 3, "unsupported escape"),
    (r'"\M-a"', 1, 2, "unsupported escape"),
    (r'"\xZZ"', 1, 2, r"\x needs 1 or 2 hex digits"),
    (r'"\u12"', 1, 2, r"\u needs 4 hex digits"),
    (r'"\u{}"', 1, 2, r"\u needs"),
    (r'"\u{1234567}"', 1, 2, r"\u needs"),
    (r'"\u{41"', 1, 2, r"\u needs"),
    (r'"ok\u{110000}"', 1, 4, "invalid Unicode code point U+110000"),
    (r'"\uD800"', 1, 2, "U+D800"),
    (r'"\400"', 1, 2, "above \\377"),
    (r'"ab\xFF"', 1, 4, "valid UTF-8"),
    (r'"\xC3"', 1, 2, "valid UTF-8"),
    (r'"\xC3x"', 1, 2, "valid UTF-8"),
    (r'"\xC3\u00e9"', 1, 2, "valid UTF-8"),
    ('"a\0"', 1, 3, "control character"),
    ("[1,\n=begin\nnever ends", 2, 1, "unterminated =begin"),
    ("[1, =begin\n=end\n]", 1, 5, "'='"),
    ("[" * (MAX_DEPTH + 1), 1, MAX_DEPTH + 1, f"deeper than {MAX_DEPTH} levels"),
    ("[\x07]", 1, 2, "unexpected character '\\x07'"),
    ("[1 \\\n, 2]", 1, 4, "backslashes"),
]


@pytest.mark.parametrize("text, line, column, words", ERRORS)
def test_error_positions(text: str, line: int, column: int, words: str) -> None:
    err = error_of(text, "f.rb")
    assert (err.line, err.column) == (line, column), str(err)
    assert words in err.msg, str(err)
    assert str(err).startswith(f"f.rb:{line}:{column}: {err.msg}\n")


def test_deep_but_allowed_nesting() -> None:
    depth = MAX_DEPTH
    value = parse("[" * depth + "]" * depth)
    for _ in range(depth - 1):
        value = value[0]
    assert value == []


# ---------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\x1b": "\\e", " ": "\\s", "\a": "\\a",
           "\b": "\\b", "\f": "\\f", "\v": "\\v", "\\": "\\\\", '"': '\\"', "#": "\\#",
           "'": "\\'"}
MUST_ESCAPE = "\\\"#\r\0\x04\x1a"


def render_double(text: str, rnd: random.Random) -> str:
    """``text`` as a "..." literal, each character written raw or with a random escape."""
    out = []
    for ch in text:
        ways = [f"\\u{{{ord(ch):X}}}"]
        if ord(ch) < 0x10000:
            ways.append(f"\\u{ord(ch):04x}")
        ways.append("".join(f"\\x{b:02x}" for b in ch.encode()))  # UTF-8 bytes
        if ord(ch) < 0x80:
            ways.append(f"\\{ord(ch):03o}")
        if ch in ESCAPES:
            ways.append(ESCAPES[ch])
        if ch not in MUST_ESCAPE:
            ways += [ch] * 4
        out.append(rnd.choice(ways))
    return '"' + "".join(out) + '"'


def render_string(text: str, rnd: random.Random) -> str:
    if rnd.random() < 0.5 and not any(c in text for c in "\r\0\x04\x1a"):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return render_double(text, rnd)


def render_int(value: int, rnd: random.Random) -> str:
    digits = str(abs(value))
    out = digits[0]
    for d in digits[1:]:
        out += ("_" if rnd.random() < 0.2 else "") + d
    sign = "-" if value < 0 else rnd.choice(["", "", "+"])
    return sign + out


GAPS = [" ", " ", "", "\n", "\n    ", "\t", " # a comment, with [ { :x => \"y\" } ]\n",
        "\n=begin\n  } block comment {\n=end\n", "\r\n  "]
TIGHT = [" ", "", "\t"]  # Ruby wants ',' and '=>' on the line of what they follow
LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*[?!]?")


def render(value: Any, rnd: random.Random) -> str:
    """``value`` as a Ruby literal, with random spacing, comments, quoting and escapes."""

    def gap() -> str:
        return rnd.choice(GAPS)

    def items(parts: List[str]) -> str:
        text = gap() + (rnd.choice(TIGHT) + "," + gap()).join(parts)
        return text + (rnd.choice(TIGHT) + "," if parts and rnd.random() < 0.3 else "") + gap()

    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "nil"}[value]
    if isinstance(value, int):
        return render_int(value, rnd)
    if isinstance(value, Symbol):
        if LABEL.fullmatch(value) and rnd.random() < 0.7:
            return ":" + value
        return ":" + render_string(value, rnd)
    if isinstance(value, str):
        return render_string(value, rnd)
    if isinstance(value, list):
        return "[" + items([render(v, rnd) for v in value]) + "]"
    pairs = []
    for key, val in value.items():
        if isinstance(key, Symbol) and rnd.random() < 0.6:
            name = key if LABEL.fullmatch(key) and rnd.random() < 0.7 else render_string(key, rnd)
            pairs.append(name + ": " + gap() + render(val, rnd))  # a label needs a space after
        else:
            key_text = render(key, rnd)
            space = rnd.choice(TIGHT[:1] if key_text[-1] in "?!" else TIGHT)  # not ':a?=>'
            pairs.append(key_text + space + "=>" + gap() + render(val, rnd))
    return "{" + items(pairs) + "}"


def render_document(value: Any, rnd: random.Random) -> str:
    head = rnd.choice(["", "", "steps = ", "hooks=", "x =\n"])
    return rnd.choice(GAPS) + head + render(value, rnd) + rnd.choice(GAPS + ["\n", ""])


names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,8}[?!]?\Z")
keys = st.integers() | st.text(max_size=8) | st.text(max_size=8).map(Symbol) | names.map(Symbol)
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10**30, 10**30)
           | st.text() | st.text().map(Symbol) | names.map(Symbol))
values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(keys, kids, max_size=5),
    max_leaves=25)


@settings(max_examples=400)
@given(values, st.randoms(use_true_random=False))
def test_rendered_values_read_back(value: Any, rnd: random.Random) -> None:
    text = render_document(value, rnd)
    assert same(parse(text), value), text


def check_error(err: RubyHashError, text: str) -> None:
    text = text[1:] if text.startswith("\ufeff") else text
    lines = text.replace("\r\n", "\n").split("\n")
    assert 1 <= err.line <= len(lines)
    assert err.source_line == lines[err.line - 1]
    assert 1 <= err.column <= len(err.source_line) + 1
    assert str(err).split("\n")[0] == f"<string>:{err.line}:{err.column}: {err.msg}"
    assert str(err).split("\n")[1:] == [err.source_line, str(err).split("\n")[2]]
    assert str(err).endswith("^") and len(str(err).split("\n")[2]) == err.column


def parse_or_error(text: str) -> None:
    try:
        parse(text)
    except RubyHashError as err:
        check_error(err, text)


@settings(max_examples=500)
@given(st.text())
@example("[" * 5000)
@example("{" * 5000)
@example("9" * 10000)
@example('"\\u{' + "1" * 10000)
@example("\ud800")
@example('"\ud800"')
def test_arbitrary_text_raises_only_ruby_hash_error(text: str) -> None:
    parse_or_error(text)


rubyish = st.text(alphabet=list("[]{},:=>\"'\\#@$%?.-+_019aexu{}() \n\t\r\ufeffé"), max_size=40)


@settings(max_examples=1000)
@given(rubyish)
def test_rubyish_text_raises_only_ruby_hash_error(text: str) -> None:
    parse_or_error(text)


@settings(max_examples=300)
@given(values, st.randoms(use_true_random=False), st.data())
def test_mutated_literals_raise_only_ruby_hash_error(value: Any, rnd: random.Random,
                                                     data: st.DataObject) -> None:
    text = render_document(value, rnd)
    at = data.draw(st.integers(0, len(text)))
    insert = data.draw(st.sampled_from(["", "x", "\"", "'", ",", "]", "}", ":", "#", "\\", "=",
                                        "\n", "#{", "1", "-"]))
    cut = data.draw(st.integers(0, 3))
    parse_or_error(text[:at] + insert + text[at + cut:])


# ---------------------------------------------------------------------------------------
# against Ruby itself (when installed): what is accepted here, Ruby reads the same way
# ---------------------------------------------------------------------------------------

RUBY = shutil.which("ruby")
RUBY_EVAL = r"""
require "json"
def fresh; binding; end
def tag(v)
  case v
  when Symbol then {"sym" => v.to_s}
  when String then v.valid_encoding? ? {"str" => v} : {"bytes" => v.bytes}
  when Integer then {"int" => v.to_s}
  when Array then v.map { |x| tag(x) }
  when Hash then {"hash" => v.map { |k, x| [tag(k), tag(x)] }}
  else v
  end
end
STDIN.each_line do |line|
  begin
    puts JSON.generate({"ok" => tag(eval(JSON.parse(line), fresh))})
  rescue SyntaxError, StandardError => e
    puts JSON.generate({"error" => e.message.scrub})
  end
end
"""


def tagged(value: Any) -> Any:
    """``value`` as RUBY_EVAL writes a Ruby value."""
    if isinstance(value, Symbol):
        return {"sym": str(value)}
    if isinstance(value, str):
        return {"str": value}
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return {"int": str(value)}
    if isinstance(value, list):
        return [tagged(v) for v in value]
    return {"hash": [[tagged(k), tagged(v)] for k, v in value.items()]}


def ruby_eval(texts: List[str]) -> List[Any]:
    assert RUBY is not None
    stdin = "".join(json.dumps(text) + "\n" for text in texts)
    done = subprocess.run([RUBY, "-W0", "-e", RUBY_EVAL], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", timeout=300, check=True)
    return [json.loads(line) for line in done.stdout.split("\n") if line]


@pytest.mark.skipif(RUBY is None, reason="ruby is not installed")
def test_ruby_reads_the_same_values() -> None:
    cases: List[Tuple[str, Any]] = [(DEPLOY, parse(DEPLOY))] + ACCEPTED

    @settings(max_examples=1000, database=None)
    @given(values, st.randoms(use_true_random=False))
    def collect(value: Any, rnd: random.Random) -> None:
        text = render_document(value, rnd)
        cases.append((text, parse(text)))

    collect()
    results = ruby_eval([text for text, _ in cases])
    assert len(results) == len(cases)
    wrong = [(text, result) for (text, value), result in zip(cases, results)
             if result != {"ok": tagged(value)}]
    assert not wrong, wrong[:5]


@pytest.mark.skipif(RUBY is None, reason="ruby is not installed")
def test_ruby_rejects_what_is_lenient_here() -> None:
    assert all("error" in result for result in ruby_eval([text for text, _ in LENIENT]))
