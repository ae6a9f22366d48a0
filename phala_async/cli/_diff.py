"""``diff OLD NEW``: what changed between two sweeps, each a sweep output (JSON lines or CSV) or
a snapshot of a store (``PATH@N``, ``PATH@latest``). CVMs added, removed and changed (each
changed field by its path, old and new), and ids that failed in one of the two, paired by the
CVM (:func:`phala_async.diff_snapshots`). The report text is built by plain functions; only
:func:`diff_command` reads files."""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from phala_async._diff import (
    DIFFERENCE_KINDS,
    CvmDifference,
    check_field_paths,
    compare_paired,
    field_paths,
    pair_records,
)
from phala_async._store import StoreError, rows_as_records, snapshot_records, split_snapshot_ref

from ._common import UsageError
from ._files import RecordFile, StoredRecord
from ._output import CSV_COLUMNS, CVM_COLUMNS, Redactor, print_error

__all__ = [
    "Side",
    "diff_command",
    "format_jsonl",
    "format_text",
    "load_side",
    "record_of",
]

#: Exit statuses, as diff(1) has them (2, bad usage or an unreadable file, is the command line's).
EXIT_SAME, EXIT_DIFFERENT = 0, 1
_ERROR_COLUMNS = {"type": "error_type", "status": "error_status", "message": "error_message"}
_record = msgspec.json.Decoder(dict[str, Any])


def record_of(record: StoredRecord, output_format: str) -> dict[str, Any]:
    """A record read back, in the shape of a JSON line: ``{"cvm_id", "ok", "cvm"|"error"}``; a
    CSV row's CVM columns (as text) are its ``cvm``, its error columns its ``error``."""
    if output_format != "csv":
        decoded: dict[str, Any] = _record.decode(record.line)
        return decoded
    row = dict(zip(CSV_COLUMNS, next(csv.reader([record.line])), strict=True))
    if record.ok:
        return {"cvm_id": record.cvm_id, "ok": True, "cvm": {c: row[c] for c in CVM_COLUMNS}}
    error = {key: row[column] for key, column in _ERROR_COLUMNS.items()}
    return {"cvm_id": record.cvm_id, "ok": False, "error": error}


class Side:
    """One side of a diff, read whole: its name, its format and its records.

    Raises:
        UsageError: the file or snapshot cannot be read.
    """

    def __init__(self, name: str, output_format: str | None, records: list[dict[str, Any]]):
        self.name = name
        self.format = output_format
        self.records = records


def load_side(path: str) -> Side:
    """The records of a sweep output, or of a store's snapshot for ``PATH@N``/``PATH@latest``.

    Raises:
        UsageError: unreadable, not a sweep output, or no such snapshot.
    """
    reference = split_snapshot_ref(path)
    if reference is not None:
        try:
            _, rows = snapshot_records(*reference)
        except StoreError as exc:
            raise UsageError(str(exc)) from exc
        return Side(path, "jsonl", list(rows_as_records(rows)))
    file = RecordFile(path)
    output_format = file.format or "jsonl"
    records = [record_of(record, output_format) for record in file]
    if file.torn:
        print_error(f"{path}: its last line was cut short (a sweep killed mid-write); skipped")
    return Side(path, file.format, records)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def format_text(differences: Sequence[CvmDifference], old: str, new: str) -> Iterable[str]:
    """The report for people: a line per id (and one per changed field), then the counts."""
    width = max((len(difference.cvm_id) for difference in differences), default=0)
    for difference in differences:
        head = f"{difference.kind:<8} {difference.cvm_id:<{width}}"
        if difference.kind == "failed":
            where = old if difference.side == "old" else new
            message = (difference.error or {}).get("message") or "failed"
            yield f"{head}  failed in {where}: {message}"
            continue
        yield f"{head}  {difference.name or ''}".rstrip()
        for change in difference.changes:  # indented under the id, however long ids are
            yield f"{'':11}{change.path}: {_json(change.old)} -> {_json(change.new)}"
    if not differences:
        yield f"No differences between {old} and {new}."
        return
    counts = {kind: sum(d.kind == kind for d in differences) for kind in DIFFERENCE_KINDS}
    yield ", ".join(f"{count} {kind}" for kind, count in counts.items() if count) + "."


def format_jsonl(differences: Sequence[CvmDifference]) -> Iterable[str]:
    """The report for programs: one JSON object per CVM."""
    for difference in differences:
        line: dict[str, Any] = {"kind": difference.kind, "cvm_id": difference.cvm_id}
        if difference.name is not None:
            line["name"] = difference.name
        if difference.kind == "changed":
            line["changes"] = [change._asdict() for change in difference.changes]
        if difference.kind == "failed":
            line["in"] = difference.side
            line["error"] = difference.error
        yield _json(line)


def _paths(values: Sequence[str] | None) -> list[str]:
    """``--fields a,b --fields c`` as ``[a, b, c]``."""
    return [path for value in values or () for path in re.split(r"[,\s]+", value) if path]


#: What --fields and --ignore may name: the model's paths, and the CSV output's CVM columns.
_KNOWN_PATHS = field_paths() | frozenset(CVM_COLUMNS)


def diff_command(args: argparse.Namespace, redact: Redactor) -> int:
    """Run ``phala-async diff OLD NEW``: 0 no difference, 1 differences (as diff(1) does)."""
    fields, ignore = _paths(args.fields), _paths(args.ignore)
    check_field_paths([*fields, *ignore], known=_KNOWN_PATHS)  # before reading any file
    old, new = load_side(args.old), load_side(args.new)
    if None not in (old.format, new.format) and old.format != new.format:
        raise UsageError(
            f"{args.old} holds {old.format} records and {args.new} {new.format}: "
            f"compare two outputs of one --format"
        )
    before, after = pair_records(old.records, new.records)
    differences = compare_paired(before, after, fields=fields, ignore=ignore)
    lines = (
        format_jsonl(differences)
        if args.format == "jsonl"
        else format_text(differences, args.old, args.new)
    )
    for line in lines:
        sys.stdout.write(redact(line) + "\n")
    sys.stdout.flush()
    return EXIT_DIFFERENT if differences else EXIT_SAME
