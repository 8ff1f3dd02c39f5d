"""A VM's life on real OpenSSH hosts, through both transports.

DEPLOY on host01, POLL, live MIGRATE host01 -> host02, SHUTDOWN on host02: every
request answered SUCCESS once, the journal shows the right scripts on the right
hosts in the right order, and the VM's files land in the host's own directory. A
host without remote scripts gets them through the real remotes update (scp for
OpenSSH, SFTP for paramiko), on the stream path and on the one-shot path.
"""

from __future__ import annotations

import os
import re
from xml.sax.saxutils import escape

import pytest

from .kit import (
    REMOTE_DIR,
    World,
    act,
    context,
    finalize_clean,
    starts,
    tree_hashes,
)

DEPLOY_CALLS = [("frontend", "tm/ssh/context"), ("host01", "vnm/bridge/pre"),
                ("host01", "vmm/kvm/deploy"), ("host01", "vnm/bridge/post")]
POLL_CALLS = [("host01", "vmm/kvm/poll")]
MIGRATE_CALLS = [("frontend", "tm/ssh/premigrate"), ("host02", "vnm/bridge/pre"),
                 ("host01", "vmm/kvm/migrate"), ("host01", "vnm/bridge/clean"),
                 ("host02", "vnm/bridge/post"), ("frontend", "tm/ssh/postmigrate")]
SHUTDOWN_CALLS = [("host02", "vmm/kvm/shutdown"), ("host02", "vnm/bridge/clean")]


