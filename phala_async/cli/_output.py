"""What the command line writes: one sweep record per id (JSON lines, CSV or a table, each flushed
as it completes), ``get``'s CVMs, messages and logs on stderr, and the redaction that keeps
credentials out of them."""

from __future__ import annotations

import contextlib
import csv
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, TextIO

import msgspec

from phala_async._bulk import CvmResult
from phala_async._errors import APIStatusError
from phala_async._models_v2026 import AnyCvm, CvmInfo

__all__ = [
    "CSV_COLUMNS",
    "CVM_COLUMNS",
    "MIN_SECRET_LENGTH",
    "TABLE_COLUMNS",
    "CsvWriter",
    "JsonLinesWriter",
    "NullWriter",
    "RecordWriter",
    "Redactor",
    "TableWriter",
    "format_table_row",
    "json_record",
    "logging_to_stderr",
    "print_cvms",
    "print_error",
    "record_writer",
]

_CVM_FIELDS = (
    "id",
    "name",
    "status",
    "app_id",
    "vcpu",
    "memory",
    "disk_size",
    "instance_id",
    "vm_uuid",
)
#: The CSV columns that describe the CVM (the others say which id and what went wrong).
CVM_COLUMNS = (*_CVM_FIELDS, "teepod_name", "region", "scheduled_delete_at")
#: The columns of ``--format csv``: the id asked for, ok, the main CVM fields, then what went wrong.
CSV_COLUMNS = (
    "cvm_id",
    "ok",
    *CVM_COLUMNS,
    "error_type",
    "error_status",
    "error_message",
    "attempts",
)
#: The columns of ``--format table``, and the widths a streamed table cuts them to (None: any).
TABLE_COLUMNS = ("CVM_ID", "NAME", "STATUS", "VCPU", "MEMORY_MB", "REGION", "ERROR")
_STREAMED_WIDTHS = (36, 24, 12, 4, 9, 16, None)
# Ids are copied from the table into the next command: never cut, only padded (a longer one, such
# as app_<40 hex>, pushes its row's other cells right).
_NEVER_CUT = frozenset({"CVM_ID"})
_RIGHT_ALIGNED = frozenset({"VCPU", "MEMORY_MB"})


#: Shorter values are no real credential, and masking them would garble ordinary words.
MIN_SECRET_LENGTH = 8


