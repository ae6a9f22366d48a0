"""The workspace listing: entries read page by page as iteration asks for more, with the total."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Self

from ._models import CvmPage, HostedCvm

__all__ = ["CvmListing"]


class CvmListing(AsyncIterator[HostedCvm]):
    """An async iterator of every :class:`HostedCvm` of the workspace, in the API's order.

    Returned by :meth:`PhalaClient.list_cvms`. A page is fetched only once the one before it is
    used up, so a sweep fed from the listing starts after the first page.

    Attributes:
        total: CVMs in the workspace, as the last page fetched said; None until the first page
            arrived.
    """

    def __init__(self, fetch_page: Callable[[int], Awaitable[CvmPage]]) -> None:
        """``fetch_page(n)`` returns page ``n`` (from 1), or raises."""
        self._fetch_page = fetch_page
        self._next_page = 1
        self._entries: deque[HostedCvm] = deque()
        self._finished = False
        self.total: int | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> HostedCvm:
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
            self._next_page = number + 1
            self._finished = not page.items or number >= page.pages
        return self._entries.popleft()

    async def aclose(self) -> None:
        """Stop the listing: no further page is fetched."""
        self._finished = True
        self._entries.clear()
