"""The local Phala Cloud simulator, exercised with a plain aiohttp client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from phala_async import testing
from phala_async.testing import Fault, PhalaSimulator
from phala_async.testing._data import canonical_key

StartSimulator = Callable[..., Awaitable[PhalaSimulator]]
Answer = tuple[int, Mapping[str, str], bytes]

REQUIRED_FIELDS = {"id", "name", "status", "app_id", "vcpu", "memory", "disk_size"}
RFC1123_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{3,61})[a-z0-9]")
HEX40 = re.compile(r"[0-9a-f]{40}")


@pytest.fixture
async def start_simulator() -> AsyncIterator[StartSimulator]:
    """Start simulators with the given configuration; all are closed after the test."""
    started: list[PhalaSimulator] = []

    async def start(**config: Any) -> PhalaSimulator:
        simulator = PhalaSimulator(**config)
        await simulator.start()
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        await simulator.close()


@pytest.fixture
async def sim(start_simulator: StartSimulator) -> PhalaSimulator:
    """A simulator with 5 workspace CVMs and 2 forbidden ones, no faults."""
    return await start_simulator(cvms=5, forbidden=2, fault_delay=0.3)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session without credentials."""
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def key_header(simulator: PhalaSimulator) -> dict[str, str]:
    return {"X-API-Key": simulator.api_key}


async def fetch(
    session: aiohttp.ClientSession,
    simulator: PhalaSimulator,
    path: str,
    headers: Mapping[str, str] | None = None,
    **options: Any,
) -> Answer:
    """GET `path` under the base URL, with the API key unless `headers` is given."""
    url = f"{simulator.base_url}/{path}"
    sent = key_header(simulator) if headers is None else headers
    async with session.get(url, headers=sent, **options) as response:
        return response.status, response.headers, await response.read()


# -- lookup and documents -----------------------------------------------------------------------


LOOKUP_FORMS: dict[str, Callable[[dict[str, Any]], str]] = {
    "integer-id": lambda cvm: str(cvm["id"]),
    "zero-padded-id": lambda cvm: f"00{cvm['id']}",
    "name": lambda cvm: cvm["name"],
    "app-prefixed": lambda cvm: f"app_{cvm['app_id']}",
    "bare-app-id": lambda cvm: cvm["app_id"],
    "vm-uuid-dashed": lambda cvm: cvm["vm_uuid"],
    "vm-uuid-hex": lambda cvm: cvm["vm_uuid"].replace("-", ""),
    "vm-uuid-upper": lambda cvm: cvm["vm_uuid"].upper(),
    "instance-id": lambda cvm: cvm["instance_id"],
}


@pytest.mark.parametrize("form", LOOKUP_FORMS.values(), ids=LOOKUP_FORMS.keys())
async def test_every_identifier_form_finds_the_same_cvm(
    sim: PhalaSimulator, session: aiohttp.ClientSession, form: Callable[[dict[str, Any]], str]
) -> None:
    """Each accepted identifier form of CVM 3 returns exactly its document."""
    status, _, body = await fetch(session, sim, f"cvms/{form(sim.cvm(3))}")
    assert (status, json.loads(body)) == (200, sim.cvm(3))


@pytest.mark.parametrize(
    ("segment", "key"),
    [
        ("007", "7"),
        ("web-00002", "web-00002"),
        ("C94DE1F3646E4A90BE2F5FFF2DB0D940", "c94de1f3-646e-4a90-be2f-5fff2db0d940"),
        (f"app_{'a' * 40}", f"app_{'a' * 40}"),
        ("BAD!", None),
        (f"app_{'A' * 40}", None),
    ],
    ids=["padded-integer", "name", "upper-hex-uuid", "app-id", "punctuation", "upper-app-id"],
)
def test_canonical_key_normalises_or_rejects(segment: str, key: str | None) -> None:
    """Identifier segments map to their canonical lookup key, or None when of no accepted form."""
    assert canonical_key(segment) == key


@pytest.mark.parametrize("version", [None, "2025-10-28"], ids=str)
async def test_the_pinned_version_and_no_version_get_the_basic_info_shape(
    sim: PhalaSimulator, session: aiohttp.ClientSession, version: str | None
) -> None:
    """Without X-Phala-Version, or with 2025-10-28, the detail body is the CvmBasicInfo shape."""
    headers = key_header(sim) | ({} if version is None else {"X-Phala-Version": version})
    status, _, body = await fetch(session, sim, "cvms/2", headers=headers)
    assert (status, json.loads(body)) == (200, sim.cvm(2))
    assert isinstance(json.loads(body)["id"], int)


