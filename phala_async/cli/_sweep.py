"""``sweep``: the ids (arguments, an ids file, or the workspace listing), ``--output`` and
``--resume``, the sweep itself with its progress line and clean stop, what is printed at the end,
and the exit status. The decisions (which status, which words) are plain functions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field

from phala_async._bulk import CvmResult
from phala_async._client import ClientStats, PhalaClient
from phala_async._errors import APIStatusError, DecodeError, PhalaError, subject
from phala_async._listing import CvmListing
from phala_async._models import HostedCvm
from phala_async._models_v2026 import AnyCvm, CvmInfo
from phala_async._store import SnapshotProcess, StoreError, add_line

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_STOPPED,
    Stop,
    UsageError,
    in_option_words,
    make_client,
    masked_command,
    plural,
    refused_message,
    run_command,
)
from ._files import OutputFile, Resumed, given_ids, id_key, resume_from
from ._guard import WrongBaseURLError, early_end, unreached
from ._lock import OutputBusyError, holding
from ._output import (
    JsonLinesWriter,
    NullWriter,
    RecordWriter,
    Redactor,
    json_record,
    print_error,
    record_writer,
)
from ._progress import ProgressLine, Tally, format_summary, refusal
from ._summary import save_summary, sweep_summary, sweep_why

__all__ = [
    "AlreadyOk",
    "StoreRecords",
    "SweepReport",
    "describe_failure",
    "exit_status",
    "file_note",
    "finish",
    "print_outcome",
    "run_sweep",
    "shows_progress",
    "sweep_command",
    "uncancel",
    "workspace_ids",
]

logger = logging.getLogger("phala_async.cli")


@dataclass
class SweepReport:
    """How a sweep ended.

    Attributes:
        tally: what it did.
        stats: the client's counters (retries, 429 answers).
        elapsed: wall time, in seconds.
        interrupted: stopped by Ctrl-C or SIGTERM.
        failure: what ended it before every id was done (a listing page that failed, a refused
            credential, records that could not be written), if anything did.
        bad_entries: listing entries that did not decode (``--all``): left out, each reported,
            and the exit status 1; the sweep went on without them.
    """

    tally: Tally
    stats: ClientStats
    elapsed: float
    interrupted: bool = False
    failure: Exception | None = None
    bad_entries: list[DecodeError] = field(default_factory=list)


def sweep_command(args: argparse.Namespace, redact: Redactor) -> int:
    """Run ``phala-async sweep`` and return its exit status."""
    ids = given_ids(args, "sweep", "sweeps")
    to_file = args.output not in (None, "-")
    if args.resume and not to_file:
        raise UsageError("--resume continues the sweep written to -o FILE: give that FILE")
    if args.resume and args.format == "table":
        raise UsageError("--resume reads back jsonl or csv records, not a table")
    if args.store is not None and args.resume and args.format != "jsonl":
        raise UsageError("--store with --resume reads back JSON lines: pass --format jsonl")
    client = make_client(args)  # a bad option fails before any file is touched
    command = masked_command(getattr(args, "argv", None))
    with contextlib.ExitStack() as held:
        for path, what in ((args.output if to_file else None, "--output"), (args.store, "--store")):
            if path is None:
                continue
            try:
                held.enter_context(holding(path, what, command))
            except OutputBusyError as exc:
                print_error(redact(str(exc)))
                return EXIT_STOPPED
            except OSError as exc:
                raise UsageError(
                    f"cannot write {what} {path!r} ({exc.strerror or exc}): pick a writable path"
                ) from exc
        output = OutputFile(args.output) if to_file else None
        resumed = resume_from(args.output, args.format) if output and args.resume else None
        store = _open_store(args.store, command) if args.store is not None else None
        try:
            return _sweep(args, redact, client, ids, output, resumed, store)
        except BaseException:
            if output is not None:
                output.keep()
            if store is not None:
                store.abandon()
            raise


def _sweep(
    args: argparse.Namespace,
    redact: Redactor,
    client: PhalaClient[AnyCvm],
    ids: list[str] | None,
    output: OutputFile | None,
    resumed: Resumed | None,
    store: SnapshotProcess | None,
) -> int:
    """The sweep itself, its outputs locked; on an exception the caller keeps FILE and abandons
    the snapshot."""
    if resumed is not None and not args.quiet:
        print(_resuming(resumed), file=sys.stderr)
    kept = resumed.lines if resumed else iter(())
    if store is not None and resumed is not None and resumed.format is not None:
        kept = _recorded(kept, store)
    if output is not None:
        stream = output.begin(kept)
    elif store is not None and args.output is None:
        stream = None  # --store alone: the records go to the store only
    else:
        stream = sys.stdout
    # A resumed file has its CSV header already, unless it was empty.
    writer: RecordWriter = (
        NullWriter()
        if stream is None
        else record_writer(
            args.format, stream, redact=redact, header=resumed is None or resumed.format is None
        )
    )
    if store is not None:
        writer = StoreRecords(store, writer, redact)
    tally = Tally()
    already_ok = AlreadyOk(resumed.done if resumed is not None else frozenset(), tally)
    total: Callable[[], int | None] | None = None
    listing = None
    if ids is None:  # --all
        listing = client.list_cvms()
        source: Iterable[str] | AsyncIterator[str] = workspace_ids(listing, skip=already_ok)
        total = lambda: listing.total  # noqa: E731 - read as pages arrive
    else:
        source = [cvm_id for cvm_id in ids if cvm_id not in already_ok]
        tally.total = len(ids)
    show_progress = shows_progress(args, records_on_stdout=stream is sys.stdout)
    stop = Stop()
    report = run_command(
        run_sweep(
            client, source, tally=tally, total=total, writer=writer, show_progress=show_progress
        ),
        stop,
    )
    if listing is not None:
        report.bad_entries = listing.errors
    return finish(report, stop, args, redact, output, stale=already_ok.stale(), store=store)


def _open_store(path: str, command: str) -> SnapshotProcess:
    try:
        return SnapshotProcess(path, command).open()
    except StoreError as exc:
        raise UsageError(str(exc)) from exc


def _recorded(lines: Iterator[str], store: SnapshotProcess) -> Iterator[str]:
    """``lines`` as they are, each record among them also queued for the store."""
    for line in lines:
        if line.lstrip().startswith("{"):
            add_line(store, line)
        yield line


class StoreRecords:
    """A :class:`RecordWriter` that queues each record for a store's snapshot, then hands the
    result to the next writer (the output's)."""

    def __init__(self, store: SnapshotProcess, then: RecordWriter, redact: Redactor) -> None:
        self._store = store
        self._then = then
        self._redact = redact

    def write(self, result: CvmResult) -> None:
        """Queue the record of ``result``, then write it with the next writer."""
        encoded = json_record(result, self._redact)
        cvm = result.cvm
        cvm_id = str(result.cvm_id)
        if cvm is None:
            self._store.add_record((encoded, cvm_id, False, id_key(cvm_id), None, None))
        else:
            # The CVM's identity, as record_identity gives it: an integer id is its own
            # normalised form.
            identity = str(cvm.id) if type(cvm.id) is int else id_key(str(cvm.id))
            self._store.add_record((encoded, cvm_id, True, identity, cvm.vm_uuid, cvm.name))
        if isinstance(self._then, JsonLinesWriter):
            self._then.write_line(encoded.decode())  # encoded once
        else:
            self._then.write(result)


def shows_progress(args: argparse.Namespace, *, records_on_stdout: bool) -> bool:
    """Whether to draw the progress line: on a terminal, unless ``--quiet``, or the records go to
    the same terminal (they scroll by and are the progress themselves; a line redrawn under each
    of them would double what the terminal draws, and flicker)."""
    records_on_terminal = records_on_stdout and sys.stdout.isatty()
    return sys.stderr.isatty() and not args.quiet and not records_on_terminal


def _resuming(resumed: Resumed) -> str:
    text = (
        f"Resuming from {resumed.source}: {plural(len(resumed.done), 'id')} already ok, "
        f"{plural(resumed.retried, 'failed id')} to retry"
    )
    if resumed.torn:
        text += "; its last line was cut short and is dropped"
    return text + "."


class AlreadyOk:
    """The ids a resumed sweep does not fetch again: ``cvm_id in already_ok`` says so, and counts
    it in ``tally.skipped``."""

    def __init__(self, done: frozenset[str], tally: Tally) -> None:
        self._done = done
        self._met: set[str] = set()
        self._tally = tally

    def __contains__(self, cvm_id: object) -> bool:
        if not self._done or not isinstance(cvm_id, str):
            return False
        key = id_key(cvm_id)
        if key not in self._done:
            return False
        if key not in self._met:
            self._met.add(key)
            self._tally.skipped += 1
        return True

    def stale(self) -> frozenset[str]:
        """Keys of the earlier records this sweep did not meet (a CVM deleted since, an id no
        longer given): not part of the sweep, so not of its FILE."""
        return self._done - self._met


async def workspace_ids(
    listing: CvmListing[HostedCvm | CvmInfo], *, skip: Container[str] = ()
) -> AsyncIterator[str]:
    """Every CVM id of the workspace, each once, read page by page as the sweep asks for more;
    those in ``skip`` left out."""
    # By the entry's own cvm_id only: the instances of one app are different CVMs.
    seen: set[str] = set()
    async for entry in listing:
        cvm_id = entry.cvm_id
        if cvm_id in seen:
            continue
        seen.add(cvm_id)
        if cvm_id not in skip:
            yield cvm_id


async def run_sweep(
    client: PhalaClient[AnyCvm],
    ids: Iterable[str] | AsyncIterator[str],
    *,
    tally: Tally,
    writer: RecordWriter,
    show_progress: bool,
    total: Callable[[], int | None] | None = None,
) -> SweepReport:
    """Fetch every id with ``client`` (closed at the end), writing each record as it completes.

    Cancellation (Ctrl-C, SIGTERM) stops the sweep cleanly and is reported, not raised, so that
    the caller can print the summary: every completed record has been written by then. ``total``
    gives ``tally.total`` once it is known (the workspace listing's, after its first page).
    """
    progress = ProgressLine(sys.stderr, tally, client) if show_progress else None
    interrupted = False
    failure: Exception | None = None
    async with client:
        logger.info("sweeping with %r", client)
        if progress is not None:
            progress.start()
        try:
            async with client.stream_cvms(ids) as results:
                async for result in results:
                    writer.write(result)
                    tally.add(result)
                    if tally.total is None and total is not None:
                        tally.total = total()
                    failure = early_end(tally, result, client.base_url)
                    if failure is not None:
                        break  # leaving the block stops the stream and its requests
        except asyncio.CancelledError:
            uncancel()  # the stream is closed; finish normally so the summary gets printed
            interrupted = True
        except BrokenPipeError:
            raise  # the reader of stdout went away: the command ends quietly
        except (PhalaError, OSError) as exc:
            failure = exc
        finally:
            if progress is not None:
                await progress.stop()
    return SweepReport(tally, client.stats, tally.elapsed(), interrupted, failure)


def uncancel() -> None:
    """Take back the cancellation of the current task, once it has been handled."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


# -- the outcome ----------------------------------------------------------------------------------


def exit_status(report: SweepReport, stop: Stop) -> int:
    """130/143 interrupted, 3 the credential refused, 4 the sweep stopped before every id was
    attempted or no id got an answer from the API, 1 an id failed, 0 every id ok."""
    if report.interrupted:
        return stop.exit_status
    if refusal(report.tally, report.failure) is not None:
        return EXIT_REFUSED
    if report.failure is not None or unreached(report.tally):
        return EXIT_STOPPED
    if report.tally.failed or report.bad_entries:
        return EXIT_FAILED
    return EXIT_OK


def describe_failure(failure: Exception) -> str:
    """Why the sweep stopped early, in words that read well after ``the sweep stopped early:``."""
    if isinstance(failure, PhalaError):
        reason = in_option_words(str(failure).removeprefix(f"{subject(None)}: "))
        listing = not isinstance(failure, WrongBaseURLError)
        if isinstance(failure, APIStatusError) and failure.cvm_id is None and listing:
            return f"listing the workspace failed with {reason}"
        return reason
    if isinstance(failure, OSError):
        return f"the records could not be written ({failure.strerror or failure})"
    return str(failure)


def file_note(output: OutputFile, *, replaced: bool, failed: int) -> str:
    """Where the records are, and what to run next."""
    if not replaced:
        untouched = "was left as it was" if os.path.exists(output.path) else "was not written"
        return (
            f"{output.path} {untouched}; the records so far are in {output.partial}: run "
            f"the same command with --resume to continue."
        )
    if failed:
        return (
            f"The records are in {output.path}; add --resume to the same command to retry the "
            f"{plural(failed, 'failed id')}."
        )
    return f"The records are in {output.path}."


def finish(
    report: SweepReport,
    stop: Stop,
    args: argparse.Namespace,
    redact: Redactor,
    output: OutputFile | None,
    *,
    stale: frozenset[str] = frozenset(),
    store: SnapshotProcess | None = None,
) -> int:
    """Replace ``--output`` and record the ``--store`` snapshot if the sweep finished every id
    (some may have failed), without the ``stale`` records of an earlier run; print what
    happened; return the exit status."""
    status = exit_status(report, stop)
    finished = status in (EXIT_OK, EXIT_FAILED)
    replaced = False
    if output is not None:
        if finished:
            try:
                output.commit(drop=stale)
                replaced = True
            except OSError as exc:
                print_error(f"cannot replace {output.path} ({exc.strerror or exc})")
                status = EXIT_FAILED
        else:
            output.keep()
    snapshot = _record_snapshot(store, report, status) if store is not None and finished else None
    if store is not None and snapshot is None:
        store.abandon()
    print_outcome(report, args, redact)
    if not args.quiet:
        summary = format_summary(
            report.tally,
            report.stats,
            report.elapsed,
            stopped=_stopped(report, stop),
        )
        if output is not None:
            summary += " " + file_note(
                output, replaced=replaced, failed=report.tally.failed.total()
            )
        if store is not None:
            summary += (
                f" Recorded as snapshot {snapshot} in {store.path}."
                if snapshot is not None
                else f" Nothing was recorded in {store.path}."
            )
        print(summary, file=sys.stderr)
    if store is not None and snapshot is None and finished:
        status = EXIT_FAILED
    if getattr(args, "summary_json", None):  # (not an option of demo)
        why = sweep_why(
            status,
            stopped_by=stop.name if report.interrupted else None,
            refused=refusal(report.tally, report.failure),
            failure=None if report.failure is None else describe_failure(report.failure),
            failed=report.tally.failed.total(),
        )
        summary_json = sweep_summary(
            report.tally, report.stats, report.elapsed, exit_status=status, why=redact(why)
        )
        status = save_summary(args.summary_json, summary_json, status)
    return status


def _record_snapshot(store: SnapshotProcess, report: SweepReport, status: int) -> int | None:
    tally = report.tally
    try:
        return store.commit(
            status, ids=tally.done, ok=tally.ok + tally.skipped, failed=tally.failed.total()
        )
    except StoreError as exc:
        print_error(str(exc))
        return None


def _stopped(report: SweepReport, stop: Stop) -> str | None:
    if report.interrupted:
        return f"Interrupted by {stop.name}"
    return None if report.failure is None else "Stopped early"


def print_outcome(report: SweepReport, args: argparse.Namespace, redact: Redactor) -> None:
    """Print why the sweep stopped early, or that the credential was refused, on one line."""
    for entry in report.bad_entries:
        print_error(redact(str(entry)))
    if report.interrupted:
        return
    why = refusal(report.tally, report.failure)
    if why is not None:
        print_error(refused_message(args, why))
    elif report.failure is not None:
        print_error(redact(f"the sweep stopped early: {describe_failure(report.failure)}"))
