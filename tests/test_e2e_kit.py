"""The end-to-end kit's payload rewriting (tests/e2e/kit.py), without hosts."""

from __future__ import annotations

from e2e.kit import retarget, scenario_xml
from hypothesis import given
from hypothesis import strategies as st


@given(vmid=st.integers(min_value=0, max_value=10 ** 6),
       number=st.one_of(st.just(42), st.integers(min_value=0, max_value=999)))
def test_retarget_leaves_the_new_host_names_alone(vmid: int, number: int) -> None:
    """A new host name may hold a standalone ``42`` (``host42``, ``h-42``): it is a name,
    not the VM id, and must arrive as given."""
    host = f"h-{number}"
    xml = retarget(scenario_xml("deploy_basic", "deploy.xml"), vmid, {"host01": host})
    assert f"<HOSTNAME>{host}</HOSTNAME>" in xml
    assert f"<ID>{vmid}</ID>" in xml
    assert "host01" not in xml
