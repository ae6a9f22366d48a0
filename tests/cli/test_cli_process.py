"""The real command in a subprocess (``python -m phala_async``) against a simulator on 127.0.0.1:
``get``, ``sweep``, ``serve`` and ``demo`` as users run them, usage errors, signals (SIGINT,
SIGTERM, SIGKILL then ``--resume``) and a closed stdout.

The simulator answers slowly (``latency``) and the sweep runs at low concurrency, so that a signal
sent once a few records are on disk lands mid-sweep; every wait is bounded by TIMEOUT.
"""

from __future__ import annotations

import csv
import io
import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cli_support import (
    CVMS,
    SECRET_KEY,
    TIMEOUT,
    answers,
    by_id,
    documented,
    fetches,
    jsonl,
    lines_in,
    module_process,
    no_credentials_fixture,  # noqa: F401 - an autouse fixture
    posix_only,
    run_module,
    served_fixture,  # noqa: F401 - a fixture
    simulator_thread,
    subprocess_env,
    wait_until,
)

from phala_async.testing import PhalaSimulator

YESTERDAY = "".join(
    json.dumps({"cvm_id": str(n), "ok": True, "cvm": {"id": n, "name": f"cvm-{n}"}}) + "\n"
    for n in range(1, 1001)
).encode()


def complete_records(path: Path) -> list[dict[str, object]]:
    """The records of the complete lines of ``path`` (a killed writer may leave a torn last one)."""
    text = path.read_text()
    return jsonl(text[: text.rfind("\n") + 1])


@posix_only
@pytest.mark.parametrize(
    ("sent", "status", "name", "file_before"),
    [(signal.SIGINT, 130, "Ctrl-C", False), (signal.SIGTERM, 143, "SIGTERM", True)],
    ids=["sigint-no-file", "sigterm-file"],
)
def test_a_signal_stops_the_sweep_with_its_status_the_summary_and_file_untouched(
    tmp_path: Path, sent: signal.Signals, status: int, name: str, file_before: bool
) -> None:
    """SIGINT or SIGTERM mid-sweep: exit 130 or 143, a summary saying how to continue, FILE as it
    was (or still absent), and only complete ok records in FILE.partial."""
    output, partial = tmp_path / "cvms.jsonl", tmp_path / "cvms.jsonl.partial"
    if file_before:
        output.write_bytes(YESTERDAY)
    with (
        simulator_thread(cvms=400, latency=0.02) as simulator,
        module_process(
            "--base-url", simulator.base_url, "--api-key", simulator.api_key,
            "--concurrency", "2", "sweep", "--all", "-o", str(output),
            stderr=subprocess.PIPE,
        ) as process,
    ):  # fmt: skip
        wait_until(lambda: lines_in(partial) >= 5, "five records are on disk")
        process.send_signal(sent)
        _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == status, err
    if file_before:
        assert output.read_bytes() == YESTERDAY
    else:
        assert not output.exists()
    text = partial.read_text()
    assert text.endswith("\n")
    records = jsonl(text)
    assert 5 <= len(records) < 400
    assert all(record["ok"] for record in records)
    assert f"Interrupted by {name} after {len(records)} of 400 ids" in err
    assert f"the records so far are in {partial}: run the same command with --resume" in err


