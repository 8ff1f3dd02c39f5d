"""A small XML tree that reads and writes documents exactly like Ruby's REXML.

The Ruby driver parses every action payload with REXML and hands scripts the
re-serialised text (``element.to_s``).  REXML keeps text and attribute values
in their original escaped form and writes them back unchanged, so scripts see
``&#233;``, ``&quot;`` and CDATA sections exactly as oned sent them, but with
REXML's own markup rules: empty elements as ``<X/>``, attributes single-quoted
and sorted by name, ``\\r\\n`` in text turned into ``\\n``, no XML declaration.
lxml cannot give back raw source text, so lxml only judges well-formedness and
this module builds its own raw-preserving tree with a one-pass tokenizer.

Behaviour is ported from REXML 3.2.5 (Ruby 3.1): ``Formatters::Default``,
``Attribute#to_string``, ``Text`` / ``CData`` (raw values, ``\\r\\n?`` to
``\\n``, entity expansion with the 10240-byte limit), ``Child#parent=`` (moving
nodes) and the XPath subset the driver uses (``XPathParser`` child steps,
``*``, ``[N]``, ``[CHILD]`` and ``[CHILD='literal']`` predicates).
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, List, Optional, Tuple, Union

from lxml import etree

from vmm_exec import rubyisms

__all__ = [
    "CDataNode",
    "CommentNode",
    "Document",
    "Element",
    "InstructionNode",
    "Node",
    "TextNode",
    "XmlError",
    "normalize",
    "parse",
    "unnormalize",
]

# REXML::Security.entity_expansion_text_limit: Text#value raises past this
# many bytes of expanded references in one text node.
ENTITY_EXPANSION_TEXT_LIMIT = 10240

_PREDEFINED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
_REFERENCE = re.compile(r"&(?:#x([0-9a-fA-F]+)|#([0-9]+)|([^\s&;#<]+));")
_NEWLINES = re.compile(r"\r\n?")


class XmlError(ValueError):
    """The text is not XML we can handle (malformed, or outside the supported subset)."""


# --------------------------------------------------------------------------
# nodes
# --------------------------------------------------------------------------
class Node:
    """A node of the tree; only elements have children."""

    __slots__ = ("parent",)

    def __init__(self) -> None:
        self.parent: Optional[Element] = None

    def to_s(self) -> str:
        """The node as REXML writes it."""
        out: List[str] = []
        _write(self, out)
        return "".join(out)


class TextNode(Node):
    """REXML ``Text`` parsed with ``raw`` set: ``to_s`` is the source form."""

    __slots__ = ("raw",)

    def __init__(self, raw: str) -> None:
        super().__init__()
        self.raw = _unix_newlines(raw)

    @classmethod
    def from_value(cls, value: str) -> TextNode:
        """A text node for a plain string, escaped the way REXML writes new text."""
        return cls(normalize(value))

    def to_s(self) -> str:
        """The escaped source form (``Text#to_s`` of a raw node)."""
        return self.raw

    @property
    def value(self) -> str:
        """Entities expanded (``Text#value``)."""
        return unnormalize(self.raw)

    def __repr__(self) -> str:
        return f"TextNode({self.raw!r})"


def _unix_newlines(raw: str) -> str:
    """CR LF and lone CR become LF, as REXML's source reads text."""
    return _NEWLINES.sub("\n", raw) if "\r" in raw else raw


class CDataNode(TextNode):
    """REXML ``CData``: its ``to_s`` and ``value`` are the content, unescaped."""

    __slots__ = ()

    @classmethod
    def from_value(cls, value: str) -> CDataNode:
        """A CDATA section holding ``value`` verbatim."""
        return cls(value)

    @property
    def value(self) -> str:
        return self.raw

    def __repr__(self) -> str:
        return f"CDataNode({self.raw!r})"


class CommentNode(Node):
    """REXML ``Comment``: the content is kept verbatim."""

    __slots__ = ("content",)

    def __init__(self, content: str) -> None:
        super().__init__()
        self.content = content


class InstructionNode(Node):
    """REXML ``Instruction``; its content is stripped, ``None`` when absent."""

    __slots__ = ("target", "content")

    def __init__(self, target: str, content: Optional[str]) -> None:
        super().__init__()
        self.target = target
        self.content = rubyisms.strip(content) if content is not None else None


class Element(Node):
    """An element; ``attributes`` hold raw (still escaped) values in source order."""

    __slots__ = ("name", "attributes", "children", "_document")

    def __init__(self, name: str, attributes: Optional[List[Tuple[str, str]]] = None) -> None:
        super().__init__()
        self.name = name
        self.attributes: List[Tuple[str, str]] = list(attributes or [])
        self.children: List[Node] = []
        self._document: Optional[Document] = None

    def __repr__(self) -> str:
        return f"<Element {self.name} ({len(self.children)} children)>"

    @property
    def prefix(self) -> str:
        """Namespace prefix of the name, '' when there is none."""
        head, sep, _ = self.name.partition(":")
        return head if sep else ""

    @property
    def local_name(self) -> str:
        """Name without its prefix (what REXML calls ``name``)."""
        return self.name.rpartition(":")[2]

    @property
    def document(self) -> Optional[Document]:
        """The document this element belongs to, if any."""
        top = self
        while top.parent is not None:
            top = top.parent
        return top._document

    def elements(self) -> Iterator[Element]:
        """Child elements in order."""
        return (c for c in self.children if isinstance(c, Element))

    def attribute(self, name: str) -> Optional[str]:
        """Raw value of the attribute called ``name`` (qualified), or None."""
        for key, value in self.attributes:
            if key == name:
                return value
        return None

    @property
    def text(self) -> Optional[str]:
        """``Element#text``: the value of the first text or CDATA child, None if none."""
        node = self.get_text()
        return node.value if node is not None else None

    def get_text(self, path: Optional[str] = None) -> Optional[TextNode]:
        """``Element#get_text``: first text/CDATA child of self (or of ``find(path)``)."""
        target: Optional[Element] = self if path is None else self.find(path)
        if target is None:
            return None
        for child in target.children:
            if isinstance(child, TextNode):
                return child
        return None

    def set_text(self, value: Optional[str]) -> None:
        """``Element#text=``: replace the first text child (append one if none).

        REXML escapes new text with ``Text::normalize`` (``&``, ``<``, ``>``,
        ``"`` and ``'`` become entities); None removes the first text child.
        """
        for index, child in enumerate(self.children):
            if isinstance(child, TextNode):
                if value is None:
                    del self.children[index]
                    child.parent = None
                else:
                    node = TextNode.from_value(value)
                    node.parent = self
                    self.children[index] = node
                    child.parent = None
                return
        if value is not None:
            node = TextNode.from_value(value)
            node.parent = self
            self.children.append(node)

    def find(self, path: str) -> Optional[Element]:
        """``elements[path]``: the first match in document order."""
        found = _evaluate(_compile(path), self)
        return found[0] if found else None

    def find_all(self, path: str) -> List[Element]:
        """``elements.each(path)``: every match in document order."""
        return _evaluate(_compile(path), self)

    def add_element(self, child: Union[str, Element]) -> Element:
        """``Element#add_element``: a name creates an empty child, an Element is moved here.

        Moving follows REXML's ``Child#parent=``: the element leaves its old
        parent (or document) first -- except when that parent is already
        ``self``, where REXML appends the same node a second time.
        """
        if isinstance(child, str):
            new = Element(child)
            new.parent = self
            self.children.append(new)
            return new
        ancestor: Optional[Element] = self
        while ancestor is not None:
            if ancestor is child:
                raise XmlError(f"cannot move <{child.name}> inside itself")
            ancestor = ancestor.parent
        if child.parent is not self:
            child.detach()
            child.parent = self
        self.children.append(child)
        return child

    def detach(self) -> None:
        """Remove this element from its parent or document (``Child#remove``)."""
        if self.parent is not None:
            self.parent.children = [c for c in self.parent.children if c is not self]
            self.parent = None
        elif self._document is not None:
            doc = self._document
            doc.children = [c for c in doc.children if c is not self]
            self._document = None


def dispose(element: Element) -> None:
    """Take ``element``'s tree (its document's, if it has one) apart once nobody
    reads it any more.

    Parent links make reference cycles: a dropped tree is left to the cyclic
    garbage collector, which finds it only after it was promoted to the older
    generations (a tree lives as long as its action) and then traverses every
    object the driver holds. Under a storm that doubled the cost of decoding
    a request. Taken apart, a tree goes by reference counting at once."""
    top = element
    while top.parent is not None:
        top = top.parent
    if top._document is not None:
        top._document.dispose()
    else:
        _unlink([top])


def _unlink(nodes: List[Node]) -> None:
    """Empty every element's child list: what is left are links up (a node to its
    parent, the root to its document), which make no cycle."""
    stack = [node for node in nodes if isinstance(node, Element)]
    pop, push = stack.pop, stack.append
    while stack:
        element = pop()
        children = element.children
        if children:
            element.children = []
            for child in children:
                if isinstance(child, Element):
                    push(child)


class Document:
    """A parsed document: prolog/epilog nodes and the root element."""

    __slots__ = ("children",)

    def __init__(self) -> None:
        self.children: List[Node] = []

    def dispose(self) -> None:
        """Take the tree apart now: see :func:`dispose`."""
        nodes, self.children = self.children, []
        _unlink(nodes)

    @property
    def root(self) -> Optional[Element]:
        """The root element (``Document#root``)."""
        for child in self.children:
            if isinstance(child, Element):
                return child
        return None


# --------------------------------------------------------------------------
# entities
# --------------------------------------------------------------------------
def normalize(value: str) -> str:
    """``Text::normalize`` without a DTD: how REXML escapes text it did not parse."""
    value = _NEWLINES.sub("\n", value).replace("&", "&amp;")
    for char, entity in ((">", "&gt;"), ("<", "&lt;"), ('"', "&quot;"), ("'", "&apos;")):
        value = value.replace(char, entity)
    return value


def unnormalize(raw: str) -> str:
    """``Text::unnormalize`` without a DTD: expand references, keep unknown ones.

    Like REXML, raise once the expansions of one text exceed
    ENTITY_EXPANSION_TEXT_LIMIT bytes.
    """
    if "&" not in raw:
        return _NEWLINES.sub("\n", raw)
    total = 0

    def expand(m: re.Match[str]) -> str:
        nonlocal total
        try:
            if m.group(1) is not None:
                value = chr(int(m.group(1), 16))
            elif m.group(2) is not None:
                value = chr(int(m.group(2)))
            else:
                value = _PREDEFINED.get(m.group(3), m.group(0))
        except (ValueError, OverflowError) as exc:
            raise XmlError(f"bad character reference {m.group(0)!r}") from exc
        total += len(value.encode("utf-8", "surrogatepass"))
        if total > ENTITY_EXPANSION_TEXT_LIMIT:
            raise XmlError("entity expansion has grown too large")
        return value

    return _REFERENCE.sub(expand, _NEWLINES.sub("\n", raw))


# --------------------------------------------------------------------------
# serialisation (REXML::Formatters::Default)
# --------------------------------------------------------------------------
def _attribute_key(attribute: Tuple[str, str]) -> str:
    """REXML sorts attributes by their local name (``Attribute#name``)."""
    return attribute[0].rpartition(":")[2]


def _write(node: Node, out: List[str]) -> None:
    """Append the REXML Default-formatter form of ``node`` to ``out``."""
    if isinstance(node, Element):
        _write_element(node, out)
    elif isinstance(node, CDataNode):
        out.append("<![CDATA[" + node.raw + "]]>")
    elif isinstance(node, TextNode):
        out.append(node.raw)
    elif isinstance(node, CommentNode):
        out.append("<!--" + node.content + "-->")
    elif isinstance(node, InstructionNode):
        content = "" if node.content is None else " " + node.content
        out.append("<?" + node.target + content + "?>")
    else:  # pragma: no cover - every node class is handled above
        raise XmlError(f"cannot serialise {node!r}")


def _write_element(root: Element, out: List[str]) -> None:
    """``write_element``, without recursion: nesting as deep as the parser accepts
    (thousands of levels, like REXML) cannot exhaust the stack."""
    append = out.append
    # an element still to open, any other node to write, or an end tag (a str)
    stack: List[Union[Node, str]] = [root]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        if isinstance(item, str):
            append(item)
        elif isinstance(item, Element):
            name, children = item.name, item.children
            if item.attributes:
                start = "<" + name + "".join(
                    " " + key + "='" + value.replace("'", "&apos;") + "'"
                    for key, value in sorted(item.attributes, key=_attribute_key))
            else:
                start = "<" + name
            if not children:
                append(start + "/>")
                continue
            only = children[0] if len(children) == 1 else None
            if type(only) is CDataNode:  # most of an OpenNebula document
                append(f"{start}><![CDATA[{only.raw}]]></{name}>")
            else:
                append(start + ">")
                push("</" + name + ">")
                stack.extend(reversed(children))
        elif isinstance(item, CDataNode):
            append("<![CDATA[" + item.raw + "]]>")
        elif isinstance(item, TextNode):
            append(item.raw)
        else:
            _write(item, out)


# --------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------
# The tree is built from ``text.split("<")``: lxml has checked the document, so
# "<" starts markup everywhere but inside CDATA sections, comments, processing
# instructions and a DOCTYPE, whose pieces are joined back until their end is
# found. Every piece is then a tag and the text after it: no regular expression
# runs over the whole document (a tokenizer's took ten times as long as the
# split). Whitespace in markup is XML's (space, tab, CR, LF), never Unicode's:
# U+1680 is a name character, as lxml reads it.
_XML_SPACE = " \t\r\n"
# a start tag with quoted attribute values (which may hold ">"), after its "<"
_START_TAG = re.compile(
    r"""([^ \t\r\n/>!?]+)((?:[ \t\r\n]+[^ \t\r\n=/>]+[ \t\r\n]*=[ \t\r\n]*"""
    r"""(?:"[^"]*"|'[^']*'))*)[ \t\r\n]*(/?)>"""
)
_ATTRIBUTE = re.compile(r"""([^ \t\r\n=/>]+)[ \t\r\n]*=[ \t\r\n]*(?:"([^"]*)"|'([^']*)')""")
# a processing instruction between "<?" and "?>": its target, then content
_INSTRUCTION = re.compile(r"([^ \t\r\n?]+)([ \t\r\n].*)?", re.S)
# a DOCTYPE from its "<", internal subset included
_DOCTYPE = re.compile(
    r"""<!DOCTYPE(?:"[^"]*"|'[^']*'|[^\[>"'])*"""
    r"""(?:\[(?:<!--.*?-->|<\?.*?\?>|"[^"]*"|'[^']*'|[^\]"'])*\][ \t\r\n]*)?>""",
    re.S,
)

_local = threading.local()


def _lxml_parser() -> etree.XMLParser:
    """One parser per thread (lxml parsers are not shared across threads)."""
    parser: Optional[etree.XMLParser] = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            encoding="utf-8",
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            # REXML has no size or depth limit: neither may we (10 MB text nodes,
            # nesting past 256). Entities are never expanded, so this opens no bomb.
            huge_tree=True,
        )
        _local.parser = parser
    return parser


