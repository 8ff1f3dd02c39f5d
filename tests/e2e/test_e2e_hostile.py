"""Values that would inject into the remote shell, on real hosts.

A REMOTE_DEPLOYMENT_FILE whose directory holds ``$(touch X)`` (or a space) ran
``touch`` on the host and broke every DEPLOY, in both modes and with both
transports, because the Ruby driver pastes that directory unquoted into
``/bin/cat - >DIR/vm.xml``. Now the files land in the literal directory and
nothing else runs.
"""

from __future__ import annotations

import os

import pytest

from .kit import World, _set_element, act, context

DIRS = {
    "command": "var/lib/one/datastores/0/50$(touch INJECTED)",
    "space": "var/lib/one/datastores/0/50 with space",
    "quote": "var/lib/one/datastores/0/50'q;touch INJECTED'",
}


@pytest.mark.parametrize("compat", ["strict", "default"])
@pytest.mark.parametrize("transport", ["openssh", "paramiko"])
@pytest.mark.parametrize("kind", sorted(DIRS))
def test_deploy_directory_is_never_run_as_shell(world: World, transport: str, compat: str,
                                                kind: str) -> None:
    world.reset_hosts(with_remotes=("host01",))
    vm_dir = DIRS[kind]
    xml = _set_element(world.deploy_xml(50, "host01"), "REMOTE_DEPLOYMENT_FILE",
                       f"{vm_dir}/deployment.0")
    oned = world.start_driver(transport=transport, compat=compat)
    answer = act(oned, "DEPLOY", 50, xml)
    why = context(world, oned)
    assert answer.success, why
    home = world.host_path("host01")
    injected = [os.path.join(root, name) for root, _, names in os.walk(home)
                for name in names if name == "INJECTED"]
    assert injected == [], f"the host ran an injected command: {injected}; {why}"
    literal = world.host_path("host01", vm_dir)
    assert os.path.isfile(os.path.join(literal, "vm.xml")), why
    assert os.path.isfile(os.path.join(literal, "ds.xml")), why
