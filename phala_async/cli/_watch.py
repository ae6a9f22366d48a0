"""``watch``: CVMs polled round after round, one line per event as it is seen (a JSON object for
programs, a readable line on a terminal), until Ctrl-C, SIGTERM or ``--rounds``. The lines and the
closing summary are built by plain functions, tested without a server."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

from phala_async._client import PhalaClient
from phala_async._diff import check_field_paths
from phala_async._errors import AuthenticationError, PhalaError, subject
from phala_async._models_v2026 import AnyCvm
from phala_async._watch import CvmEvent, CvmWatch

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    Stop,
    StoppedBySignal,
    UsageError,
    make_client,
    plural,
    refused_message,
    run_command,
)
from ._files import given_ids
from ._output import Redactor, print_error
from ._progress import Tally, refusal
from ._summary import WATCH_KINDS, save_summary, watch_summary, watch_why
from ._sweep import describe_failure

__all__ = [
    "EventWriter",
    "event_json",
    "event_text",
    "format_watch_summary",
    "run_watch",
    "watch_command",
]

# The per-CVM kinds line up; the rare "unavailable" and "available" lines may stick out.
_KIND_WIDTH = max(len(kind) for kind in WATCH_KINDS[:4])


def watch_command(args: argparse.Namespace, redact: Redactor) -> int:
    """Run ``phala-async watch`` and return its exit status."""
    ids = _watched_ids(args)
    fields = None
    if args.fields is not None:  # --fields a,b --fields c: [a, b, c]
        fields = [name for value in args.fields for name in re.split(r"[,\s]+", value) if name]
        check_field_paths(fields)  # a misspelt path exits 2 with a suggestion
    client = make_client(args)
    # An unknown field raises ConfigurationError here, before anything is sent (exit status 2).
    watch = client.watch_cvms(ids, interval=args.interval, fields=fields, initial=args.initial)
    watch.max_rounds = args.rounds
    output_format = args.format or ("text" if sys.stdout.isatty() else "jsonl")
    writer = EventWriter(sys.stdout, output_format, redact=redact)
    seen: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    if sys.stderr.isatty() and not args.quiet:
        what = "the workspace" if ids is None else plural(len(ids), "CVM")
        print(f"Watching {what} every {args.interval:g}s; Ctrl-C stops.", file=sys.stderr)
    started = time.monotonic()
    stop = Stop()

    def summarise(stopped: str | None = None) -> None:
        if not args.quiet:
            elapsed = time.monotonic() - started
            summary = format_watch_summary(seen, watch.rounds, elapsed, stopped=stopped)
            print(summary, file=sys.stderr)

    def ended(status: int, why: str | None = None) -> int:
        if not args.summary_json:
            return status
        elapsed = time.monotonic() - started
        why = redact(watch_why(status, stopped=why, rounds=watch.rounds))
        summary = watch_summary(
            seen, failures, watch.rounds, client.stats, elapsed, exit_status=status, why=why
        )
        return save_summary(args.summary_json, summary, status)

    try:
        run_command(run_watch(client, watch, writer, seen, failures), stop)
    except StoppedBySignal as exc:
        summarise(stopped=f"Interrupted by {stop.name}")
        ended(exc.exit_status, f"interrupted by {stop.name}")
        raise
    except AuthenticationError as exc:  # every later round would be refused too
        why = refusal(Tally(), exc) or f"HTTP {exc.status_code}"
        print_error(refused_message(args, why))
        return ended(EXIT_REFUSED, f"the API refused the credential: {why}")
    except PhalaError as exc:  # a TLS failure: as final as a refusal
        print_error(redact(f"the watch stopped: {describe_failure(exc)}"))
        summarise(stopped="Stopped")
        return ended(EXIT_FAILED, f"stopped: {describe_failure(exc)}")
    except BrokenPipeError:
        raise  # the reader of stdout went away: the command ends quietly
    except OSError as exc:
        print_error(f"the watch stopped: the events could not be written ({exc.strerror or exc})")
        summarise(stopped="Stopped")
        return ended(EXIT_FAILED, "stopped: the events could not be written")
    summarise()
    return ended(EXIT_OK)


def _watched_ids(args: argparse.Namespace) -> list[str] | None:
    """The ids given (arguments and ``--ids-file``), each once; None for ``--all``.

    Raises:
        UsageError: both ids and ``--all``, neither, or an ids file without ids.
    """
    ids = given_ids(args, "watch", "watches")
    if ids is not None and not ids:
        raise UsageError(f"no ids in {args.ids_file}: give one id a line, or use --all")
    return ids


async def run_watch(
    client: PhalaClient[AnyCvm],
    watch: CvmWatch,
    writer: EventWriter,
    seen: Counter[str],
    failures: Counter[str] | None = None,
) -> None:
    """Write every event of ``watch`` as it comes, counting them by kind in ``seen`` (and the
    errors by class in ``failures``), until the watch ends (``max_rounds``) or raises; the
    watch and ``client`` are closed either way, and their requests cancelled when the command
    is stopped."""
    async with client, watch:
        async for event in watch:
            writer.write(event)
            seen[event.kind] += 1
            if failures is not None and event.error is not None:
                failures[type(event.error).__name__] += 1


class _EventError(msgspec.Struct, frozen=True):
    type: str
    message: str


class _EventLine(msgspec.Struct, frozen=True):
    # The documented line: every key always present, in this order (README, ``watch --help``).
    kind: str
    cvm_id: str | int | None
    changes: dict[str, tuple[Any, Any]]
    cvm: AnyCvm | None
    error: _EventError | None
    time: str


def event_json(event: CvmEvent, when: datetime, redact: Redactor) -> str:
    """``event`` as one JSON line (without its newline): ``kind``, ``cvm_id``, ``changes``
    (``{path: [old, new]}``), ``cvm`` (as seen now; as last seen for ``removed``; null for
    ``error``), ``error`` (``{"type", "message"}`` or null) and ``time`` (``when`` in UTC, ISO
    8601 to the millisecond)."""
    error = None
    if event.error is not None:
        error = _EventError(type(event.error).__name__, redact(str(event.error)))
    line = _EventLine(
        kind=event.kind,
        cvm_id=event.cvm_id,
        changes=event.changes,
        cvm=event.after or event.before,
        error=error,
        time=when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )
    return msgspec.json.encode(line).decode()


def event_text(event: CvmEvent, when: datetime, redact: Redactor) -> str:
    """``event`` as a line for people: the local time, the kind, the id, then what happened, as
    in ``12:00:03 changed 1234 status: 'starting' -> 'running'``."""
    if event.kind in ("unavailable", "available"):
        cvm_id = "API"
    else:
        cvm_id = "listing" if event.cvm_id is None else str(event.cvm_id)
    head = f"{when.astimezone():%H:%M:%S} {event.kind.ljust(_KIND_WIDTH)} {cvm_id}"
    if event.kind == "changed":
        what = "; ".join(
            f"{path}: {old!r} -> {new!r}" for path, (old, new) in event.changes.items()
        )
    elif event.error is not None:
        what = str(event.error).removeprefix(f"{subject(event.cvm_id)}: ")
    elif event.kind == "available":
        what = "answers again"
    else:
        cvm = event.after or event.before
        what = "" if cvm is None else f"{cvm.name} ({cvm.status})"
    # One line per event, whatever line breaks the server's text held.
    return redact(" ".join([head, *what.splitlines()]) if what else head)


class EventWriter:
    """Writes each event on its own line in ``output_format`` (``jsonl`` or ``text``) and flushes
    it, so that a reader tailing the stream sees it at once. The stream belongs to the caller."""

    def __init__(self, stream: TextIO, output_format: str, *, redact: Redactor) -> None:
        self._stream = stream
        self._format = event_text if output_format == "text" else event_json
        self._redact = redact

    def write(self, event: CvmEvent) -> None:
        """Write and flush the line of ``event``, stamped with the time now."""
        self._stream.write(self._format(event, datetime.now(UTC), self._redact) + "\n")
        self._stream.flush()


def format_watch_summary(
    seen: Counter[str], rounds: int, elapsed: float, *, stopped: str | None = None
) -> str:
    """The closing line: rounds, wall time and the events by kind. ``stopped`` says how a watch
    that did not end on its own ended (``Interrupted by SIGTERM``)."""
    text = f"{stopped} after" if stopped is not None else "Watched"
    counts = [f"{seen[kind]} {kind}" for kind in WATCH_KINDS[:3]] + [plural(seen["error"], "error")]
    if seen["unavailable"]:  # (a healthy watch keeps the line it always had)
        counts.append(f"the API unavailable {plural(seen['unavailable'], 'time')}")
    return f"{text} {plural(rounds, 'round')} in {elapsed:.1f}s: {', '.join(counts)}."
