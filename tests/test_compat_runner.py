"""Fast tests of the compat harness itself (runner, normalisation, fakes).

They need no real driver: fake hosts are exercised directly in temporary
worlds, and one scenario is run end to end against a tiny stub driver.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from compat import judge as judging  # noqa: E402
from compat import normalize, procs, runner, session  # noqa: E402
from compat.fakes import common, remotes  # noqa: E402
from compat.fakes.action import POLL_LINE  # noqa: E402
from compat.scenario import PortRuleError, PortRules, Scenario  # noqa: E402
from compat.world import (  # noqa: E402
    DEFAULT_ENV,
    build_world,
    driver_env,
    encode_input_line,
    new_world_dir,
    snapshot,
)

SCENARIOS = ROOT / "compat" / "scenarios"
NO_ROUTE = "ssh: connect to host host09 port 22: No route to host\r\n"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
@pytest.fixture
def world() -> Iterator[str]:
    path = new_world_dir()
    try:
        yield path
    finally:
        procs.kill_pids(procs.world_procs(path))
        shutil.rmtree(path, ignore_errors=True)


def make_world(path: str, faults: str = "") -> Dict[str, str]:
    """Build a world and return the environment a driver would get."""
    build_world(path, faults=faults)
    return driver_env(path, {"42", "43"})


def sh(
    env: Dict[str, str], world: str, command: str, stdin: bytes = b""
) -> subprocess.CompletedProcess:
    """Run a shell snippet as the driver would, bounded in time."""
    return subprocess.run(
        ["bash", "-c", command], cwd=world, env=env, input=stdin,
        capture_output=True, timeout=30,
    )


def journal(world: str) -> List[dict]:
    return normalize.read_journal(world)


def rexml(xml: str) -> str:
    """Ruby's REXML writes empty elements as ``<X/>`` (what the driver sends)."""
    return re.sub(r"<([A-Za-z_][\w.-]*)([^<>]*)></\1>", r"<\1\2/>", xml)


# ---------------------------------------------------------------------------
# normalisation against the recorded corpus
# ---------------------------------------------------------------------------
def test_poll_basic_expected_files_from_synthetic_raw_run(world: str) -> None:
    scenario = SCENARIOS / "poll_basic"
    xml = (scenario / "msg.xml").read_text(encoding="utf-8")
    poll = "vmm/kvm/poll"
    cmd = (
        f'if [ -x "var/tmp/one/{poll}" ]; then var/tmp/one/{poll} one-42 host01 42 host01; else'
        "                              exit 42; fi"
    )
    raw = [
        {"host": "frontend", "ssh": "host01", "opts": [], "cmd": cmd},
        {"host": "host01", "script": poll, "argv": ["one-42", "host01", "42", "host01"],
         "stdin": rexml(xml)},
    ]
    out = ["INIT SUCCESS - -", "POLL SUCCESS 42 " + POLL_LINE]
    lines = normalize.normalize_entries(raw, world, {"42"})
    assert "\n".join(lines) + "\n" == (scenario / "expected.journal.jsonl").read_text()
    assert normalize.normalize_stdout(out, world) == (scenario / "expected.stdout").read_text()


def _blob_candidates(scenario: Path) -> Dict[str, str]:
    """sha256 -> text for payload variants the recorded driver sent/wrote."""
    texts: List[str] = []
    for path in list(scenario.glob("*.xml")) + [p for p in scenario.glob("files/**/*")]:
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            texts += [text, text + "\n", rexml(text), rexml(text) + "\n"]
    return {hashlib.sha256(t.encode()).hexdigest(): t for t in texts}


def _unsize(d: dict, key: str, cands: Dict[str, str]) -> Optional[str]:
    """The text behind ``key`` or ``key_sha256`` (None if not recoverable)."""
    if key in d:
        return d[key]
    return cands.get(d.get(key + "_sha256", ""))


def _raw_blob(value, world: str, cands: Dict[str, str]):
    """Inverse of normalize_blob, or KeyError when a sha is unknown."""
    if value is None or isinstance(value, str):
        return None if value is None else value.replace("{WORLD}", world)
    if "b64" in value or "b64_sha256" in value:
        text = _unsize(value, "b64", cands)
        if text is None:
            raise KeyError("b64")
        return common.encode_b64_text(
            text.replace("{WORLD}", world), value.get("form", "strict"), value.get("tail", "")
        )
    text = _unsize(value, "text", cands)
    if text is None:
        raise KeyError("text")
    return text.replace("{WORLD}", world)


