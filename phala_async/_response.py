"""What an HTTP answer means: a pure function from status, headers and body to a value or an error.

Nothing here does I/O, so every decision (is this a success, is the body JSON, which exception
does this status mean) is tested without a server. ``_http`` moves the bytes; this module judges
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from ._errors import APIStatusError, DecodeError, NotFoundError, error_for_status, subject
from ._retry import parse_retry_after

__all__ = ["Decode", "interpret"]

_T_co = TypeVar("_T_co", covariant=True)

#: What a 404 from something other than the API says: the base URL is probably wrong.
BASE_URL_HINT = "check the base URL: it should end in /api/v1"


class Decode(Protocol[_T_co]):
    """Turns a complete 2xx body into a value, or raises :class:`DecodeError`."""

    def __call__(self, body: bytes, *, cvm_id: str | int | None) -> _T_co: ...


def interpret(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    cvm_id: str | int | None,
    decode: Decode[_T_co],
) -> _T_co:
    """Return the value a complete answer carries, or raise the error it means.

    Args:
        status: the HTTP status.
        headers: the response headers (``Content-Type``, ``Retry-After``, ``X-Request-ID``).
        body: the whole (decompressed) body.
        cvm_id: the id the request was for, as the caller gave it, for messages.
        decode: builds the value from a 2xx body.

    Raises:
        DecodeError: a 2xx answer that is not JSON or not the expected shape.
        APIStatusError: any other status (a subclass per status; redirects are never followed).
    """
    if 200 <= status < 300:
        check_json(headers, cvm_id)
        return decode(body, cvm_id=cvm_id)
    raise status_error(status, headers, body, cvm_id)


def status_error(
    status: int, headers: Mapping[str, str], body: bytes, cvm_id: str | int | None
) -> APIStatusError:
    """The exception a non-2xx answer means, with a hint when it did not come from the API."""
    error = error_for_status(
        status,
        body,
        headers,
        cvm_id=cvm_id,
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )
    if isinstance(error, NotFoundError) and _not_from_the_api(error):
        # The API's 404 for a CVM names it ("CVM not found", ERR-03-001); an HTML page or a bare
        # "Not Found" (a web server's, or FastAPI's for an unknown route) means the request
        # reached some other server or path, most often a base URL without /api/v1.
        error.message = f"{error.message} ({BASE_URL_HINT})"
        error.args = (error.message,)
    return error


def _not_from_the_api(error: APIStatusError) -> bool:
    if error.error_code is not None:
        return False
    return error.detail is None or error.detail.strip().lower() == "not found"


def check_json(headers: Mapping[str, str], cvm_id: str | int | None) -> None:
    """Refuse a 2xx answer whose ``Content-Type`` is not JSON.

    Raises:
        DecodeError: naming the content type that came instead.
    """
    content_type = headers.get("Content-Type", "")
    if content_type == "application/json" or content_type.startswith("application/json;"):
        return  # the API's own answer, checked without splitting it
    media = content_type.partition(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise DecodeError(
            f"{subject(cvm_id)}: expected a JSON body, got Content-Type {content_type[:60]!r}",
            cvm_id=cvm_id,
        )
