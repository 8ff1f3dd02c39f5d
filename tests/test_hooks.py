"""Add-on hooks: loading, weaving into plans, and running them (front-end hooks).

Hooks that run on hosts are exercised against real sshd hosts in
``test_addon_acceptance.py``; here everything runs on the front-end so that
the ordering and failure rules are checked without ssh.
"""

from __future__ import annotations

import base64
import io
import json
import stat
import textwrap
from pathlib import Path
from typing import List, Tuple

import pytest

from vmm_exec import hooks as hooks_mod
from vmm_exec.cancel import CancelScope
from vmm_exec.config import DriverConfig, Paths
from vmm_exec.engine import Services, perform
from vmm_exec.hooks import HookError, load_hooks, load_toml, weave
from vmm_exec.protocol import Gate, Request, Writer
from vmm_exec.steps import Plan, step
from vmm_exec.transports.openssh import OpenSSHTransport

VM_XML = "<VM><ID>42</ID><DEPLOY_ID>one-42</DEPLOY_ID><TEMPLATE/></VM>"
MESSAGE = (f"<VMM_DRIVER_ACTION_DATA><HOST>host01</HOST><MIGR_HOST/><DEPLOY_ID>one-42"
           f"</DEPLOY_ID>{VM_XML}</VMM_DRIVER_ACTION_DATA>")


