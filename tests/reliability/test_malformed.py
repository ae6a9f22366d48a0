"""Malformed answers: each ends in the documented ``PhalaError`` subclass naming the id, through
``get_cvm`` and through a sweep, and no aiohttp, msgspec, json or asyncio exception escapes."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from phala_async import (
    APIConnectionError,
    APIStatusError,
    DecodeError,
    InternalServerError,
    NotFoundError,
    PhalaClient,
    PhalaError,
    RateLimitError,
    ResponseTooLargeError,
)
from phala_async.testing import PhalaSimulator

# The client's max_response_bytes in this module: small, so that bodies over it are cheap to send.
CAP = 64 * 1024
HUGE = 4 * CAP
BOMB = 64 * CAP  # decoded size of the compression bombs: 4 MiB of spaces, a few KiB on the wire
NESTING = 5_000  # deeper than the JSON decoder recurses (Python's limit is 1,000), 10 KB of text
OTHER_ORIGIN = "http://127.0.0.1:9/api/v1/cvms/1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _document() -> dict[str, Any]:
    """A valid CVM document, as the simulator serves it."""
    return PhalaSimulator(cvms=1).cvm(1)


_MISSING = object()


def _with(**changes: Any) -> bytes:
    """A valid CVM document with fields changed, or removed where the value is ``_MISSING``."""
    document = _document()
    for key, value in changes.items():
        if value is _MISSING:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document).encode()


VALID = json.dumps(_document()).encode()


def _answer(
    body: bytes, status: int = 200, content_type: str = "application/json", **headers: str
) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.Response(status=status, body=body, headers=headers)
        if body or status != 204:
            response.content_type = content_type
        return response

    return handle


def _chunked(body: bytes) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 8192):
            await response.write(body[start : start + 8192])
        await response.write_eof()
        return response

    return handle


class _HungUp(web.Response):
    """Returned once the handler wrote its own bytes and closed the connection."""


def _raw(data: bytes) -> Handler:
    """Write ``data`` as the whole answer, bypassing aiohttp's response writer, then hang up."""

    async def handle(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        transport.write(data)
        transport.close()
        return _HungUp()

    return handle


def _cut(body: bytes) -> Handler:
    """Announce the whole body, send half of it, hang up."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    return handle


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data, 9)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# kind -> (how the server answers, the error the client must raise)
MALFORMED: dict[str, tuple[Handler, type[PhalaError]]] = {
    "empty_body_200": (_answer(b""), DecodeError),
    "html_page_200": (_answer(b"<html><body>Welcome</body></html>", 200, "text/html"), DecodeError),
    "html_page_502": (
        _answer(b"<html>502 Bad Gateway</html>", 502, "text/html"),
        InternalServerError,
    ),
    "html_page_404": (_answer(b"<html>Not Found</html>", 404, "text/html"), NotFoundError),
    "invalid_json": (_answer(b'{"id": 1, "name": '), DecodeError),
    "invalid_utf8": (_answer(b'{"id": 1, "name": "\xff\xfe"}'), DecodeError),
    "invalid_utf8_error_503": (_answer(b'{"detail": "\xff\xfe"}', 503), InternalServerError),
    "json_array": (_answer(b"[" + VALID + b"]"), DecodeError),
    "json_string": (_answer(json.dumps(VALID.decode()).encode()), DecodeError),
    "json_null": (_answer(b"null"), DecodeError),
    "wrong_types": (_answer(_with(id="seven", vcpu="2")), DecodeError),
    "missing_required": (_answer(_with(name=_MISSING)), DecodeError),
    "null_in_required": (_answer(_with(app_id=None)), DecodeError),
    "nested_wrong_type": (
        _answer(_with(teepod={"id": "3", "name": "prod5", "region_identifier": None})),
        DecodeError,
    ),
    "float_for_int": (_answer(_with(vcpu=1.5)), DecodeError),
    "integer_too_long": (
        _answer(VALID.replace(b'"id": 1,', b'"id": ' + b"9" * 5000 + b",")),
        DecodeError,
    ),
    "deeply_nested_json_200": (
        _answer(VALID[:-1] + b', "extra": ' + _nested(NESTING) + b"}"),
        DecodeError,
    ),
    "deeply_nested_error_500": (
        _answer(b'{"detail": ' + _nested(NESTING) + b"}", 500),
        InternalServerError,
    ),
    "wrong_content_type": (_answer(VALID, 200, "text/plain"), DecodeError),
    "no_content_type": (
        _raw(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(VALID) + VALID),
        DecodeError,
    ),
    "huge_with_length": (_answer(b" " * HUGE + VALID), ResponseTooLargeError),
    "huge_chunked": (_chunked(b" " * HUGE + VALID), ResponseTooLargeError),
    "huge_until_close": (
        _raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
            + b" " * HUGE
        ),
        ResponseTooLargeError,
    ),
    # A shorter Content-Length than the bytes sent: the rest is garbage where the next answer
    # should start, a broken connection.
    "length_lies_small": (
        _raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"
            + VALID
        ),
        APIConnectionError,
    ),
    "gzip_not_gzip": (_answer(VALID, **{"Content-Encoding": "gzip"}), DecodeError),
    "deflate_not_deflate": (
        _answer(b"\x00\x01garbage", **{"Content-Encoding": "deflate"}),
        DecodeError,
    ),
    "gzip_bomb": (
        _answer(gzip.compress(b" " * BOMB), **{"Content-Encoding": "gzip"}),
        ResponseTooLargeError,
    ),
    "deflate_bomb": (
        _answer(_deflate(b" " * BOMB), **{"Content-Encoding": "deflate"}),
        ResponseTooLargeError,
    ),
    "unknown_encoding": (
        _answer(_deflate(VALID), **{"Content-Encoding": "x-unheard-of"}),
        DecodeError,
    ),
    # An encoding the client never offered (aiohttp offers br only with Brotli installed) is
    # refused by aiohttp's parser as a protocol error, like a bad status line.
    "brotli_never_offered": (
        _answer(b"\x00\x01garbage", **{"Content-Encoding": "br"}),
        APIConnectionError,
    ),
    "cut_midway": (_cut(VALID), APIConnectionError),
    "redirect_other_origin": (_answer(b"", 302, Location=OTHER_ORIGIN), APIStatusError),
    "no_content_204": (_answer(b"", 204), DecodeError),
    "unknown_status_599": (_answer(b'{"detail": "?"}', 599), InternalServerError),
    "status_299": (_answer(b"", 299), DecodeError),
    "retry_after_garbage_429": (_answer(b"{}", 429, **{"Retry-After": "soon"}), RateLimitError),
    "not_http": (_raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"), APIConnectionError),
    # Headers larger than aiohttp reads: final, since asking again gets the same headers.
    "header_line_too_long": (
        _raw(b"HTTP/1.1 200 OK\r\nX-Junk: " + b"j" * 200_000 + b"\r\n\r\n"),
        ResponseTooLargeError,
    ),
}


@pytest.fixture
async def client() -> AsyncIterator[PhalaClient]:
    """A client with a small body cap and one fast retry, against a server answering
    ``/cvms/<kind>`` with that kind of malformed answer."""
    app = web.Application()
    for kind, (handler, _) in MALFORMED.items():
        app.router.add_get(f"/api/v1/cvms/{kind}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    made = PhalaClient(
        api_key="phak_malformed",
        base_url=f"http://127.0.0.1:{port}/api/v1",
        timeout=5.0,
        max_attempts=2,
        backoff_initial=0.001,
        backoff_max=0.002,
        max_response_bytes=CAP,
    )
    try:
        yield made
    finally:
        await made.aclose()
        await runner.cleanup()


def _check(error: BaseException | None, kind: str) -> None:
    expected = MALFORMED[kind][1]
    assert isinstance(error, PhalaError), f"{kind}: {type(error).__module__}.{error!r} escaped"
    assert type(error).__module__.startswith("phala_async")
    assert type(error) is expected, f"{kind}: {error!r}"
    assert error.cvm_id == kind
    if kind == "nested_wrong_type":
        assert isinstance(error, DecodeError)
        assert error.path == "$.teepod.id"
    if kind == "redirect_other_origin":
        assert isinstance(error, APIStatusError)
        assert error.status_code == 302


def test_the_table_has_at_least_fifteen_kinds() -> None:
    """The suite covers fifteen kinds of malformed answer at least."""
    print(f"\nmalformed: {len(MALFORMED)} kinds")
    assert len(MALFORMED) >= 15


@pytest.mark.parametrize("kind", list(MALFORMED))
async def test_get_cvm_raises_the_documented_error(client: PhalaClient, kind: str) -> None:
    """``get_cvm`` on a malformed answer raises the documented PhalaError subclass naming the id."""
    error: BaseException | None = None
    try:
        await client.get_cvm(kind)
    except BaseException as exc:  # noqa: BLE001 - whatever escapes is what the test checks
        error = exc
    _check(error, kind)


@pytest.mark.parametrize("kind", list(MALFORMED))
async def test_sweep_reports_the_documented_error(client: PhalaClient, kind: str) -> None:
    """A sweep over a malformed answer reports the documented PhalaError subclass naming the id
    as the result's error."""
    error: BaseException | None = None
    results = []
    try:
        async with client.stream_cvms([kind]) as stream:
            results = [result async for result in stream]
    except BaseException as exc:  # noqa: BLE001 - whatever escapes is what the test checks
        error = exc
    assert error is None, f"{kind}: the sweep itself raised {type(error).__module__}.{error!r}"
    assert [result.cvm_id for result in results] == [kind]
    _check(results[0].error, kind)
