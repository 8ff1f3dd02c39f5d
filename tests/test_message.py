"""Tests for vmm_exec/message.py: payload decoding, typed reads and the network driver view.

The scenario recordings are the oracle: every network-driver stdin the Ruby
driver produced must come out of ``Message.vnm_view`` byte for byte, and the
values the driver read with ``elements[...]`` must be the script arguments.
"""

from __future__ import annotations

import base64
import hashlib
import json
from itertools import groupby
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest
from helpers import b64
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm_exec import rubyisms
from vmm_exec.message import Message, MessageError, _decode64, decode, peek_text
from vmm_exec.xmlcompat import parse

SCENARIOS = Path(__file__).resolve().parent.parent / "compat" / "scenarios"
FAKE_WORLD = "/tmp/vmm-exec-test-world-7c1e"


def load(scenario: str, name: str) -> str:
    path = SCENARIOS / scenario / name
    return path.read_text(encoding="utf-8").replace("{WORLD}", FAKE_WORLD)


def message(scenario: str, name: str = "msg.xml") -> Message:
    return decode(b64(load(scenario, name)))


# --------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------
DEPLOY = load("deploy_basic", "deploy.xml")


def test_decode_strict_and_wrapped_base64() -> None:
    expected = decode(b64(DEPLOY)).xml()
    wrapped = rubyisms.encode64(DEPLOY.encode("utf-8"))  # 60-column lines
    assert "\n" in wrapped
    assert decode(wrapped).xml() == expected
    assert Message.decode(b64(DEPLOY)).xml() == expected


def test_decode_without_padding() -> None:
    text = "<A>x</A>"  # 8 bytes: base64 ends with "="
    payload = b64(text)
    assert payload.endswith("=")
    assert decode(payload.rstrip("=")).xml() == "<A>x</A>"
    assert decode(b64("<A>xy</A>").rstrip("=")).xml() == "<A>xy</A>"


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_decode_skips_junk_like_ruby(data: st.DataObject) -> None:
    """Base64.decode64 ignores every character outside the alphabet (but '=')."""
    payload = b64("<VM><ID>42</ID><NAME>é</NAME></VM>")
    chars = list(payload.rstrip("="))
    junk = st.text(alphabet=st.sampled_from(list(" \t\r\n*!-_.~\\\"'@#é")), min_size=1,
                   max_size=3)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(chars)))
        chars.insert(at, data.draw(junk))
    assert decode("".join(chars)).xml() == "<VM><ID>42</ID><NAME>é</NAME></VM>"


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.binary(max_size=200).map(lambda b: rubyisms.encode64(b)),
    st.text(alphabet=st.sampled_from(list("QUJD+/=\n\r xy*")), max_size=24),
))
def test_fast_base64_path_agrees_with_ruby_semantics(payload: str) -> None:
    assert _decode64(payload) == rubyisms.decode64(payload)


def test_padding_in_the_middle_stops_decoding() -> None:
    payload = b64("<A>x</A>") + b64("<B/>")  # "=" inside: Ruby stops there
    assert decode(payload).xml() == "<A>x</A>"
    cut = b64("<VM><ID>1</ID></VM>")
    # "=" as the 3rd character of a group ends decoding: only "<VM><ID" is left
    with pytest.raises(MessageError, match="not well-formed"):
        decode(cut[:10] + "=" + cut[10:])
    # as the 1st or 2nd character of a group it is skipped like any junk
    assert decode(cut[:8] + "=" + cut[8:]).xml() == "<VM><ID>1</ID></VM>"
    assert decode(cut[:9] + "=" + cut[9:]).xml() == "<VM><ID>1</ID></VM>"


