"""History in SQLite: ``sweep --store``, ``history``, ``diff PATH@N``. Real databases in a
temporary directory, the simulator as the API, subprocesses where a signal is what is tested."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from pathlib import Path

import pytest
from cli_support import (
    SECRET_KEY,
    TIMEOUT,
    WRONG_KEY,
    jsonl,
    module_process,
    no_credentials_fixture,  # noqa: F401 - an autouse fixture
    posix_only,
    run,
    run_module,
    served_fixture,  # noqa: F401 - a fixture
    simulator_thread,
    wait_until,
)

from phala_async import _store_writer
from phala_async._store import (
    SCHEMA_VERSION,
    SnapshotWriter,
    StoreError,
    add_line,
    is_store,
    list_snapshots,
    rows_as_records,
    snapshot_records,
    split_snapshot_ref,
)
from phala_async.cli import main
from phala_async.testing import PhalaSimulator

IDS = [str(cvm_id) for cvm_id in range(1, 31)]


def table_rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as connection:
        count: int = connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
    return count


@pytest.fixture(name="store")
def store_fixture(tmp_path: Path) -> Path:
    return tmp_path / "inventory.db"


def test_a_sweep_with_store_records_a_snapshot_in_a_versioned_wal_database(
    served: PhalaSimulator, store: Path
) -> None:
    """`sweep --store` alone writes nothing to stdout, and creates a WAL database of the current
    schema version holding one snapshot of every id."""
    assert run(served, "sweep", *IDS, "31", "--store", str(store)) == 1
    with sqlite3.connect(store) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    [snapshot] = list_snapshots(str(store))
    assert (snapshot.number, snapshot.ids, snapshot.ok, snapshot.failed) == (1, 31, 30, 1)
    assert snapshot.exit_status == 1
    assert SECRET_KEY not in snapshot.command
    assert "--api-key ***" in snapshot.command
    assert len(snapshot_records(str(store), "1")[1]) == 31


def test_an_unchanged_second_snapshot_stores_no_record_again(
    served: PhalaSimulator, store: Path
) -> None:
    """Records are stored once by content: a second snapshot of an unchanged fleet adds only its
    membership rows, and one changed CVM adds one record."""
    assert run(served, "--quiet", "sweep", *IDS, "--store", str(store)) == 0
    assert run(served, "--quiet", "sweep", *IDS, "--store", str(store)) == 0
    assert table_rows(store, "records") == 30
    assert table_rows(store, "snapshot_records") == 60
    served.update_cvm(7, status="stopped")
    assert run(served, "--quiet", "sweep", *IDS, "--store", str(store)) == 0
    assert table_rows(store, "records") == 31


def test_history_diff_and_files_agree_on_a_changed_cvm(
    served: PhalaSimulator,
    tmp_path: Path,
    store: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two sweeps into one store with a CVM changed between: `history` lists two snapshots,
    `history PATH CVM` shows the change, and `diff PATH@1 PATH@2` prints what the file diff
    prints."""
    day1, day2 = tmp_path / "day1.jsonl", tmp_path / "day2.jsonl"
    assert run(served, "--quiet", "sweep", *IDS, "-o", str(day1), "--store", str(store)) == 0
    served.update_cvm(7, status="stopped")
    assert run(served, "--quiet", "sweep", *IDS, "-o", str(day2), "--store", str(store)) == 0
    capsys.readouterr()

    assert main(["history", str(store), "--format", "jsonl"]) == 0
    listed = jsonl(capsys.readouterr().out)
    assert [(s["number"], s["ids"], s["ok"], s["exit_status"]) for s in listed] == [
        (1, 30, 30, 0),
        (2, 30, 30, 0),
    ]

    assert main(["history", str(store), "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("@1 ")
    assert "seen" in lines[0]
    assert lines[1].startswith("@2 ")
    assert lines[1].endswith("changed")
    assert lines[2].strip() == 'status: "running" -> "stopped"'
    assert len(lines) == 3

    assert main(["diff", str(day1), str(day2), "--format", "jsonl"]) == 1
    from_files = capsys.readouterr().out
    assert main(["diff", f"{store}@1", f"{store}@2", "--format", "jsonl"]) == 1
    assert capsys.readouterr().out == from_files
    assert main(["diff", f"{store}@1", f"{store}@latest", "--format", "jsonl"]) == 1
    assert capsys.readouterr().out == from_files
    assert jsonl(from_files)[0]["changes"] == [
        {"path": "status", "old": "running", "new": "stopped"}
    ]


def test_history_finds_a_cvm_by_its_vm_uuid(
    served: PhalaSimulator, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CVM swept by integer id is found by its VM UUID too."""
    assert run(served, "--quiet", "sweep", "3", "--store", str(store)) == 0
    capsys.readouterr()
    assert main(["history", str(store), served.cvm(3)["vm_uuid"], "--format", "jsonl"]) == 0
    [event] = jsonl(capsys.readouterr().out)
    assert (event["snapshot"], event["event"], event["cvm"]["id"]) == (1, "seen", 3)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["history", "{store}", "99999"], "has a record of CVM '99999'"),
        (["diff", "{store}@5", "{store}@1"], "has no snapshot 5: it holds 1 to 1"),
        (["history", "{other}"], "is not a snapshot store"),
    ],
    ids=["unknown-cvm", "no-such-snapshot", "not-a-store"],
)
def test_what_the_store_cannot_answer_exits_2(
    served: PhalaSimulator,
    store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    says: str,
) -> None:
    """An unknown CVM, a missing snapshot or a file that is no store: exit 2 and one line why."""
    assert run(served, "--quiet", "sweep", "1", "--store", str(store)) == 0
    other = tmp_path / "cvms.jsonl"
    other.write_text("{}\n")
    capsys.readouterr()
    assert main([arg.format(store=store, other=other) for arg in args]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("key", "base_url", "status"),
    [(WRONG_KEY, None, 3), (SECRET_KEY, "http://127.0.0.1:9/api/v1", 4)],
    ids=["refused", "unreachable"],
)
def test_a_refused_or_unreachable_sweep_records_nothing(
    served: PhalaSimulator, store: Path, key: str, base_url: str | None, status: int
) -> None:
    """After one good snapshot, a refused or unreachable sweep leaves the store as it was."""
    assert run(served, "--quiet", "sweep", *IDS, "--store", str(store)) == 0
    before = store.read_bytes()
    args = ["--base-url", base_url or served.base_url, "--api-key", key, "--quiet"]
    assert main([*args, "sweep", *IDS, "--store", str(store)]) == status
    assert [snapshot.number for snapshot in list_snapshots(str(store))] == [1]
    assert table_rows(store, "snapshot_records") == 30
    assert store.read_bytes() == before


@posix_only
def test_a_sigkill_mid_sweep_leaves_the_store_consistent(store: Path) -> None:
    """A sweep SIGKILLed while recording leaves the earlier snapshot whole, no half snapshot,
    and a database that passes its integrity check; the next sweep records snapshot 2."""
    with simulator_thread(cvms=30, api_key=SECRET_KEY, latency=0.05) as slow:
        args = ["--base-url", slow.base_url, "--api-key", SECRET_KEY, "--quiet", "sweep", *IDS,
                "--store", str(store), "--concurrency", "1"]  # fmt: skip
        assert run_module(*args, "--concurrency", "30").returncode == 0
        requests = slow.total_requests
        with module_process(*args) as killed:
            wait_until(lambda: slow.total_requests >= requests + 5, "the sweep is under way")
            killed.send_signal(signal.SIGKILL)
            assert killed.wait(TIMEOUT) == -signal.SIGKILL
        with sqlite3.connect(store) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [s.number for s in list_snapshots(str(store))] == [1]
        assert table_rows(store, "snapshot_records") == 30
        assert run_module(*args, "--concurrency", "30").returncode == 0
    assert [s.number for s in list_snapshots(str(store))] == [1, 2]


@posix_only
@pytest.mark.slow  # processes run one after another
def test_a_second_writer_of_a_store_exits_4_naming_the_first(store: Path) -> None:
    """While one sweep records into a store, a second one on it exits 4 at once."""
    with simulator_thread(cvms=30, api_key=SECRET_KEY, latency=0.05) as slow:
        args = ["--base-url", slow.base_url, "--api-key", SECRET_KEY, "--quiet", "sweep", *IDS,
                "--store", str(store), "--concurrency", "1"]  # fmt: skip
        with module_process(*args) as first:
            wait_until(lambda: slow.total_requests >= 3, "the first sweep is under way")
            second = run_module(*args)
            assert second.returncode == 4
            assert f"pid {first.pid}" in second.stderr
            assert first.wait(TIMEOUT) == 0
    assert [s.number for s in list_snapshots(str(store))] == [1]


def test_resume_with_a_store_records_the_whole_sweep(
    served: PhalaSimulator, tmp_path: Path, store: Path
) -> None:
    """A sweep resumed from FILE.partial records every id in its snapshot, the kept ones too."""
    output = tmp_path / "cvms.jsonl"
    partial = tmp_path / "cvms.jsonl.partial"
    assert run(served, "--quiet", "sweep", *IDS[:10], "-o", str(tmp_path / "first.jsonl")) == 0
    partial.write_bytes((tmp_path / "first.jsonl").read_bytes())
    args = ["--quiet", "sweep", *IDS, "-o", str(output), "--resume", "--store", str(store)]
    assert run(served, *args) == 0
    [snapshot] = list_snapshots(str(store))
    assert (snapshot.ids, snapshot.ok) == (30, 30)
    assert len(snapshot_records(str(store), "latest")[1]) == 30


def test_a_store_path_that_is_not_a_database_exits_2(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--store on a file that is not SQLite exits 2 before any request."""
    not_a_db = tmp_path / "cvms.jsonl"
    not_a_db.write_text('{"cvm_id": "1"}\n' * 100)
    assert run(served, "sweep", "1", "--store", str(not_a_db)) == 2
    assert "is not a usable snapshot store" in capsys.readouterr().err
    assert served.total_requests == 0


def test_a_snapshot_reference_is_only_taken_for_a_store(tmp_path: Path, store: Path) -> None:
    """`PATH@N` names a snapshot only when PATH is a database; a file named `a@1` is a file."""
    SnapshotWriter(str(store), "test").open().abandon()
    assert is_store(str(store))
    assert split_snapshot_ref(f"{store}@3") == (str(store), "3")
    assert split_snapshot_ref(f"{store}@latest") == (str(store), "latest")
    assert split_snapshot_ref(f"{store}@x") is None
    assert split_snapshot_ref(str(tmp_path / "a@1")) is None


def test_a_newer_schema_is_refused(store: Path) -> None:
    """A database of a later schema version is refused with the fix: upgrade."""
    with sqlite3.connect(store) as connection:
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="upgrade phala-async"):
        list_snapshots(str(store))


def record_line(cvm_id: int, status: str) -> str:
    return f'{{"cvm_id":"{cvm_id}","ok":true,"cvm":{{"id":{cvm_id},"status":"{status}"}}}}'


def test_a_first_snapshot_larger_than_one_insert_is_recorded_whole_in_wal_mode(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first snapshot inserted in several statements holds every record, leaves the database
    in WAL mode, and the next snapshot stores only what changed."""
    monkeypatch.setattr("phala_async._store_writer._ROWS_PER_INSERT", 4)
    for number, changed in ((1, None), (2, 3)):
        writer = SnapshotWriter(str(store), "test").open()
        for cvm_id in range(1, 11):
            add_line(writer, record_line(cvm_id, "stopped" if cvm_id == changed else "running"))
        assert writer.commit(0, ids=10, ok=10, failed=0) == number
    with sqlite3.connect(store) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(snapshot_records(str(store), "1")[1]) == 10
    assert len(snapshot_records(str(store), "2")[1]) == 10
    assert table_rows(store, "records") == 11


def snapshot_statuses(store: Path, number: int) -> dict[str, str]:
    """CVM identity -> status, as snapshot ``number`` holds it."""
    rows = snapshot_records(str(store), str(number))[1]
    return {
        row.cvm: record["cvm"]["status"]
        for row, record in zip(rows, rows_as_records(rows), strict=True)
    }


@pytest.mark.parametrize("rows", [4, 1000])
def test_a_snapshot_holds_exactly_its_records_whether_most_are_kept_or_most_changed(
    store: Path, monkeypatch: pytest.MonkeyPatch, rows: int
) -> None:
    """Snapshots after the first copy the records they share with the snapshot before and
    drop those gone; a fleet where most records changed is written record by record. Either
    way a snapshot holds exactly the records of its sweep, however many rows an INSERT holds."""
    monkeypatch.setattr("phala_async._store_writer._ROWS_PER_INSERT", rows)
    fleets = [
        dict.fromkeys(range(1, 11), "running"),
        # most kept: 9 changed, 10 gone, 11 new
        {**dict.fromkeys(range(1, 9), "running"), 9: "stopped", 11: "running"},
        # most changed: only 1 and 2 as before
        {1: "running", 2: "running", **dict.fromkeys(range(3, 9), "stopped")},
        # back to the first fleet: records stored before are not stored again
        dict.fromkeys(range(1, 11), "running"),
    ]
    for number, fleet in enumerate(fleets, start=1):
        writer = SnapshotWriter(str(store), "test").open()
        for cvm_id, status in fleet.items():
            add_line(writer, record_line(cvm_id, status))
        assert writer.commit(0, ids=len(fleet), ok=len(fleet), failed=0) == number
    for number, fleet in enumerate(fleets, start=1):
        assert snapshot_statuses(store, number) == {str(k): v for k, v in fleet.items()}
    assert table_rows(store, "records") == 10 + 2 + 6  # running 1-11, stopped 3-9


def test_a_full_disk_while_recording_costs_the_snapshot_never_the_sweep(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When SQLite cannot grow the database while records are added (a full disk, here its page
    limit), adding goes on without raising; the commit raises StoreError and leaves the
    snapshots before as they were."""
    writer = SnapshotWriter(str(store), "test").open()
    for cvm_id in range(1, 11):
        add_line(writer, record_line(cvm_id, "running"))
    assert writer.commit(0, ids=10, ok=10, failed=0) == 1
    with contextlib.closing(sqlite3.connect(store)) as connection:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connect = _store_writer.connect

    def full(path: str, *, create: bool) -> sqlite3.Connection:
        connection = connect(path, create=create)
        connection.execute(f"PRAGMA max_page_count={pages + 1}")
        return connection

    monkeypatch.setattr(_store_writer, "connect", full)
    monkeypatch.setattr(_store_writer, "_ROWS_PER_INSERT", 4)
    writer = SnapshotWriter(str(store), "test").open()
    big = "x" * 40_000  # a few records fill the one page left
    for cvm_id in range(1, 11):
        add_line(writer, record_line(cvm_id, big + str(cvm_id)))  # no error here
    with pytest.raises(StoreError, match="full"):
        writer.commit(0, ids=10, ok=10, failed=0)
    assert [s.number for s in list_snapshots(str(store))] == [1]
    assert snapshot_statuses(store, 1) == {str(k): "running" for k in range(1, 11)}


def test_a_first_snapshot_being_written_is_named_busy_to_a_reader(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader of a database whose first snapshot is still being written is told so (after
    the busy wait), not that the file is no store."""
    monkeypatch.setattr(_store_writer, "_BUSY_MS", 50)
    writer = SnapshotWriter(str(store), "test").open()
    try:
        add_line(writer, record_line(1, "running"))
        with pytest.raises(StoreError, match="busy: a sweep is writing to it"):
            list_snapshots(str(store))
    finally:
        writer.abandon()
