"""Tests for the exception tree and the pure status-to-exception mapping (``_errors``)."""

from __future__ import annotations

import json
import pickle

import pytest
from multidict import CIMultiDict

from phala_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    DecodeError,
    InternalServerError,
    InvalidCvmIdError,
    NotFoundError,
    PermissionDeniedError,
    PhalaError,
    RateLimitError,
    ResponseError,
    ResponseTooLargeError,
    UnprocessableEntityError,
)
from phala_async._errors import error_for_status

NOT_FOUND_BODY = json.dumps(
    {
        "error_code": "ERR-03-001",
        "message": "CVM not found",
        "details": [{"cvm_id": "app_abc"}],
        "suggestions": ["Check the CVM id, name, app_id, instance_id or VM UUID"],
        "links": [],
    }
).encode()
VALIDATION_BODY = json.dumps(
    {
        "detail": [
            {"loc": ["path", "cvm_id"], "msg": "Invalid CVM identifier", "type": "value_error"}
        ]
    }
).encode()
BAD_GATEWAY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(400, BadRequestError, id="400"),
        pytest.param(401, AuthenticationError, id="401"),
        pytest.param(403, PermissionDeniedError, id="403"),
        pytest.param(404, NotFoundError, id="404"),
        pytest.param(422, UnprocessableEntityError, id="422"),
        pytest.param(429, RateLimitError, id="429"),
        pytest.param(500, InternalServerError, id="500"),
        pytest.param(502, InternalServerError, id="502"),
        pytest.param(503, InternalServerError, id="503"),
        pytest.param(504, InternalServerError, id="504"),
        pytest.param(418, APIStatusError, id="418-unmapped-4xx"),
        pytest.param(301, APIStatusError, id="301-redirect"),
    ],
)
def test_error_for_status_picks_the_class(status: int, expected: type[APIStatusError]) -> None:
    """Each status maps to exactly its documented exception class, carrying the status."""
    error = error_for_status(status, b"", {}, cvm_id=7)
    assert type(error) is expected
    assert error.status_code == status
    assert error.cvm_id == 7


@pytest.mark.parametrize(
    ("body", "detail", "error_code"),
    [
        pytest.param(
            b'{"detail": "CVM not in workspace"}', "CVM not in workspace", None, id="detail"
        ),
        pytest.param(NOT_FOUND_BODY, "CVM not found", "ERR-03-001", id="structured"),
        pytest.param(VALIDATION_BODY, "path.cvm_id: Invalid CVM identifier", None, id="422-list"),
        pytest.param(BAD_GATEWAY_PAGE, None, None, id="html"),
        pytest.param(b"", None, None, id="empty"),
        pytest.param(b"[1, 2]", None, None, id="json-array"),
    ],
)
def test_detail_is_parsed_from_each_body_form(
    body: bytes, detail: str | None, error_code: str | None
) -> None:
    """The server's explanation and error code come from whichever body form it sent."""
    error = error_for_status(404, body, {}, cvm_id="app_abc")
    assert error.detail == detail
    assert error.error_code == error_code


def test_long_detail_is_truncated() -> None:
    """A detail longer than 300 characters is cut, so one error cannot flood a log."""
    body = json.dumps({"detail": "x" * 5000}).encode()
    error = error_for_status(500, body, {}, cvm_id=1)
    assert error.detail == "x" * 300 + "..."


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"detail": "bad \xff byte"}', id="not-utf8"),
        pytest.param(b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="deeply-nested"),
    ],
)
def test_malformed_error_body_still_gives_the_status_error(body: bytes) -> None:
    """An error body that is not valid JSON text gives the status error with no detail."""
    error = error_for_status(502, body, {}, cvm_id=1)
    assert type(error) is InternalServerError
    assert error.detail is None


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Request-ID": "req_0123abcd"}, id="dict"),
        pytest.param(CIMultiDict({"x-request-id": "req_0123abcd"}), id="case-insensitive"),
    ],
)
def test_request_id_comes_from_the_header(headers: dict[str, str]) -> None:
    """The request id is read from ``X-Request-ID`` and quoted in the message."""
    error = error_for_status(404, NOT_FOUND_BODY, headers, cvm_id=1)
    assert error.request_id == "req_0123abcd"
    assert "req_0123abcd" in str(error)