@pytest.mark.parametrize(
    "payload, reason",
    [
        ("not-base64!!", "cannot decode the action payload: payload is not well-formed XML: "),
        (b64("this is not xml at all"), "cannot decode the action payload: payload is not "
                                        "well-formed XML: "),
        (b64("<VM><ID>1</VM>"), "Opening and ending tag mismatch"),
        ("", "cannot decode the action payload: payload is empty"),
        ("   \n", "cannot decode the action payload: payload is empty"),
        (b64(" \n "), "cannot decode the action payload: payload is empty"),
        (base64.b64encode(b"<A>\xff\xfe</A>").decode(), "not well-formed"),
    ],
)
def test_undecodable_payloads(payload: str, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(payload)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_declared_encoding_is_honoured_like_rexml() -> None:
    # REXML re-decodes the source from the declared encoding: UTF-8 bytes read
    # as ISO-8859-1 come out as mojibake, exactly as the Ruby driver sends them.
    raw = '<?xml version="1.0" encoding="ISO-8859-1"?><A>ñ</A>'.encode()
    assert decode(base64.b64encode(raw).decode()).xml() == "<A>Ã±</A>"
    utf8 = '<?xml version="1.0" encoding="utf-8"?><A>ñ</A>'.encode()
    assert decode(base64.b64encode(utf8).decode()).xml() == "<A>ñ</A>"
    utf16 = "<A>ñ</A>".encode("utf-16")  # with its byte-order mark
    assert decode(base64.b64encode(utf16).decode()).xml() == "<A>ñ</A>"
    bom8 = b"\xef\xbb\xbf<A>x</A>"
    assert decode(base64.b64encode(bom8).decode()).xml() == "<A>x</A>"
    bad = b'<?xml version="1.0" encoding="no-such-charset"?><A/>'
    with pytest.raises(MessageError, match="no-such-charset"):
        decode(base64.b64encode(bad).decode())


# --------------------------------------------------------------------------
# reads
# --------------------------------------------------------------------------
def test_text_element_and_xml_on_deploy_payload() -> None:
    m = decode(b64(DEPLOY))
    assert m.text("HOST") == "host01"
    assert m.text("DEPLOY_ID") is None  # <DEPLOY_ID/>: REXML's text is nil
    assert m.element("DEPLOY_ID") is not None
    assert m.text("MIGR_HOST") is None
    assert m.text("NOPE") is None and m.element("NOPE") is None
    assert m.text("LOCAL_DEPLOYMENT_FILE") == f"{FAKE_WORLD}/one/var/vms/42/deployment.0"
    tm = m.text("TM_COMMAND")
    assert tm is not None and tm.startswith("CONTEXT ssh ")
    assert m.text("VM/ID") == "42"
    assert m.text("/VMM_DRIVER_ACTION_DATA/VM/LCM_STATE") == m.text("VM/LCM_STATE")
    assert m.text("VM/HISTORY_RECORDS/HISTORY/VM_MAD") == "kvm"  # a CDATA section
    assert m.element_xml("NOPE") == ""
    assert m.element_xml("HOST") == "<HOST>host01</HOST>"
    assert m.element_xml("MIGR_HOST") == "<MIGR_HOST/>"
    assert m.xml().startswith("<VMM_DRIVER_ACTION_DATA><HOST>host01</HOST><MIGR_HOST/>")
    assert m.element_xml("VM") == m.element_xml("/VMM_DRIVER_ACTION_DATA/VM")
    with pytest.raises(MessageError, match="unsupported XPath"):
        m.text("//HOST")


def _journal(scenario: str) -> List[dict]:
    path = SCENARIOS / scenario / "expected.journal.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _argv(scenario: str, script: str) -> List[str]:
    for entry in _journal(scenario):
        if entry.get("script") == script:
            return [a for a in entry["argv"] if isinstance(a, str)]
    raise AssertionError(f"{script} not called in {scenario}")


def _strip(value: object) -> str:
    assert isinstance(value, str)
    return rubyisms.strip(value)


def test_reads_match_recorded_script_arguments() -> None:
    """The values the Ruby driver read with elements[...] became these argv."""
    m = message("attach_nic_basic")
    base = "VM/TEMPLATE/NIC[ATTACH='YES']"
    argv = _argv("attach_nic_basic", "vmm/kvm/attach_nic")
    assert [m.text("DEPLOY_ID")] + [_strip(m.text(f"{base}/{x}")) for x in
                                    ("MAC", "BRIDGE", "MODEL", "VN_MAD", "TARGET")] == argv[:6]
    assert m.element("VM/TEMPLATE/PCI[ATTACH='YES']") is None
    reconf = _argv("attach_nic_basic", "vmm/kvm/reconfigure")
    assert [m.text("VM/TEMPLATE/CONTEXT/TARGET"), m.text("DISK_TARGET_PATH")] == reconf[1:3]

    disk = message("attach_disk_basic")
    assert disk.text("VM/TEMPLATE/DISK[ATTACH='YES']/TARGET") == \
        _argv("attach_disk_basic", "vmm/kvm/attach_disk")[2]

    snap = message("snapshot_revert_basic")
    assert snap.text("VM/TEMPLATE/SNAPSHOT[ACTIVE='YES']/HYPERVISOR_ID") == \
        _argv("snapshot_revert_basic", "vmm/kvm/snapshot_revert")[1]
    create = message("snapshot_create_basic")
    snap_id = create.text("VM/TEMPLATE/SNAPSHOT[ACTIVE='YES']/SNAPSHOT_ID")
    assert str(rubyisms.to_i(snap_id or "")) == \
        _argv("snapshot_create_basic", "vmm/kvm/snapshot_create")[1]

    ex = message("exec_basic")
    assert ex.text("VM/TEMPLATE/QEMU_GA_EXEC/COMMAND") == _argv("exec_basic", "vmm/kvm/exec")[2]
    assert message("update_sg_basic").text("SECURITY_GROUP_ID") == "0"


# --------------------------------------------------------------------------
# the network driver view (get_vnm_drivers)
# --------------------------------------------------------------------------
VNM_VM = (
    "<VMM_DRIVER_ACTION_DATA><HOST>h</HOST><VM><ID>7</ID><NAME>n</NAME><DEPLOY_ID/>"
    "<TEMPLATE><CONTEXT><T>1</T></CONTEXT><CPU>1</CPU>"
    "<NIC><NIC_ID>0</NIC_ID><VN_MAD><![CDATA[bridge]]></VN_MAD></NIC>"
    "<NIC><NIC_ID>1</NIC_ID></NIC>"
    "<NIC><NIC_ID>2</NIC_ID><VN_MAD></VN_MAD></NIC>"
    "<PCI><ID>p</ID><VN_MAD>a&amp;b</VN_MAD></PCI>"
    "<SECURITY_GROUP_RULE><R>1</R></SECURITY_GROUP_RULE>"
    "<NIC_ALIAS><NIC_ID>3</NIC_ID><VN_MAD>bridge</VN_MAD></NIC_ALIAS>"
    "<NIC><NIC_ID>4</NIC_ID><VN_MAD> </VN_MAD></NIC>"
    "<SECURITY_GROUP_RULE><R>2</R></SECURITY_GROUP_RULE></TEMPLATE>"
    "<USER_TEMPLATE><A>&quot;x&quot;</A></USER_TEMPLATE>"
    "<HISTORY_RECORDS><HISTORY><SEQ>0</SEQ><HOSTNAME>h0</HOSTNAME><VM_MAD>kvm</VM_MAD></HISTORY>"
    "<HISTORY><SEQ>1</SEQ><HOSTNAME>h1</HOSTNAME><HID>1</HID><DS_ID>0</DS_ID></HISTORY>"
    "</HISTORY_RECORDS></VM></VMM_DRIVER_ACTION_DATA>"
)


def test_vnm_view_follows_get_vnm_drivers() -> None:
    m = decode(b64(VNM_VM))
    before = m.xml()
    drivers, xml = m.vnm_view()
    # raw VN_MAD text (get_text.to_s), first appearance order over NIC, NIC_ALIAS, PCI;
    # NICs without VN_MAD or with an empty one are skipped, " " is not empty
    assert drivers == ["bridge", " ", "a&amp;b"]
    assert xml == (
        "<VM><ID>7</ID><DEPLOY_ID/>"
        "<TEMPLATE><CONTEXT><T>1</T></CONTEXT></TEMPLATE>"
        "<USER_TEMPLATE><A>&quot;x&quot;</A></USER_TEMPLATE>"
        "<TEMPLATE><SECURITY_GROUP_RULE><R>1</R></SECURITY_GROUP_RULE></TEMPLATE>"
        "<TEMPLATE><SECURITY_GROUP_RULE><R>2</R></SECURITY_GROUP_RULE></TEMPLATE>"
        "<HISTORY_RECORDS><HISTORY><HOSTNAME>h0</HOSTNAME></HISTORY></HISTORY_RECORDS>"
        "<HISTORY_RECORDS><HISTORY><HOSTNAME>h1</HOSTNAME></HISTORY></HISTORY_RECORDS>"
        "<HISTORY_RECORDS><HISTORY><HID>1</HID></HISTORY></HISTORY_RECORDS>"
        "<HISTORY_RECORDS><HISTORY><DS_ID>0</DS_ID></HISTORY></HISTORY_RECORDS>"
        "<HISTORY_RECORDS><HISTORY><VM_MAD>kvm</VM_MAD></HISTORY></HISTORY_RECORDS>"
        "<TEMPLATE><NIC><NIC_ID>0</NIC_ID><VN_MAD><![CDATA[bridge]]></VN_MAD></NIC></TEMPLATE>"
        "<TEMPLATE><NIC><NIC_ID>4</NIC_ID><VN_MAD> </VN_MAD></NIC></TEMPLATE>"
        "<TEMPLATE><NIC_ALIAS><NIC_ID>3</NIC_ID><VN_MAD>bridge</VN_MAD></NIC_ALIAS></TEMPLATE>"
        "<TEMPLATE><PCI><ID>p</ID><VN_MAD>a&amp;b</VN_MAD></PCI></TEMPLATE>"
        "</VM>"
    )
    assert m.xml() == before  # the view works on a copy
    assert m.vnm_view() == (drivers, xml)


def test_vnm_view_of_a_vm_without_network_parts() -> None:
    assert decode(b64("<M><VM><NAME>x</NAME></VM></M>")).vnm_view() == ([], "<VM/>")


def test_vnm_view_needs_a_vm() -> None:
    with pytest.raises(MessageError, match="the action payload has no VM element"):
        decode(b64("<VMM_DRIVER_ACTION_DATA><HOST>h</HOST></VMM_DRIVER_ACTION_DATA>")).vnm_view()


def test_vnm_view_reparses_vm_to_s_like_ruby() -> None:
    # VM.to_s loses the namespace declared above it, so REXML's re-parse fails
    m = decode(b64('<D xmlns:x="u"><VM><ID>1</ID><x:A/></VM></D>'))
    assert m.element_xml("VM") == "<VM><ID>1</ID><x:A/></VM>"
    with pytest.raises(MessageError, match="network driver view.*not well-formed"):
        m.vnm_view()


def _scenario_messages(scenario: Path) -> Dict[str, List[Message]]:
    """Well-formed payloads of a scenario by VM id."""
    out: Dict[str, List[Message]] = {}
    for path in sorted(scenario.glob("*.xml")):
        try:
            m = decode(b64(path.read_text(encoding="utf-8").replace("{WORLD}", FAKE_WORLD)))
        except MessageError:
            continue
        out.setdefault(m.text("VM/ID") or "", []).append(m)
    return out


def _vnm_entries() -> Iterator[Tuple[str, dict, List[Message]]]:
    for journal in sorted(SCENARIOS.glob("*/expected.journal.jsonl")):
        messages = _scenario_messages(journal.parent)
        for line in journal.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if entry.get("script", "").startswith("vnm/"):
                yield journal.parent.name, entry, messages.get(str(entry["vm"]), [])


def _same(recorded: dict, text: str) -> bool:
    """A recorded base64 stdin (decoded, or hashed when > 4 KiB) equals ``text``."""
    text = text.replace(FAKE_WORLD, "{WORLD}")
    if "b64" in recorded:
        return bool(recorded["b64"] == text)
    data = text.encode("utf-8")
    return (recorded["b64_sha256"], recorded["b64_len"]) == (
        hashlib.sha256(data).hexdigest(), len(data))


def test_every_recorded_network_driver_stdin() -> None:
    """Each vnm script got base64 of vnm_view's XML (update_nic: of VM.to_s)."""
    checked = 0
    failures = []
    for scenario, entry, messages in _vnm_entries():
        stdin = entry["stdin"]
        assert isinstance(stdin, dict) and messages, (scenario, entry)
        driver, action = entry["script"].split("/")[1:]
        if action == "update_nic":
            ok = any(_same(stdin, m.element_xml("VM")) for m in messages)
        else:
            ok = any(_same(stdin, m.vnm_view()[1]) and driver in m.vnm_view()[0]
                     for m in messages)
        checked += 1
        if not ok:
            failures.append((scenario, entry["script"], entry["vm"]))
    assert not failures
    assert checked >= 60


def test_recorded_driver_order_is_vnm_view_order() -> None:
    """One vnm step runs the drivers in vnm_view order (stopping at a failure)."""
    runs = 0
    for journal in sorted(SCENARIOS.glob("*/expected.journal.jsonl")):
        messages = _scenario_messages(journal.parent)
        entries = [e for e in _journal(journal.parent.name) if "script" in e]

        def step(e: dict) -> Tuple[str, str, str, str]:
            kind, _, action = e["script"].partition("/")
            return (str(e["vm"]), e["host"] if kind != "vnm" else "", kind,
                    action.split("/")[-1] if kind == "vnm" else action)

        for (vm, _, kind, _), group in groupby(entries, key=step):
            if kind != "vnm":
                continue
            called = [e["script"].split("/")[1] for e in group]
            orders = [m.vnm_view()[0] for m in messages.get(vm, [])]
            assert any(order[:len(called)] == called for order in orders), (journal, called)
            runs += 1
    assert runs >= 50


def test_multi_driver_view() -> None:
    drivers, _ = message("multi_vnmad_fail", "deploy.xml").vnm_view()
    assert drivers == ["bridge", "ovswitch"]


def test_vnm_view_parses_its_own_serialisation() -> None:
    # VM.to_s is parsed again, as Document.new(vm_template) does
    m = message("cdata_entities", "nic.xml")
    drivers, xml = m.vnm_view()
    assert drivers == ["bridge"]
    view = parse(xml).root
    assert view is not None and view.name == "VM"
    assert [n.text for n in view.find_all("TEMPLATE/NIC/NIC_ID")] == ["0", "1"]


def _cyclic_elements(read: Callable[[], object]) -> int:
    """How many XML elements ``read`` leaves for the cyclic garbage collector."""
    import gc

    from vmm_exec import xmlcompat

    gc.collect()
    gc.disable()
    try:
        read()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found = sum(1 for o in gc.garbage if isinstance(o, xmlcompat.Element))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    return found


def test_peek_text_reads_one_value_and_leaves_no_cycles() -> None:
    """The scheduler's HOST lookup: the value as ``text`` reads it, and the tree is
    freed by reference counting alone (a queue of requests keeps no trees waiting
    for the garbage collector)."""
    from vmm_exec.message import peek_text

    xml = ("<VMM_DRIVER_ACTION_DATA><HOST>h&amp;1</HOST><VM><ID>1</ID></VM>"
           "</VMM_DRIVER_ACTION_DATA>")
    payload = base64.b64encode(xml.encode()).decode()
    assert peek_text(payload, "HOST") == decode(payload).text("HOST") == "h&1"
    assert _cyclic_elements(lambda: decode(payload).text("HOST")) > 0  # the test sees them
    assert _cyclic_elements(lambda: peek_text(payload, "HOST")) == 0


QUICK_CASES = [
    "<R><HOST>h1</HOST></R>",
    "<R><HOST/></R>",
    "<R><HOST></HOST></R>",
    "<R><HOST> spaced \n</HOST></R>",
    "<R><X><HOST>nested</HOST></X><HOST>h2</HOST></R>",
    "<R><HOST>a&amp;b</HOST></R>",
    "<R><HOST>&#65;&#x42;</HOST></R>",
    "<R><HOST>a<!-- c -->b</HOST></R>",
    "<R><HOST><![CDATA[x]]>y</HOST></R>",
    "<R><HOST><Y/>after</HOST></R>",
    "<R><HOST>a<?pi x?>b</HOST></R>",
    "<R><?pi?><HOST>h</HOST></R>",
    "<R><HOST>first</HOST><HOST>second</HOST></R>",
    "<R><host>lower</host></R>",
    "<R/>",
    "<HOST><HOST>inner</HOST></HOST>",
    "<?xml version='1.0'?><R><HOST>decl</HOST></R>",
    "<!DOCTYPE R [<!ENTITY e 'ent'>]><R><HOST>&e;</HOST></R>",
    "<R xmlns:a='u'><a:HOST>ns</a:HOST></R>",
    "<R><HOST>cr\r\nlf</HOST></R>",
    "<R><HOST>é ü 中</HOST></R>",
    "<R><HOST>q\"'</HOST></R>",
    "<R><HOST>unclosed</R>",
    "not xml",
    "<R><HOST>h</HOST><VM><T><![CDATA[x<HOST>y</HOST>]]></T></VM></R>",
    "<R><!-- <HOST>c</HOST> --><HOST>real</HOST></R>",
    "<R><HOST><!--c-->t</HOST></R>",
    "<R><HOST>a &lt;b&gt; &unknown; &#x1F600;</HOST></R>",
    "<R>\n  <HOST>\n</HOST></R>",
    "<!DOCTYPE R><R><HOST>doctype</HOST></R>",
    "\ufeff<R><HOST>bom</HOST></R>",
]


@pytest.mark.parametrize("xml", QUICK_CASES)
def test_peek_text_reads_host_as_the_full_parse_does(xml: str) -> None:
    """The scheduler's quick HOST lookup (lxml only) agrees with the REXML-compatible
    tree, or steps aside for it, errors included."""
    payload = base64.b64encode(xml.encode()).decode()
    assert outcome(lambda p: peek_text(p, "HOST"), payload) == \
        outcome(lambda p: decode(p).text("HOST"), payload)


def outcome(read: Callable[[str], object], payload: str) -> object:
    """What ``read`` returns, or the type of the MessageError it raises."""
    try:
        return read(payload)
    except MessageError as exc:
        return type(exc)


_NAMES = st.sampled_from(["HOST", "VM", "X", "a:HOST", "host", "HOSTNAME"])
_TEXT = st.lists(st.sampled_from(list("ab <>'\"\r\n") + ["&amp;", "&lt;", "&#65;", "&#x42;",
                                                          "é", "]]>", "&e;"]),
                 max_size=6).map("".join)


_LEAF = st.one_of(
    _TEXT.map(lambda t: t.replace("<", "&lt;").replace("]]>", "]]&gt;")),
    _TEXT.map(lambda t: f"<![CDATA[{t.replace(']]>', '')}]]>"),
    _TEXT.map(lambda t: f"<!--{t.replace('-', '')}-->"),
    st.just("<?pi data?>"),
    _NAMES.map(lambda name: f"<{name}/>"),
)


def _element(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(_NAMES, st.lists(children, max_size=3)).map(
        lambda e: f"<{e[0]}>{''.join(e[1])}</{e[0]}>")


_CONTENT = st.recursive(_LEAF, _element, max_leaves=12)


@st.composite
def _documents(draw: st.DrawFn) -> str:
    """Small documents with HOST anywhere (or nowhere), all node kinds, prefixed
    names, a prolog, and sometimes a corruption (a cut or a stray character)."""
    items = draw(st.lists(_CONTENT, max_size=6))
    if draw(st.booleans()):  # a top-level HOST, as oned writes it, anywhere among them
        value = draw(st.lists(_LEAF, max_size=2).map("".join))
        items.insert(draw(st.integers(0, len(items))), f"<HOST>{value}</HOST>")
    body = "".join(items)
    prolog = draw(st.sampled_from(["", "<?xml version='1.0'?>", "<!DOCTYPE R>",
                                   "<!DOCTYPE R [<!ENTITY e 'ent'>]>", "\ufeff"]))
    namespaces = " xmlns:a='urn:a'" if "a:" in body else ""
    xml = f"{prolog}<R{namespaces}>{body}</R>"
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(xml)))
        if draw(st.booleans()):
            xml = xml[:at] + xml[at + draw(st.integers(1, 4)):]
        else:
            xml = xml[:at] + draw(st.sampled_from(list("<>&]-/'\""))) + xml[at:]
    return xml


