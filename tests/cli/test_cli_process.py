"""The real command in a subprocess (``python -m phala_async``) against a simulator on 127.0.0.1:
a refused key, signals (SIGINT, SIGTERM, SIGKILL then ``--resume``) and a closed stdout.

The simulator answers slowly (``latency``) and the sweep runs at low concurrency, so that a signal
sent once a few records are on disk lands mid-sweep; every wait is bounded by TIMEOUT.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from cli_support import (
    TIMEOUT,
    WRONG_KEY,
    by_id,
    fetches,
    jsonl,
    lines_in,
    module_process,
    no_credentials_fixture,  # noqa: F401 - an autouse fixture
    posix_only,
    run_module,
    simulator_thread,
    wait_until,
)

YESTERDAY = "".join(
    json.dumps({"cvm_id": str(n), "ok": True, "cvm": {"id": n, "name": f"cvm-{n}"}}) + "\n"
    for n in range(1, 1001)
).encode()


def complete_records(path: Path) -> list[dict[str, object]]:
    """The records of the complete lines of ``path`` (a killed writer may leave a torn last one)."""
    text = path.read_text()
    return jsonl(text[: text.rfind("\n") + 1])


def test_a_wrong_key_leaves_an_existing_file_byte_for_byte(tmp_path: Path) -> None:
    """`--api-key wrong sweep --all -o keep.jsonl` exits 3, keep.jsonl keeps its 1,000 lines, and
    stderr names where the key came from, never the key."""
    keep = tmp_path / "keep.jsonl"
    keep.write_bytes(YESTERDAY)
    with simulator_thread(cvms=20) as simulator:
        done = run_module(
            "--api-key", WRONG_KEY, "--base-url", simulator.base_url,
            "sweep", "--all", "-o", str(keep),
        )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert keep.read_bytes() == YESTERDAY
    assert "the API refused the API key from --api-key (HTTP 401 Unauthorized)" in done.stderr
    assert WRONG_KEY not in done.stdout + done.stderr


@posix_only
@pytest.mark.parametrize(
    ("sent", "status", "name"),
    [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")],
    ids=["sigint", "sigterm"],
)
def test_a_signal_stops_the_sweep_with_its_status_the_summary_and_file_untouched(
    tmp_path: Path, sent: signal.Signals, status: int, name: str
) -> None:
    """SIGINT or SIGTERM mid-sweep: exit 130 or 143, the summary, FILE as it was, and only
    complete ok records in FILE.partial."""
    output, partial = tmp_path / "cvms.jsonl", tmp_path / "cvms.jsonl.partial"
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
    assert output.read_bytes() == YESTERDAY
    text = partial.read_text()
    assert text.endswith("\n")
    records = jsonl(text)
    assert 5 <= len(records) < 400
    assert all(record["ok"] for record in records)
    assert f"Interrupted by {name} after {len(records)} of 400 ids" in err
    assert "run the same command with --resume to continue" in err


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


def test_all_over_apps_of_three_instances_gives_one_record_per_cvm(tmp_path: Path) -> None:
    """`sweep --all` in a subprocess, over a workspace whose apps run three instances each,
    writes one ok record per CVM and fetches each once."""
    output = tmp_path / "all.jsonl"
    with simulator_thread(cvms=12, instances_per_app=3) as simulator:
        done = run_module(
            "--api-key", simulator.api_key, "--base-url", simulator.base_url,
            "sweep", "--all", "-o", str(output),
        )  # fmt: skip
        records = jsonl(output.read_text())
        fetched = [fetches(simulator, str(record["cvm_id"])) for record in records]
    assert done.returncode == 0, done.stderr
    assert sorted(record["cvm"]["id"] for record in records) == list(range(1, 13))  # type: ignore[index]
    assert len({record["cvm"]["app_id"] for record in records}) == 4  # type: ignore[index]
    assert fetched == [1] * 12