def _check_well_formed(text: str) -> None:
    """Reject what lxml rejects, with lxml's reason in the message."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise XmlError(f"payload is not well-formed XML: {exc}") from exc
    try:
        etree.fromstring(data, _lxml_parser())
    except etree.XMLSyntaxError as exc:
        raise XmlError(f"payload is not well-formed XML: {exc}") from exc
    except ValueError as exc:  # e.g. characters lxml refuses outright
        raise XmlError(f"payload is not well-formed XML: {exc}") from exc


class Unsure:
    """:func:`child_text_quickly` could not be sure: use the full parse."""


UNSURE = Unsure()


def child_text_quickly(text: str, name: str) -> Union[Optional[str], Unsure]:
    """``parse(text).root.find(name).text`` for a plain element name, building the
    tree only up to the end of the root's first child called ``name`` (the
    scheduler needs only HOST of every request, and oned writes it first).

    Exact because, once lxml accepts a document, building it fails only on an
    entity declaration, which is in the prolog and so read before any element:
    the part built is the part of the full tree, and the rest would build too.
    :data:`UNSURE` when lxml refuses the document or the partial build or the
    value raises: the caller then parses it fully, for the same error.
    """
    if ":" in name or "/" in name or name == "*":
        return UNSURE
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        _check_well_formed(text)
        doc = _build(text, stop=name)
    except XmlError:
        return UNSURE
    try:
        root = doc.root
        element = root.find(name) if root is not None else None
        return element.text if element is not None else None
    except XmlError:
        return UNSURE
    finally:
        doc.dispose()


def parse(text: str, well_formed: bool = False) -> Document:
    """Parse ``text`` (already decoded) into a raw-preserving Document.

    A leading byte-order mark is dropped, as REXML's Source does.
    ``well_formed``: lxml has checked this text already; not again.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip(" \t\r\n"):
        raise XmlError("payload is empty")
    if not well_formed:
        _check_well_formed(text)
    return _build(text)


