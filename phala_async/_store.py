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
stopped early or killed records nothing, and the database stays as it was.

The sweep's own thread writes the snapshot (:class:`SnapshotWriter`), in one transaction open
from before the first record to the commit. Before the sweep starts, the writer reads the record
hashes of the snapshot before; a record among them (most of a nightly sweep's) costs its hash and
a lookup, and SQLite copies the snapshot before's rows for all of them at the end. Records new to
the store are inserted a few at a time as they come: CPU work on pages in memory, nothing synced
to the disk before the commit. The database is in WAL mode: ``history`` and ``diff`` read it while
a sweep writes. A new database turns to WAL mode when its first snapshot commits: that snapshot,
every record new, is written straight into the database file, not into the WAL and then again
from it (a reader waits for that commit, there being nothing to read before it).
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec

from ._changes import record_identity
from ._ids import id_key

__all__ = [
    "SCHEMA_VERSION",
    "SnapshotInfo",
    "SnapshotWriter",
    "StoreError",
    "StoredRow",
    "cvm_history",
    "is_store",
    "list_snapshots",
    "rows_as_records",
    "snapshot_records",
    "split_snapshot_ref",
]

#: The schema version this code writes and reads (``PRAGMA user_version``).
SCHEMA_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\0"
# Records new to the store are inserted this many at a time, one INSERT statement for them all:
# fewer calls from Python into SQLite than a row a statement (a tenth quicker, measured), and 7
# parameters a row stay under 999, the oldest SQLite's limit on parameters per statement. They
# are inserted by the sweep's own thread as they come. Measured on a first 10,000-id snapshot
# (11 rounds, paired): a writer thread beside the event loop added 17.2% to the sweep's wall
# time, these inserts 15.5% (14.0% with the record bound as text); the thread cost the loop as
# much CPU again as it used itself, on two busy cores. Inserting 1,024 records at a time was
# worse (+18.5%): the records held meanwhile cost more than the statements saved.
_ROWS_PER_INSERT = 128
_BUSY_MS = 5000  # how long a reader waits for a checkpoint or a writer to let go
# Pages of 16 KiB hold ten records of about 1.5 KiB where 4 KiB pages hold two (a page's
# leftover is wasted): a first snapshot is a fifth smaller, and quicker to write.
_PAGE_SIZE = 16384

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    exit_status INTEGER NOT NULL,
    ids INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    command TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    hash BLOB NOT NULL UNIQUE,
    cvm TEXT NOT NULL,
    cvm_id TEXT NOT NULL,
    ok INTEGER NOT NULL,
    vm_uuid TEXT,
    name TEXT,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_records (
    snapshot INTEGER NOT NULL REFERENCES snapshots (id),
    hash BLOB NOT NULL,
    PRIMARY KEY (snapshot, hash)
) WITHOUT ROWID;
"""


class StoreError(Exception):
    """The database cannot be used: unreadable, not a store, a newer schema, a missing snapshot.
    The message says which and what to do."""


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


def is_store(path: str) -> bool:
    """Whether ``path`` is an SQLite database (by its first 16 bytes)."""
    try:
        with open(path, "rb") as file:
            return file.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def split_snapshot_ref(text: str) -> tuple[str, str] | None:
    """``PATH@N`` or ``PATH@latest`` as ``(PATH, N or "latest")`` when PATH is a store; else None
    (a plain file, whose name may hold an ``@``)."""
    path, at, which = text.rpartition("@")
    if not at or not path or not (which == "latest" or which.isdigit()):
        return None
    return (path, which) if is_store(path) else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _connect(path: str, *, create: bool) -> sqlite3.Connection:
    if not create and not is_store(path):
        raise StoreError(
            f"{path} is not a snapshot store: pass the database a 'sweep --store' created"
        )
    try:
        connection = sqlite3.connect(path, timeout=_BUSY_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store {path} ({exc}): pick a writable path") from exc
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {version}; this phala-async reads up to "
                f"{SCHEMA_VERSION}: upgrade phala-async"
            )
        if create and version < SCHEMA_VERSION:
            connection.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # a new database only
            connection.executescript(_SCHEMA)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version == 0:
            raise StoreError(f"{path} holds no snapshot yet: record one with 'sweep --store'")
    except sqlite3.DatabaseError as exc:
        connection.close()
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
            raise StoreError(
                f"{path} is busy: a sweep is writing to it (its first snapshot); try again "
                f"when that sweep ends"
            ) from exc
        raise StoreError(f"{path} is not a usable snapshot store ({exc})") from exc
    except StoreError:
        connection.close()
        raise
    return connection


def list_snapshots(path: str) -> list[SnapshotInfo]:
    """Every snapshot of the store at ``path``, the first first.

    Raises:
        StoreError: not a store, or unreadable.
    """
    connection = _connect(path, create=False)
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
    connection = _connect(path, create=False)
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
    connection = _connect(path, create=False)
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


# hash, cvm, cvm_id, ok, vm_uuid, name, record (its JSON text): a plain tuple, one per record.
_Row = tuple[bytes, str, str, bool, str | None, str | None, str]


_record_head = msgspec.json.Decoder(dict[str, Any])


class SnapshotWriter:
    """Records one sweep as a snapshot, in one transaction held open while the sweep runs.

    :meth:`add` inserts a record (a JSON line, as ``sweep --format jsonl`` writes it);
    :meth:`commit` ends the snapshot and commits it; :meth:`abandon` rolls it back, leaving the
    database as it was. The inserts run on the caller's thread, :data:`_ROWS_PER_INSERT` rows at a
    time: they are CPU work on pages in memory (nothing is synced before the commit), and a
    thread beside a busy event loop made them cost twice as much (see :data:`_ROWS_PER_INSERT`).
    An error while inserting is kept and raised by :meth:`commit`; :meth:`add` never raises it,
    so a full disk costs the snapshot, never the sweep.

    Raises:
        StoreError: (from :meth:`open`, :meth:`commit`) the database cannot be used.
    """

    def __init__(self, path: str, command: str) -> None:
        self.path = path
        self._command = command
        self._started_at = _now()
        self._connection: sqlite3.Connection | None = None
        self._number = 0
        self._first = False
        # Rows of records new to the store, inserted _ROWS_PER_INSERT at a time.
        self._rows: list[_Row] = []
        # The record hashes of the snapshot before, read by open(); those a record of this sweep
        # has matched leave _unseen. A record the snapshot before had is kept as nothing more.
        self._known: frozenset[bytes] = frozenset()
        self._unseen: set[bytes] = set()
        self._before: int | None = None
        self._error: BaseException | None = None

    def open(self) -> SnapshotWriter:
        """Open (or create) the database and begin the snapshot's transaction.

        Raises:
            StoreError: the database cannot be opened, is not a store, or another sweep is
                writing to it (after waiting for it a few seconds).
        """
        try:
            connection = _connect(self.path, create=True)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot use the store {self.path} ({exc})") from exc
        try:
            self._first = _first_snapshot(connection)
            if not self._first:
                connection.execute("PRAGMA journal_mode=WAL")  # kept by the database
            self._number = self._begin(connection)
            if not self._first:
                self._read_before(connection)
        except sqlite3.Error as exc:
            connection.close()
            raise StoreError(f"the store {self.path} is busy or unwritable ({exc})") from exc
        self._connection = connection
        return self

    def add(
        self,
        line: str | bytes,
        *,
        cvm_id: str,
        ok: bool,
        cvm: str,
        vm_uuid: str | None = None,
        name: str | None = None,
    ) -> None:
        """Add one record: its JSON ``line`` (text or UTF-8; newline optional), the id it was
        given, whether it is ok, the CVM's identity (:func:`record_identity`), and its VM UUID
        and name."""
        text = line if isinstance(line, str) else line.decode()
        text = text.rstrip("\n")
        digest = self.new_record(text.encode())
        if digest is not None:
            self.add_new(digest, text, cvm_id, ok, cvm, vm_uuid, name)

    def new_record(self, data: bytes) -> bytes | None:
        """The hash of record ``data`` (a JSON line in UTF-8, without its newline) for
        :meth:`add_new`; or None when the snapshot before holds that record: this snapshot then
        holds it too, and nothing more is needed (the nightly case costs this hash and a lookup
        per CVM)."""
        digest = hashlib.sha256(data).digest()[:16]  # SHA-256 is hardware-accelerated
        if digest in self._known:
            self._unseen.discard(digest)
            return None
        return digest

    def add_new(
        self,
        digest: bytes,
        data: str,
        cvm_id: str,
        ok: bool,
        cvm: str,
        vm_uuid: str | None,
        name: str | None,
    ) -> None:
        """Add a record :meth:`new_record` found new: its hash, its JSON text (the same line,
        decoded; SQLite stores it as given, where bytes would need a cast and a copy), and the
        fields of :meth:`add`."""
        self._rows.append((digest, cvm, cvm_id, ok, vm_uuid, name, data))
        if len(self._rows) >= _ROWS_PER_INSERT:
            self._insert()

    def add_line(self, line: str) -> None:
        """Add the record of a JSON ``line`` (a record ``sweep --format jsonl`` wrote)."""
        decoded = _record_head.decode(line)
        cvm = decoded.get("cvm") if decoded.get("ok") else None
        cvm = cvm if isinstance(cvm, Mapping) else {}
        self.add(
            line,
            cvm_id=str(decoded.get("cvm_id")),
            ok=bool(decoded.get("ok")),
            cvm=record_identity(decoded),
            vm_uuid=cvm.get("vm_uuid"),
            name=cvm.get("name"),
        )

    def commit(self, exit_status: int, *, ids: int, ok: int, failed: int) -> int:
        """Record the snapshot with its outcome, commit it, and return its number.

        Raises:
            StoreError: it could not be written (a full disk); the database is as it was.
        """
        connection = self._connection
        if connection is None:
            raise StoreError(f"cannot record the snapshot in {self.path}: it was not opened")
        self._insert()
        try:
            if self._error is not None:
                raise self._error
            self._finish(connection, (exit_status, ids, ok, failed))
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot record the snapshot in {self.path} ({exc})") from exc
        finally:
            self._close()
        return self._number

    def abandon(self) -> None:
        """Record nothing: roll the snapshot back."""
        self._close()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(sqlite3.Error):
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        connection.close()

    def _begin(self, connection: sqlite3.Connection) -> int:
        """Begin the snapshot's transaction and return its number."""
        # A first snapshot (every record new, the dearest case) is written in rollback-journal
        # mode: its pages go into the database file once, where WAL mode would write them twice
        # (into the WAL, then from it at the checkpoint). Until it commits there is nothing to
        # read, so it takes the database for itself: SQLite may then write pages out of its
        # cache at any time without waiting for a reader. The database turns to WAL mode for
        # good right after.
        connection.execute("BEGIN EXCLUSIVE" if self._first else "BEGIN IMMEDIATE")
        # The snapshot's row comes first, so that its number is known; the transaction makes it
        # all or nothing, and a rolled-back number is given again to the next snapshot.
        number = connection.execute(
            "INSERT INTO snapshots (started_at, finished_at, exit_status, ids, ok, failed, "
            "command) VALUES (?, '', -1, 0, 0, 0, ?)",
            (self._started_at, self._command),
        ).lastrowid
        assert number is not None  # noqa: S101 - an INSERT into a rowid table
        return number

    def _read_before(self, connection: sqlite3.Connection) -> None:
        """Read the record hashes of the snapshot before this one, before the sweep starts:
        most of a nightly sweep's records are among them, and cost a lookup each."""
        self._before = connection.execute(
            "SELECT max(id) FROM snapshots WHERE id < ?", (self._number,)
        ).fetchone()[0]
        self._known = frozenset(
            row[0]
            for row in connection.execute(
                "SELECT hash FROM snapshot_records WHERE snapshot = ?", (self._before,)
            )
        )
        self._unseen = set(self._known)

    def _insert(self) -> None:
        """Insert the rows added since the last call; keep the first error for commit()."""
        rows, self._rows = self._rows, []
        connection = self._connection
        if not rows or connection is None or self._error is not None:
            return
        try:
            _insert_rows(
                connection,
                "INSERT OR IGNORE INTO records (hash, cvm, cvm_id, ok, vm_uuid, name, record) "
                "VALUES ",
                "(?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            if not self._first:
                _add_to_snapshot(connection, self._number, [row[0] for row in rows])
        except (sqlite3.Error, OSError) as exc:  # raised by commit()
            self._error = exc

    def _finish(self, connection: sqlite3.Connection, outcome: tuple[int, int, int, int]) -> None:
        number = self._number
        if self._first:  # every record is this snapshot's: SQLite adds them in hash order, at once
            connection.execute(
                "INSERT INTO snapshot_records (snapshot, hash) "
                "SELECT ?, hash FROM records ORDER BY hash",
                (number,),
            )
        else:
            self._keep_unchanged(connection, number)
        connection.execute(
            "UPDATE snapshots SET finished_at = ?, exit_status = ?, ids = ?, ok = ?, "
            "failed = ? WHERE id = ?",
            (_now(), *outcome, number),
        )
        connection.execute("COMMIT")
        if self._first:
            with contextlib.suppress(sqlite3.Error):  # a reader in the way: the next sweep
                connection.execute("PRAGMA journal_mode=WAL")

    def _keep_unchanged(self, connection: sqlite3.Connection, number: int) -> None:
        """Add to snapshot ``number`` the records it shares with the snapshot before: when
        most are shared (the nightly case), SQLite copies that snapshot's rows and drops those
        no record matched, without a row through Python."""
        kept = len(self._known) - len(self._unseen)
        if not kept:
            return
        if len(self._unseen) <= kept:
            connection.execute(
                "INSERT INTO snapshot_records (snapshot, hash) "
                "SELECT ?, hash FROM snapshot_records WHERE snapshot = ?",
                (number, self._before),
            )
            connection.executemany(
                "DELETE FROM snapshot_records WHERE snapshot = ? AND hash = ?",
                [(number, digest) for digest in self._unseen],
            )
            return
        _add_to_snapshot(connection, number, self._known - self._unseen)


def _first_snapshot(connection: sqlite3.Connection) -> bool:
    """Whether the store holds no snapshot yet and is not in WAL mode (a new database)."""
    mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    empty = connection.execute("SELECT 1 FROM snapshots LIMIT 1").fetchone() is None
    return empty and mode != "wal"


def _add_to_snapshot(connection: sqlite3.Connection, number: int, hashes: Iterable[bytes]) -> None:
    """Make the records of ``hashes`` part of snapshot ``number``."""
    _insert_rows(
        connection,
        "INSERT OR IGNORE INTO snapshot_records (snapshot, hash) VALUES ",
        "(?, ?)",
        [(number, digest) for digest in hashes],
    )


def _insert_rows(connection: sqlite3.Connection, insert: str, values: str, rows: list[Any]) -> None:
    """Run ``insert`` with ``values`` (a row's parameters) once per row of ``rows``,
    :data:`_ROWS_PER_INSERT` rows a statement."""
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        connection.execute(
            insert + ", ".join([values] * len(chunk)), [value for row in chunk for value in row]
        )


def rows_as_records(rows: Iterable[StoredRow]) -> Iterator[dict[str, Any]]:
    """The decoded records of ``rows``."""
    for row in rows:
        yield _record_head.decode(row.record)
