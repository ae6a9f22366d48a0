"""The simulator's workspace changing under a client: CVMs added, removed and updated."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from phala_async.testing import PhalaSimulator

Change = Callable[[PhalaSimulator], object]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session without credentials."""
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def get(session: aiohttp.ClientSession, sim: PhalaSimulator, path: str) -> tuple[int, Any]:
    """GET `path` under the base URL with the API key; the status and the decoded body."""
    url = f"{sim.base_url}/{path}"
    async with session.get(url, headers={"X-API-Key": sim.api_key}) as response:
        return response.status, json.loads(await response.read())


async def whole_listing(
    session: aiohttp.ClientSession, sim: PhalaSimulator, page_size: int = 3
) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    """Every listed item, page by page, and each page's `(total, pages)`."""
    items: list[dict[str, Any]] = []
    totals: list[tuple[int, int]] = []
    for page in range(1, 100):  # bounded: the tests' workspaces have far fewer pages
        status, body = await get(session, sim, f"cvms/paginated?page={page}&page_size={page_size}")
        assert status == 200
        items.extend(body["items"])
        totals.append((body["total"], body["pages"]))
        if page >= body["pages"]:
            return items, totals
    raise AssertionError("the listing did not end within 100 pages")


def assert_item_matches(item: dict[str, Any], cvm: dict[str, Any]) -> None:
    """A listing item says what the detail document says about the same CVM."""
    hosted = item["hosted"]
    assert (hosted["id"], hosted["instance_id"], hosted["app_id"]) == (
        cvm["vm_uuid"],
        cvm["instance_id"],
        cvm["app_id"],
    )
    assert (item["name"], hosted["name"], item["status"], hosted["status"]) == (
        cvm["name"],
        cvm["name"],
        cvm["status"],
        cvm["status"],
    )
    assert (item["vcpu"], item["memory"], item["disk_size"], item["node"]) == (
        cvm["vcpu"],
        cvm["memory"],
        cvm["disk_size"],
        cvm["teepod"],
    )
    project = None if cvm["project_id"] is None else f"prj_{cvm['project_id']}"
    assert (item["project_id"], item["listed"], item["in_progress"]) == (
        project,
        cvm["listed"],
        cvm["in_progress"],
    )
    assert item["public_urls"] == (cvm["public_urls"] or [])


async def assert_consistent(session: aiohttp.ClientSession, sim: PhalaSimulator) -> None:
    """The listing holds exactly `cvm_ids`, in order, each item agreeing with its served detail."""
    items, totals = await whole_listing(session, sim)
    assert {total for total, _ in totals} == {len(sim.cvm_ids)}
    details = [await get(session, sim, f"cvms/{item['hosted']['id']}") for item in items]
    assert [cvm["id"] for _, cvm in details] == sim.cvm_ids
    for item, (status, cvm) in zip(items, details, strict=True):
        assert (status, cvm) == (200, sim.cvm(cvm["id"]))
        assert_item_matches(item, cvm)


# -- update_cvm ---------------------------------------------------------------------------------

UPDATES: dict[str, dict[str, Any]] = {
    "status": {"status": "stopped", "in_progress": False},
    "sizes": {"vcpu": 32, "memory": 65536, "disk_size": 500},
    "teepod": {"teepod": {"id": 11, "name": "prod11", "region_identifier": "eu-central"}},
    "project-id": {"project_id": "feedbeef"},
    "null-public-urls": {"public_urls": None},
    "name": {"name": "renamed-cvm"},
}


@pytest.mark.parametrize("fields", UPDATES.values(), ids=UPDATES.keys())
async def test_update_changes_the_detail_and_the_listing_alike(
    session: aiohttp.ClientSession, fields: dict[str, Any]
) -> None:
    """update_cvm sets the fields in the served detail and the matching ones in its listing item."""
    async with PhalaSimulator(cvms=4) as sim:
        sim.update_cvm(2, **fields)
        status, cvm = await get(session, sim, "cvms/2")
        items, _ = await whole_listing(session, sim)
    assert status == 200
    assert {name: cvm[name] for name in fields} == fields
    assert_item_matches(items[1], cvm)