@settings(max_examples=400, deadline=None)
@given(_documents())
def test_peek_text_agrees_with_the_full_parse_on_any_document(xml: str) -> None:
    """The quick lookup stops reading at HOST: whatever follows (or precedes) it,
    it answers what the REXML-compatible tree answers, or steps aside."""
    payload = base64.b64encode(xml.encode("utf-8", "surrogatepass")).decode()
    got = outcome(lambda p: peek_text(p, "HOST"), payload)
    assert got == outcome(lambda p: decode(p).text("HOST"), payload)
    if not isinstance(got, type):
        # it returned: the payload passed the well-formedness check, and decoding it
        # without repeating the check reads the same document, errors included
        assert outcome(lambda p: decode(p, well_formed=True).xml(), payload) == \
            outcome(lambda p: decode(p).xml(), payload)


def test_a_payload_is_checked_once_when_its_host_was_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from vmm_exec import xmlcompat

    calls: List[str] = []
    real = xmlcompat._check_well_formed
    monkeypatch.setattr(xmlcompat, "_check_well_formed",
                        lambda text: (calls.append(text), real(text))[1])
    payload = b64(load("deploy_basic", "deploy.xml"))
    assert peek_text(payload, "HOST") == "host01"
    assert len(calls) == 1
    assert decode(payload, well_formed=True).text("HOST") == "host01"
    assert len(calls) == 1
    decode(payload)
    assert len(calls) == 2


