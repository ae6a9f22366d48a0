"""``PhalaClient.list_cvms``: the workspace page by page, against the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from phala_async import AuthenticationError, ConfigurationError, PhalaClient
from phala_async.testing import Fault, PhalaSimulator

Workspace = Callable[..., Awaitable[tuple[PhalaSimulator, PhalaClient]]]


@pytest.fixture
async def workspace() -> AsyncIterator[Workspace]:
    """Start a simulator of a given size and a fast-retrying client on it; both closed after."""
    opened: list[PhalaSimulator | PhalaClient] = []

    async def start(cvms: int, **client_options: Any) -> tuple[PhalaSimulator, PhalaClient]:
        simulator = PhalaSimulator(cvms=cvms, forbidden=3)
        await simulator.start()
        opened.append(simulator)
        options: dict[str, Any] = {
            "api_key": simulator.api_key,
            "base_url": simulator.base_url,
            "backoff_initial": 0.001,
            "backoff_max": 0.01,
            **client_options,
        }
        client = PhalaClient(**options)
        opened.append(client)
        return simulator, client

    yield start
    for thing in reversed(opened):
        await thing.aclose() if isinstance(thing, PhalaClient) else await thing.close()


def vm_uuids(simulator: PhalaSimulator) -> list[str]:
    return [simulator.cvm(cvm_id)["vm_uuid"] for cvm_id in simulator.cvm_ids]


async def test_pages_through_a_partial_last_page(workspace: Workspace) -> None:
    """23 CVMs at page_size 10 come from three requests, the third holding the last 3."""
    simulator, client = await workspace(23)
    seen: list[str] = []
    pages_requested_at: dict[int, int] = {}
    async for entry in client.list_cvms(page_size=10):
        seen.append(entry.cvm_id)
        pages_requested_at[len(seen)] = simulator.requests["paginated"]
    assert seen == vm_uuids(simulator)
    # A page is asked for only once the one before it is used up.
    assert (pages_requested_at[10], pages_requested_at[11], pages_requested_at[21]) == (1, 2, 3)
    assert simulator.requests["paginated"] == 3


async def test_exact_multiple_of_page_size_asks_no_empty_page(workspace: Workspace) -> None:
    """20 CVMs at page_size 10 take exactly two requests."""
    simulator, client = await workspace(20)
    assert [entry.cvm_id async for entry in client.list_cvms(page_size=10)] == vm_uuids(simulator)
    assert simulator.requests["paginated"] == 2


async def test_default_page_size_is_the_api_maximum(workspace: Workspace) -> None:
    """150 CVMs take two requests at the default page size of 100."""
    simulator, client = await workspace(150)
    assert len([entry async for entry in client.list_cvms()]) == 150
    assert simulator.requests["paginated"] == 2


async def test_empty_workspace_lists_nothing(workspace: Workspace) -> None:
    """A workspace of no CVMs yields nothing after one request."""
    simulator, client = await workspace(0)
    assert [entry async for entry in client.list_cvms()] == []
    assert simulator.requests["paginated"] == 1


async def test_entries_agree_with_the_details(workspace: Workspace) -> None:
    """Each entry carries the name, status and app id the detail endpoint serves for that CVM."""
    simulator, client = await workspace(12)
    entries = [entry async for entry in client.list_cvms(page_size=5)]
    for cvm_id, entry in zip(simulator.cvm_ids, entries, strict=True):
        document = simulator.cvm(cvm_id)
        assert (entry.name, entry.status, entry.hosted.app_id) == (
            document["name"],
            document["status"],
            document["app_id"],
        )


async def test_forbidden_cvms_are_not_listed(workspace: Workspace) -> None:
    """Of 5 workspace CVMs and 3 of another workspace, exactly the 5 are listed."""
    simulator, client = await workspace(5)
    assert len(simulator.forbidden_ids) == 3
    assert [entry.cvm_id async for entry in client.list_cvms()] == vm_uuids(simulator)


@pytest.mark.parametrize(
    "page_size",
    [0, 101, -1, True, 1.5, "10"],
    ids=["zero", "over-100", "negative", "bool", "float", "str"],
)
async def test_bad_page_size_is_refused_before_any_request(
    workspace: Workspace, page_size: Any
) -> None:
    """A page_size outside 1..100 raises ConfigurationError naming the range, and sends nothing."""
    simulator, client = await workspace(3)
    with pytest.raises(ConfigurationError, match="1 to 100"):
        async for _ in client.list_cvms(page_size=page_size):
            pass
    assert simulator.requests["paginated"] == 0


async def test_a_failed_page_is_retried(workspace: Workspace) -> None:
    """A 503 on the list is retried like a detail request, and the listing is complete."""
    simulator, client = await workspace(15)
    simulator.script("paginated", Fault.HTTP_503)
    assert [entry.cvm_id async for entry in client.list_cvms(page_size=10)] == vm_uuids(simulator)
    assert simulator.requests["paginated"] == 3
    assert client.stats.retries == 1


async def test_a_refused_credential_raises_once_and_ends_the_listing(workspace: Workspace) -> None:
    """A wrong key raises AuthenticationError for the list itself (cvm_id None, 401), and the
    listing then ends instead of asking again."""
    simulator, client = await workspace(3, api_key="phak_wrong_key_for_this_test")
    listing = client.list_cvms()
    with pytest.raises(AuthenticationError) as caught:
        await anext(listing)
    assert (caught.value.cvm_id, caught.value.status_code) == (None, 401)
    assert [item async for item in listing] == []
    assert (listing.total, simulator.requests["paginated"]) == (None, 1)


async def test_the_listing_total_is_the_workspace_size(workspace: Workspace) -> None:
    """``list_cvms().total`` is the workspace's size once the first entry is read."""
    _, client = await workspace(7)
    listing = client.list_cvms(page_size=3)
    await anext(listing)
    assert listing.total == 7
    assert len([item async for item in listing]) == 6


async def test_a_sweep_fed_from_the_listing_reads_pages_lazily(workspace: Workspace) -> None:
    """stream_cvms fed from list_cvms fetches the whole workspace, asking for page 2 only later."""
    simulator, client = await workspace(250)
    ids = (entry.cvm_id async for entry in client.list_cvms())
    fetched: list[int] = []
    pages_at_first_result = None
    async with client.stream_cvms(ids) as results:
        async for result in results:
            if pages_at_first_result is None:
                pages_at_first_result = simulator.requests["paginated"]
            assert result.cvm is not None
            fetched.append(result.cvm.id)
    assert pages_at_first_result == 1
    assert sorted(fetched) == simulator.cvm_ids
    assert simulator.requests["paginated"] == 3
