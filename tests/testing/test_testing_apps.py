"""Apps that run as several CVMs in the simulator: shared app ids, own instance identifiers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from phala_async import PhalaClient
from phala_async.testing import PhalaSimulator
from phala_async.testing._data import cvm_identity


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


def apps(sim: PhalaSimulator, ids: list[int]) -> list[list[int]]:
    """`ids` grouped by app id, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for cvm_id in ids:
        groups.setdefault(sim.cvm(cvm_id)["app_id"], []).append(cvm_id)
    return list(groups.values())


@pytest.mark.parametrize(
    ("instances", "grouped"),
    [
        (1, [[1], [2], [3], [4], [5], [6], [7]]),
        (3, [[1, 2, 3], [4, 5, 6], [7]]),
        (7, [[1, 2, 3, 4, 5, 6, 7]]),
        (10, [[1, 2, 3, 4, 5, 6, 7]]),
    ],
    ids=["one", "three", "all-seven", "more-than-cvms"],
)
def test_consecutive_cvms_share_an_app(instances: int, grouped: list[list[int]]) -> None:
    """Every `instances_per_app` consecutive CVMs share one app id; the last app may be smaller."""
    sim = PhalaSimulator(cvms=7, instances_per_app=instances)
    assert apps(sim, sim.cvm_ids) == grouped


def test_instances_keep_their_own_identifiers() -> None:
    """Instances of one app have distinct ids, names, VM UUIDs and instance ids."""
    sim = PhalaSimulator(cvms=3, instances_per_app=3)
    cvms = [sim.cvm(cvm_id) for cvm_id in sim.cvm_ids]
    for field in ("id", "name", "vm_uuid", "instance_id"):
        assert len({cvm[field] for cvm in cvms}) == 3, field
    assert len({cvm["app_id"] for cvm in cvms}) == 1


def test_first_instances_are_the_cvms_of_one_instance_apps() -> None:
    """An app's first instance is the very CVM served with one instance per app (default data)."""
    shared, single = PhalaSimulator(cvms=6, instances_per_app=3), PhalaSimulator(cvms=6)
    assert [shared.cvm(i) for i in (1, 4)] == [single.cvm(i) for i in (1, 4)]
    second, alone = shared.cvm(5), single.cvm(5)
    assert (second["vm_uuid"], second["name"]) == (alone["vm_uuid"], alone["name"])
    assert second["app_id"] == shared.cvm(4)["app_id"] != alone["app_id"]


def test_forbidden_and_added_cvms_form_apps_of_their_own() -> None:
    """Forbidden CVMs and each add_cvms call group into new apps, never joining the workspace's."""
    sim = PhalaSimulator(cvms=4, forbidden=2, instances_per_app=3)
    added = sim.add_cvms(4)
    assert added == [7, 8, 9, 10]
    assert apps(sim, sim.cvm_ids) == [[1, 2, 3], [4], [7, 8, 9], [10]]


@pytest.mark.parametrize("form", ["app_{}", "{}"], ids=["app-prefixed", "bare-hex"])
async def test_app_id_names_the_first_instance(session: aiohttp.ClientSession, form: str) -> None:
    """The app id of a three-instance app answers its first instance's document."""
    async with PhalaSimulator(cvms=6, instances_per_app=3) as sim:
        status, cvm = await get(session, sim, f"cvms/{form.format(sim.cvm(6)['app_id'])}")
    assert (status, cvm) == (200, sim.cvm(4))


async def test_app_id_moves_to_the_next_instance_left(session: aiohttp.ClientSession) -> None:
    """Once the first instance is removed the app id names the next one; with none left, 404."""
    async with PhalaSimulator(cvms=3, instances_per_app=3) as sim:
        path = f"cvms/app_{sim.cvm(1)['app_id']}"
        answered = []
        for cvm_id in (1, 2, 3):
            sim.remove_cvm(cvm_id)
            status, body = await get(session, sim, path)
            answered.append(body["id"] if status == 200 else (status, body["error_code"]))
    assert answered == [2, 3, (404, "ERR-03-001")]


async def test_removing_a_later_instance_leaves_the_app_id_on_the_first(
    session: aiohttp.ClientSession,
) -> None:
    """Removing the second of three instances leaves the app id naming the first."""
    async with PhalaSimulator(cvms=3, instances_per_app=3) as sim:
        sim.remove_cvm(2)
        status, cvm = await get(session, sim, f"cvms/app_{sim.cvm(1)['app_id']}")
    assert (status, cvm["id"]) == (200, 1)


async def test_app_of_another_workspace_answers_403(session: aiohttp.ClientSession) -> None:
    """The app id of an app of another workspace answers 403, like its instances' integer ids."""
    async with PhalaSimulator(cvms=2, forbidden=2, instances_per_app=2) as sim:
        app_id = cvm_identity(0, sim.forbidden_ids[0]).app_id  # the seed is 0
        segments = [f"app_{app_id}", app_id, *map(str, sim.forbidden_ids)]
        statuses = [(await get(session, sim, f"cvms/{segment}"))[0] for segment in segments]
    assert statuses == [403, 403, 403, 403]
    assert app_id not in {sim.cvm(cvm_id)["app_id"] for cvm_id in sim.cvm_ids}


async def test_listing_entries_name_their_own_instance(session: aiohttp.ClientSession) -> None:
    """Each listed entry's hosted id and instance id are its own CVM's VM UUID and instance id."""
    async with PhalaSimulator(cvms=6, instances_per_app=3) as sim:
        _, listing = await get(session, sim, "cvms/paginated?page_size=100")
    own = [
        (cvm["vm_uuid"], cvm["instance_id"], cvm["app_id"], cvm["name"])
        for cvm in map(sim.cvm, sim.cvm_ids)
    ]
    listed = [
        (
            item["hosted"]["id"],
            item["hosted"]["instance_id"],
            item["hosted"]["app_id"],
            item["name"],
        )
        for item in listing["items"]
    ]
    assert listed == own
    assert len({app_id for _, _, app_id, _ in listed}) == 2


@pytest.mark.parametrize("instances", [0, -1, True, 1.5], ids=["zero", "negative", "bool", "float"])
def test_bad_instances_per_app_fails_at_construction(instances: Any) -> None:
    """instances_per_app other than an int >= 1 raises ValueError saying what to pass."""
    with pytest.raises(ValueError, match=r"instances_per_app must be an int >= 1"):
        PhalaSimulator(instances_per_app=instances)


async def test_listed_cvm_ids_fetch_each_instance_itself() -> None:
    """With 3 instances per app, every listed cvm_id is distinct and fetches that very CVM."""
    async with (
        PhalaSimulator(cvms=9, instances_per_app=3) as sim,
        PhalaClient(api_key=sim.api_key, base_url=sim.base_url) as client,
    ):
        entries = [entry async for entry in client.list_cvms(page_size=4)]
        fetched = [(await client.get_cvm(entry.cvm_id)).id for entry in entries]
    assert len({entry.cvm_id for entry in entries}) == 9
    assert len({entry.hosted.app_id for entry in entries}) == 3
    assert fetched == sim.cvm_ids