# --------------------------------------------------------------------------
# the network view is written from the matches: the same as REXML's
# re-parse of VM.to_s with the matches moved out of it (the reference below)
# --------------------------------------------------------------------------
def reference_vnm_view(m: Message) -> Tuple[List[str], str]:
    from vmm_exec import xmlcompat
    from vmm_exec.message import VNM_DEVICES, VNM_XPATHS, _add_element_to_path

    vm = m.element("VM")
    assert vm is not None
    try:
        source = xmlcompat.parse(vm.to_s()).root
    except xmlcompat.XmlError as exc:
        raise MessageError(f"cannot build the network driver view of the VM: {exc}") from exc
    assert source is not None
    view = xmlcompat.Element("VM")
    for xpath in VNM_XPATHS:
        for element in source.find_all(xpath):
            _add_element_to_path(view, element, xpath)
    drivers: List[str] = []
    for device in VNM_DEVICES:
        for element in source.find_all("TEMPLATE/" + device):
            node = element.get_text("VN_MAD")
            vn_mad = node.to_s() if node is not None else ""
            if vn_mad:
                if vn_mad not in drivers:
                    drivers.append(vn_mad)
                _add_element_to_path(view, element, "TEMPLATE/" + device)
    return drivers, view.to_s()


VM_NAMES = ["ID", "DEPLOY_ID", "TEMPLATE", "CONTEXT", "USER_TEMPLATE", "SECURITY_GROUP_RULE",
            "HISTORY_RECORDS", "HISTORY", "HOSTNAME", "HID", "DS_ID", "VM_MAD", "NIC",
            "NIC_ALIAS", "PCI", "VN_MAD", "DISK", "x:NIC", "n:VN_MAD"]
