"""The REXML-compatible tree against REXML itself (Ruby's, the version the Ruby
driver runs): generated documents, the recorded payloads and broken ones are
read by both, and what a script could be handed must be the same -- the root
written back (``Document.new(text).root.to_s``), every element written and its
``text``, in document order.

One Ruby process serves the whole module (a line per document), so hypothesis
can try hundreds of documents. Only documents lxml accepts are compared: the
driver refuses the others before building a tree (the documented choice), and
entity declarations, which the driver refuses too.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from test_message import _documents
from test_xmlcompat import _load, _lxml_accepts, _payloads, document

from vmm_exec.xmlcompat import Element, XmlError, parse

RUBY_READER = r"""
require "rexml/document"
require "base64"
require "json"
STDOUT.sync = true
STDIN.each_line do |line|
  text = Base64.strict_decode64(line.chomp).force_encoding("UTF-8")
  begin
    root = REXML::Document.new(text).root
    elements = [root]
    root.each_recursive { |e| elements << e }
    answer = { "root" => root.to_s,
               "elements" => elements.map { |e| [e.to_s, e.text] } }
  rescue Exception => e
    answer = { "error" => e.class.name }
  end
  puts JSON.generate(answer)
end
"""


class Rexml:
    """A Ruby process reading one document per line with REXML."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            ["ruby", "-e", RUBY_READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, encoding="utf-8")

    def read(self, text: str) -> Dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(base64.b64encode(text.encode("utf-8")).decode() + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the Ruby reader ended"
        answer: Dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def rexml() -> Iterator[Rexml]:
    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed (.ci/setup installs it): no REXML to compare with")
    reader = Rexml()
    if "error" in reader.read("<A/>"):
        reader.close()
        pytest.skip("Ruby has no REXML here: nothing to compare with")
    yield reader
    reader.close()


def ours(text: str) -> Optional[Tuple[str, List[Tuple[str, Optional[str]]]]]:
    """What REXML's reader prints, from our tree; None where the driver refuses it."""
    try:
        doc = parse(text)
    except XmlError:
        return None
    top = doc.root
    assert top is not None
    elements: List[Element] = []
    stack = [top]
    while stack:  # document order
        element = stack.pop()
        elements.append(element)
        stack.extend(reversed(list(element.elements())))
    return top.to_s(), [(e.to_s(), e.text) for e in elements]


def compare(reader: Rexml, text: str) -> None:
    if not _lxml_accepts(text.lstrip("\ufeff")):
        return
    mine = ours(text)
    if mine is None:
        assert "<!ENTITY" in text, text  # the one well-formed thing we refuse
        return
    theirs = reader.read(text)
    assert "error" not in theirs, (theirs, text)
    assert (theirs["root"], [tuple(e) for e in theirs["elements"]]) == mine, text


ORACLE_SETTINGS = settings(max_examples=300, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow,
                                                  HealthCheck.function_scoped_fixture])


@ORACLE_SETTINGS
@given(document())
def test_generated_documents_read_as_rexml_reads_them(rexml: Rexml,
                                                      doc: Tuple[str, str]) -> None:
    compare(rexml, doc[0])


@ORACLE_SETTINGS
@given(_documents())
def test_documents_with_every_node_kind_and_corruptions(rexml: Rexml, xml: str) -> None:
    compare(rexml, xml)


# markup the generators do not make: split points of the tokenizer ("<" inside
# CDATA, comments, instructions and a DOCTYPE's internal subset; ">" in attribute
# values), whitespace inside tags
EDGE_CASES = [
    "<A><![CDATA[<B>x</B> <<]]></A>",
    "<A><![CDATA[]]]]><![CDATA[>]]>t</A>",
    "<A><!-- <B/> < --><B/></A>",
    "<A><?pi <B/> < ?>x</A>",
    "<?pi <z>?><A/>",
    "<!DOCTYPE A [<!ELEMENT A (#PCDATA)><!-- <x> --><?p <y>?>]>\n<A>t</A>",
    "<!DOCTYPE A SYSTEM 'a<b.dtd'><A/>",
    "<A b='x>y' c=\"1>2<3\"/>".replace("<3", "&lt;3"),
    "<A\n b = 'v'\t>t</A\n>",
    "<A>a\r\nb\rc<![CDATA[d\r\ne]]></A>",
    "<A><B/><B></B>text<B>t</B></A>",
    # the one-piece CDATA value and its near misses
    "<A><B><![CDATA[v]]></B><C><![CDATA[]]></C><D><![CDATA[]]]></D></A>",
    "<A><B><![CDATA[v]]></B ><C><![CDATA[x]]>t</C><D><![CDATA[a<b]]></D></A>",
    "<A><B><![CDATA[v]]><![CDATA[w]]></B><C>\n<![CDATA[x]]></C><B><![CDATA[\r\n]]></B></A>",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_read_as_rexml_reads_them(rexml: Rexml, text: str) -> None:
    assert _lxml_accepts(text), text
    compare(rexml, text)


@pytest.mark.parametrize("name, path", list(_payloads()), ids=[n for n, _ in _payloads()])
def test_recorded_payloads_read_as_rexml_reads_them(rexml: Rexml, name: str,
                                                    path: Path) -> None:
    compare(rexml, _load(path))