def write(path: Path, text: str, executable: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


JOURNAL_SCRIPT = """\
    #!/usr/bin/env python3
    import json, os, sys
    entry = {{"name": "{name}", "argv": sys.argv[1:], "stdin": sys.stdin.read(),
              "env": {{k: v for k, v in os.environ.items() if k.startswith("VMM_")}}}}
    with open(os.environ["HOOK_JOURNAL"], "a") as f:
        f.write(json.dumps(entry) + "\\n")
    sys.stdout.write("{name} out\\n")
    sys.stderr.write("{stderr}")
    sys.exit({code})
"""


def journal_script(path: Path, name: str, code: int = 0, stderr: str = "") -> Path:
    return write(path, JOURNAL_SCRIPT.format(name=name, code=code, stderr=stderr), True)


@pytest.fixture()
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    one = tmp_path / "one"
    write(one / "var" / "config", "SCRIPTS_REMOTE_DIR=/var/tmp/one\n")
    journal_script(one / "var/remotes/vmm/kvm/shutdown", "vmm-shutdown")
    journal_script(one / "var/remotes/vmm/kvm/poll", "vmm-poll")
    monkeypatch.setenv("HOOK_JOURNAL", str(tmp_path / "journal.jsonl"))
    (tmp_path / "journal.jsonl").write_text("")
    return tmp_path


def journal(world: Path) -> List[dict]:
    text = (world / "journal.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line]


def config_for(world: Path, hooks_dir: Path, strict: bool = False) -> DriverConfig:
    return DriverConfig(hypervisor="kvm", local_actions={"SHUTDOWN": None, "POLL": None},
                        paths=Paths(str(world / "one")), strict=strict,
                        hook_dirs=(str(hooks_dir),))


def run_action(world: Path, hooks_dir: Path, action: str, strict: bool = False
               ) -> Tuple[List[str], List[dict]]:
    config = config_for(world, hooks_dir, strict)
    hooks = load_hooks([str(hooks_dir)])
    out = io.BytesIO()
    payload = base64.b64encode(MESSAGE.encode()).decode()
    services = Services(config, Writer(out), OpenSSHTransport(), tuple(hooks))
    perform(services, Request(action, 42, "42", payload), CancelScope(), Gate())
    return out.getvalue().decode().splitlines(), journal(world)


def hook_file(hooks_dir: Path, name: str, body: str) -> Path:
    return write(hooks_dir / name, body)


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
def test_toml_hook_file_is_read_with_scope_and_symbols(tmp_path: Path) -> None:
    path = hook_file(tmp_path, "10-cache.toml", """\
        [addon]
        hypervisors = ["kvm", "qemu"]
        actions = ["migrate"]

        [[hook]]
        point = "before vmm:migrate"
        script = "cache/setup"
        where = "destination"
        parameters = [":deploy_id", "literal", 7]
        no_fail = true

        [[hook.fail_actions]]
        script = "cache/undo"
        where = "destination"
        """)
    [hook] = load_toml(str(path))
    assert hook.point == "before vmm:migrate"
    assert hook.actions == ("MIGRATE",) and hook.hypervisors == ("kvm", "qemu")
    assert hook.step.driver == "hook" and hook.step.destination and hook.step.no_fail
    assert [str(p) for p in hook.step.parameters] == [":deploy_id", "literal", "7"]
    assert hook.step.fail_actions[0].script_name == "cache/undo"
    assert hook.applies("MIGRATE", "kvm") and not hook.applies("DEPLOY", "kvm")
    assert not hook.applies("MIGRATE", "lxc")


@pytest.mark.parametrize("body, message", [
    ('[[hook]]\npoint = "sometimes"\nscript = "x"\n', "point must be"),
    ('[[hook]]\npoint = "pre"\n', "needs a script"),
    ('[[hook]]\npoint = "pre"\nscript = "x"\nwhere = "moon"\n', "where must be"),
    ('[[hook]]\npoint = "pre"\nscript = "x"\ncolour = "red"\n', "unknown keys"),
    ('[[hook]]\npoint = "pre"\nscript = "x"\nparameters = "a"\n', "parameters must be a list"),
    ("[[hook]\n", "10-bad.toml"),
])
def test_bad_hook_files_are_rejected_with_the_file_named(tmp_path: Path, body: str,
                                                          message: str) -> None:
    path = hook_file(tmp_path, "10-bad.toml", body)
    with pytest.raises(HookError, match=message) as info:
        load_toml(str(path))
    assert "10-bad.toml" in str(info.value)


def test_files_load_in_name_order_and_bad_files_can_be_skipped(tmp_path: Path) -> None:
    hook_file(tmp_path, "20-b.toml", '[[hook]]\npoint = "post"\nscript = "b"\n')
    hook_file(tmp_path, "10-a.toml", '[[hook]]\npoint = "post"\nscript = "a"\n')
    hook_file(tmp_path, "15-bad.toml", '[[hook]]\npoint = "nope"\nscript = "x"\n')
    hook_file(tmp_path, "README", "not a hook file")
    errors: List[str] = []
    hooks = load_hooks([str(tmp_path / "missing"), str(tmp_path)], errors)
    assert [h.step.action for h in hooks] == ["a", "b"]
    assert len(errors) == 1 and "15-bad.toml" in errors[0]
    with pytest.raises(HookError):
        load_hooks([str(tmp_path)])


# ---------------------------------------------------------------------------
# weaving
# ---------------------------------------------------------------------------
def stock_plan() -> Plan:
    return Plan("MIGRATE", "migrate", (
        step("tm", "tm_premigrate", "PREMIGRATE", "ssh"),
        step("vmm", "migrate", fail_actions=[step("tm", "tm_failmigrate", "FAILMIGRATE")]),
        step("vnm", "clean", no_fail=True),
    ))


def test_weave_places_every_hook_point(tmp_path: Path) -> None:
    points = ["pre", "post", "fail", "before vmm:migrate", "after vmm:migrate",
              "on-fail vmm:migrate"]
    body = "".join(f'[[hook]]\npoint = "{p}"\nscript = "{p.replace(" ", "_")}"\n'
                   for p in points)
    hooks = load_toml(str(hook_file(tmp_path, "50-all.toml", body)))
    plan = weave(stock_plan(), hooks, "kvm")
    labels = [s.action for s in plan.steps]
    assert labels == ["tm_premigrate", "before_vmm:migrate", "migrate", "after_vmm:migrate",
                      "clean"]
    migrate = plan.steps[2]
    assert [s.action for s in migrate.fail_actions] == ["tm_failmigrate",
                                                         "on-fail_vmm:migrate"]
    assert migrate.fail_actions[1].no_fail, "hooks inside a rollback never stop it"
    assert [s.action for s in plan.pre_hooks] == ["pre"]
    assert [s.action for s in plan.post_hooks] == ["post"]
    assert [s.action for s in plan.fail_hooks] == ["fail"]
    assert all("50-all.toml" in s.origin for s in plan.pre_hooks + plan.post_hooks)


def test_instead_replaces_a_step_keeping_its_name_and_rollback(tmp_path: Path) -> None:
    """``instead vmm:migrate``: the add-on's script runs in the stock step's place,
    under the stock name (its info is the answer), with its own fail actions first
    and then the stock step's; before/after/on-fail hooks still find the step; the
    last file naming a step wins."""
    hook_file(tmp_path, "10-old.toml", '[[hook]]\npoint = "instead vmm:migrate"\n'
              'driver = "vmm"\nscript = "vmm_exec/old/migrate"\n')
    hook_file(tmp_path, "20-new.toml", '''\
        [[hook]]
        point = "instead vmm:migrate"
        driver = "vmm"
        action = "migrate"
        script = "vmm_exec/libvirt/migrate"
        parameters = [":deploy_id", ":dest_host", ":host"]
        [[hook.fail_actions]]
        driver = "hook"
        script = "vmm_exec/libvirt/recover"
        [[hook]]
        point = "on-fail vmm:migrate"
        script = "notify"
        ''')
    plan = weave(stock_plan(), load_hooks([str(tmp_path)]), "kvm")
    migrate = plan.steps[1]
    assert (migrate.driver, migrate.action, migrate.script_name) == (
        "vmm", "migrate", "vmm_exec/libvirt/migrate")
    assert "20-new.toml" in migrate.origin and migrate.hook_point == "instead vmm:migrate"
    assert [str(p) for p in migrate.parameters] == [":deploy_id", ":dest_host", ":host"]
    assert not migrate.no_extra_params  # the stock contract: + vm id and host
    assert [f.action for f in migrate.fail_actions] == ["recover", "tm_failmigrate", "notify"]
    assert [s.action for s in plan.steps] == ["tm_premigrate", "migrate", "clean"]


def test_weave_without_applicable_hooks_returns_the_plan_itself(tmp_path: Path) -> None:
    plan = stock_plan()
    assert weave(plan, [], "kvm") is plan
    hooks = load_toml(str(hook_file(tmp_path, "x.toml",
                                    '[[hook]]\npoint = "pre"\nscript = "x"\n'
                                    'actions = ["DEPLOY"]\n')))
    assert weave(plan, hooks, "kvm") is plan


# ---------------------------------------------------------------------------
# running (front-end hooks)
# ---------------------------------------------------------------------------
def frontend_hook(hooks_dir: Path, file: str, point: str, name: str, code: int = 0,
                  extra: str = "") -> None:
    journal_script(hooks_dir / "scripts" / name, name, code)
    hook_file(hooks_dir, file, f'''\
        [[hook]]
        point = "{point}"
        where = "frontend"
        script = "scripts/{name}"
        parameters = [":deploy_id", ":host", "x y"]
        {extra}
        ''')


def test_hooks_run_in_order_with_arguments_environment_and_vm_on_stdin(world: Path) -> None:
    hooks_dir = world / "hooks"
    frontend_hook(hooks_dir, "10-a.toml", "pre", "a-pre")
    frontend_hook(hooks_dir, "20-b.toml", "pre", "b-pre")
    frontend_hook(hooks_dir, "30-c.toml", "before vmm:shutdown", "c-before")
    frontend_hook(hooks_dir, "40-d.toml", "after vmm:shutdown", "d-after")
    frontend_hook(hooks_dir, "50-e.toml", "post", "e-post")
    frontend_hook(hooks_dir, "60-f.toml", "fail", "f-fail")
    lines, calls = run_action(world, hooks_dir, "SHUTDOWN")
    assert [c["name"] for c in calls] == ["a-pre", "b-pre", "c-before", "vmm-shutdown",
                                          "d-after", "e-post"]
    assert lines[-1] == "SHUTDOWN SUCCESS 42 vmm-shutdown out"
    first = calls[0]
    assert first["argv"] == ["one-42", "host01", "x y"]
    assert first["stdin"] == VM_XML
    assert first["env"]["VMM_HOOK_ACTION"] == "SHUTDOWN"
    assert first["env"]["VMM_VM_ID"] == "42"
    assert first["env"]["VMM_DEPLOY_ID"] == "one-42"
    assert first["env"]["VMM_HOST"] == "host01"
    assert first["env"]["VMM_HOOK_POINT"] == "pre"
    assert "10-a.toml" in first["env"]["VMM_HOOK_ORIGIN"]
    assert any("Successfully execute add-on hook operation: a-pre." in x for x in lines)


def test_failing_pre_hook_fails_the_action_before_anything_ran(world: Path) -> None:
    hooks_dir = world / "hooks"
    frontend_hook(hooks_dir, "10-veto.toml", "pre", "veto", code=3)
    frontend_hook(hooks_dir, "20-fail.toml", "fail", "f-fail")
    lines, calls = run_action(world, hooks_dir, "SHUTDOWN")
    # nothing ran, so there is nothing for fail hooks to revert
    assert [c["name"] for c in calls] == ["veto"]
    assert lines[-1] == "SHUTDOWN FAILURE 42 -"
    assert "LOG I 42 Failed to execute add-on hook operation: veto." in lines


def test_post_and_fail_hooks_never_change_the_answer(world: Path) -> None:
    hooks_dir = world / "hooks"
    frontend_hook(hooks_dir, "10-post.toml", "post", "bad-post", code=1)
    frontend_hook(hooks_dir, "20-post.toml", "post", "good-post")
    lines, calls = run_action(world, hooks_dir, "SHUTDOWN")
    assert [c["name"] for c in calls] == ["vmm-shutdown", "bad-post", "good-post"]
    assert lines[-1] == "SHUTDOWN SUCCESS 42 vmm-shutdown out"

    journal_script(world / "one/var/remotes/vmm/kvm/shutdown", "vmm-shutdown", code=1,
                   stderr="cannot stop")
    (world / "journal.jsonl").write_text("")
    frontend_hook(hooks_dir, "30-fail.toml", "fail", "fail-hook", code=5)
    lines, calls = run_action(world, hooks_dir, "SHUTDOWN")
    assert [c["name"] for c in calls] == ["vmm-shutdown", "fail-hook"]
    assert lines[-1] == "SHUTDOWN FAILURE 42 cannot stop"
    fail_env = calls[-1]["env"]
    assert fail_env["VMM_FAILED_STEP"] == "vmm:shutdown"
    assert fail_env["VMM_FAILED_INFO"] == "cannot stop"


def test_one_call_actions_get_pre_post_and_fail_hooks(world: Path) -> None:
    hooks_dir = world / "hooks"
    frontend_hook(hooks_dir, "10.toml", "pre", "p-pre")
    frontend_hook(hooks_dir, "20.toml", "post", "p-post")
    lines, calls = run_action(world, hooks_dir, "POLL")
    assert [c["name"] for c in calls] == ["p-pre", "vmm-poll", "p-post"]
    assert lines[-1] == "POLL SUCCESS 42 vmm-poll out"


def test_no_hook_files_leave_the_transcript_unchanged(world: Path) -> None:
    empty = world / "no-hooks"
    empty.mkdir()
    with_none, _ = run_action(world, empty, "SHUTDOWN")
    hooks_dir = world / "hooks"
    frontend_hook(hooks_dir, "10.toml", "pre", "only-deploy", extra='actions = ["DEPLOY"]')
    (world / "journal.jsonl").write_text("")
    scoped_out, calls = run_action(world, hooks_dir, "SHUTDOWN")
    assert scoped_out == with_none
    assert [c["name"] for c in calls] == ["vmm-shutdown"]


def test_instead_hook_runs_the_add_on_script_with_the_stock_contract(world: Path) -> None:
    """The replacement gets the stock argv (its parameters + vm id + host) and the whole
    request on stdin; its output is the action's answer; the stock script never runs."""
    journal_script(world / "one/var/remotes/vmm_exec/addon/shutdown", "addon-shutdown")
    hooks_dir = world / "hooks"
    hook_file(hooks_dir, "10-instead.toml", '''\
        [[hook]]
        point = "instead vmm:shutdown"
        driver = "vmm"
        script = "vmm_exec/addon/shutdown"
        parameters = [":deploy_id", ":host"]
        ''')
    lines, calls = run_action(world, hooks_dir, "SHUTDOWN")
    assert [c["name"] for c in calls] == ["addon-shutdown"]
    assert calls[0]["argv"] == ["one-42", "host01", "42", "host01"]
    # a local (-l) vmm script gets the request base64-encoded, as the stock one does
    assert base64.b64decode(calls[0]["stdin"]).startswith(b"<VMM_DRIVER_ACTION_DATA>")
    assert lines[-1] == "SHUTDOWN SUCCESS 42 addon-shutdown out"


def test_hook_module_documents_every_point() -> None:
    doc = hooks_mod.__doc__ or ""
    for point in ("pre", "post", "fail", "before D:A", "after D:A", "on-fail D:A",
                  "instead D:A"):
        assert point in doc


def test_hook_dirs_follow_one_location() -> None:
    """System-wide: /etc/one and /var/lib/one/remotes; self-contained: under ONE_LOCATION."""
    assert hooks_mod.hook_dirs(Paths(None), ("/x",)) == [
        "/etc/one/vmm_exec/hooks.d", "/var/lib/one/remotes/vmm_exec/hooks.d", "/x"]
    assert hooks_mod.hook_dirs(Paths("/opt/one")) == [
        "/opt/one/etc/vmm_exec/hooks.d", "/opt/one/var/remotes/vmm_exec/hooks.d"]


# ---------------------------------------------------------------------------
# Ruby step-hash syntax
# ---------------------------------------------------------------------------
EXAMPLE_RB = Path(__file__).resolve().parent.parent / \
    "drivers/addons/storage-cache/hooks.d/51-storage-cache.rb.example"


def test_ruby_hook_file_reads_like_its_toml_twin(tmp_path: Path) -> None:
    rb = tmp_path / "51-storage-cache.rb"
    rb.write_text(EXAMPLE_RB.read_text())
    [ruby] = hooks_mod.load_ruby(str(rb))
    toml = load_toml(str(EXAMPLE_RB.parent / "50-storage-cache.toml"))[0]
    assert ruby.point == toml.point == "before vmm:migrate"
    assert ruby.step.script_name == toml.step.script_name
    assert ruby.step.destination and ruby.step.parameters == toml.step.parameters
    assert [h.step.action for h in load_hooks([str(tmp_path)])] == ["cache_setup"]


def test_ruby_hook_file_with_code_is_rejected_with_line_and_column(tmp_path: Path) -> None:
    rb = write(tmp_path / "60-bad.rb", """\
        [
            { :point => "pre", :driver => :hook,
              :script => "x", :parameters => [dfile, :host] }
        ]
        """)
    with pytest.raises(HookError) as info:
        hooks_mod.load_ruby(str(rb))
    message = str(info.value)
    assert "60-bad.rb" in message and ":3:" in message and "dfile" in message


def test_hook_steps_inherit_the_rollback_of_the_step_they_stand_for(tmp_path: Path) -> None:
    body = ('[[hook]]\npoint = "before vmm:migrate"\nscript = "b"\n'
            '[[hook.fail_actions]]\nscript = "b-undo"\n'
            '[[hook]]\npoint = "after tm:tm_premigrate"\nscript = "a"\n')
    plan = weave(stock_plan(), load_toml(str(hook_file(tmp_path, "h.toml", body))), "kvm")
    by_action = {s.action: s for s in plan.steps}
    # before vmm:migrate fails: its own undo, then what migrate's failure would run
    assert [f.action for f in by_action["b"].fail_actions] == ["b-undo", "tm_failmigrate"]
    # after tm_premigrate fails: the rollback of the step that would have come next
    assert [f.action for f in by_action["a"].fail_actions] == ["tm_failmigrate"]


def test_a_hook_directory_named_twice_is_read_once(tmp_path: Path) -> None:
    hook_file(tmp_path, "10.toml", '[[hook]]\npoint = "pre"\nscript = "x"\n')
    assert len(load_hooks([str(tmp_path), str(tmp_path) + "/"])) == 1