def test_update_keeps_machine_info_in_step_with_sizes() -> None:
    """Changed sizes are mirrored in the extra `machine_info` field the real server sends."""
    sim = PhalaSimulator(cvms=2)
    sim.update_cvm(1, vcpu=64, memory=1024)
    machine = sim.cvm(1)["machine_info"]
    assert (machine["vcpu"], machine["memory"], machine["disk_size"]) == (
        64,
        1024,
        sim.cvm(1)["disk_size"],
    )


async def test_renamed_cvm_is_found_by_its_new_name_only(session: aiohttp.ClientSession) -> None:
    """After a rename the new name answers that CVM and the old name answers 404."""
    async with PhalaSimulator(cvms=3) as sim:
        old = sim.cvm(3)["name"]
        sim.update_cvm(3, name="billing-api")
        new_status, cvm = await get(session, sim, "cvms/billing-api")
        old_status, error = await get(session, sim, f"cvms/{old}")
    assert (new_status, cvm["id"], cvm["name"]) == (200, 3, "billing-api")
    assert (old_status, error["error_code"]) == (404, "ERR-03-001")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"colour": "blue", "size": 3}, "unknown CVM field.*colour, size"),
        ({"status": "running", "vm_uuid": "0" * 32}, "vm_uuid cannot change"),
        ({"id": 9}, "id cannot change"),
        ({"name": "Bad_Name"}, "not a CVM name"),
        ({"name": "12345"}, "not a CVM name"),
        ({"name": "web-00002"}, "taken by CVM 2"),
    ],
    ids=["unknown", "identifier", "integer-id", "bad-name", "all-digit-name", "taken-name"],
)
def test_update_refuses_bad_fields_and_changes_nothing(
    fields: dict[str, Any], message: str
) -> None:
    """Unknown fields, identifiers and unusable names raise ValueError; the CVM stays as it was."""
    sim = PhalaSimulator(cvms=3)
    before = sim.cvm(1)
    with pytest.raises(ValueError, match=message):
        sim.update_cvm(1, **fields)
    assert sim.cvm(1) == before


def test_update_with_a_value_json_cannot_hold_changes_nothing() -> None:
    """A value JSON cannot encode raises TypeError before the CVM or its name index change."""
    sim = PhalaSimulator(cvms=2)
    before = sim.cvm(1)
    with pytest.raises(TypeError):
        sim.update_cvm(1, name="never-used", status=object())
    assert sim.cvm(1) == before
    sim.update_cvm(2, name="never-used")  # the name was not taken by the failed update
    assert sim.cvm(2)["name"] == "never-used"


@pytest.mark.parametrize(
    "change",
    [
        lambda sim: sim.update_cvm(4, status="stopped"),
        lambda sim: sim.remove_cvm(4),
        lambda sim: sim.cvm(4),
        lambda sim: sim.update_cvm(99, status="stopped"),
        lambda sim: sim.remove_cvm(99),
    ],
    ids=[
        "update-forbidden",
        "remove-forbidden",
        "read-forbidden",
        "update-unknown",
        "remove-unknown",
    ],
)
def test_only_workspace_cvms_can_be_changed(change: Change) -> None:
    """Reading, updating or removing a CVM outside the workspace raises KeyError."""
    sim = PhalaSimulator(cvms=3, forbidden=1)
    with pytest.raises(KeyError):
        change(sim)


# -- add_cvms and remove_cvm ------------------------------------------------------------------


async def test_added_cvms_take_ids_after_the_forbidden_ones(
    session: aiohttp.ClientSession,
) -> None:
    """With 3 workspace and 2 forbidden CVMs, two added CVMs are 6 and 7; 4 and 5 stay 403."""
    async with PhalaSimulator(cvms=3, forbidden=2) as sim:
        added = sim.add_cvms(2)
        answers = {cvm_id: (await get(session, sim, f"cvms/{cvm_id}"))[0] for cvm_id in range(1, 8)}
    assert added == [6, 7]
    assert (sim.cvm_ids, sim.forbidden_ids) == ([1, 2, 3, 6, 7], [4, 5])
    assert answers == {1: 200, 2: 200, 3: 200, 4: 403, 5: 403, 6: 200, 7: 200}