def _attributes(source: str) -> List[Tuple[str, str]]:
    """Name and raw value of each attribute in a start tag."""
    return [
        (m.group(1), m.group(2) if m.group(2) is not None else m.group(3))
        for m in _ATTRIBUTE.finditer(source)
    ]


def _offset(pieces: List[str], index: int) -> int:
    """Where the "<" in front of ``pieces[index]`` is in ``"<".join(pieces)``."""
    return len("<".join(pieces[:index]))


def _unexpected(what: str, pieces: List[str], index: int) -> XmlError:
    return XmlError(f"tokenizer: unexpected {what} at offset {_offset(pieces, index)}")


def _build(text: str, stop: Optional[str] = None) -> Document:
    """Build the tree of well-formed text (lxml checked it) in one pass.

    ``stop``: return once the root's first child element of that name is
    complete (what :func:`child_text_quickly` needs).
    """
    doc = Document()
    stack: List[Element] = []
    current: Optional[Element] = None
    siblings = doc.children
    # the node kinds of nearly every token (elements, text, CDATA: OpenNebula
    # writes nearly every value as CDATA) are made without __init__, the slots
    # set here: this loop is most of the cost of decoding a request
    new_element, new_text = Element.__new__, TextNode.__new__
    carriage_returns = "\r" in text  # nearly never: then no text needs _unix_newlines
    pieces = text.split("<")
    index, count = 0, len(pieces)
    rest = pieces[0]  # the text after the markup just read
    while True:
        if rest:
            text_node = new_text(TextNode)
            text_node.raw = _unix_newlines(rest) if carriage_returns else rest
            text_node.parent = current
            siblings.append(text_node)
        index += 1
        if index >= count:
            break
        piece = pieces[index]
        first = piece[:1]
        node: Node
        if first == "/":
            head, close, rest = piece.partition(">")
            if not close or current is None or (
                    head[1:] != current.name and head[1:].rstrip(_XML_SPACE) != current.name):
                raise _unexpected("end tag", pieces, index)
            stack.pop()
            if stop is not None and len(stack) == 1 and current.name == stop:
                return doc
            current = stack[-1] if stack else None
            siblings = current.children if current is not None else doc.children
            continue
        if first != "!" and first != "?":
            head, close, rest = piece.partition(">")
            if not close or '"' in head or "'" in head:
                m = _START_TAG.match(piece)
                if m is None:
                    raise _unexpected("markup", pieces, index)
                name, attributes, empty = m.group(1, 2, 3)
                rest = piece[m.end():]
            else:
                empty = head[-1:] == "/"
                name = (head[:-1] if empty else head).rstrip(_XML_SPACE)
                attributes = ""
            element = new_element(Element)
            element.name = name
            element.attributes = _attributes(attributes) if attributes else []
            element.children = []
            element.parent = current
            element._document = doc if current is None else None
            siblings.append(element)
            complete = bool(empty)  # nothing more to read inside it
            if not complete and not rest and index + 2 < count:
                # most of an OpenNebula document: <NAME><![CDATA[value]]></NAME>,
                # three pieces read at once (lxml refuses "]]>" outside CDATA, so
                # a piece that starts and ends as a CDATA section is one)
                value = pieces[index + 1]
                if value[-3:] == "]]>" and value.startswith("![CDATA[") and len(value) > 10:
                    head, close, after = pieces[index + 2].partition(">")
                    if head[1:] == name and head[:1] == "/":
                        text_node = new_text(CDataNode)
                        raw = value[8:-3]
                        text_node.raw = _unix_newlines(raw) if carriage_returns else raw
                        text_node.parent = element
                        element.children.append(text_node)
                        index += 2
                        rest = after
                        complete = True
            if not complete:
                stack.append(element)
                current, siblings = element, element.children
            elif stop is not None and len(stack) == 1 and name == stop:
                return doc
            continue
        if piece.startswith("![CDATA["):
            body, end, index = _until(pieces, index, 8, "]]>")
            text_node = new_text(CDataNode)
            text_node.raw = _unix_newlines(body[8:end]) if carriage_returns else body[8:end]
            text_node.parent = current
            siblings.append(text_node)
            rest = body[end + 3:]
            continue
        if piece.startswith("!--"):
            body, end, index = _until(pieces, index, 3, "-->")
            node = CommentNode(body[3:end])
            rest = body[end + 3:]
        elif first == "?":
            body, end, index = _until(pieces, index, 1, "?>")
            rest = body[end + 2:]
            m = _INSTRUCTION.fullmatch(body, 1, end)
            if m is None:
                raise _unexpected("markup", pieces, index)
            if m.group(1) == "xml":  # the XML declaration is not a node REXML writes
                continue
            node = InstructionNode(m.group(1), m.group(2))
        elif piece.startswith("!DOCTYPE"):
            # in the prolog only, and its internal subset may hold "<": matched on
            # the text itself, whose remainder is then split again
            source = "<".join(pieces)
            m = _DOCTYPE.match(source, _offset(pieces, index))
            if m is None:
                raise _unexpected("markup", pieces, index)
            if "<!ENTITY" in m.group(0):
                # REXML would expand such entities in Element#text; we refuse
                # them rather than guess (and avoid entity-expansion attacks).
                raise XmlError("DOCTYPE entity declarations are not supported")
            pieces = source[m.end():].split("<")
            index, count = 0, len(pieces)
            rest = pieces[0]
            continue
        else:
            raise _unexpected("markup", pieces, index)
        node.parent = current
        siblings.append(node)
    if stack:
        raise XmlError(f"tokenizer: <{stack[-1].name}> is not closed")
    return doc


