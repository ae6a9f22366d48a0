"""``diff_snapshots``, the public comparison of two sweeps: pairing by the CVM, field paths
checked, and results of ``get_cvms`` compared as they are."""

from __future__ import annotations

from typing import Any

import pytest

from phala_async import (
    ConfigurationError,
    CvmDifference,
    FieldChange,
    PhalaClient,
    diff_snapshots,
)
from phala_async._diff import check_field_paths, field_paths
from phala_async.testing import PhalaSimulator

UUID = "6419403c-757f-4ae7-9f0a-3d1c2b4a5e6f"


def ok(cvm_id: str, **cvm: Any) -> dict[str, Any]:
    return {"cvm_id": cvm_id, "ok": True, "cvm": {"id": 12, "vm_uuid": UUID, "name": "db", **cvm}}


def failed(cvm_id: str) -> dict[str, Any]:
    error = {"type": "InternalServerError", "status": 503, "message": "HTTP 503", "attempts": 4}
    return {"cvm_id": cvm_id, "ok": False, "error": error}


def test_records_pair_by_the_cvm_whatever_form_of_id_was_given() -> None:
    """The same CVM swept by integer id, VM UUID and name is no difference."""
    assert diff_snapshots([ok("12")], [ok(UUID)]) == []
    assert diff_snapshots([ok("db")], [ok(UUID.replace("-", ""))]) == []


def test_a_failed_id_pairs_with_the_cvm_its_form_names() -> None:
    """A CVM ok by integer id, then failed by VM UUID, is one `failed` difference named by it."""
    assert diff_snapshots([ok("12")], [failed(UUID)]) == [
        CvmDifference("failed", UUID, "db", side="new", error=failed(UUID)["error"])
    ]


def test_a_change_is_reported_by_path_with_old_and_new() -> None:
    """A nested field that changed is one FieldChange under a `changed` difference."""
    old = [ok("12", teepod={"name": "prod1"})]
    new = [ok(UUID, teepod={"name": "prod2"})]
    assert diff_snapshots(old, new) == [
        CvmDifference("changed", UUID, "db", (FieldChange("teepod.name", "prod1", "prod2"),))
    ]
    assert diff_snapshots(old, new, ignore=["teepod"]) == []


@pytest.mark.parametrize(
    ("fields", "ignore", "suggestion"),
    [(["stauts"], [], "'status'"), ([], ["teepod.nmae"], "'teepod.name'")],
    ids=["fields", "ignore"],
)
def test_a_misspelt_path_raises_with_a_suggestion(
    fields: list[str], ignore: list[str], suggestion: str
) -> None:
    """A path that is no field of a CVM raises ConfigurationError suggesting the closest one."""
    with pytest.raises(ConfigurationError, match=f"did you mean {suggestion}"):
        diff_snapshots([], [], fields=fields, ignore=ignore)


def test_a_str_for_fields_is_refused() -> None:
    """`fields="status"` (a str, not a list) is refused rather than read letter by letter."""
    with pytest.raises(ConfigurationError, match="not a str"):
        diff_snapshots([], [], fields="status")


def test_field_paths_hold_nested_paths_of_the_model() -> None:
    """Nested Struct fields are paths (teepod.region_identifier, kms_info.url); lists are whole."""
    paths = field_paths()
    assert {"status", "teepod", "teepod.region_identifier", "kms_info.url"} <= paths
    check_field_paths(["public_urls", "teepod.name"])
    assert "public_urls.app" not in paths


async def test_results_of_get_cvms_compare_as_they_are() -> None:
    """Two `get_cvms` of the simulator with one CVM changed between give that one change; the
    ids of the second call in another form change nothing else."""
    async with PhalaSimulator(cvms=5) as simulator:
        async with PhalaClient(api_key=simulator.api_key, base_url=simulator.base_url) as client:
            before = await client.get_cvms(["1", "2", "3"])
            simulator.update_cvm(2, status="stopped")
            uuids = [simulator.cvm(cvm_id)["vm_uuid"] for cvm_id in (1, 2, 3)]
            after = await client.get_cvms(uuids)
        assert simulator.total_requests == 6
    [difference] = diff_snapshots(before, after)
    assert (difference.kind, difference.cvm_id) == ("changed", uuids[1])
    assert difference.changes == (FieldChange("status", "running", "stopped"),)