async def test_detail_has_required_and_extra_fields(
    sim: PhalaSimulator, session: aiohttp.ClientSession
) -> None:
    """A detail body has every required CvmBasicInfo field, well formed, plus unknown extras."""
    status, headers, body = await fetch(session, sim, "cvms/1")
    cvm = json.loads(body)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert cvm.keys() >= REQUIRED_FIELDS
    assert cvm.keys() >= {"machine_info", "updated_at"}
    assert RFC1123_LABEL.fullmatch(cvm["name"])
    assert HEX40.fullmatch(cvm["app_id"])
    assert HEX40.fullmatch(cvm["instance_id"])
    assert cvm["instance_id"] != cvm["app_id"]
    assert uuid.UUID(cvm["vm_uuid"]).version == 4
    assert isinstance(cvm["id"], int)


def test_documents_depend_only_on_seed_and_id() -> None:
    """Two simulators with one seed serve identical CVMs; another seed serves different ones."""
    first, same, other = (PhalaSimulator(cvms=3, seed=seed) for seed in (7, 7, 8))
    assert first.cvm(2) == same.cvm(2)
    assert first.cvm(2)["app_id"] != other.cvm(2)["app_id"]


def test_workspace_mixes_statuses_and_null_fields() -> None:
    """Across 200 CVMs there are several statuses, null optional fields and RFC 3339 dates."""
    simulator = PhalaSimulator(cvms=200)
    cvms = [simulator.cvm(cvm_id) for cvm_id in simulator.cvm_ids]
    statuses = Counter(cvm["status"] for cvm in cvms)
    deletes = [cvm["scheduled_delete_at"] for cvm in cvms]
    assert statuses.most_common(1)[0][0] == "running"
    assert {"stopped", "starting"} <= statuses.keys()
    assert any(cvm["project_id"] is None for cvm in cvms)
    assert any(cvm["project_id"] is not None for cvm in cvms)
    assert None in deletes
    dates = [when for when in deletes if when is not None]
    assert dates
    assert all(when.endswith("Z") and datetime.fromisoformat(when) for when in dates)


# -- authentication and errors ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["api-key", "bearer"])
async def test_either_credential_is_accepted(
    sim: PhalaSimulator, session: aiohttp.ClientSession, scheme: str
) -> None:
    """Both the X-API-Key header and a bearer token authenticate."""
    headers = key_header(sim) if scheme == "api-key" else {"Authorization": f"Bearer {sim.token}"}
    status, _, _ = await fetch(session, sim, "cvms/1", headers=headers)
    assert status == 200


@pytest.mark.parametrize("path", ["cvms/1", "cvms/paginated"], ids=["detail", "list"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "phak_wrong"},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "phak_simulator_test_key"},
        {"Authorization": "Bearer phak_simulator_test_key"},
        {"X-API-Key": "simulator-oauth-token"},
    ],
    ids=["none", "wrong-key", "wrong-token", "no-scheme", "key-as-bearer", "token-as-key"],
)
async def test_missing_or_wrong_credentials_get_401(
    sim: PhalaSimulator, session: aiohttp.ClientSession, path: str, headers: dict[str, str]
) -> None:
    """Without a valid credential both endpoints answer 401 Authentication required."""
    status, _, body = await fetch(session, sim, path, headers=headers)
    assert (status, json.loads(body)) == (401, {"detail": "Authentication required"})


async def test_cvm_of_another_workspace_gets_403(
    sim: PhalaSimulator, session: aiohttp.ClientSession
) -> None:
    """A CVM of another workspace (ids right after the workspace's) answers 403."""
    assert sim.forbidden_ids == [6, 7]
    status, _, body = await fetch(session, sim, "cvms/7")
    assert (status, json.loads(body)) == (403, {"detail": "CVM not in workspace"})


@pytest.mark.parametrize(
    "segment",
    ["999", "no-such-cvm", f"app_{'ab' * 20}", "0" * 32],
    ids=["integer", "name", "app-id", "uuid"],
)
async def test_unknown_cvm_gets_structured_404(
    sim: PhalaSimulator, session: aiohttp.ClientSession, segment: str
) -> None:
    """A well-formed identifier that names no CVM answers the structured ERR-03-001 body."""
    status, _, body = await fetch(session, sim, f"cvms/{segment}")
    error = json.loads(body)
    assert status == 404
    assert error["error_code"] == "ERR-03-001"
    assert error["message"] == "CVM not found"
    assert error["details"] == [{"cvm_id": segment}]
    assert error["suggestions"]
    assert error["links"] == []