def _until(pieces: List[str], index: int, skip: int, terminator: str) -> Tuple[str, int, int]:
    """The piece at ``index`` joined with the next ones (by the "<" they were split
    at) until ``terminator`` appears after its first ``skip`` characters: (the
    joined text, where the terminator starts in it, the index of the last piece)."""
    body = pieces[index]
    end = body.find(terminator, skip)
    while end < 0:
        if index + 1 >= len(pieces):
            raise XmlError(f"tokenizer: {terminator!r} missing after offset "
                           f"{_offset(pieces, index)}")
        searched = max(skip, len(body) - len(terminator) + 1)
        index += 1
        body += "<" + pieces[index]
        end = body.find(terminator, searched)
    return body, end, index


# --------------------------------------------------------------------------
# XPath subset
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Predicate:
    """``[N]`` (position), ``[CHILD]`` (exists) or ``[CHILD='literal']``."""

    position: Optional[int] = None
    child: Optional[str] = None
    literal: Optional[str] = None


@dataclass(frozen=True)
class _Step:
    name: str  # an element name, or "*"
    predicates: Tuple[_Predicate, ...]


@dataclass(frozen=True)
class _Path:
    absolute: bool
    steps: Tuple[_Step, ...]


_NAME = r"[^\W\d][\w.\-]*"
_STEP_NAME = re.compile(r"\*|" + _NAME)
_PREDICATE = re.compile(
    r"\[\s*(?:(?P<pos>[0-9]+)|(?P<child>" + _NAME + r")"
    r"(?:\s*=\s*(?:'(?P<sq>[^']*)'|\"(?P<dq>[^\"]*)\"))?)\s*\]"
)
_NUMERIC_LITERAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_NUMBER = re.compile(r"[ \t\n\v\f\r]*(-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))[ \t\n\v\f\r]*")