def _denormalize(entry: dict, world: str, cands: Dict[str, str]) -> dict:
    if "script" in entry:
        return {"host": entry["host"], "script": entry["script"],
                "argv": [_raw_blob(a, world, cands) for a in entry["argv"]],
                "stdin": _raw_blob(entry["stdin"], world, cands)}
    if "ssh" in entry:
        return {"host": entry["host"], "ssh": entry["ssh"], "opts": entry["opts"],
                "cmd": entry["cmd"].replace("{WORLD}", world)}
    raw = {k: v for k, v in entry.items() if k != "vm"}
    return json.loads(json.dumps(raw).replace("{WORLD}", world))


def _rebuild(scenario: Path, world: str):
    """(raw entries, file entries, recorded lines they stand for, all lines)."""
    cands = _blob_candidates(scenario)
    lines = (scenario / "expected.journal.jsonl").read_text().splitlines()
    raw: List[dict] = []
    files: List[dict] = []
    kept: List[str] = []
    for line in lines:
        entry = json.loads(line)
        if "file" in entry:
            if _unsize(entry, "content", cands) is None:
                continue
            files.append(dict(entry, content=_unsize(entry, "content", cands)))
        else:
            try:
                raw.append(_denormalize(entry, world, cands))
            except KeyError:
                continue
        kept.append(line)
    return raw, files, kept, lines