def test_added_cvms_derive_from_the_seed() -> None:
    """Two simulators of one seed add identical CVMs; another seed adds different ones."""
    first, same, other = (PhalaSimulator(cvms=2, seed=seed) for seed in (5, 5, 6))
    ids = [sim.add_cvms(3) for sim in (first, same, other)]
    assert ids == [[3, 4, 5]] * 3
    assert [first.cvm(i) for i in ids[0]] == [same.cvm(i) for i in ids[0]]
    assert first.cvm(4)["vm_uuid"] != other.cvm(4)["vm_uuid"]


def test_removed_ids_are_never_given_again() -> None:
    """Removing the highest id and adding one gives a new, higher id."""
    sim = PhalaSimulator(cvms=3)
    sim.remove_cvm(3)
    assert sim.add_cvms(1) == [4]
    assert sim.cvm_ids == [1, 2, 4]


@pytest.mark.parametrize("count", [-1, 1.5, True], ids=["negative", "float", "bool"])
def test_add_refuses_a_count_that_is_no_whole_number(count: Any) -> None:
    """add_cvms with a count other than an int >= 0 raises ValueError and adds nothing."""
    sim = PhalaSimulator(cvms=1)
    with pytest.raises(ValueError, match=r"count must be an int >= 0"):
        sim.add_cvms(count)
    assert sim.cvm_ids == [1]


FORMS: dict[str, Callable[[dict[str, Any]], str]] = {
    "integer-id": lambda cvm: str(cvm["id"]),
    "name": lambda cvm: cvm["name"],
    "app-prefixed": lambda cvm: f"app_{cvm['app_id']}",
    "bare-app-id": lambda cvm: cvm["app_id"],
    "vm-uuid-dashed": lambda cvm: cvm["vm_uuid"],
    "vm-uuid-hex": lambda cvm: cvm["vm_uuid"].replace("-", ""),
    "instance-id": lambda cvm: cvm["instance_id"],
}


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
async def test_removed_cvm_answers_404_in_every_form(
    session: aiohttp.ClientSession, form: Callable[[dict[str, Any]], str]
) -> None:
    """Each identifier form of a removed CVM answers the structured ERR-03-001 404."""
    async with PhalaSimulator(cvms=3) as sim:
        segment = form(sim.cvm(2))
        sim.remove_cvm(2)
        status, error = await get(session, sim, f"cvms/{segment}")
    assert status == 404
    assert (error["error_code"], error["details"]) == ("ERR-03-001", [{"cvm_id": segment}])


async def test_listing_total_and_pages_follow_adds_and_removes(
    session: aiohttp.ClientSession,
) -> None:
    """At page_size 3, total and pages follow each add and remove, and items stay in id order."""
    async with PhalaSimulator(cvms=7, forbidden=1) as sim:
        seen = []
        for change in (
            lambda: None,
            lambda: sim.add_cvms(2),
            lambda: sim.remove_cvm(3),
            lambda: [sim.remove_cvm(cvm_id) for cvm_id in (1, 9)],
            lambda: [sim.remove_cvm(cvm_id) for cvm_id in sim.cvm_ids],
        ):
            change()
            items, totals = await whole_listing(session, sim)
            assert [item["name"] for item in items] == [sim.cvm(i)["name"] for i in sim.cvm_ids]
            seen.append(set(totals))
    assert seen == [{(7, 3)}, {(9, 3)}, {(8, 3)}, {(6, 2)}, {(0, 0)}]


async def test_listing_and_details_agree_after_every_change(
    session: aiohttp.ClientSession,
) -> None:
    """After each of a run of updates, adds and removes, listing and details tell the same story."""
    changes: list[Change] = [
        lambda sim: sim.update_cvm(2, status="stopping", in_progress=True, name="drain-me"),
        lambda sim: sim.add_cvms(4),
        lambda sim: sim.remove_cvm(1),
        lambda sim: sim.update_cvm(8, teepod={"id": 9, "name": "prod9", "region_identifier": None}),
        lambda sim: sim.remove_cvm(8),
        lambda sim: sim.update_cvm(9, vcpu=2, memory=2048, disk_size=40, project_id=None),
    ]
    async with PhalaSimulator(cvms=5, forbidden=1) as sim:
        for change in changes:
            change(sim)
            await assert_consistent(session, sim)
    assert sim.cvm_ids == [2, 3, 4, 5, 7, 9, 10]