@lru_cache(maxsize=512)
def _compile(path: str) -> _Path:
    """Parse the supported XPath subset; anything else is an XmlError."""

    def unsupported() -> XmlError:
        return XmlError(f"unsupported XPath expression: {path!r}")

    absolute = path.startswith("/")
    pos = 1 if absolute else 0
    steps: List[_Step] = []
    while True:
        m = _STEP_NAME.match(path, pos)
        if m is None:
            raise unsupported()
        pos = m.end()
        predicates: List[_Predicate] = []
        while pos < len(path) and path[pos] == "[":
            p = _PREDICATE.match(path, pos)
            if p is None:
                raise unsupported()
            pos = p.end()
            if p.group("pos") is not None:
                predicates.append(_Predicate(position=int(p.group("pos"))))
            else:
                literal = p.group("sq") if p.group("sq") is not None else p.group("dq")
                predicates.append(_Predicate(child=p.group("child"), literal=literal))
        steps.append(_Step(m.group(0), tuple(predicates)))
        if pos == len(path):
            return _Path(absolute, tuple(steps))
        if path[pos] != "/":
            raise unsupported()
        pos += 1


def _namespace(element: Element, prefix: str) -> Optional[str]:
    """``Element#namespace(prefix)``: the in-scope URI bound to ``prefix``."""
    key = "xmlns" if prefix == "" else "xmlns:" + prefix
    node: Optional[Element] = element
    while node is not None:
        value = node.attribute(key)
        if value is not None:
            return unnormalize(value)
        node = node.parent
    return "" if prefix == "" else None


