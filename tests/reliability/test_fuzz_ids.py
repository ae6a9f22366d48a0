"""Fuzzed ids: whatever is passed as an id is refused before sending or reaches the server as
exactly one safe path segment, the normalised id."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phala_async import InvalidCvmIdError, NotFoundError, PhalaClient, normalize_cvm_id

_T = TypeVar("_T")
PREFIX = "/api/v1/cvms/"
SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,128}", re.ASCII)
EXAMPLES = 2_000

# Pieces that change a URL's meaning, or look like safe characters without being ASCII.
ADVERSARIAL_PIECES = [
    *"/?#%.\\ \n\t\r\x00é@:;=&+~*'\"<>|{}[]^`",
    "..",
    "%2F",
    "%2f",
    "%2e%2e",
    "%00",
    "../",
    "./",
    "//",
    "\r\n",
    "app_",
    "a",
    "Z",
    "7",
    "_",
    "-",
    "\u212a",  # KELVIN SIGN: lower-cases to ASCII "k"
    "\u0131",  # dotless i: upper-cases to ASCII "I"
    "\u0663",  # ARABIC-INDIC DIGIT THREE: isdigit() but not ASCII
    "\uff10",  # FULLWIDTH DIGIT ZERO
    "\u200b",  # ZERO WIDTH SPACE
    "\ufeff",  # BYTE ORDER MARK
]
HEX = "0123456789abcdefABCDEF"

IDS = st.one_of(
    st.text(),
    st.integers(),
    st.lists(st.sampled_from(ADVERSARIAL_PIECES), max_size=12).map("".join),
    st.from_regex(r"[A-Za-z0-9_-]{1,140}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True).map(lambda text: text + "\n"),
    st.uuids().map(str),
    st.uuids(version=4).map(lambda value: value.hex.upper()),
    st.text(HEX, min_size=39, max_size=41),
    st.text(HEX, min_size=40, max_size=40).map(lambda text: "app_" + text),
    st.integers(min_value=10**125, max_value=10**130),
    st.integers(min_value=10**5000, max_value=10**5000 + 10**6),  # str() of these raises
    st.none(),
    st.booleans(),
    st.floats(),
    st.binary(max_size=8),
)


class Recorder:
    """A local server recording each request's raw path, and a client pointed at it, on a loop
    of their own so that hypothesis can drive them from a plain function."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.raw_paths: list[str] = []
        self._runner: web.AppRunner | None = None
        self.client: PhalaClient | None = None

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return self.loop.run_until_complete(coroutine)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._record)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.client = PhalaClient(
            api_key="phak_fuzz", base_url=f"http://127.0.0.1:{port}/api/v1", timeout=5.0
        )

    async def _record(self, request: web.Request) -> web.Response:
        self.raw_paths.append(request.raw_path)
        return web.json_response({"detail": "CVM not found"}, status=404)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self._runner is not None:
            await self._runner.cleanup()

    async def outcome(self, value: object) -> BaseException:
        assert self.client is not None
        try:
            await self.client.get_cvm(value)  # type: ignore[arg-type]  # fuzzing the type too
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test inspects
            return exc
        raise AssertionError(f"the recorder answers 404, yet {value!r} returned a CVM")


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    """One recording server and client for the whole module, on their own event loop."""
    recorder = Recorder()
    try:
        recorder.run(recorder.start())
        yield recorder
    finally:
        recorder.run(recorder.close())
        recorder.loop.close()


def test_fuzzed_ids_are_refused_or_sent_as_one_normalised_segment(recorder: Recorder) -> None:
    """Each fuzzed id raises InvalidCvmIdError with nothing sent, or reaches the server as one
    request for ``/api/v1/cvms/<normalised id>``."""
    counts = {"rejected": 0, "sent": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(value=IDS)
    def check(value: object) -> None:
        try:
            expected: str | None = normalize_cvm_id(value)
        except InvalidCvmIdError:
            expected = None
        before = len(recorder.raw_paths)
        error = recorder.run(recorder.outcome(value))
        sent = recorder.raw_paths[before:]
        if isinstance(error, InvalidCvmIdError):
            assert expected is None
            assert sent == []
            assert error.attempts == 0
            counts["rejected"] += 1
            return
        assert isinstance(error, NotFoundError), repr(error)
        assert expected is not None
        assert sent == [PREFIX + expected]
        assert SAFE_SEGMENT.fullmatch(sent[0].removeprefix(PREFIX))
        assert error.cvm_id == value
        counts["sent"] += 1

    check()
    examples = counts["rejected"] + counts["sent"]
    print(
        f"\nfuzzed ids: {examples} examples, {counts['rejected']} refused with nothing sent, "
        f"{counts['sent']} sent as one segment ({len(recorder.raw_paths)} requests in all)"
    )
    assert examples >= EXAMPLES
    assert counts["rejected"] > 0
    assert counts["sent"] > 0
    assert len(recorder.raw_paths) == counts["sent"]