@pytest.fixture(params=["openssh", "paramiko"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_deploy_poll_migrate_shutdown(world: World, transport: str) -> None:
    world.reset_hosts(with_remotes=("host01", "host02"))
    oned = world.start_driver(transport=transport)
    why = lambda: context(world, oned)  # noqa: E731

    answer = act(oned, "DEPLOY", 42, world.deploy_xml(42, "host01"))
    assert answer.success and answer.info == "one-42", why()
    assert world.calls(42) == DEPLOY_CALLS, why()
    # the deployment file reached the script on host01; the VM's files are in host01's
    # own directory (REMOTE_DEPLOYMENT_FILE is relative), and nowhere else
    with open(world.deployment_file(42), encoding="utf-8") as handle:
        domain = handle.read()
    deploy = next(r for r in starts(world.journal(), 42) if r["script"] == "vmm/kvm/deploy")
    assert deploy["argv"] == [f"{world.remote_vm_dir(42)}/deployment.0", "host01", "42",
                              "host01"]
    vm_dir = world.host_path("host01", world.remote_vm_dir(42))
    with open(os.path.join(vm_dir, "deployment.0"), encoding="utf-8") as handle:
        # saved by the deploy script as the real one does; the here-document adds one
        # newline (`cat << EOT` with "STDIN\nEOT\n", as the Ruby driver sends it)
        assert handle.read() == domain + "\n"
    with open(os.path.join(vm_dir, "vm.xml"), encoding="utf-8") as handle:
        assert handle.read().startswith("<VM><ID>42</ID>")
    with open(os.path.join(vm_dir, "ds.xml"), encoding="utf-8") as handle:
        assert handle.read().startswith("<DATASTORE><ID>0</ID>")
    assert not os.path.exists(world.host_path("host02", world.remote_vm_dir(42)))

    answer = act(oned, "POLL", 42, world.poll_xml(42, "host01"))
    assert answer.success and answer.info.startswith("STATE=a "), why()

    answer = act(oned, "MIGRATE", 42, world.migrate_xml(42, "host01", "host02"))
    assert answer.success, why()
    assert world.calls(42) == DEPLOY_CALLS + POLL_CALLS + MIGRATE_CALLS, why()
    texts = [log.text for log in oned.logs(42)]
    assert "Successfully execute virtualization driver operation: migrate." in texts

    answer = act(oned, "SHUTDOWN", 42, world.shutdown_xml(42, "host02"))
    assert answer.success, why()
    finalize_clean(world, oned)

    journal = world.journal()
    assert [(r["host"], r["script"]) for r in starts(journal)] == (
        DEPLOY_CALLS + POLL_CALLS + MIGRATE_CALLS + SHUTDOWN_CALLS), why()
    assert all(r["rc"] == 0 for r in journal if r["ev"] == "end")
    assert len([r for r in journal if r["ev"] == "end"]) == len(starts(journal))
    assert [(a.action, a.result) for a in oned.answers()] == [
        ("DEPLOY", "SUCCESS"), ("POLL", "SUCCESS"), ("MIGRATE", "SUCCESS"),
        ("SHUTDOWN", "SUCCESS")]
    # no remotes update was needed: both hosts had their scripts
    assert not [log for log in oned.logs() if "Updating remotes" in log.text]


def test_host_without_scripts_gets_them_on_the_stream_path(world: World,
                                                           transport: str) -> None:
    world.reset_hosts(with_remotes=(), names=("host03",))
    assert not os.path.exists(world.host_path("host03", REMOTE_DIR))
    oned = world.start_driver(transport=transport)
    answer = act(oned, "DEPLOY", 7, world.deploy_xml(7, "host03"))
    assert answer.success and answer.info == "one-7", context(world, oned)
    texts = [log.text for log in oned.logs(7)]
    assert "Remote worker node files not found" in texts
    assert "Updating remotes" in texts
    assert world.calls(7) == [("frontend", "tm/ssh/context"), ("host03", "vnm/bridge/pre"),
                              ("host03", "vmm/kvm/deploy"), ("host03", "vnm/bridge/post")]
    # the copy is exact: every script, byte for byte and with its mode
    assert tree_hashes(world.host_path("host03", REMOTE_DIR)) == tree_hashes(world.remotes)
    # the update ran once: the other steps found the scripts
    assert texts.count("Updating remotes") == 1, context(world, oned)
    finalize_clean(world, oned)


def test_host_without_scripts_gets_them_on_the_one_shot_path(world: World,
                                                             transport: str) -> None:
    """POLL is a one-shot ``ssh HOST 'if [ -x SCRIPT ]; ...'``: exit 42, update, retry."""
    world.reset_hosts(with_remotes=(), names=("host04",))
    oned = world.start_driver("-t 15 -r 1 kvm", transport=transport)
    answer = act(oned, "POLL", 8, world.poll_xml(8, "host04"))
    assert answer.success and answer.info.startswith("STATE=a "), context(world, oned)
    texts = [log.text for log in oned.logs(8)]
    assert "Updating remotes" in texts
    assert world.calls(8) == [("host04", "vmm/kvm/poll")]
    assert tree_hashes(world.host_path("host04", REMOTE_DIR)) == tree_hashes(world.remotes)
    finalize_clean(world, oned)


def test_values_cannot_inject_into_the_remote_shell(world: World, transport: str) -> None:
    """A deploy id full of shell syntax reaches the scripts as one argv element, through
    the stream (SHUTDOWN, REBOOT) and the one-shot path (POLL), and runs nothing."""
    evil = """it's a "vm" $(touch pwned1) `touch pwned2`; touch pwned3 \\ x"""
    oned = world.start_driver(transport=transport)
    for action, xml in (("SHUTDOWN", world.shutdown_xml(9, "host01")),
                        ("POLL", world.poll_xml(9, "host01")),
                        ("REBOOT", world.reboot_xml(9, "host01"))):
        xml = re.sub("<DEPLOY_ID>one-9</DEPLOY_ID>", f"<DEPLOY_ID>{escape(evil)}</DEPLOY_ID>",
                     xml)
        assert act(oned, action, 9, xml).success, context(world, oned)
    finalize_clean(world, oned)
    vmm = [r for r in starts(world.journal(), 9) if r["script"].startswith("vmm/")]
    assert [(r["script"], r["argv"]) for r in vmm] == [
        ("vmm/kvm/shutdown", [evil, "host01", "9", "host01"]),
        ("vmm/kvm/poll", [evil, "host01", "9", "host01"]),
        ("vmm/kvm/reboot", [evil, "host01", "9", "host01"])]
    for where in (world.host_path("host01"), world.var):
        assert not [name for name in os.listdir(where) if name.startswith("pwned")]


def test_large_deployment_file_and_a_restarted_host(world: World, transport: str) -> None:
    """A 2 MiB domain goes through the here-document without a deadlock; a host whose
    sshd was killed and restarted between two actions is reached again (paramiko: no
    stale pooled connection)."""
    oned = world.start_driver(transport=transport)
    assert act(oned, "POLL", 10, world.poll_xml(10, "host01")).success
    world.testbed.kill_host("host01")
    world.testbed.start_host("host01")
    xml = world.deploy_xml(10, "host01")
    with open(world.deployment_file(10), "a", encoding="utf-8") as handle:
        handle.write("<!-- " + "x" * (2 << 20) + " -->\n")
    answer = act(oned, "DEPLOY", 10, xml, timeout=60)
    assert answer.success and answer.info == "one-10", context(world, oned)
    with open(world.deployment_file(10), encoding="utf-8") as handle:
        domain = handle.read()
    saved = world.host_path("host01", world.remote_vm_dir(10), "deployment.0")
    with open(saved, encoding="utf-8") as handle:
        assert handle.read() == domain + "\n"
    finalize_clean(world, oned)