@posix_only
def test_a_sweep_killed_with_sigkill_then_resumed_fetches_each_ok_id_once(tmp_path: Path) -> None:
    """After SIGKILL halfway, `--resume` ends with one ok record per workspace CVM; an id whose
    record was on disk is never fetched again, and only the ids in flight at the kill twice."""
    output, partial = tmp_path / "cvms.jsonl", tmp_path / "cvms.jsonl.partial"
    with simulator_thread(cvms=120, latency=0.02) as simulator:
        command = (
            "--base-url", simulator.base_url, "--api-key", simulator.api_key,
            "sweep", "--all", "-o", str(output),
        )  # fmt: skip
        with module_process("--concurrency", "2", *command, stderr=subprocess.DEVNULL) as process:
            wait_until(lambda: lines_in(partial) >= 10, "ten records are on disk")
            process.send_signal(signal.SIGKILL)
            process.wait(TIMEOUT)
        before = by_id(complete_records(partial))
        assert not output.exists()
        assert 10 <= len(before) < 120
        resumed = run_module(*command, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        records = by_id(jsonl(output.read_text()))
        assert sorted(record["cvm"]["id"] for record in records.values()) == simulator.cvm_ids
        assert all(record["ok"] for record in records.values())
        assert [fetches(simulator, cvm_id) for cvm_id in before] == [1] * len(before)
        fetched_twice = [cvm_id for cvm_id in records if fetches(simulator, cvm_id) == 2]
        assert len(fetched_twice) <= 2  # in flight at the kill: at most --concurrency
        assert all(fetches(simulator, cvm_id) in (1, 2) for cvm_id in records)
    assert not partial.exists()
    assert f"{len(before)} ids already ok, not fetched again" in resumed.stderr


@posix_only
def test_a_closed_stdout_ends_quietly_with_status_0() -> None:
    """`sweep --all | head -2`: once the reader is gone the command ends with 0 and no
    traceback."""
    with (
        simulator_thread(cvms=300) as simulator,
        module_process(
            "--base-url", simulator.base_url, "--api-key", simulator.api_key, "sweep", "--all",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ) as process,
    ):  # fmt: skip
        assert process.stdout is not None
        first_two = [process.stdout.readline(), process.stdout.readline()]
        process.stdout.close()
        _, err = process.communicate(timeout=TIMEOUT)
    assert all(json.loads(line)["ok"] for line in first_two)
    assert process.returncode == 0, err
    assert err == ""


def test_get_runs_as_a_subprocess(served: PhalaSimulator) -> None:
    """`python -m phala_async get` prints the CVM and the failure, and exits 1."""
    done = run_module("--base-url", served.base_url, "--api-key", SECRET_KEY, "get", "7", "999")
    assert done.returncode == 1
    assert jsonl(done.stdout) == [documented(served, 7)]
    assert "CVM '999': HTTP 404 Not Found" in done.stderr


def test_sweep_runs_as_a_subprocess_with_the_key_from_the_environment(
    served: PhalaSimulator,
) -> None:
    """`python -m phala_async sweep --all --format csv` with PHALA_CLOUD_API_KEY writes every
    workspace CVM as a CSV row to stdout, and prints no secret."""
    done = run_module(
        "sweep", "--all", "--format", "csv", "--base-url", served.base_url,
        PHALA_CLOUD_API_KEY=SECRET_KEY,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert sorted(int(row["id"]) for row in rows) == served.cvm_ids
    for row in rows:
        assert row["name"] == served.cvm(int(row["id"]))["name"]
    assert f"Swept {CVMS} ids" in done.stderr
    assert SECRET_KEY not in done.stdout + done.stderr


def test_bad_usage_exits_2_as_a_subprocess() -> None:
    """`python -m phala_async get 1` with no credentials exits 2 and says how to pass one."""
    done = run_module("get", "1")
    assert done.returncode == 2
    assert "--api-key" in done.stderr
    assert done.stdout == ""


@posix_only
def test_serve_as_a_subprocess_prints_a_base_url_that_answers() -> None:
    """`serve --port 0` prints its base URL and test key; the URL serves CVMs until SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "phala_async", "serve", "--port", "0", "--cvms", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None

    def read_lines() -> None:
        for line in process.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=read_lines)
    reader.start()
    try:
        printed: list[str] = []
        while not printed or not printed[-1].startswith("try:"):
            printed.append(lines.get(timeout=TIMEOUT))
        banner = "".join(printed)
        base_url = next(line for line in printed if line.startswith("base URL:")).split()[-1]
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/api/v1")
        assert "API key:  phak_simulator_test_key" in banner
        assert f"--base-url {base_url}" in printed[-1]
        cvm, page = answers(base_url, "/cvms/3"), answers(base_url, "/cvms/paginated")
        assert cvm is not None
        assert cvm["id"] == 3
        assert page is not None
        assert page["total"] == 5
        process.terminate()
        assert process.wait(TIMEOUT) == 0
    finally:
        process.kill()
        process.wait(TIMEOUT)
        reader.join(TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.slow  # processes run one after another
def test_demo_as_a_subprocess_writes_records_only_with_output(tmp_path: Path) -> None:
    """`python -m phala_async demo --cvms 200 -o FILE` exits 0 and writes 200 ok records."""
    output = tmp_path / "demo.jsonl"
    done = run_module("demo", "--cvms", "200", "-o", str(output))
    assert done.returncode == 0, done.stderr
    records = jsonl(output.read_text())
    assert sorted(record["cvm"]["id"] for record in records) == list(range(1, 201))
    assert "200 ok, 0 failed" in done.stderr
    assert done.stdout == ""
