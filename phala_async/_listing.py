"""The workspace listing: entries read page by page as iteration asks for more, with the total."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, Self, TypeVar

from ._errors import DecodeError
from ._models import CvmPage

__all__ = ["CvmListing"]

_E = TypeVar("_E", covariant=True)


class CvmListing(AsyncIterator[_E], Generic[_E]):
    """An async iterator of every entry of the workspace, in the API's order: :class:`HostedCvm`
    (``CvmListing[HostedCvm]``), or :class:`CvmInfo` for a client of ``api_version="2026-01-21"``.

    Returned by :meth:`PhalaClient.list_cvms`. A page is fetched only once the one before it is
    used up, so a sweep fed from the listing starts after the first page. An entry that does not
    decode does not stop the listing: it is left out and its error kept in ``errors``.

    Attributes:
        total: CVMs in the workspace, as the last page fetched said; None until the first page
            arrived.
        errors: a :class:`DecodeError` per entry left out so far, naming its page, position and
            whatever id it carries (``cvm_id``).
    """

    def __init__(self, fetch_page: Callable[[int], Awaitable[CvmPage]]) -> None:
        """``fetch_page(n)`` returns page ``n`` (from 1), or raises."""
        self._fetch_page = fetch_page
        self._next_page = 1
        self._entries: deque[_E] = deque()
        self._finished = False
        self.total: int | None = None
        self.errors: list[DecodeError] = []

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> _E:
        while not self._entries:
            if self._finished:
                raise StopAsyncIteration
            number = self._next_page
            # Finished before the request, so that a failed page also ends the listing, as it
            # would end an async generator.
            self._finished = True
            page = await self._fetch_page(number)
            self.total = page.total
            self._entries.extend(page.items)
            self.errors.extend(page.errors)
            self._next_page = number + 1
            empty = not page.items and not page.errors
            self._finished = empty or number >= page.pages
        return self._entries.popleft()

    async def aclose(self) -> None:
        """Stop the listing: no further page is fetched."""
        self._finished = True
        self._entries.clear()
