"""The add-on case, end to end: drivers/addons/storage-cache on real hosts.

The add-on is installed the documented way (``install.sh <remotes>``: its hook file
in ``<remotes>/vmm_exec/hooks.d/``, which the driver reads by default, its scripts in
``<remotes>/vmm_exec/addons/storage-cache/``); the hosts start without any script and
receive stock and add-on scripts with the driver's remotes update. Its effect is
observable: a cache file ``var/cache/storage-cache/<vmid>.cache`` in each host's
directory (every fake script call lists the cache files that exist when it starts),
and its scripts' ``INFO:`` lines, which reach oned as LOG lines.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Dict, List, Set, Tuple

import pytest

from .kit import (
    PROJECT_ROOT,
    REMOTE_DIR,
    World,
    act,
    context,
    finalize_clean,
    starts,
    tree_hashes,
)

ADDON_FILES = {
    "vmm_exec/hooks.d/50-storage-cache.toml",
    "vmm_exec/addons/storage-cache/setup",
    "vmm_exec/addons/storage-cache/teardown",
    "vmm_exec/addons/storage-cache/revert",
}
CACHE_DIR = "var/cache/storage-cache"
PREMIGRATE = ("frontend", "tm/ssh/premigrate")
TARGET_PRE = ("host02", "vnm/bridge/pre")
MIGRATE = ("host01", "vmm/kvm/migrate")
SOURCE_CLEAN = ("host01", "vnm/bridge/clean")
TARGET_POST = ("host02", "vnm/bridge/post")
POSTMIGRATE = ("frontend", "tm/ssh/postmigrate")
FAILMIGRATE = ("frontend", "tm/ssh/failmigrate")
TARGET_CLEAN = ("host02", "vnm/bridge/clean")


def caches_seen(record: Dict[str, object]) -> Set[Tuple[str, str]]:
    """``(host, vmid)`` of every cache file that existed when this call started."""
    found = set()
    watched = record.get("watch", [])
    assert isinstance(watched, list)
    for path in watched:
        match = re.search(r"/hosts/([^/]+)/var/cache/storage-cache/([0-9]+)\.cache$",
                          str(path))
        if match:
            found.add((match.group(1), match.group(2)))
    return found


def record_of(world: World, vm: int, call: Tuple[str, str]) -> Dict[str, object]:
    return next(r for r in starts(world.journal(), vm) if (r["host"], r["script"]) == call)


def log_index(texts: List[str], wanted: str) -> int:
    assert wanted in texts, f"no LOG line {wanted!r} in {texts}"
    return texts.index(wanted)


@pytest.mark.parametrize("transport", ["openssh", "paramiko"])
def test_storage_cache_addon_follows_migrations(world: World, transport: str) -> None:
    stock = tree_hashes(world.remotes)
    output = world.install_addon("storage-cache")
    assert "storage-cache add-on installed" in output
    installed = tree_hashes(world.remotes)
    # nothing stock was touched; exactly the add-on's files were added, beside them
    assert {k: v for k, v in installed.items() if k in stock} == stock
    assert set(installed) - set(stock) == ADDON_FILES

    world.reset_hosts(with_remotes=(), names=("host01", "host02"))
    # VM 42 runs on host01 with its cache (as if set up when it arrived there)
    made = world.ssh("host01", f"mkdir -p {CACHE_DIR} && echo one-42 > {CACHE_DIR}/42.cache")
    assert made.returncode == 0, made
    world.set_watch([f"{world.testbed.root}/hosts/*/{CACHE_DIR}/*.cache"])
    world.set_faults('host01 vmm/kvm/migrate exit=1 stderr="no CPU on the target" vm=43')
    # no --hooks-dir: the driver reads <remotes>/vmm_exec/hooks.d by itself
    oned = world.start_driver(transport=transport)

    # -- MIGRATE 42 host01 -> host02 succeeds ---------------------------------------
    answer = act(oned, "MIGRATE", 42, world.migrate_xml(42, "host01", "host02"))
    why = context(world, oned)
    assert answer.success, why
    assert world.calls(42) == [PREMIGRATE, TARGET_PRE, MIGRATE, SOURCE_CLEAN, TARGET_POST,
                               POSTMIGRATE], why
    # the cache was set up on host02 after its network and before the vmm migrate ...
    assert caches_seen(record_of(world, 42, TARGET_PRE)) == {("host01", "42")}, why
    assert caches_seen(record_of(world, 42, MIGRATE)) == {("host01", "42"),
                                                          ("host02", "42")}, why
    # ... and the source's cache removed once the migration succeeded (post hook)
    assert caches_seen(record_of(world, 42, POSTMIGRATE)) == {("host01", "42"),
                                                              ("host02", "42")}, why
    assert not os.path.exists(world.host_path("host01", CACHE_DIR, "42.cache"))
    with open(world.host_path("host02", CACHE_DIR, "42.cache"), encoding="utf-8") as handle:
        assert handle.read() == "one-42 from host01\n"
    with open(world.host_path("host02", CACHE_DIR, "42.xml"), encoding="utf-8") as handle:
        assert handle.read().startswith("<VM><ID>42</ID>")  # the VM XML on stdin
    texts = [log.text for log in oned.logs(42)]
    ready = log_index(texts, "storage cache ready for one-42")
    assert (log_index(texts, "Successfully execute network driver operation: pre.") < ready
            < log_index(texts, "Successfully execute virtualization driver operation: migrate.")
            < log_index(texts, "Successfully execute transfer manager driver operation: "
                               "tm_postmigrate.")
            < log_index(texts, "storage cache of one-42 removed from the source")), why
    # both hosts got stock and add-on scripts through the remotes update, exactly
    assert "Updating remotes" in texts
    for host in ("host01", "host02"):
        assert tree_hashes(world.host_path(host, REMOTE_DIR)) == installed, host

    # -- MIGRATE 43 host01 -> host02 fails in vmm migrate -----------------------------
    answer = act(oned, "MIGRATE", 43, world.migrate_xml(43, "host01", "host02"))
    why = context(world, oned)
    assert not answer.success and "no CPU on the target" in answer.info, why
    # the stock and default-mode rollbacks ran; the add-on's revert after them
    assert world.calls(43) == [PREMIGRATE, TARGET_PRE, MIGRATE, TARGET_CLEAN, FAILMIGRATE], why
    assert ("host02", "43") not in caches_seen(record_of(world, 43, TARGET_PRE)), why
    assert ("host02", "43") in caches_seen(record_of(world, 43, MIGRATE)), why
    assert ("host02", "43") in caches_seen(record_of(world, 43, FAILMIGRATE)), why
    assert not os.path.exists(world.host_path("host02", CACHE_DIR, "43.cache")), why
    assert not os.path.exists(world.host_path("host02", CACHE_DIR, "43.xml")), why
    texts = [log.text for log in oned.logs(43)]
    # VMM_FAILED_STEP reached the revert script
    reverted = log_index(texts, "storage cache of one-43 reverted (vmm:migrate failed)")
    assert log_index(texts, "storage cache ready for one-43") < reverted
    assert log_index(texts, "Failed to execute virtualization driver operation: migrate.") \
        < reverted, why
    # the VM 42 cache on host02 is untouched by VM 43's revert
    assert os.path.exists(world.host_path("host02", CACHE_DIR, "42.cache"))

    finalize_clean(world, oned)
    assert [(a.vm_id, a.result) for a in oned.answers()] == [("42", "SUCCESS"),
                                                             ("43", "FAILURE")]
    # still nothing stock touched, after the runs too
    assert tree_hashes(world.remotes) == installed


def test_explain_migrate_shows_the_addon_hooks(world: World) -> None:
    world.install_addon("storage-cache")
    hooks_dir = os.path.join(world.remotes, "vmm_exec", "hooks.d")
    env = {k: v for k, v in os.environ.items() if k != "ONE_LOCATION"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    result = subprocess.run([sys.executable, "-m", "vmm_exec", "explain", "MIGRATE",
                             "--hooks-dir", hooks_dir], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for wanted in ("before vmm:migrate", "hook:cache_setup", "hook:cache_teardown",
                   "hook:cache_revert", "50-storage-cache.toml"):
        assert wanted in text, f"{wanted!r} not in:\n{text}"
    # the setup hook sits between the target's network and the hypervisor's migrate
    assert (text.index("vnm:pre") < text.index("hook:cache_setup")
            < text.index("vmm:migrate")), text
    assert text.index("post hooks") < text.index("hook:cache_teardown"), text
    assert text.index("fail hooks") < text.index("hook:cache_revert"), text
    # where the driver would find it by itself: ONE_LOCATION's remotes
    env["ONE_LOCATION"] = world.one
    by_default = subprocess.run([sys.executable, "-m", "vmm_exec", "explain", "MIGRATE"],
                                capture_output=True, text=True, env=env, timeout=60,
                                check=False)
    assert by_default.returncode == 0, by_default.stderr
    assert "cache_setup" in by_default.stdout and "50-storage-cache.toml" in by_default.stdout


def test_hook_directory_named_twice_runs_its_hooks_once(world: World) -> None:
    """``--hooks-dir`` naming the default ``<remotes>/vmm_exec/hooks.d`` again: its hooks
    run once. (Found running twice: hook_dirs() listed the directory twice; fixed in
    980a62f.)"""
    world.install_addon("storage-cache")
    hooks_dir = os.path.join(world.remotes, "vmm_exec", "hooks.d")
    oned = world.start_driver(hooks_dirs=[hooks_dir])
    answer = act(oned, "MIGRATE", 44, world.migrate_xml(44, "host01", "host02"))
    assert answer.success, context(world, oned)
    finalize_clean(world, oned)
    texts = [log.text for log in oned.logs(44)]
    assert texts.count("storage cache ready for one-44") == 1, texts


def test_failing_before_hook_rolls_the_migration_back(world: World) -> None:
    """A failing ``before vmm:migrate`` hook fails MIGRATE after tm premigrate and the
    target's network: they are rolled back as for a failing vmm migrate (default mode).
    (Found left behind: the hook step had no fail actions; fixed in 980a62f.)"""
    world.install_addon("storage-cache")
    world.reset_hosts(with_remotes=("host01", "host02"))
    # the add-on's setup cannot create its cache directory on host02
    os.makedirs(world.host_path("host02", "var"), exist_ok=True)
    with open(world.host_path("host02", "var", "cache"), "w", encoding="utf-8"):
        pass
    oned = world.start_driver()
    answer = act(oned, "MIGRATE", 45, world.migrate_xml(45, "host01", "host02"))
    why = context(world, oned)
    assert not answer.success and "cannot create directory" in answer.info, why
    texts = [log.text for log in oned.logs(45)]
    assert "Failed to execute add-on hook operation: cache_setup." in texts, why
    finalize_clean(world, oned)
    assert world.calls(45) == [PREMIGRATE, TARGET_PRE, TARGET_CLEAN, FAILMIGRATE], why