@pytest.mark.parametrize(
    "segment",
    ["BAD!", "abcd", "CVM-00001", "-abcde", "app_xyz", "a" * 64],
    ids=["punctuation", "too-short", "uppercase", "leading-dash", "bad-app-id", "too-long"],
)
async def test_malformed_identifier_gets_422(
    sim: PhalaSimulator, session: aiohttp.ClientSession, segment: str
) -> None:
    """An identifier of no accepted form answers FastAPI's 422 body for the path parameter."""
    status, _, body = await fetch(session, sim, f"cvms/{segment}")
    detail = [{"loc": ["path", "cvm_id"], "msg": "Invalid CVM identifier", "type": "value_error"}]
    assert (status, json.loads(body)) == (422, {"detail": detail})


async def test_unknown_route_gets_404_and_is_counted(
    sim: PhalaSimulator, session: aiohttp.ClientSession
) -> None:
    """A path outside the two endpoints answers 404 Not Found and counts as a request."""
    status, _, body = await fetch(session, sim, "workspaces")
    assert (status, json.loads(body)) == (404, {"detail": "Not Found"})
    assert sim.total_requests == 1
    assert sim.requests == Counter()


async def test_every_answer_has_a_unique_request_id(
    sim: PhalaSimulator, session: aiohttp.ClientSession
) -> None:
    """Successes and errors alike carry an X-Request-ID, different on every answer."""
    paths = ["cvms/1", "cvms/1", "cvms/999", "cvms/BAD!", "cvms/paginated", "nowhere"]
    answers = [await fetch(session, sim, path) for path in paths]
    answers.append(await fetch(session, sim, "cvms/1", headers={}))
    request_ids = [headers["X-Request-ID"] for _, headers, _ in answers]
    assert all(re.fullmatch(r"req_[0-9a-f]{16}", request_id) for request_id in request_ids)
    assert len(set(request_ids)) == len(request_ids)


# -- injected faults ----------------------------------------------------------------------------


async def test_script_answers_in_order_then_normally(
    sim: PhalaSimulator, session: aiohttp.ClientSession
) -> None:
    """Scripted answers are used once each, in order, for their segment only."""
    sim.script(2, Fault.HTTP_503, "500", Fault.OK, Fault.RATE_LIMIT)
    statuses = [(await fetch(session, sim, "cvms/2"))[0] for _ in range(5)]
    other, _, _ = await fetch(session, sim, "cvms/3")
    assert statuses == [503, 500, 200, 429, 200]
    assert other == 200


@pytest.mark.parametrize(
    ("fault", "status", "content_type", "marker"),
    [
        pytest.param(Fault.HTTP_500, 500, "application/json", b'"detail"', id="500"),
        pytest.param(Fault.HTTP_502, 502, "text/html", b"502 Bad Gateway", id="502-html"),
        pytest.param(Fault.HTTP_503, 503, "application/json", b'"detail"', id="503"),
        pytest.param(Fault.HTTP_504, 504, "application/json", b'"detail"', id="504"),
        pytest.param(Fault.RATE_LIMIT, 429, "application/json", b'"ERR-05-002"', id="429"),
        pytest.param(Fault.NOT_JSON, 200, "application/json", b"<html>oops</html>", id="not-json"),
    ],
)
async def test_status_faults_reach_the_client(
    sim: PhalaSimulator,
    session: aiohttp.ClientSession,
    fault: Fault,
    status: int,
    content_type: str,
    marker: bytes,
) -> None:
    """Each status fault arrives with its status, content type and kind of body."""
    sim.script(1, fault)
    got, headers, body = await fetch(session, sim, "cvms/1")
    assert (got, headers["Content-Type"]) == (status, content_type)
    assert marker in body


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0, "0"), (2.0, "2"), (0.25, "0.25"), ("Wed, 21 Oct 2015 07:28:00 GMT",) * 2],
    ids=["zero", "whole-seconds", "fraction", "http-date"],
)
async def test_injected_429_carries_retry_after(
    start_simulator: StartSimulator,
    session: aiohttp.ClientSession,
    retry_after: float | str,
    header: str,
) -> None:
    """An injected 429 has the ERR-05-002 body and Retry-After from `retry_after`."""
    simulator = await start_simulator(retry_after=retry_after)
    simulator.script(1, Fault.RATE_LIMIT)
    status, headers, body = await fetch(session, simulator, "cvms/1")
    assert (status, headers["Retry-After"]) == (429, header)
    assert json.loads(body)["error_code"] == "ERR-05-002"


