"""Typed access to the ``VMM_DRIVER_ACTION_DATA`` payload oned sends with an action.

The Ruby driver decodes the payload with ``Base64.decode64`` and REXML
(``VirtualMachineDriver#decode``) and then reads it with ``elements[path]``,
``.text`` and ``.to_s``; scripts receive those re-serialised strings on stdin.
This module reproduces each of those reads on top of :mod:`vmm_exec.xmlcompat`
so that every string handed to a script is byte-identical, and turns the
cases where the Ruby driver crashed into a :class:`MessageError` that says why.
"""

from __future__ import annotations

import binascii
import codecs
import re
from functools import lru_cache
from typing import Dict, Iterator, List, Optional, Tuple

from vmm_exec import rubyisms, xmlcompat
from vmm_exec.xmlcompat import Element, XmlError

__all__ = ["Message", "MessageError", "decode", "VNM_XPATHS", "VNM_DEVICES"]

# VmmAction::XPATH_LIST: parts of the VM the network drivers need, in order.
VNM_XPATHS = (
    "ID",
    "DEPLOY_ID",
    "TEMPLATE/CONTEXT",
    "USER_TEMPLATE",
    "TEMPLATE/SECURITY_GROUP_RULE",
    "HISTORY_RECORDS/HISTORY/HOSTNAME",
    "HISTORY_RECORDS/HISTORY/HID",
    "HISTORY_RECORDS/HISTORY/DS_ID",
    "HISTORY_RECORDS/HISTORY/VM_MAD",
)
# Device sections whose VN_MAD selects a network driver (get_vnm_drivers).
VNM_DEVICES = ("NIC", "NIC_ALIAS", "PCI")

_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_LINE_BREAKS = str.maketrans("", "", "\r\n")
_XML_DECL_ENCODING = re.compile(
    rb"<\?xml\s[^>]*?\bencoding\s*=\s*[\"']([^\"']*)[\"']", re.S
)


class MessageError(ValueError):
    """The payload cannot be used; ``str()`` is a reason an operator understands."""


def decode(payload_b64: str, well_formed: bool = False) -> Message:
    """Decode an action payload like ``VirtualMachineDriver#decode``.

    Base64 is decoded as leniently as Ruby does; where Ruby would have
    crashed (garbage, not XML, no root element) a MessageError is raised.
    ``well_formed``: this payload passed the well-formedness check already
    (:func:`peek_text` returned for it), which is not run again.
    """
    text = _bytes_to_text(_decode64(payload_b64))
    try:
        doc = xmlcompat.parse(text, well_formed=well_formed)
    except XmlError as exc:
        raise MessageError(f"cannot decode the action payload: {exc}") from exc
    if doc.root is None:  # pragma: no cover - parse() always yields a root
        raise MessageError("the action payload has no root element")
    return Message(doc.root)


def _decode64(payload: str) -> bytes:
    """``Base64.decode64``: the C decoder for well-formed input, rubyisms otherwise.

    oned sends strict base64; on it (line breaks aside, which Ruby skips)
    both decoders agree, and the C one is about fifty times faster. The check
    works on bytes with C loops only: a 50 MB line costs about its own size.
    """
    joined = payload
    if "\n" in payload or "\r" in payload:  # rarely: translate costs 2 us per KB
        joined = payload.translate(_LINE_BREAKS)
    try:
        data = joined.encode("ascii")
    except UnicodeEncodeError:
        return rubyisms.decode64(payload)
    body = data.rstrip(b"=")
    if len(data) % 4 == 0 and len(data) - len(body) <= 2 and not body.translate(
            None, _BASE64_ALPHABET):
        return binascii.a2b_base64(data)
    return rubyisms.decode64(payload)


