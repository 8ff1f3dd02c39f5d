"""Decoded trees are freed when their action ends, by reference counting.

Parent links make every tree a reference cycle. Left to the cyclic garbage
collector, the trees of a storm were found only after promotion to the older
generations, whose collections traverse everything the driver holds: that
doubled the cost of decoding a request. These tests count what the collector
would have to find after a message, its network view and its copies are done.
"""

from __future__ import annotations

import gc
import io
from pathlib import Path
from typing import Iterator, List

import pytest
from e2e.kit import scenario_xml
from helpers import b64

from vmm_exec import actions, engine, xmlcompat
from vmm_exec import message as messages
from vmm_exec.cancel import CancelScope
from vmm_exec.config import DriverConfig, Paths
from vmm_exec.context import Services
from vmm_exec.protocol import Gate, Request, Writer
from vmm_exec.transports.openssh import OpenSSHTransport

DEPLOY = scenario_xml("deploy_basic", "deploy.xml")
PREFIXED = DEPLOY.replace("<VM>", "<VM xmlns:one='urn:x'><one:EXTRA>1</one:EXTRA>", 1)


@pytest.fixture
def collector_off() -> Iterator[None]:
    """No automatic collection in between: what is left is counted by gc.collect()."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def use(message: messages.Message) -> None:
    """What an action reads: values, serialisations, the network view."""
    assert message.text("HOST")
    assert message.element_xml("VM")
    assert message.element_xml("DATASTORE") is not None
    drivers, view = message.vnm_view()
    assert drivers and view.startswith("<VM>")


@pytest.mark.parametrize("xml", [DEPLOY, PREFIXED], ids=["copied-view", "reparsed-view"])
def test_a_disposed_message_leaves_nothing_to_collect(collector_off: None, xml: str) -> None:
    message = messages.decode(b64(xml))
    use(message)
    message.dispose()
    del message
    assert gc.collect() == 0


def test_without_dispose_the_tree_is_cyclic_garbage(collector_off: None) -> None:
    """The control: what dispose spares the collector."""
    message = messages.decode(b64(DEPLOY))
    use(message)
    del message
    assert gc.collect() > 100


def test_dispose_reaches_the_whole_tree_from_any_element(collector_off: None) -> None:
    doc = xmlcompat.parse("<A><B><C>x</C></B><D/></A>")
    root = doc.root
    assert root is not None
    inner = root.find("B/C")
    assert inner is not None
    xmlcompat.dispose(inner)
    assert doc.children == [] and root.children == [] and inner.children == []
    del doc, root, inner
    assert gc.collect() == 0


def test_a_copy_with_a_child_added_leaves_nothing_to_collect(collector_off: None) -> None:
    written = actions._with_child("<VM><ID>1</ID></VM>", "BACKUP_RESULT", "FAILURE")
    assert written == "<VM><ID>1</ID><BACKUP_RESULT>FAILURE</BACKUP_RESULT></VM>"
    assert gc.collect() == 0


def captured_messages(monkeypatch: pytest.MonkeyPatch) -> List[messages.Message]:
    made: List[messages.Message] = []
    real = messages.decode

    def decode(payload: str, well_formed: bool = False) -> messages.Message:
        made.append(real(payload, well_formed=well_formed))
        return made[-1]

    monkeypatch.setattr(engine.messages, "decode", decode)
    return made


@pytest.mark.parametrize("xml, answer", [
    # an answer without a step: the deployment file does not exist
    (DEPLOY, "DEPLOY FAILURE 5 Cannot open deployment file"),
    # an error raised while planning: no VM element
    ("<VMM_DRIVER_ACTION_DATA><HOST>h</HOST></VMM_DRIVER_ACTION_DATA>", "DEPLOY FAILURE 5 "),
], ids=["immediate-answer", "planning-error"])
def test_perform_disposes_the_message_on_every_way_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xml: str, answer: str) -> None:
    made = captured_messages(monkeypatch)
    (tmp_path / "var").mkdir()
    config = DriverConfig(hypervisor="kvm", paths=Paths(str(tmp_path)))
    out = io.BytesIO()
    engine.perform(Services(config, Writer(out), OpenSSHTransport()),
                   Request("DEPLOY", 5, "5", b64(xml)), CancelScope(), Gate())
    assert out.getvalue().decode().splitlines()[-1].startswith(answer)
    assert len(made) == 1
    root = made[0].root
    assert root.children == [] and (root.document is None or root.document.children == [])
