"""Secrets of a VM's CONTEXT never reach oned's log or the answer in default mode;
strict mode keeps the Ruby transcript (which logs them); scripts always get them."""

from __future__ import annotations

import base64
import io
import json
import stat
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm_exec import message
from vmm_exec.cancel import CancelScope
from vmm_exec.config import DriverConfig, Paths
from vmm_exec.engine import Services, perform
from vmm_exec.masking import MASK, Masker, context_secrets
from vmm_exec.protocol import Gate, Request, Writer
from vmm_exec.transports.openssh import OpenSSHTransport

PASSWORD = "S3cr3t-P4ss!"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkOfz0 root@frontend"
TOKEN = "tok_9f8e7d6c5b4a"
CONTEXT = (f"<CONTEXT><PASSWORD><![CDATA[{PASSWORD}]]></PASSWORD>"
           f"<SSH_PUBLIC_KEY><![CDATA[{KEY}]]></SSH_PUBLIC_KEY>"
           f"<ONEGATE_TOKEN>{TOKEN}</ONEGATE_TOKEN><TOKEN>YES</TOKEN>"
           f"<NETWORK>YES</NETWORK><TARGET>hdb</TARGET></CONTEXT>")
MESSAGE = (
    "<VMM_DRIVER_ACTION_DATA><HOST>host01</HOST><DEPLOY_ID>one-7</DEPLOY_ID>"
    "<TM_COMMAND>CLONE qcow2 fe:/img host01:/ds/0/7/disk.1 7 1</TM_COMMAND>"
    "<TM_COMMAND_ROLLBACK>DELETE qcow2 host01:/ds/0/7/disk.1 7 1</TM_COMMAND_ROLLBACK>"
    "<DISK_TARGET_PATH>/ds/0/7/disk.1</DISK_TARGET_PATH>"
    f"<VM><ID>7</ID><TEMPLATE>{CONTEXT}<DISK><ATTACH>YES</ATTACH><TARGET>vdb</TARGET>"
    "</DISK></TEMPLATE></VM></VMM_DRIVER_ACTION_DATA>")

# attach_disk fails and prints what it got (its arguments include the whole request)
SCRIPT = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["MASK_JOURNAL"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "stdin": sys.stdin.read()}) + "\\n")
sys.stderr.write("ERROR: could not attach with " + " ".join(sys.argv[1:]) + "\\n")
sys.stderr.write("context password was %s\\n" % os.environ.get("X", "S3cr3t-P4ss!"))
sys.exit(1)
"""


def world(tmp_path: Path) -> Path:
    one = tmp_path / "one"
    (one / "var").mkdir(parents=True)
    (one / "var" / "config").write_text("SCRIPTS_REMOTE_DIR=/var/tmp/one\n")
    for tm in ("clone", "delete"):
        path = one / "var/remotes/tm/qcow2" / tm
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    script = one / "var/remotes/vmm/kvm/attach_disk"
    script.parent.mkdir(parents=True)
    script.write_text(SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return one


def run(tmp_path: Path, strict: bool, monkeypatch: pytest.MonkeyPatch) -> Tuple[str, List[dict]]:
    one = world(tmp_path)
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setenv("MASK_JOURNAL", str(journal))
    config = DriverConfig(hypervisor="kvm", local_actions={"ATTACH_DISK": None},
                          paths=Paths(str(one)), strict=strict)
    out = io.BytesIO()
    payload = base64.b64encode(MESSAGE.encode()).decode()
    perform(Services(config, Writer(out), OpenSSHTransport()),
            Request("ATTACHDISK", 7, "7", payload), CancelScope(), Gate())
    calls = [json.loads(line) for line in journal.read_text().splitlines()]
    return out.getvalue().decode(), calls


def test_default_mode_masks_context_secrets_and_the_request(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    written, calls = run(tmp_path, strict=False, monkeypatch=monkeypatch)
    payload = base64.b64encode(MESSAGE.encode()).decode()
    assert written.splitlines()[-1].startswith("ATTACHDISK FAILURE 7 ")
    for secret in (PASSWORD, KEY, TOKEN, payload):
        assert secret not in written
    assert MASK in written and "not logged" in written
    # what the script received is untouched: the whole request among its arguments
    assert calls and calls[0]["argv"][4] == payload


def test_strict_mode_keeps_the_ruby_transcript(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    written, _ = run(tmp_path, strict=True, monkeypatch=monkeypatch)
    assert PASSWORD in written and MASK not in written


def test_secret_names_and_flags() -> None:
    msg = message.decode(base64.b64encode(MESSAGE.encode()).decode())
    secrets = context_secrets(msg)
    assert PASSWORD in secrets and KEY in secrets and TOKEN in secrets
    mask = Masker(secrets)
    # a flag (TOKEN = YES) and ordinary values are left alone
    assert mask("TOKEN=YES NETWORK=YES hdb") == "TOKEN=YES NETWORK=YES hdb"


@settings(max_examples=200, deadline=None)
@given(secret=st.text(min_size=4, max_size=40).filter(lambda s: s.upper() not in
                                                     ("TRUE", "FALSE")),
       before=st.text(max_size=30), after=st.text(max_size=30))
def test_a_secret_never_survives_masking(secret: str, before: str, after: str) -> None:
    masked = Masker([secret])(before + secret + after)
    assert secret not in masked
