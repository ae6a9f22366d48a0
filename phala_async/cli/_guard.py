"""When a sweep on the command line should stop before every id is attempted: the first results
say that every other id would fail the same way (404s from a server that is not the API), or
no id got any answer. The decisions are plain functions of the tally and the latest result,
beside the engine's own ``ends_every_call`` (which ends a sweep of an API that never answered
with ``APIUnreachableError``); the sweep's consumer acts on them.
"""

from __future__ import annotations

from phala_async._bulk import CvmResult
from phala_async._errors import NotFoundError, PhalaError
from phala_async._response import BASE_URL_HINT

from ._progress import Tally

__all__ = ["SAME_FAILURE_LIMIT", "WrongBaseURLError", "early_end", "unreached"]

#: Failed ids in a row, before any answer from the API, that end a sweep.
SAME_FAILURE_LIMIT = 3


class WrongBaseURLError(NotFoundError):
    """The first ids all got a 404 that is not the API's: the base URL points at another server
    or path, so every other id would get one too."""


def unreached(tally: Tally) -> bool:
    """Whether no id of the sweep got an HTTP answer though some were asked: the API is down or
    unreachable, and what the sweep wrote says nothing about the CVMs."""
    return tally.answered == 0 and tally.unreached > 0


def early_end(tally: Tally, result: CvmResult, base_url: str) -> PhalaError | None:
    """The error that ends the sweep after ``result`` (already counted in ``tally``), or None.

    Args:
        tally: the sweep so far, ``result`` included.
        result: the latest result.
        base_url: the API prefix the sweep uses, named in the error.

    Returns:
        A :class:`WrongBaseURLError` once :data:`SAME_FAILURE_LIMIT` ids got a 404 that is not
        the API's and none was ok; else None. (An API that never answers ends the sweep in the
        engine, with :class:`APIUnreachableError`.)
    """
    error = result.error
    if error is None:
        return None
    not_the_api = isinstance(error, NotFoundError) and BASE_URL_HINT in error.message
    if not_the_api and tally.ok == 0 and tally.failed["NotFoundError"] >= SAME_FAILURE_LIMIT:
        return WrongBaseURLError(
            f"the first {tally.failed['NotFoundError']} ids got a 404 from a server that is "
            f"not the API at {base_url}: {BASE_URL_HINT}",
            status_code=404,
        )
    return None
