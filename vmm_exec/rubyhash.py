"""A small, strict reader for the literal subset of Ruby used by step lists.

Add-on authors can write hooks in the syntax of ``one_vmm_exec.rb``'s step
lists (``{ :driver => :vnm, :action => :pre }``). Nothing is evaluated: only
literals are read, and anything else is a :class:`RubyHashError` naming the
problem, ``file:line:column`` (1-based) and the offending line with a caret.

Grammar (whitespace, line breaks and comments may separate any two tokens)::

    document := [name "="] value          # exactly one statement
    value    := array | hash | symbol | string | integer | true | false | nil
    array    := "[" [value ("," value)* [","]] "]"
    hash     := "{" [pair ("," pair)* [","]] "}"
    pair     := key "=>" value | name[?!] ":" value | string ":" value
    key      := symbol | string | integer

* ``name = value`` (a local-variable name, e.g. ``steps = [...]``) gives the
  value; the name is ignored. A second statement is an error (Ruby would
  silently keep only the last one).
* Symbols: ``:name`` (optionally ending in ``?`` or ``!``), ``:"text"``,
  ``:'text'``; the labels ``name: v`` and ``"text": v`` are symbol keys, as in
  Ruby. Symbols are :class:`Symbol` (a ``str``); strings are plain ``str``.
  A symbol and a string key with the same name are an error, since they would
  collide in a Python dict; so are duplicate keys (Ruby keeps the last).
* ``'...'``: only ``\\\\`` and ``\\'`` are escapes, other backslashes are kept.
  ``"..."``: ``\\\\ \\" \\' \\# \\n \\t \\r \\s \\e \\a \\b \\f \\v``, octal
  ``\\0``-``\\377``, ``\\xHH``, ``\\uHHHH``, ``\\u{H ...}``; ``\\x``/octal
  bytes must form valid UTF-8. Interpolation (``#{``, ``#@``, ``#$``) and any
  other escape are errors. Adjacent strings are not concatenated.
* Integers: decimal with ``_`` separators and an optional sign glued to the
  digits. Floats, ``0x``/``0b``/``0o`` and leading zeros (octal) are errors.
* Comments: ``#`` to the end of the line, and ``=begin``/``=end`` blocks.
* Everything else (variables, constants, method calls, operators, ranges,
  ``%w[]``, heredocs, ...) is an error; arrays and hashes nest at most
  :data:`MAX_DEPTH` deep. Where this reader accepts a text, Ruby reads the same
  value, except that Ruby rejects a line break before ``,`` or ``=>`` (checked
  against Ruby 3.1 by tests/test_rubyhash.py when ``ruby`` is installed).
"""

from __future__ import annotations

import bisect
import re
from typing import Any, Dict, List, NamedTuple, NoReturn, Optional, Tuple, Union

__all__ = ["MAX_DEPTH", "RubyHashError", "Symbol", "parse"]

MAX_DEPTH = 100
_LITERALS_ONLY = ("only literals are allowed: symbols, strings, numbers, true/false/nil, "
                  "arrays and hashes")
_WS = " \t\n\r\f\v"
# Ruby counts every non-ASCII character as a letter of a name.
_NAME = r"[A-Za-z_\x80-\ud7ff\ue000-\U0010ffff][0-9A-Za-z_\x80-\ud7ff\ue000-\U0010ffff]*"
_IDENT = re.compile(_NAME)
_SYMBOL = re.compile(_NAME + r"[?!]?")
_INT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*")
_BEGIN = re.compile(r"=begin(?![^ \t\n\r\f\v])")
_END = re.compile(r"^=end(?![^ \t\n\r\f\v])", re.M)
_OCTAL = re.compile(r"[0-7]{1,3}")
_HEX2 = re.compile(r"[0-9A-Fa-f]{1,2}")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_HEX_LIST = re.compile(r"[ \t]*[0-9A-Fa-f]{1,6}(?:[ \t]+[0-9A-Fa-f]{1,6})*[ \t]*")
_KEYWORDS: Dict[str, Any] = {"true": True, "false": False, "nil": None}
_RESERVED = frozenset(
    "__ENCODING__ __LINE__ __FILE__ BEGIN END alias and begin break case class def defined do "
    "else elsif end ensure for if in module next not or redo rescue retry return self super "
    "then undef unless until when while yield".split())
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "#": "#", "n": "\n", "t": "\t", "r": "\r",
            "s": " ", "e": "\x1b", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_EOF_CHARS = "\0\x04\x1a"  # Ruby stops reading the source at these