@pytest.mark.parametrize(
    ("fault", "errors"),
    [
        (Fault.RESET, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)),
        (Fault.TRUNCATE, aiohttp.ClientPayloadError),
        (Fault.BAD_GZIP, aiohttp.ClientPayloadError),
    ],
    ids=["reset", "truncate", "bad-gzip"],
)
async def test_transport_faults_raise_in_the_client(
    sim: PhalaSimulator, fault: Fault, errors: type[Exception] | tuple[type[Exception], ...]
) -> None:
    """Reset, truncated and undecodable answers surface as aiohttp client errors."""
    # aiohttp 3.14 silently resends an idempotent request once when the connection drops, so a
    # reset reaches the caller only when it happens twice in a row.
    sent = 2 if fault is Fault.RESET else 1
    sim.script(1, *[fault] * sent)
    async with aiohttp.ClientSession() as fresh:
        with pytest.raises(errors):
            await fetch(fresh, sim, "cvms/1")
    assert sim.requests["1"] == sent


async def test_delay_fault_outlasts_a_short_client_timeout(
    sim: PhalaSimulator, session: aiohttp.ClientSession
) -> None:
    """A delayed answer makes a client with a shorter timeout time out."""
    sim.script(1, Fault.DELAY)
    with pytest.raises(TimeoutError):
        await fetch(session, sim, "cvms/1", timeout=aiohttp.ClientTimeout(total=0.05))