class Redactor:
    """Replaces every credential (of :data:`MIN_SECRET_LENGTH` characters or more) in a text
    with ``***`` before it is printed."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        found = {secret.strip() for secret in secrets if secret}
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted(
            (secret for secret in found if len(secret) >= MIN_SECRET_LENGTH), key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class _ErrorInfo(msgspec.Struct, frozen=True):
    type: str
    status: int | None
    message: str
    attempts: int


# omit_defaults drops the absent half (a record has ``cvm`` or ``error``); it does not reach into
# CvmDetail, which keeps its own settings and so its documented shape.
class _Record(msgspec.Struct, frozen=True, omit_defaults=True):
    cvm_id: str | int
    ok: bool
    cvm: AnyCvm | None = None
    error: _ErrorInfo | None = None


def _error_info(result: CvmResult, redact: Redactor) -> _ErrorInfo:
    error = result.error
    assert error is not None  # noqa: S101 - only called for failed results
    status = error.status_code if isinstance(error, APIStatusError) else None
    return _ErrorInfo(type(error).__name__, status, redact(error.message), result.attempts)


class RecordWriter(Protocol):
    """Where sweep records go."""

    def write(self, result: CvmResult) -> None:
        """Write the record of ``result``."""


class _StreamWriter:
    """Writes one record per result and flushes it, so an interrupted sweep keeps every completed
    record. The stream belongs to the caller, who closes it."""

    def __init__(self, stream: TextIO, *, redact: Redactor) -> None:
        self._stream = stream
        self._redact = redact

    def write(self, result: CvmResult) -> None:
        """Write and flush the record of ``result``."""
        self._emit(result)
        self._stream.flush()

    def _emit(self, result: CvmResult) -> None:
        raise NotImplementedError


def json_record(result: CvmResult, redact: Redactor) -> bytes:
    """The JSON line of ``result`` (UTF-8), without its newline: ``{"cvm_id", "ok": true, "cvm":
    {...}}`` or ``{"cvm_id", "ok": false, "error": {...}}``."""
    if result.cvm is not None:
        record = _Record(result.cvm_id, True, cvm=result.cvm)
    else:
        record = _Record(result.cvm_id, False, error=_error_info(result, redact))
    return msgspec.json.encode(record)


class JsonLinesWriter(_StreamWriter):
    """``{"cvm_id", "ok": true, "cvm": {...}}`` or ``{"cvm_id", "ok": false, "error": {...}}``."""

    def _emit(self, result: CvmResult) -> None:
        self._stream.write(json_record(result, self._redact).decode() + "\n")

    def write_line(self, line: str) -> None:
        """Write and flush a record already encoded by :func:`json_record`."""
        self._stream.write(line + "\n")
        self._stream.flush()


def _one_line(text: str) -> str:
    # Each record stays one line of the file, so that a record cut short by a killed process is
    # the last line, and is recognised as such (the server's error text may hold line breaks).
    return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


class CsvWriter(_StreamWriter):
    """One row per id under :data:`CSV_COLUMNS`; empty cells for what does not apply."""

    def __init__(self, stream: TextIO, *, redact: Redactor, header: bool = True) -> None:
        super().__init__(stream, redact=redact)
        self._csv = csv.writer(stream, lineterminator="\n")
        if header:
            self._csv.writerow(CSV_COLUMNS)
            stream.flush()

    def _emit(self, result: CvmResult) -> None:
        row: dict[str, object] = {"cvm_id": result.cvm_id, "attempts": result.attempts}
        cvm = result.cvm
        if cvm is not None:
            row["ok"] = "true"
            row.update(_cvm_cells(cvm))
        else:
            info = _error_info(result, self._redact)
            row.update(ok="false", error_type=info.type, error_status=info.status)
            row["error_message"] = info.message
        self._csv.writerow(_cell(row.get(column)) for column in CSV_COLUMNS)


def _cell(value: object) -> object:
    if value is None:
        return ""
    return _one_line(value) if isinstance(value, str) else value


def _cvm_cells(cvm: AnyCvm) -> dict[str, object]:
    """The :data:`CVM_COLUMNS` of ``cvm`` (None where it has no value)."""
    if isinstance(cvm, CvmInfo):
        return _info_cells(cvm)
    cells: dict[str, object] = {column: getattr(cvm, column) for column in _CVM_FIELDS}
    if cvm.teepod is not None:
        cells["teepod_name"] = cvm.teepod.name
        cells["region"] = cvm.teepod.region_identifier
    # to_builtins renders the date exactly as the JSON lines do (RFC 3339, "Z").
    cells["scheduled_delete_at"] = msgspec.to_builtins(cvm.scheduled_delete_at)
    return cells


def _info_cells(cvm: CvmInfo) -> dict[str, object]:
    """The :data:`CVM_COLUMNS` of a ``2026-01-21`` CVM, in the same units: memory in MB, disk in
    GB; ``scheduled_delete_at`` is not in that shape."""
    resource, node = cvm.resource, cvm.node_info
    memory = None if resource.memory_in_gb is None else round(resource.memory_in_gb * 1024)
    return {
        "id": cvm.id,
        "name": cvm.name,
        "status": cvm.status,
        "app_id": cvm.app_id,
        "vcpu": resource.vcpu,
        "memory": memory,
        "disk_size": resource.disk_in_gb,
        "instance_id": cvm.instance_id,
        "vm_uuid": cvm.vm_uuid,
        "teepod_name": None if node is None else node.name,
        "region": None if node is None else node.region,
        "scheduled_delete_at": None,
    }


def _table_row(result: CvmResult, redact: Redactor) -> tuple[str, ...]:
    cvm = result.cvm
    if cvm is None:
        info = _error_info(result, redact)
        return (str(result.cvm_id), "", "failed", "", "", "", _one_line(info.message))
    cells = _cvm_cells(cvm)
    return (
        str(result.cvm_id),
        cvm.name,
        cvm.status,
        str(_cell(cells["vcpu"])),
        str(_cell(cells["memory"])),
        str(cells["region"] or ""),
        "",
    )


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table_row(cells: Sequence[str], widths: Sequence[int | None]) -> str:
    """One line of a table: each cell cut or padded to its width (None: as long as it is), the id
    never cut, numbers right-aligned, two spaces between columns."""
    parts = []
    for header, cell, width in zip(TABLE_COLUMNS, cells, widths, strict=False):
        if width is None:
            parts.append(cell)
        elif header in _NEVER_CUT:
            parts.append(cell.ljust(width))
        elif header in _RIGHT_ALIGNED:
            parts.append(_fit(cell, width).rjust(width))
        else:
            parts.append(_fit(cell, width).ljust(width))
    return "  ".join(parts).rstrip()


class TableWriter(_StreamWriter):
    """A table for people: a header, then a row per id as it completes, under fixed widths."""

    def __init__(
        self,
        stream: TextIO,
        *,
        redact: Redactor,
        widths: Sequence[int | None] = _STREAMED_WIDTHS,
        header: bool = True,
    ) -> None:
        super().__init__(stream, redact=redact)
        self._widths = widths
        if header:
            stream.write(format_table_row(TABLE_COLUMNS, widths) + "\n")
            stream.flush()

    def _emit(self, result: CvmResult) -> None:
        self._stream.write(format_table_row(_table_row(result, self._redact), self._widths) + "\n")


class NullWriter:
    """Writes nothing (the demo without ``--output``)."""

    def write(self, result: CvmResult) -> None:
        """Discard ``result``."""


def record_writer(
    output_format: str, stream: TextIO, *, redact: Redactor, header: bool = True
) -> RecordWriter:
    """The writer of sweep records in ``output_format`` (``jsonl``, ``csv`` or ``table``) on
    ``stream``; ``header`` False when appending to a file that has one."""
    if output_format == "csv":
        return CsvWriter(stream, redact=redact, header=header)
    if output_format == "table":
        return TableWriter(stream, redact=redact, header=header)
    return JsonLinesWriter(stream, redact=redact)


def print_cvms(results: Sequence[CvmResult], output_format: str, stream: TextIO) -> None:
    """``get``'s output: the fetched CVMs of ``results`` in ``output_format``.

    ``json`` is each CVM as indented JSON, one after another (as jq prints them); ``jsonl`` one
    compact object per line; ``csv`` the sweep's rows; ``table`` columns sized to the values.
    """
    fetched = [result for result in results if result.cvm is not None]
    if output_format in ("json", "jsonl"):
        for result in fetched:
            body = msgspec.json.encode(result.cvm)
            text = msgspec.json.format(body, indent=2) if output_format == "json" else body
            stream.write(text.decode() + "\n")
    elif output_format == "table":
        rows = [_table_row(result, Redactor(())) for result in fetched]
        columns = len(TABLE_COLUMNS) - 1  # every row is a CVM: no ERROR column
        widths = [
            max(len(row[index]) for row in [TABLE_COLUMNS, *rows]) for index in range(columns)
        ]
        for row in [TABLE_COLUMNS, *rows]:
            stream.write(format_table_row(row[:columns], widths) + "\n")
    else:
        writer = record_writer(output_format, stream, redact=Redactor(()))
        for result in fetched:
            writer.write(result)
    stream.flush()


def print_error(message: str) -> None:
    """Print ``phala-async: message`` on stderr (redact it first if it may hold a credential)."""
    print(f"phala-async: {message}", file=sys.stderr)


class _RedactingFormatter(logging.Formatter):
    def __init__(self, redact: Redactor, *, clear_line: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redact = redact
        # On a terminal, wipe the progress line first; it is redrawn below the log line.
        self._prefix = "\r\x1b[K" if clear_line else ""

    def format(self, record: logging.LogRecord) -> str:
        return self._prefix + self._redact(super().format(record))


@contextlib.contextmanager
def logging_to_stderr(verbosity: int, redact: Redactor) -> Iterator[None]:
    """Send the ``phala_async`` logs to stderr while the block runs: retries at ``verbosity`` 1,
    every request at 2; nothing at 0. Every line goes through ``redact``."""
    if not verbosity:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter(redact, clear_line=sys.stderr.isatty()))
    package_logger = logging.getLogger("phala_async")
    previous_level = package_logger.level
    package_logger.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