SCENARIO_NAMES = sorted(p.name for p in SCENARIOS.iterdir() if p.is_dir())


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_normalisation_reproduces_recorded_corpus(name: str, world: str) -> None:
    """Raw runs rebuilt from each recording normalise back to it, byte for
    byte (entries whose large payload cannot be rebuilt are left out)."""
    scenario = SCENARIOS / name
    raw, files, kept, _ = _rebuild(scenario, world)
    candidates = Scenario.load(str(scenario)).vm_ids()
    before = snapshot(world)
    for entry in files:
        path = Path(world) / entry["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(entry["content"].replace("{WORLD}", world))
    got = normalize.normalize_entries(_per_vm_order(raw, candidates), world, candidates)
    got += normalize.file_entries(world, before)
    assert got == kept

    expected_stdout = (scenario / "expected.stdout").read_text()
    assert normalize.normalize_stdout(_reordered_stdout(expected_stdout, world), world) == (
        expected_stdout
    )


def test_corpus_round_trip_covers_most_entries() -> None:
    """The round trip above is not vacuous: most recorded lines are rebuilt."""
    rebuilt = total = 0
    for name in SCENARIO_NAMES:
        _, _, kept, lines = _rebuild(SCENARIOS / name, "/tmp/compat-coverage")
        rebuilt += len(kept)
        total += len(lines)
    assert total > 200 and rebuilt / total > 0.6, (rebuilt, total)


def _per_vm_order(raw: List[dict], candidates) -> List[dict]:
    """Interleave VMs differently but keep each VM's call order."""
    by_vm: Dict[Optional[str], List[dict]] = {}
    for entry in raw:
        vm = common.derive_vm(entry.get("argv", entry.get("cmd")), entry.get("stdin"), candidates)
        if "scp" in entry:
            vm = None
        by_vm.setdefault(vm, []).append(entry)
    out: List[dict] = []
    for vm in reversed(list(by_vm)):
        out.extend(reversed(by_vm[vm]) if vm is None else by_vm[vm])
    return out


def _reordered_stdout(expected: str, world: str) -> List[str]:
    """Raw stdout with the groups in reverse order (a first group that does
    not start with a message keeps its place)."""
    groups: List[List[str]] = []
    for line in expected.splitlines():
        if line.startswith("## id "):
            groups.append([])
        else:
            groups[-1].append(line.replace("{WORLD}", world))
    head = []
    if groups and groups[0] and not normalize.MESSAGE_RE.match(groups[0][0]):
        head = [groups.pop(0)]
    return [line for group in head + groups[::-1] for line in group]


def test_stdout_grouping_rules() -> None:
    w = "/tmp/compat-x"
    lines = ["LOG I 10 a", "garbage before", "POLL SUCCESS 9 " + w + "/f", "second line",
             "LOG I abc z", "INIT SUCCESS - -", "LOG E -5 neg"]
    assert normalize.normalize_stdout(lines, w) == (
        "## id -\nINIT SUCCESS - -\n## id abc\nLOG I abc z\n## id -5\nLOG E -5 neg\n"
        "## id 9\nPOLL SUCCESS 9 {WORLD}/f\nsecond line\n## id 10\nLOG I 10 a\ngarbage before\n"
    )
    assert normalize.normalize_stdout([], w) == ""


# ---------------------------------------------------------------------------
# base64 detection and the 4 KiB rule
# ---------------------------------------------------------------------------
def test_wrap60_matches_ruby_encode64() -> None:
    text = "<VM>" + "x" * 60 + "</VM>"
    encoded = base64.b64encode(text.encode()).decode()
    ruby = "\n".join(encoded[i:i + 60] for i in range(0, len(encoded), 60)) + "\n"
    assert common.encode_b64_text(text, "wrap60") == ruby
    assert all(len(line) <= 60 for line in ruby.splitlines())
    assert common.decode_b64_text(ruby) == common.B64Text(text, "wrap60", "")
    assert common.decode_b64_text(ruby + "\n") == common.B64Text(text, "wrap60", "\n")


@settings(max_examples=300, deadline=None)
@given(
    st.text(min_size=4, max_size=600).map(lambda t: "<" + t),
    st.sampled_from(["strict", "wrap60"]),
    st.sampled_from(["", "\n", "\n\n"]),
)
def test_b64_round_trip(text: str, form: str, tail: str) -> None:
    encoded = common.encode_b64_text(text, form, tail)
    decoded = common.decode_b64_text(encoded)
    assert decoded is not None
    assert common.encode_b64_text(decoded.text, decoded.form, decoded.tail) == encoded
    blob = normalize.normalize_blob(encoded, "/nowhere")
    assert isinstance(blob, dict)
    assert blob.get("form", "strict") == ("wrap60" if form == "wrap60" and "\n" in
                                          encoded.rstrip("\n") else "strict")


@pytest.mark.parametrize("value", [
    "c2hvcnQ=",                           # base64 of "short": not XML-ish
    base64.b64encode(b"\xff\xfe<").decode(),  # not UTF-8
    "PFZNPg",                             # "<VM>" without padding: not canonical
    "PFZNPg==x", "<VM></VM>", "", "abc",
])
def test_b64_rejects_non_canonical_or_non_xml(value: str) -> None:
    assert common.decode_b64_text(value) is None
    assert normalize.normalize_blob(value, "/nowhere") == value


def test_size_rule_counts_utf8_bytes() -> None:
    assert normalize.normalize_blob("a" * 4096, "/w") == "a" * 4096
    assert normalize.normalize_blob("é" * 2048, "/w") == "é" * 2048
    big = "é" * 2049
    assert normalize.normalize_blob(big, "/w") == {
        "text_sha256": hashlib.sha256(big.encode()).hexdigest(), "text_len": 4098}
    xml = "<X>" + "y" * 5000 + "</X>"
    assert normalize.normalize_blob(common.encode_b64_text(xml, "wrap60", "\n\n"), "/w") == {
        "b64_sha256": hashlib.sha256(xml.encode()).hexdigest(), "b64_len": len(xml),
        "form": "wrap60", "tail": "\n\n"}


def test_world_path_is_replaced_before_hashing() -> None:
    text = "/w/x " * 1000
    got = normalize.normalize_blob(text, "/w")
    norm = text.replace("/w", "{WORLD}")
    assert got == {"text_sha256": hashlib.sha256(norm.encode()).hexdigest(),
                   "text_len": len(norm)}


def test_file_snapshot_diff(world: str) -> None:
    make_world(world)
    (Path(world) / "one/var/vms/42").mkdir(parents=True)
    (Path(world) / "one/var/vms/42/deployment.0").write_text("same")
    (Path(world) / "changed").write_text("old")
    before = snapshot(world)
    (Path(world) / "changed").write_text("new " + world)
    (Path(world) / "hosts/h1/var/lib").mkdir(parents=True)
    (Path(world) / "hosts/h1/var/lib/vm.xml").write_bytes(b"\xff\x00")
    (Path(world) / "hosts/h1/var/tmp/one/vmm").mkdir(parents=True)
    (Path(world) / "hosts/h1/var/tmp/one/vmm/x").write_text("remotes copy: ignored")
    (Path(world) / "run/counter.x").write_text("1")
    (Path(world) / "driver.stderr").write_text("ignored")
    sha = hashlib.sha256(b"\xff\x00").hexdigest()
    assert normalize.file_entries(world, before) == [
        '{"file": "changed", "content": "new {WORLD}"}',
        '{"file": "hosts/h1/var/lib/vm.xml", "content_sha256": "' + sha + '", "content_len": 2}',
    ]


# ---------------------------------------------------------------------------
# faults
# ---------------------------------------------------------------------------
def test_faults_parser() -> None:
    faults = common.parse_faults(
        "# comment\n\nhost09 unreachable\nhost03 noremotes\n"
        "host01 vmm/kvm/migrate exit=1 stderr=\"ERROR: a\\tb\\nc\" nonl=1\n"
        "* vnm/*/post vm=42 nth=2 stdout='x y'\n"
    )
    assert faults.unreachable == {"host09"} and faults.noremotes == {"host03"}
    first, second = faults.rules
    assert (first.host, first.script, first.line) == ("host01", "vmm/kvm/migrate", 5)
    assert first.params == {"exit": "1", "stderr": "ERROR: a\tb\nc", "nonl": "1"}
    assert second.params == {"vm": "42", "nth": "2", "stdout": "x y"}
    assert second.applies_to("host02", "vnm/bridge/post", "42")
    assert not second.applies_to("host02", "vnm/bridge/post", "43")
    assert not first.applies_to("host01", "vmm/kvm/migrate_local", None)


@pytest.mark.parametrize("line", ["lonely", "host01 vmm/kvm/x novalue", "h 'unclosed"])
def test_faults_parser_rejects(line: str) -> None:
    with pytest.raises(common.FaultsError):
        common.parse_faults(line)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40))