_HINTS = {
    "%": "percent literals like %w[] and operators are not allowed",
    ".": "method calls are not allowed",
    "(": "parentheses and method calls are not allowed",
    ")": "parentheses and method calls are not allowed",
    "@": "instance and class variables are not allowed",
    "$": "global variables are not allowed",
    "?": "character literals and the ?: operator are not allowed",
    ";": "only one value, or one 'name = value' assignment, is allowed",
    "=": "'=' is only allowed in one top-level 'name = value' assignment",
    "\\": "backslashes are only allowed inside strings",
}


class RubyHashError(ValueError):
    """Bad input: ``str()`` is ``file:line:column: msg``, the line, and a caret."""

    def __init__(self, msg: str, filename: str, line: int, column: int, source_line: str):
        self.msg, self.filename, self.source_line = msg, filename, source_line
        self.line, self.column = line, column
        caret = "".join(c if c == "\t" else " " for c in source_line[: column - 1]) + "^"
        super().__init__(f"{filename}:{line}:{column}: {msg}\n{source_line}\n{caret}")

    def __reduce__(self) -> Any:
        args = (self.msg, self.filename, self.line, self.column, self.source_line)
        return (type(self), args)


class Symbol(str):
    """A Ruby symbol: equal to (and hashed like) its name as a str, repr'd ``:name``."""

    __slots__ = ()

    def __repr__(self) -> str:
        name = str(self)
        return ":" + (name if _SYMBOL.fullmatch(name) else _quote(name))


def _quote(text: str) -> str:
    """``text`` as a Ruby double-quoted string literal."""
    out = []
    for ch in text:
        if ch in '\\"#':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    return '"' + "".join(out) + '"'


def parse(text: str, filename: str = "<string>") -> Any:
    """Read one Ruby literal (optionally ``name = literal``) into Python values.

    Arrays are lists, hashes are insertion-ordered dicts, symbols :class:`Symbol`,
    strings str, integers int, ``true``/``false``/``nil`` True/False/None.
    Raises :class:`RubyHashError` for anything else.
    """
    return _Reader(text, filename).document()


class _Token(NamedTuple):
    kind: str  # "[", "]", "{", "}", ",", "=>", "value", "label", "assign", "ident", "eof"
    value: Any  # the literal (value, label), the name (assign), what it is (ident)
    pos: int
    text: str  # as written, for messages


