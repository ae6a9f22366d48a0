"""Files the command line reads and writes: ids files, sweep outputs read back (to resume a sweep or
to compare two), and the ``--output`` file, replaced only once a sweep has finished every id."""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import shutil
import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import NamedTuple, TextIO

import msgspec

from phala_async._ids import id_key

from ._common import PROG, UsageError
from ._output import CSV_COLUMNS

__all__ = [
    "CSV_HEADER",
    "ID_COLUMN_NAMES",
    "OutputFile",
    "RecordFile",
    "Resumed",
    "StoredRecord",
    "distinct_ids",
    "given_ids",
    "id_key",
    "newest_records",
    "parse_ids",
    "read_ids_file",
    "resume_from",
]

#: The first line of a CSV sweep output.
CSV_HEADER = ",".join(CSV_COLUMNS)
_OK_COLUMN = CSV_COLUMNS.index("ok")


def distinct_ids(given: Iterable[str]) -> list[str]:
    """The ids to sweep, in order, each once: two forms of one id (``app_<hex>`` and the bare hex)
    count once; an invalid id is kept, to be reported as a failed record."""
    distinct: dict[str, str] = {}
    for raw in given:
        distinct.setdefault(id_key(raw), raw)
    return list(distinct.values())


def given_ids(args: argparse.Namespace, verb: str, does: str) -> list[str] | None:
    """The ids a command was given (arguments and ``--ids-file``), each once; None for ``--all``.

    Args:
        args: the parsed command line, with ``ids``, ``ids_file`` and ``all``.
        verb: what the command does to them, for the messages (``sweep``, ``watch``).
        does: the same verb after ``--all`` (``sweeps``, ``watches``).

    Raises:
        UsageError: both ids and ``--all``, or neither; an ids file that cannot be read.
    """
    if args.all and (args.ids or args.ids_file):
        raise UsageError(f"--all {does} the whole workspace: give it no ids and no --ids-file")
    if args.all:
        return None
    if not (args.ids or args.ids_file):
        raise UsageError(f"nothing to {verb}: give ids, --ids-file FILE ('-' for stdin), or --all")
    return distinct_ids(args.ids + (read_ids_file(args.ids_file) if args.ids_file else []))


#: A first line that names the column rather than holding an id (``cut -d, -f1 list.csv``).
ID_COLUMN_NAMES = frozenset({"cvm_id", "id"})


def parse_ids(text: str, source: str = "the ids") -> list[str]:
    """The ids of an ids file: one a line, stripped; blank lines and ``#`` comments skipped (an id
    never holds ``#``, so a comment may also end a line). A first line that is exactly a column
    name of :data:`ID_COLUMN_NAMES` is a CSV header, not an id, and is skipped.

    Raises:
        UsageError: the text is a sweep output (JSON records, or the CSV header ``sweep``
            writes), not a list of ids; ``source`` names it in the message.
    """
    ids = [line.partition("#")[0].strip() for line in text.splitlines()]
    ids = [cvm_id for cvm_id in ids if cvm_id]
    if ids and (ids[0].startswith("{") or ids[0] == CSV_HEADER):
        raise UsageError(
            f"{source} is a sweep output, not a list of ids: to continue that sweep, run it again "
            f"with -o on that file and --resume; to sweep its ids again, take them out first, "
            f"e.g. jq -r .cvm_id FILE | {PROG} sweep --ids-file -"
        )
    if ids and ids[0] in ID_COLUMN_NAMES:
        del ids[0]
    return ids


def read_ids_file(path: str) -> list[str]:
    """The ids of the file at ``path`` (``-``: stdin), read whole before the sweep: the total is
    then known, and an unreadable file fails at once.

    Raises:
        UsageError: the file cannot be read or is not UTF-8 text.
    """
    try:
        if path == "-":
            return parse_ids(sys.stdin.read(), "the ids on stdin")
        with open(path, encoding="utf-8-sig") as file:
            return parse_ids(file.read(), f"the ids file {path!r}")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read the ids file {path!r} ({_reason(exc)}): pass a readable UTF-8 file with "
            f"one CVM id per line, or '-' to read stdin"
        ) from exc


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