def test_faults_quoting_round_trip(value: str) -> None:
    quoted = "'" + value.replace("'", "'\"'\"'") + "'"
    (rule,) = common.parse_faults("host01 vmm/kvm/x stdout=" + quoted).rules
    assert rule.params["stdout"] == common.unescape(value)


def test_first_matching_rule_wins_and_nth_counts(world: str) -> None:
    make_world(world)
    faults = common.parse_faults(
        "host01 vmm/kvm/poll nth=2 exit=7\nhost01 vmm/kvm/poll vm=43 exit=3\n"
        "host01 vmm/* exit=1\n")
    picks = [common.select_rule(faults, "host01", "vmm/kvm/poll", "42", world) for _ in range(3)]
    assert [r.params["exit"] for r in picks if r] == ["1", "7", "1"]
    vm43 = common.select_rule(faults, "host01", "vmm/kvm/poll", "43", world)
    assert vm43 is not None and vm43.params["exit"] == "3"
    assert common.select_rule(faults, "host02", "vmm/kvm/poll", "42", world) is None
    assert (Path(world) / "run").is_dir() and any((Path(world) / "run").iterdir())


# ---------------------------------------------------------------------------
# fake hosts: remotes, ssh, scp, scripts
# ---------------------------------------------------------------------------
def test_remotes_tree(world: str) -> None:
    make_world(world)
    root = Path(world) / "one/var/remotes"
    assert sorted(p.name for p in root.iterdir()) == ["datastore", "tm", "vmm", "vnm"]
    kvm = sorted(p.name for p in (root / "vmm/kvm").iterdir())
    for hypervisor in ("lxc", "qemu", "firecracker"):
        assert sorted(p.name for p in (root / "vmm" / hypervisor).iterdir()) == kvm
    wrapper = root / "vmm/kvm/deploy"
    assert wrapper.stat().st_mode & stat.S_IXUSR
    assert wrapper.read_text() == remotes.WRAPPER and len(remotes.WRAPPER.splitlines()) == 2
    assert len(remotes.script_paths()) == sum(1 for p in root.rglob("*") if p.is_file())