def _bytes_to_text(raw: bytes) -> str:
    """Bytes to text the way REXML's Source reads them.

    A UTF-16 byte-order mark selects UTF-16; an XML declaration naming an
    encoding other than UTF-8/UTF-16 re-decodes the document from it;
    otherwise UTF-8, with invalid bytes kept as surrogate escapes (they make
    the well-formedness check fail with a clear message).
    """
    if raw.startswith((codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE)):
        try:
            return raw.decode("utf-16")
        except ValueError as exc:
            raise MessageError(f"cannot decode the action payload: {exc}") from exc
    body = raw[3:] if raw.startswith(codecs.BOM_UTF8) else raw
    m = _XML_DECL_ENCODING.match(body) if body.startswith(b"<?xml") else None
    if m is not None:
        name = m.group(1).decode("ascii", "replace")
        if name.upper() not in ("UTF-8", "UTF-16"):
            try:
                return body.decode(codecs.lookup(name).name)
            except (LookupError, ValueError) as exc:  # unknown codec, bad bytes
                raise MessageError(
                    f"cannot decode the action payload: encoding {name!r}: {exc}"
                ) from exc
    return body.decode("utf-8", "surrogateescape")


def _add_element_to_path(target: Element, element: Element, path: str) -> None:
    """``add_element_to_path``: new wrappers for every step but the last, then move."""
    for name in path.split("/")[:-1]:
        target = target.add_element(name)
    target.add_element(element)


def peek_text(payload_b64: str, path: str) -> Optional[str]:
    """One value of a payload that is otherwise not needed yet (the scheduler's
    HOST lookup): the decoded tree is taken apart at once, so that a long queue
    of requests does not keep trees waiting for the garbage collector.

    Raises MessageError unless the payload decodes; when it returns, the payload
    passed the well-formedness check (``decode(..., well_formed=True)``)."""
    if "/" not in path:
        try:
            quick = xmlcompat.child_text_quickly(_bytes_to_text(_decode64(payload_b64)),
                                                 path)
        except MessageError:
            quick = xmlcompat.UNSURE
        if not isinstance(quick, xmlcompat.Unsure):
            return quick
    message = decode(payload_b64)
    try:
        return message.text(path)
    finally:
        message.dispose()


class Message:
    """A decoded payload; paths use REXML's XPath semantics (see xmlcompat).

    The tree is never changed once decoded (the network view works on a copy), so
    its serialisations are kept: an action asks for ``VM.to_s`` three or four times
    (the ``vm`` data, the masker, DEPLOY's stdin), Ruby wrote it each time.
    """

    def __init__(self, root: Element) -> None:
        self.root = root
        self._written: Dict[str, str] = {}
        self._found: Dict[str, Optional[Element]] = {}  # an action reads a path many times

    def dispose(self) -> None:
        """The action is over: free the tree now (:func:`xmlcompat.dispose`); the
        message must not be read afterwards."""
        self._found.clear()
        xmlcompat.dispose(self.root)

    @classmethod
    def decode(cls, payload_b64: str) -> Message:
        """Same as the module-level :func:`decode`."""
        return decode(payload_b64)

    def element(self, path: str) -> Optional[Element]:
        """``xml_data.elements[path]``."""
        try:
            return self._found[path]
        except KeyError:
            pass
        try:
            found = self._found[path] = self.root.find(path)
        except XmlError as exc:
            raise MessageError(str(exc)) from exc
        return found

    def text(self, path: str) -> Optional[str]:
        """``xml_data.elements[path].text``: None if the element or its text is missing."""
        element = self.element(path)
        if element is None:
            return None
        try:
            return element.text
        except XmlError as exc:
            raise MessageError(f"cannot read {path}: {exc}") from exc

    def xml(self) -> str:
        """``xml_data.to_s``: the whole payload as REXML writes it."""
        return self.element_xml("/*")

    def element_xml(self, path: str) -> str:
        """``xml_data.elements[path].to_s``; '' when missing (``nil.to_s``)."""
        written = self._written.get(path)
        if written is None:
            if path == "/*":
                element: Optional[Element] = self.root
            else:
                element = self.element(path)
            written = element.to_s() if element is not None else ""
            self._written[path] = written
        return written

    def vnm_view(self) -> Tuple[List[str], str]:
        """``get_vnm_drivers``: the network drivers in use and the VM document they get.

        Works like the Ruby code on a fresh parse of ``VM.to_s``: every match
        of VNM_XPATHS, then every NIC / NIC_ALIAS / PCI with a non-empty
        VN_MAD, is moved into ``<VM>`` under newly created parents (one set
        per match).  Drivers are listed in order of first appearance.
        """
        vm = self.element("VM")
        if vm is None:
            raise MessageError("the action payload has no VM element")
        if _maybe_prefixed(self.element_xml("VM")):
            return self._vnm_view_reparsed()
        # The matches are disjoint subtrees, and without prefixes a match in REXML's
        # parse of VM.to_s writes what it writes in our tree (writing and parsing
        # again changes nothing): the view is each match written inside its own
        # new parents; nothing is parsed, copied or moved.
        parts: List[str] = []
        drivers: List[str] = []
        try:
            for element, xpath in _vnm_matches(vm, drivers):
                parts += _wrapped(element, xpath)
        except XmlError as exc:
            raise MessageError(f"cannot build the network driver view of the VM: {exc}") from exc
        return drivers, ("<VM>" + "".join(parts) + "</VM>") if parts else "<VM/>"

    def _vnm_view_reparsed(self) -> Tuple[List[str], str]:
        """The view as REXML builds it, on a real parse of ``VM.to_s``: where a name
        has a prefix, that parse may fail (a namespace declared above VM is lost)."""
        view: Optional[Element] = None
        source: Optional[Element] = None
        try:
            source = _root(xmlcompat.parse(self.element_xml("VM")))
            view = Element("VM")  # REXML::Document.new('<VM></VM>').root
            drivers: List[str] = []
            for element, xpath in _vnm_matches(source, drivers):
                _add_element_to_path(view, element, xpath)
            return drivers, view.to_s()
        except XmlError as exc:
            raise MessageError(f"cannot build the network driver view of the VM: {exc}") from exc
        finally:
            for tree in (view, source):
                if tree is not None:
                    xmlcompat.dispose(tree)


