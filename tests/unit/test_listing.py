"""``CvmListing``: the workspace listing's ``total``, and its paging over a fetch callable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from phala_async._listing import CvmListing
from phala_async._models import CvmPage, HostedCvm, VmInfo


def entry(n: int) -> HostedCvm:
    hosted = VmInfo(id=f"vm{n}", name=f"cvm-{n}", status="running", uptime="1h", app_id=f"{n:040x}")
    return HostedCvm(hosted=hosted, name=f"cvm-{n}", status="running", public_urls=[])


def pages_of(total: int, size: int) -> tuple[list[int], Callable[[int], Awaitable[CvmPage]]]:
    """A fetch callable over ``total`` entries, and the list of page numbers it was asked for."""
    asked: list[int] = []
    pages = max(1, -(-total // size))

    async def fetch(number: int) -> CvmPage:
        asked.append(number)
        first = (number - 1) * size + 1
        items = [entry(n) for n in range(first, min(first + size - 1, total) + 1)]
        return CvmPage(items=items, total=total, page=number, page_size=size, pages=pages)

    return asked, fetch


async def test_total_is_none_until_the_first_page_then_the_page_total() -> None:
    """``total`` is None before iteration and the body's ``total`` from the first entry on."""
    asked, fetch = pages_of(5, 2)
    listing = CvmListing(fetch)
    assert listing.total is None
    first = await anext(listing)
    assert (first.name, listing.total, asked) == ("cvm-1", 5, [1])


async def test_pages_are_fetched_in_order_until_the_last() -> None:
    """5 entries at 2 a page come from pages 1, 2 and 3, each asked for once."""
    asked, fetch = pages_of(5, 2)
    names = [item.name async for item in CvmListing(fetch)]
    assert names == [f"cvm-{n}" for n in range(1, 6)]
    assert asked == [1, 2, 3]


async def test_aclose_stops_further_pages() -> None:
    """After ``aclose`` the listing ends without asking for another page."""
    asked, fetch = pages_of(5, 2)
    listing = CvmListing(fetch)
    await anext(listing)
    await listing.aclose()
    assert [item async for item in listing] == []
    assert asked == [1]
