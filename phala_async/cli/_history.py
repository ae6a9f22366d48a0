"""``history PATH [CVM_ID]``: the snapshots of a store (time, counts, exit status), or what one
CVM was in each of them and what changed from one to the next."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from phala_async._changes import field_changes
from phala_async._store import SnapshotInfo, StoredRow, StoreError, cvm_history, list_snapshots

from ._common import UsageError, plural
from ._output import Redactor

__all__ = ["format_cvm_history", "format_snapshots", "history_command"]

_record = msgspec.json.Decoder(dict[str, Any])


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def format_snapshots(snapshots: Sequence[SnapshotInfo], output_format: str) -> Iterable[str]:
    """A line per snapshot: for people, or one JSON object each (``jsonl``)."""
    if output_format == "jsonl":
        for info in snapshots:
            yield _json(info._asdict())
        return
    if not snapshots:
        yield "No snapshots yet."
        return
    for info in snapshots:
        yield (
            f"@{info.number:<4} {info.finished_at}  {plural(info.ids, 'id'):>10}  {info.ok} ok, "
            f"{info.failed} failed  exit {info.exit_status}"
        )


def _state(row: StoredRow | None) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    """(what the snapshot says, the CVM, the error) of one snapshot's record."""
    if row is None:
        return "absent", None, None
    record = _record.decode(row.record)
    if record.get("ok"):
        return "ok", record.get("cvm") or {}, None
    return "failed", None, record.get("error") or {}


def format_cvm_history(
    history: Sequence[tuple[SnapshotInfo, StoredRow | None]], output_format: str
) -> Iterable[str]:
    """What one CVM was, snapshot after snapshot: its first state, then only the snapshots where
    it changed (each changed field by path, old and new), appeared, disappeared or failed."""
    previous: tuple[str, dict[str, Any] | None] = ("absent", None)
    for info, row in history:
        kind, cvm, error = _state(row)
        if kind == "ok" and previous[0] == "ok":
            assert cvm is not None  # noqa: S101 - an ok record has its CVM
            assert previous[1] is not None  # noqa: S101 - and so had the one before
            changes = field_changes(previous[1], cvm)
            if not changes:
                continue
            event = "changed"
        elif kind == previous[0] and kind != "ok":
            continue
        else:
            changes = ()
            event = {"ok": "seen", "failed": "failed", "absent": "absent"}[kind]
        previous = (kind, cvm if kind == "ok" else previous[1])
        if output_format == "jsonl":
            line: dict[str, Any] = {"snapshot": info.number, "time": info.finished_at}
            line["event"] = event
            line["changes"] = [change._asdict() for change in changes]
            line["cvm"], line["error"] = cvm, error
            yield _json(line)
            continue
        head = f"@{info.number:<4} {info.finished_at}  {event}"
        if event == "seen" and cvm is not None:
            head += f"  {cvm.get('name')}  {cvm.get('status')}"
        elif event == "failed" and error is not None:
            head += f"  {error.get('message')}"
        yield head
        for change in changes:
            yield f"{'':6}{change.path}: {_json(change.old)} -> {_json(change.new)}"


def history_command(args: argparse.Namespace, redact: Redactor) -> int:
    """Run ``phala-async history PATH [CVM_ID]``: 0, or 2 for a store that cannot be read."""
    try:
        if args.cvm is None:
            lines = format_snapshots(list_snapshots(args.store), args.format)
        else:
            lines = format_cvm_history(cvm_history(args.store, args.cvm), args.format)
        for line in lines:
            sys.stdout.write(redact(line) + "\n")
    except StoreError as exc:
        raise UsageError(str(exc)) from exc
    sys.stdout.flush()
    return 0
