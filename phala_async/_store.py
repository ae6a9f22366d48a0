"""History in SQLite: ``sweep --store PATH`` records each sweep as a snapshot, ``history`` lists
them, ``diff PATH@N`` reads one back.

The schema (``PRAGMA user_version`` is :data:`SCHEMA_VERSION`)::

    snapshots         one row per recorded sweep: id (N of PATH@N), started_at, finished_at
                      (UTC, RFC 3339), exit_status, ids, ok, failed, command
    records           each distinct record once, by content: hash (SHA-256 of record, 16 bytes), cvm
                      (the CVM's identity: its integer id when fetched, else the normalised id),
                      cvm_id (as given), ok, vm_uuid, name, record (the JSON line ``sweep``
                      writes)
    snapshot_records  which records make up which snapshot: (snapshot, hash)

A snapshot of an unchanged fleet adds a row to ``snapshots`` and one small row per CVM to
``snapshot_records``; the records themselves are stored once. Each snapshot is written in one
transaction, committed only by a sweep that attempted every id: a sweep that was refused,
stopped early or killed records nothing, and the database stays as it was. The database is in
WAL mode: ``history`` and ``diff`` read it while a sweep writes.

A sweep hands its records to :class:`SnapshotProcess`, which runs the writer
(:mod:`._store_writer`) in a process of its own: the sweep's event loop only passes each record
on, and the hashes and SQLite's inserts run beside it, on the CPU it leaves idle.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

import msgspec

from ._changes import record_identity
from ._ids import id_key
from ._store_writer import (
    SCHEMA_VERSION,
    Record,
    SnapshotWriter,
    StoreError,
    connect,
    is_store,
    now,
    read_message,
    write_message,
)

__all__ = [
    "SCHEMA_VERSION",
    "SnapshotInfo",
    "SnapshotProcess",
    "SnapshotWriter",
    "StoreError",
    "StoredRow",
    "add_line",
    "cvm_history",
    "is_store",
    "list_snapshots",
    "rows_as_records",
    "snapshot_records",
    "split_snapshot_ref",
]


class SnapshotInfo(NamedTuple):
    """One recorded sweep.

    Attributes:
        number: N, as ``PATH@N`` names it (1 is the first).
        started_at: when the sweep began (UTC, RFC 3339).
        finished_at: when it was recorded.
        exit_status: the sweep's exit status (0 or 1: only those are recorded).
        ids: records in the snapshot.
        ok: CVMs fetched.
        failed: ids that failed.
        command: the command line that ran it, credentials masked.
    """

    number: int
    started_at: str
    finished_at: str
    exit_status: int
    ids: int
    ok: int
    failed: int
    command: str


class StoredRow(NamedTuple):
    """One record of a snapshot, as stored: its identity and the JSON line."""

    cvm: str
    record: str


def split_snapshot_ref(text: str) -> tuple[str, str] | None:
    """``PATH@N`` or ``PATH@latest`` as ``(PATH, N or "latest")`` when PATH is a store; else None
    (a plain file, whose name may hold an ``@``)."""
    path, at, which = text.rpartition("@")
    if not at or not path or not (which == "latest" or which.isdigit()):
        return None
    return (path, which) if is_store(path) else None


def list_snapshots(path: str) -> list[SnapshotInfo]:
    """Every snapshot of the store at ``path``, the first first.

    Raises:
        StoreError: not a store, or unreadable.
    """
    connection = connect(path, create=False)
    try:
        rows = connection.execute(
            "SELECT id, started_at, finished_at, exit_status, ids, ok, failed, command "
            "FROM snapshots ORDER BY id"
        ).fetchall()
    finally:
        connection.close()
    return [SnapshotInfo(*row) for row in rows]


def snapshot_records(path: str, which: str) -> tuple[SnapshotInfo, list[StoredRow]]:
    """Snapshot ``which`` (its number, or ``latest``) of the store at ``path`` and its records.

    Raises:
        StoreError: not a store, or no such snapshot.
    """
    snapshots = list_snapshots(path)
    if not snapshots:
        raise StoreError(f"{path} holds no snapshot yet: record one with 'sweep --store'")
    if which == "latest":
        info = snapshots[-1]
    else:
        found = [info for info in snapshots if info.number == int(which)]
        if not found:
            raise StoreError(
                f"{path} has no snapshot {which}: it holds 1 to {snapshots[-1].number} "
                f"(see 'phala-async history {path}')"
            )
        info = found[0]
    connection = connect(path, create=False)
    try:
        rows = connection.execute(
            "SELECT r.cvm, r.record FROM snapshot_records AS s JOIN records AS r "
            "ON r.hash = s.hash WHERE s.snapshot = ?",
            (info.number,),
        ).fetchall()
    finally:
        connection.close()
    return info, [StoredRow(*row) for row in rows]


def cvm_history(path: str, cvm_id: str) -> list[tuple[SnapshotInfo, StoredRow | None]]:
    """What snapshot after snapshot said of one CVM (by its integer id, VM UUID, name, or the id a
    sweep was given): a row per snapshot, None where the snapshot has no record of it.

    Raises:
        StoreError: not a store, or no snapshot knows that CVM.
    """
    key = id_key(cvm_id)
    snapshots = list_snapshots(path)
    connection = connect(path, create=False)
    try:
        identities = {
            row[0]
            for row in connection.execute(
                "SELECT DISTINCT cvm FROM records WHERE cvm = ? OR cvm_id = ? OR name = ? "
                "OR replace(vm_uuid, '-', '') = ?",
                (key, cvm_id, cvm_id, key.replace("-", "")),
            )
        }
        if not identities:
            raise StoreError(
                f"no snapshot of {path} has a record of CVM {cvm_id!r}: pass its integer id, "
                f"VM UUID or name as a sweep recorded it"
            )
        marks = ",".join("?" * len(identities))
        rows = connection.execute(
            f"SELECT s.snapshot, r.cvm, r.record FROM snapshot_records AS s "  # noqa: S608 - only ? marks
            f"JOIN records AS r ON r.hash = s.hash WHERE r.cvm IN ({marks})",
            tuple(identities),
        ).fetchall()
    finally:
        connection.close()
    by_snapshot = {number: StoredRow(cvm, record) for number, cvm, record in rows}
    return [(info, by_snapshot.get(info.number)) for info in snapshots]


_record_head = msgspec.json.Decoder(dict[str, Any])


def add_line(store: SnapshotWriter | SnapshotProcess, line: str) -> None:
    """Add to ``store`` the record of a JSON ``line`` (a record ``sweep --format jsonl`` wrote,
    newline optional)."""
    decoded = _record_head.decode(line)
    ok = bool(decoded.get("ok"))
    cvm = decoded.get("cvm") if ok else None
    cvm = cvm if isinstance(cvm, Mapping) else {}
    store.add_record(
        (
            line.rstrip("\n").encode(),
            str(decoded.get("cvm_id")),
            ok,
            record_identity(decoded),
            cvm.get("vm_uuid"),
            cvm.get("name"),
        )
    )


#: The writer's process: this Python importing the writer's module alone, by its own name from
#: the package's folder (first on the path, so that no other module of that name comes first;
#: the writer imports only the standard library, whose names no module of the package takes).
_WRITER = [
    sys.executable,
    "-P",  # nothing of the working directory on its path
    "-c",
    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    "import _store_writer; _store_writer.main()",
]
# Records handed to the writer's process a message at a time: about 200 KB of records, a few
# system calls a second, and a handful of messages fit in its pipe (enlarged where it can be).
_RECORDS_PER_MESSAGE = 128
_PIPE_BYTES = 1 << 20


class SnapshotProcess:
    """Records one sweep as a snapshot from a process of its own: :meth:`add_record` passes a
    record on (most calls only keep it; one in :data:`_RECORDS_PER_MESSAGE` writes them to a
    pipe), and the writer's process hashes it, compares it with the snapshot before and inserts
    it, on a CPU the sweep's event loop leaves idle. Where that cannot help or cannot be done (one
    CPU, a frozen application, no process to be had), the same writer runs in this process.

    The database is checked (and a new one made) by :meth:`open`, in this process, so that a
    store that cannot be used stops the sweep before it starts. An error of the writer's, a full
    disk say, is raised by :meth:`commit`. A sweep killed before its commit closes the pipe by
    dying: the writer's process rolls the snapshot back and ends.

    Raises:
        StoreError: (from :meth:`open`, :meth:`commit`) the database cannot be used.
    """

    def __init__(self, path: str, command: str) -> None:
        self.path = path
        self._command = command
        self._process: subprocess.Popen[bytes] | None = None
        self._inline: SnapshotWriter | None = None
        self._records: list[Record] = []
        self._lost: str | None = None  # why the writer's process stopped taking records
        self._errors: IO[bytes] | None = None  # its standard error: a file, never a full pipe

    def open(self) -> SnapshotProcess:
        """Check (or create) the database, then start the writer's process.

        Raises:
            StoreError: the database cannot be opened or is not a store.
        """
        started_at = now()
        # On one CPU the process would only take turns with the sweep; a frozen application's
        # executable is no Python to run the writer with. The writer here checks the database
        # as it opens it.
        if not _spare_cpu() or getattr(sys, "frozen", False):
            return self._open_inline(started_at)
        try:
            connect(self.path, create=True).close()
        except OSError as exc:
            raise StoreError(f"cannot use the store {self.path} ({exc})") from exc
        try:
            self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _end()
            self._process = subprocess.Popen(  # noqa: S603 - this Python, the package's own file
                _WRITER,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._errors,
                start_new_session=True,  # the terminal's Ctrl-C is the sweep's, not the writer's
            )
        except OSError:
            self._end()
            return self._open_inline(started_at)
        _enlarge(self._process.stdin)
        self._send(("begin", self.path, self._command, started_at))
        return self

    def _open_inline(self, started_at: str) -> SnapshotProcess:
        self._inline = SnapshotWriter(self.path, self._command, started_at=started_at).open()
        return self

    def add_record(self, record: Record) -> None:
        """Add one :data:`Record` (most calls only keep it)."""
        if self._inline is not None:
            self._inline.add_record(record)
            return
        records = self._records
        records.append(record)
        if len(records) >= _RECORDS_PER_MESSAGE:
            self._records = []
            self._send(("records", records))

    def commit(self, exit_status: int, *, ids: int, ok: int, failed: int) -> int:
        """Record the snapshot with its outcome, and return its number once it is committed.

        Raises:
            StoreError: it could not be written; the database is as it was.
        """
        if self._inline is not None:
            return self._inline.commit(exit_status, ids=ids, ok=ok, failed=failed)
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise StoreError(f"cannot record the snapshot in {self.path}: it was not opened")
        if self._records:
            self._send(("records", self._records))
            self._records = []
        self._send(("commit", exit_status, ids, ok, failed))
        with contextlib.suppress(OSError):
            process.stdin.close()
        answer = read_message(process.stdout)
        last_words = self._end()
        if answer is None:  # it died: say how, and its last line (a traceback's)
            raise StoreError(
                f"cannot record the snapshot in {self.path}: "
                f"{self._lost or 'its writer process ended'} (exit status {process.returncode})"
                f"{last_words}"
            )
        if answer[0] != "committed":
            raise StoreError(str(answer[1]))
        return int(answer[1])

    def abandon(self) -> None:
        """Record nothing: the writer's process rolls the snapshot back and ends."""
        if self._inline is not None:
            self._inline.abandon()
            return
        if self._process is not None and self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
            self._end()

    def _send(self, message: tuple[Any, ...]) -> None:
        process = self._process
        if self._lost is not None or process is None or process.stdin is None:
            return
        try:
            write_message(process.stdin, message)
        except OSError as exc:  # the process ended: commit() says why
            self._lost = f"its writer process stopped taking records ({exc})"

    def _end(self) -> str:
        """Wait for the writer's process to end (its rollback, if any, takes little) and return
        the last line it wrote to its standard error, as ``": line"``, or ``""``."""
        process, errors = self._process, self._errors
        self._process = self._errors = None
        if process is not None:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if errors is None:
            return ""
        with errors:
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
        return f": {lines[-1]}" if lines else ""


def _spare_cpu() -> bool:
    """Whether this process may run on more than one CPU."""
    affinity = getattr(os, "sched_getaffinity", None)
    count = len(affinity(0)) if affinity is not None else os.cpu_count()
    return (count or 1) > 1


def _enlarge(pipe: IO[bytes] | None) -> None:
    """Let the pipe to the writer hold about 1 MiB (Linux), so that the sweep rarely waits on it
    while the writer starts."""
    if sys.platform == "win32" or pipe is None:
        return
    import fcntl

    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is not None:
        with contextlib.suppress(OSError):  # beyond the system's limit: the default size
            fcntl.fcntl(pipe.fileno(), set_size, _PIPE_BYTES)


def rows_as_records(rows: Iterable[StoredRow]) -> Iterator[dict[str, Any]]:
    """The decoded records of ``rows``."""
    for row in rows:
        yield _record_head.decode(row.record)
