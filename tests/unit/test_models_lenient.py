"""Lenient decoding: loose timestamps, any-typed fields, and listing entries that do not decode."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from cli_support import SECRET_KEY, jsonl

from phala_async import DecodeError
from phala_async._models import decode_cvm, decode_page
from phala_async.cli import main

REQUIRED = {"id": 7, "name": "web-00007", "status": "running", "app_id": "a" * 40}
SIZES = {"vcpu": 2, "memory": 2048, "disk_size": 40}


def _detail(**fields: Any) -> bytes:
    return json.dumps({**REQUIRED, **SIZES, **fields}).encode()


def _entry(vm_uuid: str | None, name: str, configuration: Any = None) -> dict[str, Any]:
    hosted: dict[str, Any] = {"name": name, "status": "running", "uptime": "1h", "app_id": "a"}
    if vm_uuid is not None:
        hosted["id"] = vm_uuid
    hosted["configuration"] = configuration
    return {"hosted": hosted, "name": name, "status": "running", "public_urls": []}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-11-29", datetime(2025, 11, 29, tzinfo=UTC)),
        ("", None),
        ("2025-11-29T12:00:00", datetime(2025, 11, 29, 12, tzinfo=UTC)),
        ("2025-11-29T12:00:00Z", datetime(2025, 11, 29, 12, tzinfo=UTC)),
    ],
    ids=["date-alone", "empty", "no-offset", "utc"],
)
def test_loose_timestamps_decode_to_aware_datetimes_or_none(
    raw: str, expected: datetime | None
) -> None:
    """A date alone is midnight UTC, an empty string None, a missing offset UTC."""
    cvm = decode_cvm(_detail(scheduled_delete_at=raw, updated_at=raw), cvm_id=7)
    assert cvm.scheduled_delete_at == expected
    assert cvm.updated_at == expected  # == with an aware datetime is false for a naive one


def test_machine_info_is_kept_as_raw_json() -> None:
    """``machine_info`` is typed optional and keeps what the server sent."""
    cvm = decode_cvm(_detail(machine_info={"gpu_count": 1, "vcpu": 2}), cvm_id=7)
    assert cvm.machine_info == {"gpu_count": 1, "vcpu": 2}


def test_a_missing_required_field_is_still_a_decode_error() -> None:
    """Leniency stops at required fields: a body without ``id`` fails at ``$``."""
    body = json.dumps({**SIZES, "name": "x", "status": "s", "app_id": "a"}).encode()
    with pytest.raises(DecodeError, match="missing required field `id`") as caught:
        decode_cvm(body, cvm_id=7)
    assert caught.value.path == "$"


def test_a_bad_timestamp_that_is_no_date_still_fails() -> None:
    """A timestamp that is neither RFC 3339, a date nor empty is a DecodeError naming its path."""
    with pytest.raises(DecodeError) as caught:
        decode_cvm(_detail(scheduled_delete_at="next tuesday"), cvm_id=7)
    assert caught.value.path == "$.scheduled_delete_at"


def test_a_page_keeps_its_good_entries_and_names_the_bad_one() -> None:
    """Any-typed ``configuration`` values decode; an entry without ``hosted.id`` becomes an error
    named by its position and the id it carries."""
    items = [
        _entry("uuid-1", "web-00001", {}),
        _entry("uuid-2", "web-00002", "x"),
        _entry(None, "web-00003"),
        _entry("uuid-4", "web-00004", {"name": "n", "image": "i"}),
    ]
    page = decode_page(
        json.dumps({"items": items, "total": 4, "page": 2, "page_size": 4, "pages": 2}).encode()
    )
    assert [entry.cvm_id for entry in page.items] == ["uuid-1", "uuid-2", "uuid-4"]
    assert [entry.hosted.configuration for entry in page.items[:2]] == [{}, "x"]
    [error] = page.errors
    assert error.cvm_id == "web-00003"
    assert error.path == "$.items[2].hosted"
    assert "listing entry 3 of page 2" in str(error)


@pytest.fixture(name="odd_listing")
def odd_listing_fixture() -> Iterator[tuple[str, dict[str, int]]]:
    """A server whose one listing page has entries with ``configuration`` ``{}`` and ``"x"``, one
    without ``hosted.id``, and two plain ones; details answer for the four with an id."""
    import asyncio
    import threading

    ids = ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"]
    ids += ["33333333-3333-4333-8333-333333333333", "44444444-4444-4444-8444-444444444444"]
    items = [_entry(ids[0], "web-00001", {}), _entry(ids[1], "web-00002", "x")]
    items += [_entry(None, "web-bad03"), _entry(ids[2], "web-00004"), _entry(ids[3], "web-00005")]
    page = {"items": items, "total": 5, "page": 1, "page_size": 100, "pages": 1}
    counts: dict[str, int] = {}

    async def listing(request: web.Request) -> web.Response:
        counts["paginated"] = counts.get("paginated", 0) + 1
        return web.json_response(page)

    async def detail(request: web.Request) -> web.Response:
        segment = request.match_info["cvm_id"]
        counts[segment] = counts.get(segment, 0) + 1
        number = 1 + [i.replace("-", "") for i in ids].index(segment)
        return web.Response(body=_detail(id=number), content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/cvms/paginated", listing)
    app.router.add_get("/api/v1/cvms/{cvm_id}", detail)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/api/v1", counts
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_sweep_all_goes_past_a_bad_entry_and_reports_it(
    odd_listing: tuple[str, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    """``sweep --all`` fetches the four good CVMs, reports the bad entry, and exits 1."""
    base_url, counts = odd_listing
    status = main(["--base-url", base_url, "--api-key", SECRET_KEY, "sweep", "--all", "-q"])
    out, err = capsys.readouterr()
    assert status == 1
    assert [record["ok"] for record in jsonl(out)] == [True] * 4
    assert "listing entry 3 of page 1 ('web-bad03')" in err
    assert counts["paginated"] == 1
    assert sum(count for key, count in counts.items() if key != "paginated") == 4