# -- sweep outputs read back --------------------------------------------------------------------


class StoredRecord(NamedTuple):
    """One record of a sweep output.

    Attributes:
        key: :func:`id_key` of its id, to match it with an id or a record of another file.
        cvm_id: the id as the sweep was given it.
        ok: whether the CVM was fetched.
        line: the record as written, newline included.
    """

    key: str
    cvm_id: str
    ok: bool
    line: str


class _RecordHead(msgspec.Struct):
    cvm_id: str | int
    ok: bool


_record_head = msgspec.json.Decoder(_RecordHead)


class RecordFile:
    """A sweep output (JSON lines or CSV) read record by record, each time it is iterated.

    A last line without its newline was cut short by a killed process: it is skipped, and
    :attr:`torn` says so once iterated. Blank lines are skipped.

    Attributes:
        path: the file.
        format: ``"jsonl"``, ``"csv"``, or None for an empty file.
        header: the CSV header line (newline included), or None.
        torn: whether the last line was cut short.

    Raises:
        UsageError: the file cannot be read or is not a sweep output (also while iterating).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.torn = False
        with self._open() as file:
            first = self._guard(file.readline)
        self.header: str | None = None
        self.format: str | None = None
        if first.rstrip("\r\n") == CSV_HEADER:
            self.format, self.header = "csv", first
        elif first.lstrip().startswith("{"):
            self.format = "jsonl"
        elif first.strip():
            raise UsageError(
                f"{path} is not a sweep output: its first line is neither a JSON record nor the "
                f"CSV header that '{PROG} sweep' writes"
            )

    def __iter__(self) -> Iterator[StoredRecord]:
        self.torn = False
        with self._open() as file:
            lines = iter(lambda: self._guard(file.readline), "")
            if self.header is not None:
                next(lines)
            for number, line in enumerate(lines, start=2 if self.header else 1):
                if not line.endswith("\n"):
                    self.torn = True
                elif line.strip():
                    yield self._parse(line, number)

    def _open(self) -> TextIO:
        try:
            return open(self.path, encoding="utf-8", newline="")
        except OSError as exc:
            raise UsageError(f"cannot read {self.path} ({_reason(exc)})") from exc

    def _guard(self, read: Callable[[], str]) -> str:
        try:
            return read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {self.path} ({_reason(exc)})") from exc

    def _parse(self, line: str, number: int) -> StoredRecord:
        try:
            if self.format == "csv":
                cells = next(csv.reader([line]))
                if len(cells) != len(CSV_COLUMNS):
                    raise ValueError(f"{len(cells)} cells, not {len(CSV_COLUMNS)}")
                cvm_id, ok = cells[0], cells[_OK_COLUMN] == "true"
            else:
                head = _record_head.decode(line)
                cvm_id, ok = str(head.cvm_id), head.ok
        except (ValueError, csv.Error, msgspec.DecodeError) as exc:
            raise UsageError(
                f"{self.path}, line {number}: not a sweep record ({exc}); pass the file a "
                f"'{PROG} sweep' wrote"
            ) from exc
        return StoredRecord(id_key(cvm_id), cvm_id, ok, line)


def newest_records(records: RecordFile) -> dict[str, StoredRecord]:
    """The records by :attr:`StoredRecord.key`, the last one of each id (as --resume takes them,
    should a file hold an id twice), in the order the ids first appear."""
    newest: dict[str, StoredRecord] = {}
    for record in records:
        newest[record.key] = record
    return newest


class Resumed(NamedTuple):
    """What ``--resume`` takes over from an earlier sweep.

    Attributes:
        source: the file it read (``FILE.partial``, else ``FILE``).
        format: the source's format, None when it was empty.
        done: keys of the ids whose newest record is ok: not fetched again.
        retried: ids whose newest record failed: fetched again.
        torn: whether the source's last line was cut short (and is dropped).
        lines: the lines the new output starts with (the CSV header, then the newest ok record
            of each id), read from the source as they are consumed.
    """

    source: str
    format: str | None
    done: frozenset[str]
    retried: int
    torn: bool
    lines: Iterator[str]


def resume_from(path: str, output_format: str) -> Resumed | None:
    """Plan ``--resume`` of the sweep writing ``path``: from ``path.partial`` if there is one,
    else from ``path``; None when neither exists. The source is read twice, so that memory holds
    the ids, not the records.

    Raises:
        UsageError: the source is unreadable, not a sweep output, or not in ``output_format``.
    """
    source = next((p for p in (OutputFile.partial_of(path), path) if os.path.exists(p)), None)
    if source is None:
        return None
    records = RecordFile(source)
    if records.format not in (None, output_format):
        raise UsageError(
            f"{source} holds {records.format} records: pass --format {records.format} to resume it"
        )
    newest: dict[str, tuple[int, bool]] = {}
    for number, record in enumerate(records):
        newest[record.key] = (number, record.ok)
    done = frozenset(key for key, (_, ok) in newest.items() if ok)

    def kept_lines() -> Iterator[str]:
        if records.header is not None:
            yield records.header
        for number, record in enumerate(records):
            if record.ok and newest[record.key][0] == number:
                yield record.line

    return Resumed(
        source, records.format, done, len(newest) - len(done), records.torn, kept_lines()
    )


# -- the --output file --------------------------------------------------------------------------


class OutputFile:
    """``--output FILE`` written so that a good FILE is never lost.

    Records go to ``FILE.partial``, each flushed as it completes. :meth:`commit` replaces FILE with
    it (after an fsync, by an atomic rename, keeping FILE's permissions) once the sweep finished
    every id; :meth:`keep` leaves FILE as it was and the records so far in ``FILE.partial``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.partial = self.partial_of(path)
        self._stream: TextIO | None = None

    @staticmethod
    def partial_of(path: str) -> str:
        """Where the records of a sweep writing ``path`` go until it has finished."""
        return path + ".partial"

    def begin(self, lines: Iterable[str] = ()) -> TextIO:
        """Start ``FILE.partial`` afresh with ``lines`` (replacing one left by an earlier sweep)
        and return it, open for appending records.

        Raises:
            UsageError: FILE or FILE.partial cannot be written.
        """
        try:
            if os.path.isdir(self.path):
                raise IsADirectoryError(21, "Is a directory")
            self._rewrite(lines)
            self._stream = open(self.partial, "a", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            raise UsageError(
                f"cannot write --output {self.path!r} ({_reason(exc)}): pick a writable path"
            ) from exc
        return self._stream

    def _rewrite(self, lines: Iterable[str]) -> None:
        # Written beside and renamed over, so that a partial file being resumed is never half
        # rewritten.
        staging = self.partial + ".tmp"
        try:
            with open(staging, "w", encoding="utf-8", newline="") as file:
                file.writelines(lines)
                _sync(file)
            os.replace(staging, self.partial)
        finally:
            if os.path.exists(staging):
                os.remove(staging)

    def commit(self, *, drop: Collection[str] = ()) -> None:
        """Replace FILE with the finished records, but those whose key is in ``drop``.

        Raises:
            OSError: the records could not be synced or renamed; they stay in FILE.partial.
        """
        self._close()
        if drop:
            records = RecordFile(self.partial)
            kept = (record.line for record in records if record.key not in drop)
            self._rewrite(itertools.chain([records.header or ""], kept))
        if os.path.exists(self.path):
            shutil.copymode(self.path, self.partial)
        os.replace(self.partial, self.path)
        if os.name == "posix":  # make the rename itself durable
            directory = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def keep(self) -> None:
        """Leave FILE as it was, and the records so far in FILE.partial."""
        self._close()

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                _sync(stream)
            finally:
                stream.close()


def _sync(stream: TextIO) -> None:
    stream.flush()
    os.fsync(stream.fileno())
