"""``sweep``: the ids (arguments, an ids file, or the workspace listing), ``--output`` and
``--resume``, the sweep itself with its progress line and clean stop, what is printed at the end,
and the exit status. The decisions (which status, which words) are plain functions."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable, Container, Iterable
from dataclasses import dataclass, field

from ._cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    Stop,
    UsageError,
    in_option_words,
    make_client,
    plural,
    refused_message,
    run_command,
)
from ._cli_files import OutputFile, Resumed, given_ids, id_key, resume_from
from ._cli_output import RecordWriter, Redactor, print_error, record_writer
from ._cli_progress import ProgressLine, Tally, format_summary, refusal
from ._cli_summary import save_summary, sweep_summary, sweep_why
from ._client import ClientStats, PhalaClient
from ._errors import APIStatusError, DecodeError, PhalaError, subject
from ._listing import CvmListing
from ._models import HostedCvm
from ._models_v2026 import AnyCvm, CvmInfo

__all__ = [
    "AlreadyOk",
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
    client = make_client(args)  # a bad option fails before any file is touched
    output = OutputFile(args.output) if to_file else None
    resumed = resume_from(args.output, args.format) if output and args.resume else None
    if resumed is not None and not args.quiet:
        print(_resuming(resumed), file=sys.stderr)
    stream = sys.stdout if output is None else output.begin(resumed.lines if resumed else ())
    # A resumed file has its CSV header already, unless it was empty.
    writer = record_writer(
        args.format,
        stream,
        redact=redact,
        header=resumed is None or resumed.format is None,
    )
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
    show_progress = shows_progress(args, records_on_stdout=output is None)
    stop = Stop()
    try:
        report = run_command(
            run_sweep(
                client, source, tally=tally, total=total, writer=writer, show_progress=show_progress
            ),
            stop,
        )
    except BaseException:
        if output is not None:
            output.keep()
        raise
    if listing is not None:
        report.bad_entries = listing.errors
    return finish(report, stop, args, redact, output, stale=already_ok.stale())


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
    """130/143 interrupted, 3 the credential refused, 1 an id failed or the sweep ended early,
    0 every id ok."""
    if report.interrupted:
        return stop.exit_status
    if refusal(report.tally, report.failure) is not None:
        return EXIT_REFUSED
    if report.failure is not None or report.tally.failed or report.bad_entries:
        return EXIT_FAILED
    return EXIT_OK


def describe_failure(failure: Exception) -> str:
    """Why the sweep stopped early, in words that read well after ``the sweep stopped early:``."""
    if isinstance(failure, PhalaError):
        reason = in_option_words(str(failure).removeprefix(f"{subject(None)}: "))
        if isinstance(failure, APIStatusError) and failure.cvm_id is None:
            return f"listing the workspace failed with {reason}"
        return reason
    if isinstance(failure, OSError):
        return f"the records could not be written ({failure.strerror or failure})"
    return str(failure)


def file_note(output: OutputFile, *, replaced: bool, failed: int) -> str:
    """Where the records are, and what to run next."""
    if not replaced:
        return (
            f"{output.path} was left as it was; the records so far are in {output.partial}: run "
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
) -> int:
    """Replace ``--output`` if the sweep finished every id (some may have failed), without the
    ``stale`` records of an earlier run; print what happened; return the exit status."""
    status = exit_status(report, stop)
    replaced = False
    if output is not None:
        if status in (EXIT_OK, EXIT_FAILED) and report.failure is None:
            try:
                output.commit(drop=stale)
                replaced = True
            except OSError as exc:
                print_error(f"cannot replace {output.path} ({exc.strerror or exc})")
                status = EXIT_FAILED
        else:
            output.keep()
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
        print(summary, file=sys.stderr)
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