def test_ssh_runs_script_on_fake_host(world: str) -> None:
    env = make_world(world, "host01 vmm/kvm/shutdown exit=3 stderr=\"ERROR: 42 x\\ny\"\n")
    res = sh(env, world, "ssh -o ForwardAgent=yes -p22 root@host01 "
                         "var/tmp/one/vmm/kvm/shutdown one-42 host01 42", b"<VM/>")
    assert (res.returncode, res.stdout, res.stderr) == (3, b"", b"ERROR: 42 x\ny\n")
    assert journal(world) == [
        {"host": "frontend", "ssh": "host01", "opts": ["-o ForwardAgent=yes", "-p 22"],
         "cmd": "var/tmp/one/vmm/kvm/shutdown one-42 host01 42"},
        {"host": "host01", "script": "vmm/kvm/shutdown", "argv": ["one-42", "host01", "42"],
         "stdin": "<VM/>"},
    ]
    assert (Path(world) / "hosts/host01/var/tmp/one/vmm/kvm/shutdown").is_file()


def test_default_outputs(world: str) -> None:
    env = make_world(world)
    res = sh(env, world,
             "ssh -n host01 var/tmp/one/vmm/kvm/deploy /d/deployment.0 host01 42 host01;"
             "ssh -n host01 var/tmp/one/vmm/kvm/snapshot_create one-42 5;"
             "ssh -n host01 var/tmp/one/vmm/kvm/poll one-42;"
             "$ONE_LOCATION/var/remotes/datastore/rsync/backup x 43 </dev/null;"
             "$ONE_LOCATION/var/remotes/vmm/qemu/deploy x </dev/null")
    assert res.stdout.decode().splitlines() == [
        "one-42", "snap-5", POLL_LINE, "backup-43 1024", "one-X"]
    assert journal(world)[-1] == {"host": "frontend", "script": "vmm/qemu/deploy",
                                  "argv": ["x"], "stdin": ""}


def test_stream_stdin_is_not_read_by_scripts(world: str) -> None:
    env = make_world(world)
    stream = ("var/tmp/one/vnm/bridge/pre\n"
              "cat << 'EOT' | var/tmp/one/vnm/bridge/post one-42 host01\n"
              "<VM><ID>42</ID></VM>\nEOT\n"
              "echo done\n")
    res = sh(env, world, "ssh host01 bash -s", stream.encode())
    assert res.returncode == 0 and res.stdout == b"done\n"
    entries = journal(world)
    assert entries[1]["stdin"] is None  # would have eaten the stream
    assert entries[2]["stdin"] == "<VM><ID>42</ID></VM>\n"


def test_unreachable_host(world: str) -> None:
    env = make_world(world, "host09 unreachable\n")
    t0 = time.monotonic()
    res = sh(env, world, "echo x | ssh host09 bash -s; echo rc=$?")
    assert res.stderr.decode() == NO_ROUTE and res.stdout == b"rc=255\n"
    assert time.monotonic() - t0 < 10
    res = sh(env, world, "scp -rp /etc/hostname host09:x; echo rc=$?")
    assert res.stderr.decode() == NO_ROUTE + "lost connection\n" and res.stdout == b"rc=255\n"
    assert not (Path(world) / "hosts/host09").exists()
    assert journal(world)[0] == {"host": "frontend", "ssh": "host09", "opts": [], "cmd": "bash -s"}


def test_noremotes_host_is_updated_by_scp(world: str) -> None:
    env = make_world(world, "host03 noremotes\n")
    res = sh(env, world, "ssh -n host03 var/tmp/one/vmm/kvm/poll one-42 42; echo rc=$?")
    assert res.stdout.endswith(b"rc=127\n")  # no remote scripts there
    remotes_dir = "$ONE_LOCATION/var/remotes/"
    res = sh(env, world, "ssh -n host03 mkdir -p var/tmp/one && scp -rp "
             + " ".join(remotes_dir + "/" + d for d in ("datastore", "tm", "vmm", "vnm"))
             + " host03:var/tmp/one && bash -c 'ssh -n host03 var/tmp/one/vmm/kvm/poll one-42 42'")
    assert res.returncode == 0 and res.stdout.decode() == POLL_LINE + "\n"
    scp = [e for e in journal(world) if "scp" in e]
    assert scp[0]["scp"][0] == "-rp" and scp[0]["scp"][-1] == "host03:var/tmp/one"
    assert journal(world)[-1]["host"] == "host03"