class _Reader:
    def __init__(self, text: str, filename: str):
        text = text[1:] if text.startswith("\ufeff") else text
        self.text = text.replace("\r\n", "\n")  # as Ruby's lexer does, strings included
        self.filename = filename
        self.pos = 0
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", self.text)]

    # -- errors -------------------------------------------------------------------------
    def where(self, pos: int) -> Tuple[int, int]:
        line = bisect.bisect_right(self.line_starts, pos)
        return line, pos - self.line_starts[line - 1] + 1

    def error(self, msg: str, pos: int) -> NoReturn:
        line, column = self.where(pos)
        start = self.line_starts[line - 1]
        end = self.text.find("\n", start)
        source_line = self.text[start:] if end < 0 else self.text[start:end]
        raise RubyHashError(msg, self.filename, line, column, source_line)

    def unexpected(self, tok: _Token, expected: str, opener: Optional[_Token] = None) -> NoReturn:
        if tok.kind == "eof" and opener is not None:
            self.error(f"'{opener.text}' is never closed (reached the end of input, expected "
                       f"{expected})", opener.pos)
        if tok.kind == "ident":
            self.error(f"unexpected {tok.value} '{tok.text}' ({_LITERALS_ONLY})", tok.pos)
        if tok.kind == "label":
            self.error(f"expected {expected}, found the label '{_clip(tok.text)}' (a label is "
                       "a hash key, as in { name: value })", tok.pos)
        if tok.kind == "assign":
            self.error(f"unexpected assignment '{tok.text}' (only the whole input may be one "
                       "'name = value' assignment)", tok.pos)
        self.error(f"expected {expected}, found {_describe(tok)}", tok.pos)

    # -- parser -------------------------------------------------------------------------
    def document(self) -> Any:
        tok = self.next()
        expected = "a value"
        if tok.kind == "assign":
            expected = f"a value after '{tok.text}'"
            tok = self.next()
        if tok.kind == "eof":
            self.error(f"empty input: expected {expected}", tok.pos)
        value = self.value(tok, 0, expected)
        tok = self.next()
        if tok.kind != "eof":
            self.unexpected(tok, "the end of input (only one value, or one 'name = value' "
                                 "assignment, is allowed)")
        return value

    def value(self, tok: _Token, depth: int, expected: str = "a value") -> Any:
        if tok.kind == "value":
            return tok.value
        if tok.kind in ("[", "{"):
            if depth >= MAX_DEPTH:
                self.error(f"arrays and hashes nest deeper than {MAX_DEPTH} levels", tok.pos)
            return self.array(tok, depth + 1) if tok.kind == "[" else self.hash(tok, depth + 1)
        self.unexpected(tok, expected)

    def array(self, opener: _Token, depth: int) -> List[Any]:
        items: List[Any] = []
        while True:
            tok = self.next()
            if tok.kind == "]":
                return items
            if tok.kind == "eof":
                self.unexpected(tok, "']'", opener)
            items.append(self.value(tok, depth))
            tok = self.next()
            if tok.kind == "]":
                return items
            if tok.kind != ",":
                self.unexpected(tok, "',' or ']' after an array element", opener)

    def hash(self, opener: _Token, depth: int) -> Dict[Any, Any]:
        result: Dict[Any, Any] = {}
        seen: Dict[Any, Tuple[Any, int]] = {}
        while True:
            tok = self.next()
            if tok.kind == "}":
                return result
            key = tok.value
            if tok.kind != "label":
                if tok.kind == "value" and isinstance(key, (str, int)) and type(key) is not bool:
                    arrow = self.next()
                    if arrow.kind != "=>":
                        self.unexpected(arrow, f"'=>' after the hash key {_describe(tok)}",
                                        opener)
                elif tok.kind in ("value", "[", "{"):
                    self.error("hash keys must be symbols, strings or integers", tok.pos)
                else:
                    self.unexpected(tok, "a hash key or '}'", opener)
            if key in seen:
                first, first_pos = seen[key]
                line, column = self.where(first_pos)
                if type(first) is type(key):
                    self.error(f"duplicate hash key {_ruby(key)} (first at line {line}, column "
                               f"{column})", tok.pos)
                self.error(f"hash key {_ruby(key)} has the same name as the key {_ruby(first)} at "
                           f"line {line}, column {column} (symbol and string keys would collide)",
                           tok.pos)
            seen[key] = (key, tok.pos)
            tok = self.next()
            if tok.kind == "eof":
                self.unexpected(tok, "a hash value", opener)
            result[key] = self.value(tok, depth)
            tok = self.next()
            if tok.kind == "}":
                return result
            if tok.kind != ",":
                self.unexpected(tok, "',' or '}' after a hash value", opener)

    # -- lexer --------------------------------------------------------------------------
    def next(self) -> _Token:
        self.skip_space()
        t, i = self.text, self.pos
        if i >= len(t):
            return _Token("eof", None, i, "end of input")
        c = t[i]
        if c in "[]{},":
            self.pos = i + 1
            return _Token(c, None, i, c)
        if t.startswith("=>", i):
            self.pos = i + 2
            return _Token("=>", None, i, "=>")
        if c == ":":
            return self.symbol(i)
        if c in "\"'":
            value, end = self.string(i)
            return self.label_or(value, i, end)
        if "0" <= c <= "9" or (c in "+-" and "0" <= t[i + 1: i + 2] <= "9"):
            return self.integer(i)
        m = _IDENT.match(t, i)
        if m:
            return self.word(m.group(), i, m.end())
        two = t[i: i + 2]
        if two in ("<<", ".."):
            hint = "heredocs and operators" if two == "<<" else "ranges"
            self.error(f"unexpected '{two}' ({hint} are not allowed)", i)
        shown = f"'{c}'" if c.isprintable() else repr(c)
        hint = _HINTS.get(c, "operators are not allowed" if c in "+-*/&|^!~<>" else "")
        self.error(f"unexpected character {shown}" + (f" ({hint})" if hint else ""), i)

    def skip_space(self) -> None:
        t, i, n = self.text, self.pos, len(self.text)
        while i < n:
            if t[i] in _WS:
                i += 1
                continue
            if t[i] == "#":
                comment_end = i
            elif t[i] == "=" and (i == 0 or t[i - 1] == "\n") and _BEGIN.match(t, i):
                end = _END.search(t, i + 6)
                if end is None:
                    self.error("unterminated =begin comment (no line starting with =end)", i)
                comment_end = end.end()
            else:
                break
            j = t.find("\n", comment_end)
            i = n if j < 0 else j
        self.pos = i

    def word(self, name: str, start: int, end: int) -> _Token:
        t = self.text
        suffix = 1 if t[end: end + 1] in ("?", "!") and t[end + 1: end + 2] == ":" else 0
        if t.startswith(":", end + suffix) and not t.startswith("::", end + suffix):
            self.pos = end + suffix + 1
            return _Token("label", Symbol(t[start: end + suffix]), start, t[start: self.pos])
        self.pos = end
        if name in _KEYWORDS:
            return _Token("value", _KEYWORDS[name], start, name)
        j = end
        while t[j: j + 1] in (" ", "\t"):
            j += 1
        local = not (name[0].isupper() or name in _RESERVED)
        if local and t.startswith("=", j) and t[j + 1: j + 2] not in ("=", ">", "~"):
            self.pos = j + 1
            return _Token("assign", name, start, name + " =")
        kind = ("keyword" if name in _RESERVED else "constant" if name[0].isupper() else
                "method call" if t.startswith("(", end) else "identifier")
        return _Token("ident", kind, start, name)

    def symbol(self, start: int) -> _Token:
        t = self.text
        if t[start + 1: start + 2] in ('"', "'"):
            value, end = self.string(start + 1)
            self.pos = end
            return _Token("value", Symbol(value), start, t[start:end])
        m = _SYMBOL.match(t, start + 1)
        if m and m.group()[-1] in "?!" and t.startswith("=", m.end()):
            self.error(f"write a space between ':{m.group()}' and '=' (Ruby does not read "
                       f"':{m.group()}=' as ':{m.group()} =')", start)
        if m:
            self.pos = m.end()
            return _Token("value", Symbol(m.group()), start, t[start: m.end()])
        if t.startswith("::", start):
            self.error("unexpected '::' (constants and scope lookups are not allowed)", start)
        self.error("unexpected ':' (a symbol is :name or :\"text\"; in 'key: value' the colon "
                   "must directly follow the key)", start)

    def label_or(self, value: str, start: int, end: int) -> _Token:
        t = self.text
        if t.startswith(":", end) and not t.startswith("::", end):
            self.pos = end + 1
            return _Token("label", Symbol(value), start, t[start: end + 1])
        self.pos = end
        return _Token("value", value, start, t[start:end])

    def integer(self, start: int) -> _Token:
        t = self.text
        m = _INT.match(t, start)
        assert m is not None
        digits, end = m.group(), m.end()
        if t[end: end + 1] == "." and "0" <= t[end + 1: end + 2] <= "9":
            self.error("unexpected float (only integers are allowed)", start)
        tail = _IDENT.match(t, end)
        if tail:
            self.error(f"unsupported number '{digits + tail.group()}' (only decimal integers "
                       "like 42, -7 or 1_000 are allowed)", start)
        if len(digits.lstrip("+-")) > 1 and digits.lstrip("+-")[0] == "0":
            self.error(f"integer with a leading zero '{digits}' (Ruby reads it as octal; only "
                       "decimal integers are allowed)", start)
        try:
            value = int(digits)
        except ValueError:  # more digits than int() converts
            self.error("integer too long", start)
        self.pos = end
        return _Token("value", value, start, digits)

    def string(self, start: int) -> Tuple[str, int]:
        """The string literal opening at ``start``: (value, index after the close)."""
        t, quote, i = self.text, self.text[start], start + 1
        parts: List[str] = []
        raw = bytearray()  # \x and octal escapes are bytes, decoded as UTF-8
        raw_at = 0

        def flush() -> None:
            if raw:
                try:
                    parts.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    self.error("\\x and octal escapes must form valid UTF-8", raw_at)
                raw.clear()

        while True:
            if i >= len(t):
                self.error(f"unterminated string: the {quote} here is never closed", start)
            c = t[i]
            if c == quote:
                flush()
                return "".join(parts), i + 1
            if c in _EOF_CHARS:
                self.error(f"control character {c!r} in a string (Ruby stops reading the "
                           "file there; write it as an escape)", i)
            if c == "\\" and quote == "'":
                escaped = t[i + 1: i + 2] in ("\\", "'")
                parts.append(t[i + 1] if escaped else "\\")
                i += 2 if escaped else 1
            elif c == "\\":
                piece, i2 = self.escape(i, start)
                if isinstance(piece, int):
                    raw_at = i if not raw else raw_at
                    raw.append(piece)
                else:
                    flush()
                    parts.append(piece)
                i = i2
            elif c == "#" and quote == '"' and t[i + 1: i + 2] in ("{", "@", "$"):
                self.error(f"string interpolation '#{t[i + 1]}' is not allowed (write \\# for "
                           "a literal #)", i)
            else:
                flush()
                parts.append(c)
                i += 1

    def escape(self, i: int, start: int) -> Tuple[Union[int, str], int]:
        """The escape at ``i`` in a double-quoted string: (byte or text, index after it)."""
        t = self.text
        c = t[i + 1: i + 2]
        if not c:
            self.error('unterminated string: the " here is never closed', start)
        if c in _ESCAPES:
            return _ESCAPES[c], i + 2
        if c in "01234567":
            m = _OCTAL.match(t, i + 1)
            assert m is not None
            if int(m.group(), 8) > 0xFF:
                self.error(f"octal escape '\\{m.group()}' is above \\377", i)
            return int(m.group(), 8), m.end()
        if c == "x":
            m = _HEX2.match(t, i + 2)
            if not m:
                self.error("invalid escape: \\x needs 1 or 2 hex digits", i)
            return int(m.group(), 16), m.end()
        if c == "u":
            close = t.find("}", i + 3) if t.startswith("{", i + 2) else -1
            if close >= 0 and _HEX_LIST.fullmatch(t, i + 3, close):
                codes, end = t[i + 3: close].split(), close + 1
            elif _HEX4.match(t, i + 2) and not t.startswith("{", i + 2):
                codes, end = [t[i + 2: i + 6]], i + 6
            else:
                self.error("invalid escape: \\u needs 4 hex digits or \\u{...} with 1-6 hex "
                           "digits per code point", i)
            chars = [int(code, 16) for code in codes]
            for code in chars:
                if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    self.error(f"invalid Unicode code point U+{code:04X} in \\u escape", i)
            return "".join(map(chr, chars)), end
        shown = f"'\\{c}'" if c.isprintable() else repr("\\" + c)
        self.error(f"unsupported escape {shown} (allowed: \\\\ \\\" \\' \\# \\n \\t \\r \\s "
                   "\\e \\a \\b \\f \\v, octal \\0-\\377, \\xHH, \\uHHHH, \\u{...})", i)


def _ruby(key: Union[str, int]) -> str:
    """A hash key as Ruby writes it."""
    return repr(key) if isinstance(key, Symbol) or isinstance(key, int) else _quote(key)


def _describe(tok: _Token) -> str:
    if tok.kind == "eof":
        return "the end of input"
    if tok.kind != "value":
        return f"'{_clip(tok.text)}'"
    v = tok.value
    kind = ("symbol " if isinstance(v, Symbol) else "string " if isinstance(v, str) else
            "integer " if type(v) is int else "")
    return kind + _clip(tok.text)


def _clip(text: str) -> str:
    """Source text for a one-line message."""
    return (text if len(text) <= 40 else text[:37] + "...").replace("\n", "\\n")
