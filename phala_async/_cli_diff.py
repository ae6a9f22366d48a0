"""``diff OLD NEW``: what changed between two sweep outputs. CVMs added, removed and changed (each
changed field by its path, old and new), and ids that failed in one of the two. The comparison
and the report text are plain functions; only :func:`diff_command` reads files."""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from ._cli_common import UsageError
from ._cli_files import RecordFile, StoredRecord, newest_records
from ._cli_output import CSV_COLUMNS, CVM_COLUMNS, Redactor, print_error

__all__ = [
    "KINDS",
    "Difference",
    "FieldChange",
    "compare",
    "diff_command",
    "field_changes",
    "flatten",
    "format_jsonl",
    "format_text",
    "record_fields",
    "selects",
]

#: The kinds of difference, in the order a report lists them.
KINDS = ("added", "removed", "changed", "failed")
#: Exit statuses, as diff(1) has them (2, bad usage or an unreadable file, is the command line's).
EXIT_SAME, EXIT_DIFFERENT = 0, 1
_ERROR_COLUMNS = {"type": "error_type", "status": "error_status", "message": "error_message"}


class FieldChange(NamedTuple):
    """One field that differs: its path (``teepod.region_identifier``), old and new value (None
    where the field is absent)."""

    path: str
    old: Any
    new: Any


class Difference(NamedTuple):
    """One id that differs between OLD and NEW.

    Attributes:
        kind: one of :data:`KINDS`.
        cvm_id: the id as NEW has it (OLD's when NEW has none).
        name: the CVM's name, when a side that fetched it says.
        changes: what changed (``changed``).
        side: ``"old"`` or ``"new"``, where it failed (``failed``).
        error: that side's error: its ``type``, ``status`` and ``message`` (``failed``).
    """

    kind: str
    cvm_id: str
    name: str | None = None
    changes: tuple[FieldChange, ...] = ()
    side: str | None = None
    error: Mapping[str, Any] | None = None


def flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects as ``{"a.b": value}``; lists are values as a whole."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            flat.update(flatten(item, path + "."))
        else:
            flat[path] = item
    return flat


def _covers(pattern: str, path: str) -> bool:
    return path == pattern or path.startswith(pattern + ".")


def selects(path: str, fields: Sequence[str], ignore: Sequence[str]) -> bool:
    """Whether a change of ``path`` counts: it is under one of ``fields`` (all count when there are
    none) and under none of ``ignore``. ``teepod`` covers ``teepod.name``."""
    if fields and not any(_covers(field, path) for field in fields):
        return False
    return not any(_covers(pattern, path) for pattern in ignore)


def field_changes(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    fields: Sequence[str] = (),
    ignore: Sequence[str] = (),
) -> tuple[FieldChange, ...]:
    """The fields of two CVMs that differ, by path, in path order (see :func:`selects`)."""
    flat_old, flat_new = flatten(old), flatten(new)
    return tuple(
        FieldChange(path, flat_old.get(path), flat_new.get(path))
        for path in sorted(flat_old.keys() | flat_new.keys())
        if flat_old.get(path) != flat_new.get(path) and selects(path, fields, ignore)
    )


def record_fields(record: StoredRecord, output_format: str) -> dict[str, Any]:
    """What a record says: the CVM when ok (the JSON object, or the CSV's CVM columns as text),
    else the error's ``type``, ``status`` and ``message``."""
    if output_format == "csv":
        row = dict(zip(CSV_COLUMNS, next(csv.reader([record.line])), strict=True))
        if record.ok:
            return {column: row[column] for column in CVM_COLUMNS}
        return {key: row[column] for key, column in _ERROR_COLUMNS.items()}
    decoded: dict[str, Any] = msgspec.json.decode(record.line)
    part = decoded.get("cvm" if record.ok else "error")
    return dict(part) if isinstance(part, dict) else {}


def _id_order(difference: Difference) -> tuple[int, int, str]:
    digits = difference.cvm_id.isdigit()
    return (
        KINDS.index(difference.kind),
        int(difference.cvm_id) if digits else 0,
        difference.cvm_id,
    )


def compare(
    old: Mapping[str, StoredRecord],
    new: Mapping[str, StoredRecord],
    output_format: str,
    *,
    fields: Sequence[str] = (),
    ignore: Sequence[str] = (),
) -> list[Difference]:
    """Every id that differs between two outputs, records keyed by id (:func:`id_key`).

    Ok in NEW only is ``added``, ok in OLD only ``removed``, ok in both with a counted field
    different ``changed``; failed in one side and not the other is ``failed`` on that side. An id
    that failed in both is no difference: nothing is known of it either time. Sorted by kind,
    then id.
    """
    differences = []
    for key in old.keys() | new.keys():
        before, after = old.get(key), new.get(key)
        if before is not None and after is not None and before.ok and after.ok:
            if before.line == after.line:
                continue  # the same bytes: the common case, decided without decoding
            was, now = record_fields(before, output_format), record_fields(after, output_format)
            changes = field_changes(was, now, fields=fields, ignore=ignore)
            if changes:
                differences.append(
                    Difference("changed", after.cvm_id, _name(now, was), changes=changes)
                )
        elif after is not None and not after.ok:
            if before is None or before.ok:
                error = record_fields(after, output_format)
                differences.append(Difference("failed", after.cvm_id, side="new", error=error))
        elif before is not None and not before.ok:
            if after is None or after.ok:
                error = record_fields(before, output_format)
                differences.append(Difference("failed", before.cvm_id, side="old", error=error))
        elif after is not None:
            name = _name(record_fields(after, output_format))
            differences.append(Difference("added", after.cvm_id, name))
        elif before is not None:
            name = _name(record_fields(before, output_format))
            differences.append(Difference("removed", before.cvm_id, name))
    return sorted(differences, key=_id_order)


def _name(*sides: Mapping[str, Any]) -> str | None:
    return next((str(side["name"]) for side in sides if side.get("name")), None)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def format_text(differences: Sequence[Difference], old: str, new: str) -> Iterable[str]:
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
    counts = {kind: sum(d.kind == kind for d in differences) for kind in KINDS}
    yield ", ".join(f"{count} {kind}" for kind, count in counts.items() if count) + "."


def format_jsonl(differences: Sequence[Difference]) -> Iterable[str]:
    """The report for programs: one JSON object per id."""
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


def _load(path: str) -> tuple[RecordFile, dict[str, StoredRecord]]:
    records = RecordFile(path)
    newest = newest_records(records)
    if records.torn:
        print_error(f"{path}: its last line was cut short (a sweep killed mid-write); skipped")
    return records, newest


def diff_command(args: argparse.Namespace, redact: Redactor) -> int:
    """Run ``phala-async diff OLD NEW``: 0 no difference, 1 differences (as diff(1) does)."""
    old_file, old = _load(args.old)
    new_file, new = _load(args.new)
    if None not in (old_file.format, new_file.format) and old_file.format != new_file.format:
        raise UsageError(
            f"{args.old} holds {old_file.format} records and {args.new} {new_file.format}: "
            f"compare two outputs of one --format"
        )
    output_format = old_file.format or new_file.format or "jsonl"
    fields, ignore = _paths(args.fields), _paths(args.ignore)
    differences = compare(old, new, output_format, fields=fields, ignore=ignore)
    lines = (
        format_jsonl(differences)
        if args.format == "jsonl"
        else format_text(differences, args.old, args.new)
    )
    for line in lines:
        sys.stdout.write(redact(line) + "\n")
    sys.stdout.flush()
    return EXIT_DIFFERENT if differences else EXIT_SAME