def test_faults_drive_script_output(world: str) -> None:
    env = make_world(world, "frontend tm/ssh/context exit=0 stdout=\"a\\tb\" stderr=e nonl=1\n"
                            "frontend tm/ssh/delete exit=00\n")
    res = sh(env, world, "$ONE_LOCATION/var/remotes/tm/ssh/context x 42")
    assert (res.returncode, res.stdout, res.stderr) == (0, b"a\tb", b"e")
    res = sh(env, world, "$ONE_LOCATION/var/remotes/tm/ssh/delete x 42")
    assert (res.returncode, res.stdout) == (0, b"")


# ---------------------------------------------------------------------------
# scenarios, input, port rules, judging
# ---------------------------------------------------------------------------
def test_input_encoding_and_directives(tmp_path: Path) -> None:
    (tmp_path / "m.xml").write_text("<X>{WORLD}</X>")
    line = encode_input_line("DEPLOY  42 @m.xml  @missing {WORLD}", str(tmp_path), "/w")
    assert line == f"DEPLOY  42 {base64.b64encode(b'<X>/w</X>').decode()}  @missing /w"
    plan = session.parse_input(["#!noinit", "A  1", "#!sleep 0.5", "#!quiesce", "#!", "#!eof"])
    assert not plan.init and [s.kind for s in plan.steps] == ["send", "sleep", "quiesce", "eof"]
    with pytest.raises(ValueError):
        session.parse_input(["#!bogus"])


def test_environment(world: str) -> None:
    env = driver_env(world, {"43", "42"}, {"X": "{WORLD}/x"},
                     base={"PATH": "/bin", "COMPAT_OLD": "1", "LIVE_DISK_SNAPSHOTS": "none"})
    assert env["LIVE_DISK_SNAPSHOTS"] == DEFAULT_ENV["LIVE_DISK_SNAPSHOTS"]
    assert env["VNMAD_LOCAL_ACTIONS"] == "elastic-post elastic-clean"
    assert env["PATH"].split(os.pathsep)[0].endswith("compat/fakes/bin")
    assert env["COMPAT_VM_IDS"] == "42 43" and "COMPAT_OLD" not in env
    assert env["ONE_LOCATION"] == world + "/one" and env["X"] == world + "/x"
    assert env["LANG"] == env["LC_ALL"] == "C.UTF-8"


def test_port_rules_parse() -> None:
    rules = PortRules.parse(["# why", "answer 42 SHUTDOWN", "exit nonzero", "differs a b"])
    assert rules == PortRules({"42": "SHUTDOWN"}, "nonzero", "a b")
    with pytest.raises(PortRuleError):
        PortRules.parse(["exit sometimes"])


def test_cdata_entities_port_rule() -> None:
    rules = Scenario.load(str(SCENARIOS / "cdata_entities")).port_rules()
    assert rules.answers == {"42": "SHUTDOWN"} and rules.exit is None
    expected = (SCENARIOS / "cdata_entities" / "expected.stdout").read_text()
    assert judging.answers_needed(expected, rules) == 2


EXP = "## id -\nINIT SUCCESS - -\n## id 42\nLOG I 42 a\n## id 43\nPOLL SUCCESS 43 x\n"
JEXP = '{"vm": "42", "n": 1}\n{"vm": "43", "n": 2}\n{"vm": null, "n": 3}\n'


def _judge(stdout: str, journal_text: str = JEXP, exit_code: str = "0\n",
           rules: Optional[PortRules] = None) -> List[str]:
    expected = {"stdout": EXP, "journal.jsonl": JEXP, "exit": "0\n"}
    got = {"stdout": stdout, "journal.jsonl": journal_text, "exit": exit_code}
    status, report = judging.judge(expected, got, rules or PortRules({"42": "SHUTDOWN"}))
    assert (status == judging.PASS) == (not report)
    return report