async def test_faults_log_nothing_on_the_server(
    start_simulator: StartSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Every fault kind, including dropped connections, leaves no warning or error log."""
    simulator = await start_simulator(cvms=1, fault_delay=0.05)
    simulator.script(1, *Fault)
    timeout = aiohttp.ClientTimeout(total=0.02)
    with caplog.at_level(logging.WARNING):
        async with aiohttp.ClientSession() as fresh:
            for _ in Fault:
                # The client side of each fault is checked by the tests above.
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await fetch(fresh, simulator, "cvms/1", timeout=timeout)
        await simulator.close()  # waits for the delayed answer too
    statuses = {record.status for record in simulator.request_log}
    assert statuses == {200, 429, 500, 502, 503, 504, "reset"}
    assert caplog.records == []


async def test_fault_rate_hits_about_that_share_of_requests(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    """With fault_rate 0.5, roughly half of 400 requests get a fault, drawn from `faults`."""
    simulator = await start_simulator(cvms=4, fault_rate=0.5, faults=[Fault.HTTP_500], seed=3)
    statuses = Counter([(await fetch(session, simulator, "cvms/1"))[0] for _ in range(400)])
    assert statuses.keys() == {200, 500}
    assert 150 <= statuses[500] <= 250


async def test_rate_limit_answers_429_over_budget(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    """Over 20 requests per second, the excess gets 429 ERR-05-002 with Retry-After: 1."""
    simulator = await start_simulator(cvms=4, rate_limit=20)
    answers = await asyncio.gather(*(fetch(session, simulator, "cvms/1") for _ in range(60)))
    limited = [(headers, body) for status, headers, body in answers if status == 429]
    answered = [status for status, _, _ in answers if status == 200]
    assert len(limited) >= 20
    assert len(answered) >= 20
    assert {headers["Retry-After"] for headers, _ in limited} == {"1"}
    assert {json.loads(body)["error_code"] for _, body in limited} == {"ERR-05-002"}


# -- counters -----------------------------------------------------------------------------------


async def test_requests_are_counted_per_raw_segment(
    sim: PhalaSimulator, session: aiohttp.ClientSession
) -> None:
    """Every request counts under its raw segment, including faults and auth failures."""
    name = sim.cvm(2)["name"]
    sim.script(1, Fault.HTTP_500)
    for path in ["cvms/1", "cvms/1", f"cvms/{name}", "cvms/paginated"]:
        await fetch(session, sim, path)
    await fetch(session, sim, "cvms/2", headers={})
    assert sim.requests == Counter({"1": 2, name: 1, "paginated": 1, "2": 1})
    assert sim.total_requests == 5
    assert sim.status_counts == Counter({200: 3, 500: 1, 401: 1})


async def test_max_in_flight_measures_server_side_concurrency(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    """Ten concurrent requests under latency are all in flight at once, then none are."""
    simulator = await start_simulator(cvms=10, latency=0.2)
    await asyncio.gather(*(fetch(session, simulator, f"cvms/{i}") for i in simulator.cvm_ids))
    assert (simulator.max_in_flight, simulator.in_flight) == (10, 0)


async def test_reset_counters_starts_from_zero(
    sim: PhalaSimulator, session: aiohttp.ClientSession
) -> None:
    """After reset_counters every counter and the log are empty."""
    await fetch(session, sim, "cvms/1")
    sim.reset_counters()
    assert (sim.requests, sim.total_requests, sim.status_counts) == (Counter(), 0, Counter())
    assert (sim.max_in_flight, sim.request_log) == (0, [])


async def test_request_log_records_headers_without_secrets(
    sim: PhalaSimulator, session: aiohttp.ClientSession
) -> None:
    """The log keeps header names, version and user agent, never the credential values."""
    headers = {**key_header(sim), "X-Phala-Version": "2025-10-28", "User-Agent": "probe/1"}
    await fetch(session, sim, "cvms/4", headers=headers)
    await fetch(session, sim, "cvms/4", headers={"Authorization": "Bearer nope"})
    first, second = sim.request_log
    assert (first.path, first.cvm_key, first.status, first.authenticated) == (
        "/api/v1/cvms/4",
        "4",
        200,
        True,
    )
    assert {"x-api-key", "x-phala-version", "user-agent"} <= first.header_names
    assert (first.phala_version, first.user_agent) == ("2025-10-28", "probe/1")
    assert (second.status, second.authenticated) == (401, False)
    assert sim.api_key not in repr(sim.request_log)
    assert "nope" not in repr(sim.request_log)


# -- listing ------------------------------------------------------------------------------------


async def test_pages_cover_the_workspace_in_id_order(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    """Pages of 3 over 7 CVMs hold 3, 3 and 1 items in id order, then none."""
    simulator = await start_simulator(cvms=7, forbidden=2)
    pages = []
    for page in range(1, 5):
        status, _, body = await fetch(session, simulator, f"cvms/paginated?page={page}&page_size=3")
        assert status == 200
        pages.append(json.loads(body))
    assert [len(page["items"]) for page in pages] == [3, 3, 1, 0]
    assert {(page["total"], page["pages"], page["page_size"]) for page in pages} == {(7, 3, 3)}
    assert [page["page"] for page in pages] == [1, 2, 3, 4]
    names = [item["name"] for page in pages for item in page["items"]]
    assert names == [simulator.cvm(cvm_id)["name"] for cvm_id in simulator.cvm_ids]


async def test_default_page_size_is_30(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    """Without query parameters the list returns the first 30 CVMs."""
    simulator = await start_simulator(cvms=35)
    _, _, body = await fetch(session, simulator, "cvms/paginated")
    listing = json.loads(body)
    assert (len(listing["items"]), listing["page"], listing["page_size"]) == (30, 1, 30)
    assert (listing["total"], listing["pages"]) == (35, 2)


async def test_empty_workspace_lists_nothing(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    """A workspace without CVMs lists no items and zero pages."""
    simulator = await start_simulator(cvms=0)
    status, _, body = await fetch(session, simulator, "cvms/paginated?page_size=100")
    expected = {"items": [], "total": 0, "page": 1, "page_size": 100, "pages": 0}
    assert (status, json.loads(body)) == (200, expected)


@pytest.mark.parametrize(
    ("query", "loc", "kind"),
    [
        ("page_size=101", ["query", "page_size"], "less_than_equal"),
        ("page_size=0", ["query", "page_size"], "greater_than_equal"),
        ("page=0", ["query", "page"], "greater_than_equal"),
        ("page=first", ["query", "page"], "int_parsing"),
    ],
    ids=["page-size-over-100", "page-size-zero", "page-zero", "page-not-integer"],
)
async def test_bad_page_parameters_get_422(
    sim: PhalaSimulator, session: aiohttp.ClientSession, query: str, loc: list[str], kind: str
) -> None:
    """Out-of-range or non-integer paging parameters answer FastAPI's 422 body."""
    status, _, body = await fetch(session, sim, f"cvms/paginated?{query}")
    (error,) = json.loads(body)["detail"]
    assert (status, error["loc"], error["type"]) == (422, loc, kind)
    assert error["msg"]


async def test_list_items_agree_with_details(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    """Each HostedCvm item matches its CVM's detail document."""
    simulator = await start_simulator(cvms=40)
    _, _, body = await fetch(session, simulator, "cvms/paginated?page_size=100")
    for cvm_id, item in zip(simulator.cvm_ids, json.loads(body)["items"], strict=True):
        cvm = simulator.cvm(cvm_id)
        hosted = item["hosted"]
        assert (item["name"], item["status"], item["node"]) == (
            cvm["name"],
            cvm["status"],
            cvm["teepod"],
        )
        assert (hosted["id"], hosted["app_id"], hosted["name"]) == (
            cvm["vm_uuid"],
            cvm["app_id"],
            cvm["name"],
        )
        project = None if cvm["project_id"] is None else f"prj_{cvm['project_id']}"
        assert item["project_id"] == project
        assert isinstance(hosted["uptime"], str)
        assert isinstance(item["public_urls"], list)


async def test_list_ignores_random_faults_but_follows_its_script(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    """Random faults and the rate limit spare the list; script("paginated", ...) does not."""
    simulator = await start_simulator(fault_rate=1.0, faults=["500"], rate_limit=1)
    statuses = [(await fetch(session, simulator, "cvms/paginated"))[0] for _ in range(3)]
    simulator.script("paginated", Fault.HTTP_503)
    scripted, _, _ = await fetch(session, simulator, "cvms/paginated")
    assert (statuses, scripted) == ([200, 200, 200], 503)


# -- configuration and lifecycle ----------------------------------------------------------------


async def test_repr_hides_credentials() -> None:
    """The repr shows the configuration but neither the API key nor the token."""
    simulator = PhalaSimulator(api_key="phak_very_secret", token="tok-very-secret")
    before = repr(simulator)
    async with simulator:
        running = repr(simulator)
    assert "not started" in before
    assert simulator.api_key == "phak_very_secret"
    for text in (before, running):
        assert "very_secret" not in text
        assert "very-secret" not in text


async def test_base_url_exists_only_while_running() -> None:
    """base_url raises before start and after close, and points at /api/v1 while running."""
    simulator = PhalaSimulator()
    with pytest.raises(RuntimeError, match="start"):
        _ = simulator.base_url
    async with simulator:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/v1", simulator.base_url)
    with pytest.raises(RuntimeError):
        _ = simulator.base_url


async def test_starting_twice_is_refused(sim: PhalaSimulator) -> None:
    """A running simulator refuses a second start."""
    with pytest.raises(RuntimeError, match="already running"):
        await sim.start()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"cvms": -1}, "cvms"),
        ({"fault_rate": 1.5}, "fault_rate"),
        ({"fault_rate": 0.1, "faults": []}, "faults"),
        ({"faults": ["teapot"]}, "unknown fault"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"latency": -0.1}, "latency"),
        ({"retry_after": -1}, "retry_after"),
        ({"api_key": ""}, "api_key"),
    ],
    ids=[
        "cvms",
        "fault-rate",
        "no-faults",
        "unknown-fault",
        "rate-limit",
        "latency",
        "retry-after",
        "api-key",
    ],
)
def test_bad_configuration_fails_at_construction(config: dict[str, Any], message: str) -> None:
    """An out-of-range setting raises ValueError naming the setting."""
    with pytest.raises(ValueError, match=message):
        PhalaSimulator(**config)


@pytest.mark.parametrize("kinds", [(), ("teapot",)], ids=["nothing", "unknown"])
def test_script_rejects_bad_kinds(kinds: tuple[str, ...]) -> None:
    """script needs at least one known fault kind."""
    with pytest.raises(ValueError, match="Fault"):
        PhalaSimulator().script(1, *kinds)


def test_cvm_outside_workspace_is_a_key_error() -> None:
    """cvm() only returns documents of workspace CVMs."""
    simulator = PhalaSimulator(cvms=2, forbidden=1)
    with pytest.raises(KeyError):
        simulator.cvm(3)


def test_public_names_are_sorted_and_documented() -> None:
    """`phala_async.testing.__all__` is sorted (as ruff sorts it: constants first) and names
    documented objects of the module."""
    constants = [name for name in testing.__all__ if name.isupper()]
    others = [name for name in testing.__all__ if not name.isupper()]
    assert testing.__all__ == sorted(constants) + sorted(others)
    for name in testing.__all__:
        assert getattr(testing, name).__doc__, name
        assert f"`{name}`" in (testing.__doc__ or ""), name