def _name_test(element: Element, name: str) -> bool:
    """REXML's non-strict qname test for an unprefixed name (or ``*``)."""
    if name == "*":
        return True
    if element.local_name != name:
        return False
    if ":" not in element.name:  # its namespace is the default one by definition
        return True
    return _namespace(element, element.prefix) == _namespace(element, "")


def _string_value(element: Element) -> str:
    """``Functions::string_value``: raw text (and CDATA) of all descendants."""
    parts: List[str] = []
    stack: List[Node] = [element]
    while stack:
        node = stack.pop()
        if isinstance(node, Element):
            stack.extend(reversed(node.children))
        elif isinstance(node, TextNode):
            parts.append(node.raw)
    return "".join(parts)


def _number(text: str) -> float:
    """``Functions::number`` of a string."""
    m = _NUMBER.fullmatch(rubyisms.strip(text))
    return float(m.group(1)) if m else math.nan


def _predicate_holds(element: Element, position: int, predicate: _Predicate) -> bool:
    if predicate.position is not None:
        return position == predicate.position
    assert predicate.child is not None
    matches = [c for c in element.elements() if _name_test(c, predicate.child)]
    literal = predicate.literal
    if literal is None:
        return bool(matches)
    if _NUMERIC_LITERAL.fullmatch(literal):
        wanted = float(literal)
        return any(_number(_string_value(c)) == wanted for c in matches)
    return any(_string_value(c) == literal for c in matches)


def _evaluate(path: _Path, context: Element) -> List[Element]:
    """Evaluate a compiled path from ``context`` (absolute paths from its document)."""
    nodes: List[Union[Element, Document]]
    if path.absolute:
        top = context
        while top.parent is not None:
            top = top.parent
        nodes = [top._document if top._document is not None else top]
    else:
        nodes = [context]
    for step in path.steps:
        selected: List[Union[Element, Document]] = []
        name = step.name
        for node in nodes:
            if name == "*":
                matches = [c for c in node.children if type(c) is Element]
            else:
                # an unprefixed element matches by its name alone (_name_test);
                # only prefixed ones need the namespace comparison
                matches = [
                    c for c in node.children if type(c) is Element and (
                        c.name == name or (":" in c.name and _name_test(c, name)))
                ]
            for predicate in step.predicates:
                matches = [
                    c for i, c in enumerate(matches, 1) if _predicate_holds(c, i, predicate)
                ]
            selected.extend(matches)
        nodes = selected
    result: List[Element] = []
    seen = set()
    for node in nodes:
        if isinstance(node, Element) and id(node) not in seen:
            seen.add(id(node))
            result.append(node)
    return result
