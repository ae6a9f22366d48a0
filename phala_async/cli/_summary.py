"""``--summary-json FILE``: how a ``sweep`` or a ``watch`` ended, as one JSON object a monitor
reads (counts, failures by kind, requests, retries, wall time, the exit status and why).

Every key is always present::

    {"command": "sweep", "exit_status": 1, "why": "2 ids failed", "wall_time_s": 1.234,
     "counts": {"total": 100, "ok": 98, "failed": 2, "skipped": 0},
     "failures": {"NotFoundError": 2}, "requests": 104, "retries": 4,
     "client": {...ClientStats.to_dict()...}}

For a watch, ``counts`` holds ``rounds`` and the events by kind, and ``failures`` the ``error``
and ``unavailable`` events by error class. The file is replaced atomically (a temporary file,
then a rename), so a reader never sees half of it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from phala_async._stats import ClientStats

from ._common import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, plural
from ._output import print_error
from ._progress import Tally

__all__ = [
    "WATCH_KINDS",
    "add_summary_option",
    "save_summary",
    "sweep_summary",
    "sweep_why",
    "watch_summary",
    "watch_why",
    "write_summary",
]

#: The event kinds a watch counts, in the order the summaries list them.
WATCH_KINDS = ("added", "changed", "removed", "error", "unavailable", "available")


def add_summary_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--summary-json FILE`` to a command's parser."""
    parser.add_argument(
        "--summary-json",
        metavar="FILE",
        help="when done, write how it ended to FILE as one JSON object: counts, failures by "
        "kind, requests, retries, wall time, exit status and why",
    )


def _summary(
    command: str,
    *,
    exit_status: int,
    why: str,
    elapsed: float,
    counts: dict[str, int],
    failures: Counter[str],
    stats: ClientStats,
) -> dict[str, Any]:
    return {
        "command": command,
        "exit_status": exit_status,
        "why": why,
        "wall_time_s": round(elapsed, 3),
        "counts": counts,
        "failures": dict(sorted(failures.items())),
        "requests": stats.requests,
        "retries": stats.retries,
        "client": stats.to_dict(),
    }


def sweep_summary(
    tally: Tally, stats: ClientStats, elapsed: float, *, exit_status: int, why: str
) -> dict[str, Any]:
    """The summary of a sweep."""
    counts = {
        "total": tally.total if tally.total is not None else tally.done,
        "ok": tally.ok,
        "failed": tally.failed.total(),
        "skipped": tally.skipped,
    }
    return _summary(
        "sweep",
        exit_status=exit_status,
        why=why,
        elapsed=elapsed,
        counts=counts,
        failures=tally.failed,
        stats=stats,
    )


def watch_summary(
    seen: Counter[str],
    failures: Counter[str],
    rounds: int,
    stats: ClientStats,
    elapsed: float,
    *,
    exit_status: int,
    why: str,
) -> dict[str, Any]:
    """The summary of a watch: ``seen`` counts events by kind, ``failures`` by error class."""
    counts = {"rounds": rounds} | {kind: seen[kind] for kind in WATCH_KINDS}
    return _summary(
        "watch",
        exit_status=exit_status,
        why=why,
        elapsed=elapsed,
        counts=counts,
        failures=failures,
        stats=stats,
    )


def sweep_why(
    exit_status: int,
    *,
    stopped_by: str | None,
    refused: str | None,
    failure: str | None,
    failed: int,
) -> str:
    """Why a sweep ended with ``exit_status``, in a few words."""
    if stopped_by is not None:
        return f"interrupted by {stopped_by}"
    if exit_status == EXIT_REFUSED and refused is not None:
        return f"the API refused the credential: {refused}"
    if failure is not None:
        return f"stopped early: {failure}"
    if failed:
        return f"{plural(failed, 'id')} failed"
    return "every id ok" if exit_status == EXIT_OK else "the records could not be written"


def watch_why(exit_status: int, *, stopped: str | None, rounds: int) -> str:
    """Why a watch ended with ``exit_status``: ``stopped`` says what stopped it, if anything."""
    if stopped is not None:
        return stopped
    if exit_status == EXIT_OK:
        return f"{plural(rounds, 'round')} done"
    return "failed" if exit_status == EXIT_FAILED else f"exit status {exit_status}"


def save_summary(path: str, summary: dict[str, Any], exit_status: int) -> int:
    """Write ``summary`` to ``path`` (:func:`write_summary`) and return the command's exit
    status: ``exit_status``, or 1 if it was 0 and the file could not be written."""
    try:
        write_summary(path, summary)
    except OSError as exc:
        print_error(f"cannot write the summary to {path} ({exc.strerror or exc})")
        return EXIT_FAILED if exit_status == EXIT_OK else exit_status
    return exit_status


def write_summary(path: str | os.PathLike[str], summary: dict[str, Any]) -> None:
    """Write ``summary`` to ``path`` as JSON, replacing it atomically.

    Raises:
        OSError: the file could not be written; ``path`` is then left as it was.
    """
    target = Path(path)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(msgspec.json.format(msgspec.json.encode(summary), indent=2) + b"\n")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