VM_TEXT = st.sampled_from(["", "br0", "ovswitch", "a:b", " ", "<![CDATA[bridge]]>", "&amp;",
                           "<!-- c -->", "x='1'"])


@st.composite
def vm_children(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 4 if depth < 3 else 0))):
        name = draw(st.sampled_from(VM_NAMES))
        attrs = draw(st.sampled_from(["", " a='1'", ' b="x:y"', " x:c='2'", " xmlns:x='u'",
                                      " xmlns:n='u'"]))
        if draw(st.booleans()):
            body = draw(VM_TEXT)
        else:
            body = draw(vm_children(depth + 1))
        parts.append(f"<{name}{attrs}>{body}</{name}>")
    return "".join(parts)


@settings(max_examples=300, deadline=None)
@given(vm_children(), st.sampled_from(["", " xmlns:x='u'", " xmlns:n='u'"]),
       st.sampled_from(["", " xmlns:x='u' xmlns:n='u'"]))
def test_vnm_view_equals_the_reparse_of_vm_to_s(children: str, vm_ns: str, outer_ns: str) -> None:
    text = f"<D{outer_ns}><HOST>h</HOST><VM{vm_ns}>{children}</VM></D>"
    try:
        m = decode(b64(text))
    except MessageError:
        return  # not well-formed as a whole (an undeclared prefix): nothing to view
    try:
        expected = reference_vnm_view(m)
    except MessageError as exc:
        with pytest.raises(MessageError, match="network driver view"):
            m.vnm_view()
        assert "not well-formed" in str(exc)
        return
    assert m.vnm_view() == expected


@settings(max_examples=300, deadline=None)
@given(vm_children())
def test_a_prefixed_name_is_never_missed(children: str) -> None:
    from vmm_exec.message import _maybe_prefixed

    m = decode(b64(f"<D xmlns:x='u' xmlns:n='u'><VM>{children}</VM></D>"))
    vm = m.element("VM")
    assert vm is not None
    names = []
    stack = [vm]
    while stack:
        element = stack.pop()
        names.append(element.name)
        names.extend(key for key, _ in element.attributes)
        stack.extend(element.elements())
    if any(":" in name for name in names):
        assert _maybe_prefixed(m.element_xml("VM"))