def _vnm_matches(vm: Element, drivers: List[str]) -> Iterator[Tuple[Element, str]]:
    """What ``get_vnm_drivers`` moves into the view, in its order, with the path
    it was found by: every match of VNM_XPATHS, then the devices with a VN_MAD,
    whose drivers are added to ``drivers`` (each once, in order of appearance).
    Each path is looked up when its turn comes, after the moves before it."""
    for xpath in VNM_XPATHS:
        for element in vm.find_all(xpath):
            yield element, xpath
    for device in VNM_DEVICES:
        xpath = "TEMPLATE/" + device
        for element in vm.find_all(xpath):
            node = element.get_text("VN_MAD")
            vn_mad = node.to_s() if node is not None else ""
            if vn_mad:
                if vn_mad not in drivers:
                    drivers.append(vn_mad)
                yield element, xpath


# In the VM as written (``<name`` and `` key='value'``, canonical): a start tag or
# an attribute whose name has a colon. Text that merely looks so only sends the
# view down the slower, exact path; a prefixed name is never missed. Two searches:
# each starts at a literal character, which the regular-expression engine skips
# to; as one alternation it tries every position (three times slower).
_PREFIXED_ELEMENT = re.compile(r"<[^\s/>!?:]*:")
_PREFIXED_ATTRIBUTE = re.compile(r" [^\s=/>'\":]*:[^\s=/>'\"]*='")


def _maybe_prefixed(written: str) -> bool:
    return bool(_PREFIXED_ELEMENT.search(written) or _PREFIXED_ATTRIBUTE.search(written))


@lru_cache(maxsize=32)
def _wrappers(path: str) -> Tuple[str, str]:
    """The start and end tags of the new parents ``add_element_to_path`` makes."""
    names = path.split("/")[:-1]
    return "".join(f"<{n}>" for n in names), "".join(f"</{n}>" for n in reversed(names))


def _wrapped(element: Element, path: str) -> Tuple[str, str, str]:
    opening, closing = _wrappers(path)
    return opening, element.to_s(), closing


def _root(doc: xmlcompat.Document) -> Element:
    """The root of a document we just serialised ourselves."""
    root = doc.root
    if root is None:  # pragma: no cover - parse() always yields a root
        raise XmlError("document has no root element")
    return root
