"""The snapshot writer's own process: what ``sweep --store`` hands it, how it answers, and what
happens when it cannot run, fails or is left behind. Real databases, real processes."""

from __future__ import annotations

import contextlib
import io
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import SECRET_KEY, TIMEOUT, module_process, simulator_thread, wait_until

from phala_async import _store, _store_writer
from phala_async._store import (
    SnapshotProcess,
    StoreError,
    add_line,
    list_snapshots,
    snapshot_records,
)
from phala_async._store_writer import Record, read_message, serve, write_message


@pytest.fixture(name="store")
def store_fixture(tmp_path: Path) -> Path:
    return tmp_path / "inventory.db"


def record(cvm_id: int, status: str = "running") -> str:
    return f'{{"cvm_id":"{cvm_id}","ok":true,"cvm":{{"id":{cvm_id},"status":"{status}"}}}}'


def row(cvm_id: int, status: str = "running") -> Record:
    """A record as the sweep sends it to the writer: the line and its columns."""
    return (record(cvm_id, status).encode(), str(cvm_id), True, str(cvm_id), None, None)


def failed(cvm_id: str) -> str:
    return f'{{"cvm_id":"{cvm_id}","ok":false,"error":{{"type":"NotFoundError"}}}}'


def messages(*items: object) -> io.BytesIO:
    stream = io.BytesIO()
    for item in items:
        write_message(stream, item)
    stream.seek(0)
    return stream


def stored_identities(store: Path) -> dict[str, str]:
    """cvm_id as given -> the identity the store keeps, for the latest snapshot."""
    with contextlib.closing(sqlite3.connect(store)) as connection:
        return dict(connection.execute("SELECT cvm_id, cvm FROM records").fetchall())


def test_a_snapshot_passed_to_the_writer_process_is_recorded_with_identities(
    store: Path,
) -> None:
    """Records handed to the writer's process over more than one message are all recorded: a
    fetched CVM under its integer id, any other under the identity the sweep gave."""
    writer = SnapshotProcess(str(store), "test").open()
    assert writer._process is not None  # a process of its own on this machine
    for cvm_id in range(1, 301):
        add_line(writer, record(cvm_id))
    add_line(writer, failed("a" * 40))  # a bare app id: its identity is the normalised one
    add_line(writer, '{"cvm_id":"x","ok":true,"cvm":{"id":"cvm_9","name":"n"}}')
    assert writer.commit(1, ids=302, ok=301, failed=1) == 1
    info, rows = snapshot_records(str(store), "1")
    assert (info.ids, info.ok, info.failed, info.exit_status) == (302, 301, 1, 1)
    assert len(rows) == 302
    identities = stored_identities(store)
    assert identities["7"] == "7"
    assert identities["a" * 40] == "app_" + "a" * 40
    assert identities["x"] == "cvm_9"


def test_an_abandoned_snapshot_records_nothing_and_the_process_ends(store: Path) -> None:
    """abandon() closes the writer's input: it rolls back, ends, and the store has no snapshot."""
    writer = SnapshotProcess(str(store), "test").open()
    process = writer._process
    assert process is not None
    for cvm_id in range(1, 300):
        add_line(writer, record(cvm_id))
    writer.abandon()
    assert process.returncode == 0
    assert list_snapshots(str(store)) == []


def test_serve_rolls_back_when_its_input_ends_before_the_commit(store: Path) -> None:
    """The writer whose input ends without a commit (the sweep died) answers nothing, returns
    0, and leaves the store without the snapshot."""
    reply = io.BytesIO()
    source = messages(("begin", str(store), "test", "t"), ("records", [row(1)]))
    assert serve(source, reply) == 0
    assert reply.getvalue() == b""
    assert list_snapshots(str(store)) == []


