"""The Driver object, in this process: what it hands the engine for each request."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Dict, List

import pytest
from e2e.kit import scenario_xml
from helpers import b64

from vmm_exec import driver as driver_module
from vmm_exec.config import DriverConfig, Paths


@pytest.mark.parametrize("single_host", [True, False], ids=["single-host", "parallel"])
def test_the_payload_check_of_the_host_lookup_is_not_repeated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_host: bool) -> None:
    """A payload whose HOST was read passed lxml's check there: the action decodes
    it without checking again. Without the lookup (``-p``) or when the lookup
    failed, the action checks it itself."""
    seen: Dict[str, bool] = {}
    done = threading.Event()

    def perform(services: object, request: driver_module.Request, scope: object,
                gate: object, well_formed: bool = False) -> None:
        seen[request.msg_id] = well_formed
        if len(seen) == 2:
            done.set()

    monkeypatch.setattr(driver_module, "perform", perform)
    (tmp_path / "var").mkdir()
    config = DriverConfig(hypervisor="kvm", paths=Paths(str(tmp_path)), single_host=single_host)
    drv = driver_module.Driver(config, io.BytesIO(), io.BytesIO())
    good = b64(scenario_xml("deploy_basic", "deploy.xml"))
    bad = b64("<VMM_DRIVER_ACTION_DATA><HOST>h</HOST>")  # not well-formed
    try:
        drv.handle(f"DEPLOY  5 {good}\n")
        drv.handle(f"DEPLOY  6 {bad}\n")
        assert done.wait(10), seen
    finally:
        drv.scheduler.stop_all(grace=0.2)
        drv.transport.close()
    expected: List[bool] = [single_host, False]
    assert [seen["5"], seen["6"]] == expected
