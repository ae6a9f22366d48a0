"""Writing a snapshot into the store: the SQLite side of ``sweep --store``.

:class:`SnapshotWriter` records one sweep as a snapshot, in one transaction held open while the
sweep runs. ``sweep`` runs it in a process of its own (:func:`main`, this module imported alone
by a Python started for it: see ``_store.SnapshotProcess``), where the hashes and SQLite's inserts
use the CPU the sweep's event loop leaves idle; the writer itself is plain, synchronous and
usable in any process.

This module imports nothing but the standard library: the writer's process imports it alone and
starts in about 10 ms, where importing ``phala_async`` (aiohttp and the client) would cost it
fifteen times as much, and msgspec alone twice as much, on the CPU the sweep leaves idle. The
sweep sends each record with its columns (``cvm_id``, ``ok``, identity, ``vm_uuid``, ``name``),
which it has at hand, so that the writer decodes no JSON.

Before the sweep starts, the writer reads the record hashes of the snapshot before; a record
among them (most of a nightly sweep's) costs its hash and a lookup, and SQLite copies the
snapshot before's rows for all of them at the end. Records new to the store are inserted a few at
a time as they come: CPU work on pages in memory, nothing synced to the disk before the commit.
A new database turns to WAL mode when its first snapshot commits: that snapshot, every record
new, is written straight into the database file, not into the WAL and then again from it (a
reader waits for that commit, there being nothing to read before it).
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sqlite3
import struct
import sys
import time

# typing and collections.abc are not imported at run time (4 ms of the writer's start); the type
# checker reads the block below all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import IO, Any

__all__ = [
    "SCHEMA_VERSION",
    "Record",
    "SnapshotWriter",
    "StoreError",
    "connect",
    "is_store",
    "read_message",
    "serve",
    "write_message",
]

#: The schema version this code writes and reads (``PRAGMA user_version``).
SCHEMA_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\0"
# Records new to the store are inserted this many at a time, one INSERT statement for them all:
# fewer calls from Python into SQLite than a row a statement (a tenth quicker, measured), and 7
# parameters a row stay under 999, the oldest SQLite's limit on parameters per statement.
# Inserting 1,024 records at a time was no quicker: the records held meanwhile cost more than
# the statements saved.
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


def is_store(path: str) -> bool:
    """Whether ``path`` is an SQLite database (by its first 16 bytes)."""
    try:
        with open(path, "rb") as file:
            return file.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def now() -> str:
    """The time, UTC, as the store writes it (RFC 3339, milliseconds)."""
    seconds = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{int(seconds * 1000) % 1000:03d}Z"


def connect(path: str, *, create: bool) -> sqlite3.Connection:
    """A connection to the store at ``path``, its schema checked (and made, with ``create``).

    Raises:
        StoreError: not a store, a newer schema, busy, or unopenable; the message says what to do.
    """
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


#: One record as the sweep hands it to the store, a plain tuple: its JSON line in UTF-8 (without
#: its newline), the id it was given, whether it is ok, the CVM's identity (``record_identity``),
#: its VM UUID and its name.
Record = tuple[bytes, str, bool, str, str | None, str | None]

# hash, cvm, cvm_id, ok, vm_uuid, name, record (its JSON text): a plain tuple, one per record.
_Row = tuple[bytes, str, str, bool, str | None, str | None, str]


class SnapshotWriter:
    """Records one sweep as a snapshot, in one transaction held open while the sweep runs.

    :meth:`add_record` adds a :data:`Record` (a JSON line, as ``sweep --format jsonl`` writes it,
    with its columns); :meth:`commit` ends the snapshot and commits it; :meth:`abandon` rolls it
    back, leaving the database as it was. An error while inserting is kept and raised by
    :meth:`commit`; :meth:`add_record` never raises it, so a full disk costs the snapshot, never
    the sweep.

    Raises:
        StoreError: (from :meth:`open`, :meth:`commit`) the database cannot be used.
    """

    def __init__(self, path: str, command: str, *, started_at: str | None = None) -> None:
        self.path = path
        self._command = command
        self._started_at = started_at or now()
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
            connection = connect(self.path, create=True)
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

    def add_record(self, record: Record) -> None:
        """Add one :data:`Record`.

        A record the snapshot before holds costs its hash and a lookup (the nightly case): this
        snapshot then holds it too, and nothing more is needed.
        """
        data, cvm_id, ok, identity, vm_uuid, name = record
        digest = hashlib.sha256(data).digest()[:16]  # SHA-256 is hardware-accelerated
        if digest in self._known:
            self._unseen.discard(digest)
            return
        self._rows.append((digest, identity, cvm_id, ok, vm_uuid, name, data.decode()))
        if len(self._rows) >= _ROWS_PER_INSERT:
            self._insert()

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
        try:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # closing rolls back all the same
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
            (now(), *outcome, number),
        )
        connection.execute("COMMIT")
        if self._first:
            try:  # noqa: SIM105 - contextlib would cost the writer's start 2.6 ms
                connection.execute("PRAGMA journal_mode=WAL")
            except sqlite3.Error:
                pass  # a reader in the way: the next sweep turns it

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


# The writer's process and the sweep speak in messages: a 4-byte little-endian length, then
# that many bytes of marshal (the interpreter's own format, built in, for tuples of bytes, str,
# bool and None; both ends are the same Python, and the pipe is theirs alone). To the writer:
# ("begin", path, command, started_at), then ("records", [(record, cvm_id, ok, identity,
# vm_uuid, name), ...]) any number of times, then ("commit", exit_status, ids, ok, failed); the
# end of its input before "commit" means: record nothing. From it, once, after "commit":
# ("committed", number) or ("failed", message).
_LENGTH = struct.Struct("<I")


def write_message(stream: IO[bytes], message: Any) -> None:
    """Write one message to ``stream`` (a pipe, blocking), whole."""
    data = marshal.dumps(message)
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        written = stream.write(view)
        view = view[written or 0 :]


def read_message(stream: IO[bytes]) -> Any:
    """The next message on ``stream``, or None at its end (or a message cut short)."""
    head = _read_exactly(stream, _LENGTH.size)
    if head is None:
        return None
    body = _read_exactly(stream, _LENGTH.unpack(head)[0])
    return None if body is None else marshal.loads(body)  # noqa: S302 - from our own pipe


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    parts: list[bytes] = []
    left = size
    while left:
        part = stream.read(left)
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def serve(source: IO[bytes], reply: IO[bytes]) -> int:
    """Record the snapshot that arrives on ``source`` and answer on ``reply``: the writer's
    process (see the messages above). Every message is read to the end of ``source``, even after
    an error, so that the sweep never waits on a full pipe; the error is the answer to "commit".
    Returns the process's exit status: 0 whether the snapshot was recorded or not."""
    writer: SnapshotWriter | None = None
    error = "the sweep sent no snapshot"
    while (message := read_message(source)) is not None:
        kind = message[0]
        if kind == "records" and writer is not None:
            try:
                for record in message[1]:
                    writer.add_record(record)
            except Exception as exc:  # noqa: BLE001 - any fault costs the snapshot, not the sweep
                error = f"cannot record the snapshot in {writer.path} ({exc!r})"
                writer.abandon()
                writer = None
        elif kind == "begin":
            _, path, command, started_at = message
            try:
                writer = SnapshotWriter(path, command, started_at=started_at).open()
            except StoreError as exc:
                error = str(exc)
        elif kind == "commit":
            _, exit_status, ids, ok, failed = message
            if writer is None:
                write_message(reply, ("failed", error))
                return 0
            try:
                number = writer.commit(exit_status, ids=ids, ok=ok, failed=failed)
            except StoreError as exc:
                write_message(reply, ("failed", str(exc)))
            else:
                write_message(reply, ("committed", number))
            return 0
    if writer is not None:  # the sweep ended (or was killed) before its commit
        writer.abandon()
    return 0


def main() -> None:
    """The writer's process: serve the sweep on standard input and output, then end at once.

    It runs in a session of its own (``SnapshotProcess`` starts it so), out of reach of the
    terminal's Ctrl-C, which is the sweep's to handle: this process ends when the sweep closes
    its input (or dies), after rolling back what it has not committed.
    """
    status = serve(sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout.flush()
    # The database is closed and the answer written: the interpreter's clean-up would only keep
    # the sweep waiting for this process to end.
    os._exit(status)


if __name__ == "__main__":
    main()