def test_request_id_is_none_without_the_header() -> None:
    """Without ``X-Request-ID`` the request id is None."""
    assert error_for_status(500, b"", {}, cvm_id=1).request_id is None


@pytest.mark.parametrize(
    "cvm_id", [pytest.param(42, id="int"), pytest.param("web-00001", id="str")]
)
def test_message_names_the_id_and_status(cvm_id: str | int) -> None:
    """The message says which CVM, which status and what the server said."""
    message = str(error_for_status(404, NOT_FOUND_BODY, {}, cvm_id=cvm_id))
    assert repr(cvm_id) in message
    assert "404" in message
    assert "CVM not found" in message


def test_redirect_message_says_it_was_not_followed() -> None:
    """A 3xx becomes an error whose detail explains that redirects are not followed."""
    error = error_for_status(302, b"", {"Location": "https://elsewhere.example"}, cvm_id=1)
    assert error.detail is not None
    assert "not followed" in error.detail


def test_retry_after_is_carried() -> None:
    """The already-parsed ``Retry-After`` is kept on the error in seconds."""
    error = error_for_status(429, b"", {}, cvm_id=1, retry_after=2.5)
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 2.5


ERRORS = [
    pytest.param(
        error_for_status(
            429,
            b'{"error_code": "ERR-05-002", "message": "Rate limit exceeded"}',
            {"X-Request-ID": "req_1"},
            cvm_id="app_abc",
            retry_after=3.0,
        ),
        id="rate-limit",
    ),
    pytest.param(error_for_status(404, NOT_FOUND_BODY, {}, cvm_id=5), id="not-found"),
    pytest.param(DecodeError("CVM 1: bad", cvm_id=1, path="$.vcpu"), id="decode"),
    pytest.param(ResponseTooLargeError("CVM 1: big", cvm_id=1, limit=1024), id="too-large"),
    pytest.param(InvalidCvmIdError("../x", "contains '.'"), id="invalid-id"),
    pytest.param(APITimeoutError("CVM 1: slow", cvm_id=1, attempts=3), id="timeout"),
    pytest.param(ClientClosedError(), id="closed"),
    pytest.param(ConfigurationError("timeout must be a number > 0"), id="configuration"),
]


@pytest.mark.parametrize("error", ERRORS)
def test_pickling_round_trip_keeps_attributes(error: PhalaError) -> None:
    """An error survives pickling (e.g. to another process) with its type and attributes."""
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, just made
    assert type(copy) is type(error)
    assert copy.__dict__ == error.__dict__
    assert str(copy) == str(error)


@pytest.mark.parametrize(
    ("attempts", "shown"),
    [
        pytest.param(1, False, id="one"),
        pytest.param(2, True, id="two"),
        pytest.param(5, True, id="five"),
    ],
)
def test_str_shows_attempts_only_after_retries(attempts: int, shown: bool) -> None:
    """``str()`` adds the number of attempts when more than one request was made."""
    error = error_for_status(503, b"", {}, cvm_id=1)
    error.attempts = attempts
    assert (f"after {attempts} attempts" in str(error)) is shown


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        pytest.param(ConfigurationError, (PhalaError, ValueError), id="configuration"),
        pytest.param(InvalidCvmIdError, (PhalaError, ValueError), id="invalid-id"),
        pytest.param(ClientClosedError, (PhalaError,), id="closed"),
        pytest.param(APITimeoutError, (APIConnectionError, PhalaError), id="timeout"),
        pytest.param(RateLimitError, (APIStatusError, PhalaError), id="rate-limit"),
        pytest.param(InternalServerError, (APIStatusError, PhalaError), id="server"),
        pytest.param(DecodeError, (ResponseError, PhalaError), id="decode"),
        pytest.param(ResponseTooLargeError, (ResponseError, PhalaError), id="too-large"),
    ],
)
def test_exception_tree(cls: type[PhalaError], bases: tuple[type[Exception], ...]) -> None:
    """Each exception sits where the documented tree puts it."""
    assert all(issubclass(cls, base) for base in bases)


def test_transport_and_status_branches_are_separate() -> None:
    """Transport failures and status failures are separate branches under PhalaError."""
    assert not issubclass(APIConnectionError, APIStatusError)
    assert not issubclass(APIStatusError, APIConnectionError)
    assert not issubclass(ResponseError, (APIConnectionError, APIStatusError))