def test_serve_answers_a_failed_write_with_its_reason_and_reads_every_message(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that fills up while recording is answered with "failed" and SQLite's reason, once
    every message has been read, so that the sweep never waits on a full pipe."""
    connect = _store_writer.connect

    def full(path: str, *, create: bool) -> sqlite3.Connection:
        connection = connect(path, create=create)
        connection.execute("PRAGMA max_page_count=8")
        return connection

    monkeypatch.setattr(_store_writer, "connect", full)
    big = [row(cvm_id, "x" * 40_000) for cvm_id in range(1, 6)]
    source = messages(
        ("begin", str(store), "test", "t"),
        ("records", big),
        ("records", big),
        ("commit", 0, 5, 5, 0),
    )
    reply = io.BytesIO()
    assert serve(source, reply) == 0
    assert source.read() == b""
    reply.seek(0)
    answer = read_message(reply)
    assert answer[0] == "failed"
    assert "full" in answer[1]


def test_a_writer_process_that_dies_costs_the_snapshot_with_its_last_words(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the writer's process dies, commit raises StoreError with its exit status and the
    last line it wrote, and the store keeps no snapshot."""
    dies = "import sys; sys.stderr.write('Traceback...\\nMemoryError: boom\\n'); sys.exit(3)"
    monkeypatch.setattr(_store, "_WRITER", [sys.executable, "-c", dies])
    writer = SnapshotProcess(str(store), "test").open()
    for cvm_id in range(1, 1000):  # more than the pipe holds once the reader is gone
        add_line(writer, record(cvm_id))
    with pytest.raises(StoreError, match=r"exit status 3\): MemoryError: boom"):
        writer.commit(0, ids=999, ok=999, failed=0)
    assert list_snapshots(str(store)) == []


@pytest.mark.parametrize(
    "why", ["no process can be started", "one CPU"], ids=["no-process", "one-cpu"]
)
def test_without_a_process_of_its_own_the_snapshot_is_written_by_the_sweep(
    store: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """Where no writer process can be started, or there is one CPU to share, the sweep's own
    process writes the snapshot (a writer process that would fail is never used)."""
    monkeypatch.setattr(_store, "_WRITER", [str(store.parent / "no-such-python")])
    if why == "one CPU":
        monkeypatch.setattr(_store, "_WRITER", [sys.executable, "-c", "raise SystemExit(3)"])
        monkeypatch.setattr(_store, "_spare_cpu", lambda: False)
    writer = SnapshotProcess(str(store), "test").open()
    for cvm_id in range(1, 200):
        add_line(writer, record(cvm_id))
    assert writer.commit(0, ids=199, ok=199, failed=0) == 1
    assert len(snapshot_records(str(store), "1")[1]) == 199


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def ended(pid: int) -> bool:
    """Whether process ``pid`` is gone or a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
def test_a_sigkilled_sweep_leaves_no_writer_process_behind(store: Path) -> None:
    """A sweep SIGKILLed while its writer process records ends that process too (its input
    closes), and the store holds no half snapshot."""
    with simulator_thread(cvms=400, api_key=SECRET_KEY, latency=0.02) as slow:
        args = ["--base-url", slow.base_url, "--api-key", SECRET_KEY, "--quiet", "sweep",
                *[str(cvm_id) for cvm_id in range(1, 401)], "--store", str(store),
                "--concurrency", "2"]  # fmt: skip
        with module_process(*args) as killed:
            wait_until(lambda: slow.total_requests >= 150, "records have gone to the writer")
            writers = children(killed.pid)
            assert len(writers) == 1
            killed.send_signal(signal.SIGKILL)
            assert killed.wait(TIMEOUT) == -signal.SIGKILL
            wait_until(lambda: ended(writers[0]), "the writer process ends")
    assert list_snapshots(str(store)) == []


def test_the_writer_process_imports_its_module_and_the_standard_library_alone() -> None:
    """The writer's process loads no module of the package but the writer's, and neither
    msgspec nor aiohttp: it starts in milliseconds, on the CPU the sweep leaves idle."""
    folder = str(Path(_store.__file__).parent)
    shown = (
        "import sys; "
        "print(sorted(name for name, module in sys.modules.items() "
        "if (getattr(module, '__file__', None) or '').startswith(sys.argv[1]) "
        "or name.split('.')[0] in ('msgspec', 'aiohttp', 'phala_async')))"
    )
    command = _store._WRITER[-1].replace("_store_writer.main()", shown)
    done = subprocess.run(  # noqa: S603 - this Python
        [*_store._WRITER[:-1], command, folder],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert done.stdout.strip() == "['_store_writer']"