def test_port_judging_answer_rule() -> None:
    good = EXP.replace("LOG I 42 a\n", "LOG I 42 a\nLOG E 42 bad xml\nSHUTDOWN FAILURE 42 bad\n")
    assert _judge(good) == []
    assert _judge(good, JEXP.replace('"n": 1}', '"n": 1}\n{"vm": "42", "n": 9}')) == []
    assert _judge(EXP) != []  # no answer
    assert _judge(EXP.replace("LOG I 42 a\n", "LOG I 42 a\nSHUTDOWN FAILURE 42\n")) != []
    assert _judge(EXP.replace("LOG I 42 a\n", "SHUTDOWN FAILURE 42 x\n")) != []  # not a prefix
    twice = good.replace("SHUTDOWN FAILURE 42 bad\n", "SHUTDOWN FAILURE 42 a\n" * 2)
    assert _judge(twice) != []
    assert _judge(good.replace("LOG E 42", "POLL SUCCESS 42")) != []
    assert _judge(good, JEXP.replace('"n": 3', '"n": 4')) != []
    assert _judge(good, exit_code="255\n") != []


def test_port_judging_exit_rules() -> None:
    assert _judge(EXP, exit_code="killed\n", rules=PortRules(exit="any")) == []
    assert _judge(EXP, exit_code="1\n", rules=PortRules(exit="nonzero")) == []
    assert _judge(EXP, exit_code="0\n", rules=PortRules(exit="nonzero")) != []
    assert _judge(EXP, rules=PortRules()) == []
    assert _judge(EXP + "\n", rules=PortRules()) != []  # even a blank line counts


def test_differs_rule_skips_the_run(tmp_path: Path) -> None:
    scenario = tmp_path / "s"
    shutil.copytree(SCENARIOS / "poll_basic", scenario)
    (scenario / "port").write_text("differs judged by the project's tests\n")
    result = runner.run_scenario(str(scenario), "false")
    assert (result.status, result.report) == ("DIFFERS", ["not compared: judged by the "
                                                          "project's tests"])


# ---------------------------------------------------------------------------
# end to end with a stub driver
# ---------------------------------------------------------------------------
STUB = r'''
import base64, os, re, subprocess, sys, time

POLL = ('if [ -x "var/tmp/one/vmm/kvm/poll" ]; then var/tmp/one/vmm/kvm/poll {d} {h} {i} {h};'
        ' else                              exit 42; fi')
MODE = os.environ.get("STUB_MODE", "")

def rexml(xml):
    return re.sub(r"<([A-Za-z_][\w.-]*)([^<>]*)></\1>", r"<\1\2/>", xml)

for line in sys.stdin:
    words = line.split()
    if words == ["INIT"]:
        print("INIT SUCCESS - -", flush=True)
    elif words == ["FINALIZE"] and MODE != "hang":
        sys.exit(0)
    elif len(words) == 3 and words[0] == "POLL":
        vid, xml = words[1], base64.b64decode(words[2]).decode()
        host = re.search("<HOST>([^<]*)</HOST>", xml).group(1)
        deploy_id = re.search("<DEPLOY_ID>([^<]*)</DEPLOY_ID>", xml).group(1)
        cmd = POLL.format(d=deploy_id, h=host, i=vid)
        res = subprocess.run(["ssh", host, cmd], input=rexml(xml).encode(),
                             stdout=subprocess.PIPE)
        if MODE == "wrong":
            print("POLL FAILURE %s nope" % vid, flush=True)
        else:
            print("POLL SUCCESS %s %s" % (vid, res.stdout.decode().strip()), flush=True)
if MODE == "hang":
    subprocess.Popen(["sleep", "300"])
    time.sleep(300)
sys.exit(255)
'''


@pytest.fixture
def stub(tmp_path: Path) -> str:
    path = tmp_path / "stub_driver.py"
    path.write_text(STUB)
    return f"{sys.executable} {path}"


def test_end_to_end_poll_basic_passes(stub: str) -> None:
    t0 = time.monotonic()
    (result,) = runner.run_scenarios([str(SCENARIOS / "poll_basic")], stub)
    assert (result.name, result.status) == ("poll_basic", "PASS"), "\n".join(result.report)
    assert time.monotonic() - t0 < 20


def test_end_to_end_reports_a_diff(stub: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUB_MODE", "wrong")
    result = runner.run_scenario(str(SCENARIOS / "poll_basic"), stub)
    assert result.status == "FAIL"
    assert "+POLL FAILURE 42 nope" in result.report
    assert "-POLL SUCCESS 42 " + POLL_LINE in result.report


def test_end_to_end_kills_a_driver_that_never_exits(
    stub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = tmp_path / "poll_hang"
    shutil.copytree(SCENARIOS / "poll_basic", scenario)
    (scenario / "meta").write_text("timeout=20\nfinalize_wait=1\n")
    monkeypatch.setenv("STUB_MODE", "hang")
    t0 = time.monotonic()
    result = runner.run_scenario(str(scenario), stub, keep=True)
    world = result.report[-1].split("world kept at ", 1)[1]
    try:
        assert time.monotonic() - t0 < 15
        assert result.status == "FAIL"
        assert "+killed" in result.report and "-0" in result.report
        assert procs.world_procs(world) == []
        assert (Path(world) / "driver.stderr").exists()
    finally:
        shutil.rmtree(world, ignore_errors=True)


def test_cli_output_and_exit_status(stub: str, capsys: pytest.CaptureFixture) -> None:
    rc = runner.main(["--driver", stub, str(SCENARIOS / "poll_basic")])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert re.fullmatch(r"PASS     poll_basic \(\d+\.\ds\)", out[0])
    assert out[1] == "1 passed, 0 failed" and out[2].startswith("total time ")


def test_cli_refuses_to_record_the_shipped_corpus() -> None:
    assert runner.main(["--record", "--driver", "false", str(SCENARIOS / "poll_basic")]) == 2


def test_runner_runs_as_a_file() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "compat" / "runner.py"), "--help"],
                         cwd="/", capture_output=True, timeout=30)
    assert res.returncode == 0 and b"--driver" in res.stdout


def test_a_mode_recording_of_its_own_is_written_judged_and_removed(
        stub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = tmp_path / "poll_basic"
    shutil.copytree(SCENARIOS / "poll_basic", scenario)
    golden = [scenario / f"expected.mine.{kind}" for kind in ("stdout", "journal.jsonl", "exit")]
    # the mode answers otherwise than Ruby: its own recording is written
    monkeypatch.setenv("STUB_MODE", "wrong")
    result = runner.run_scenario(str(scenario), stub, golden="mine", record_golden=True)
    assert result.status == "RECORDED"
    assert all(path.is_file() for path in golden)
    assert "POLL FAILURE 42 nope" in golden[0].read_text()
    # ... and is what the mode is judged by from now on, exactly
    assert runner.run_scenario(str(scenario), stub, golden="mine").status == "PASS"
    monkeypatch.setenv("STUB_MODE", "")
    changed = runner.run_scenario(str(scenario), stub, golden="mine")
    assert changed.status == "FAIL" and "-POLL FAILURE 42 nope" in changed.report
    # without --golden, Ruby's recording still judges
    assert runner.run_scenario(str(scenario), stub).status == "PASS"
    # the mode reads as Ruby again: recording removes its own files
    result = runner.run_scenario(str(scenario), stub, golden="mine", record_golden=True)
    assert result.status == "PASS"
    assert not any(path.exists() for path in golden)
    assert (scenario / "expected.stdout").read_text() == \
        (SCENARIOS / "poll_basic" / "expected.stdout").read_text()


def test_cli_golden_options_go_together() -> None:
    assert runner.main(["--record-golden", "--driver", "false",
                        str(SCENARIOS / "poll_basic")]) == 2
    assert runner.main(["--record", "--golden", "default", "--driver", "false",
                        str(SCENARIOS / "poll_basic")]) == 2


def test_remote_kill_commands_lose_their_run_time_ids() -> None:
    from vmm_exec.transports.base import RemoteGroup, group_kill_command

    a = normalize.normalize_command(group_kill_command(RemoteGroup(3756, "4943621")))
    b = normalize.normalize_command(group_kill_command(RemoteGroup(10261, "4962101")))
    assert a == b
    assert "3756" not in a and "4943621" not in a
    assert a.count("{PGID}") == 4 and a.count("{START}") == 1
    # anything else, a script's own kill included, is left as it is
    for cmd in ["kill -TERM -3756", "if [ -x \"x\" ]; then x 12 34; fi",
                "__vmm_f() { :; }; __vmm_f 12 20"]:
        assert normalize.normalize_command(cmd) == cmd
