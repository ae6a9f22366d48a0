"""The benchmark harness still runs end to end: ``python -m benchmarks --quick`` on tiny sizes.

Only the structure of its output is checked (every request accounted for, every number present),
never a speed: speed targets are measured by ``make bench`` and reported, not asserted. The peers
that need the benchmark environment (httpx, pydantic, phala-cloud, uvloop) are not installed here,
so the run covers phala-async and the bare aiohttp loop, which need only the project's own
dependencies; the contention section runs every case once at tiny sizes. The pure pieces (the
token bucket, the report's markers, a target row) are tested directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ("phala-async", "phala-async-noretry", "aiohttp")
ROWS = (*CLIENTS, "phala-async (int ids)", "aiohttp (int ids)")
CONTENTION_CASES = (
    "capacity 8",
    "storm's fault-free pair",
    "50% 503 storm",
    "shared key, K=1",
    "shared key, K=2",
    "silent server",
    "closed port",
    "accept and close",
    "dead API",
)
RATE_CASES = (
    "token bucket 100/s",
    "token bucket 200/s",
    "fixed window 200/s",
    "fixed window 200/s, adaptive off",
)

pytestmark = [
    pytest.mark.skipif(
        not (ROOT / "benchmarks" / "__main__.py").is_file(),
        reason="the benchmarks/ directory is not here (it is not shipped in the sdist or wheel)",
    ),
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--quick`` run of the harness: its printed report and its JSON."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--clients",
            ",".join(CLIENTS),
            "--json",
            str(out / "results.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {
        "stdout": done.stdout,
        "json_path": out / "results.json",
        "results": json.loads((out / "results.json").read_text()),
    }


@pytest.mark.slow
def test_every_row_ran_once_in_the_single_quick_round(quick_run: dict[str, Any]) -> None:
    """The quick round runs the pairs a target compares first (phala-async and aiohttp over app
    ids, then over ints), then the other clients over app ids."""
    rounds = quick_run["results"]["throughput"]["rounds"]
    assert [[(run["client"], run["id_kind"]) for run in runs] for runs in rounds] == [
        [
            ("phala-async", "str"),
            ("aiohttp", "str"),
            ("phala-async", "int"),
            ("aiohttp", "int"),
            ("phala-async-noretry", "str"),
        ]
    ]


@pytest.mark.slow
def test_every_request_is_accounted_for(quick_run: dict[str, Any]) -> None:
    """Each throughput run received every id exactly once, with no error and no failed run."""
    ids = quick_run["results"]["meta"]["options"]["ids"]
    for run in quick_run["results"]["throughput"]["rounds"][0]:
        assert "failed" not in run, run
        assert (run["requests"], run["received"], run["missing"], run["repeated"]) == (
            ids,
            ids,
            0,
            0,
        ), run
        assert run["errors"] == {}, run


@pytest.mark.slow
@pytest.mark.parametrize("measure", ["wall_s", "cpu_us_per_request", "rps", "peak_rss_mb"])
def test_summary_has_a_positive_median_and_spread_per_row(
    quick_run: dict[str, Any], measure: str
) -> None:
    """Every row's summary carries the measure as median, min and max, all positive."""
    summary = quick_run["results"]["throughput"]["summary"]
    assert set(summary) == set(ROWS)
    for row, entry in summary.items():
        spread = entry[measure]
        assert spread["min"] <= spread["median"] <= spread["max"], (row, spread)
        assert spread["min"] > 0, (row, spread)
        assert entry["complete"] is True, row


@pytest.mark.slow
def test_ratios_are_relative_to_phala_async_over_the_same_ids(quick_run: dict[str, Any]) -> None:
    """phala-async's own ratios are exactly 1 for app ids and for ints; every other is positive."""
    summary = quick_run["results"]["throughput"]["summary"]
    for base in ("phala-async", "phala-async (int ids)"):
        assert (summary[base]["speed"], summary[base]["cpu_efficiency"]) == (1.0, 1.0)
    assert all(entry["speed"] > 0 and entry["cpu_efficiency"] > 0 for entry in summary.values())


@pytest.mark.slow
def test_command_line_and_bare_script_write_one_ok_record_per_id(
    quick_run: dict[str, Any],
) -> None:
    """Both end-to-end commands exited 0 and wrote one ok JSON line per id of the file."""
    runs = quick_run["results"]["command_line"]["runs"]
    assert [run["command"] for run in runs] == ["phala-async sweep", "bare aiohttp script"]
    for run in runs:
        assert run["returncode"] == 0, run
        assert (run["records"], run["ok_records"], run["every_id_once"]) == (
            run["ids"],
            run["ids"],
            True,
        ), run
        assert run["wall_s"] > 0
        assert run["cpu_s"] > 0


@pytest.mark.slow
def test_goodput_times_each_share_of_the_ids_without_and_with_faults(
    quick_run: dict[str, Any],
) -> None:
    """Both goodput sweeps got a result for every id, and their times to 50%, 95% and 100%
    are in order; the faulty one retried."""
    summary = quick_run["results"]["goodput"]["summary"]
    assert set(summary) == {"fault-free", "20% faults"}
    for entry in summary.values():
        assert entry["missing_ids"] == 0
        times = [entry[f"time_to_{share}"]["median"] for share in ("50%", "95%", "100%")]
        assert 0 < times[0] <= times[1] <= times[2]
    assert summary["fault-free"]["requests_per_id"]["median"] == 1.0
    assert summary["20% faults"]["requests_per_id"]["median"] > 1.0


@pytest.mark.slow
def test_every_rate_limit_case_reports_its_use_of_the_limit(quick_run: dict[str, Any]) -> None:
    """Each rate-limit case ran, got a result per id, and reports a positive share of the limit;
    without pacing the fixed window answered some requests 429."""
    summary = quick_run["results"]["rate_limit"]["summary"]
    assert tuple(summary) == RATE_CASES
    for entry in summary.values():
        assert entry["missing_ids"] == 0
        assert entry["limit_used"]["median"] > 0
    assert summary["fixed window 200/s, adaptive off"]["share_429"]["median"] > 0


@pytest.mark.slow
def test_memory_sweeps_report_peak_rss_and_growth(quick_run: dict[str, Any]) -> None:
    """Both memory sweeps completed and the growth between them is their peaks' difference."""
    memory = quick_run["results"]["memory"]
    small, large = (memory["per_size"][str(size)] for size in memory["sizes"])
    assert (small["complete"], large["complete"]) == (True, True)
    expected = large["peak_rss_mb"]["median"] - small["peak_rss_mb"]["median"]
    assert memory["growth_mb"] == pytest.approx(expected)


@pytest.mark.slow
def test_decode_times_phala_async_and_skips_absent_peers(quick_run: dict[str, Any]) -> None:
    """The decode benchmark times phala-async and json.loads, and names why a peer did not run."""
    decoders = quick_run["results"]["decode"]["decoders"]
    assert decoders["phala-async (msgspec Struct)"]["median_us"] > 0
    assert decoders["json.loads"]["median_us"] > 0
    for entry in decoders.values():
        assert ("median_us" in entry) != ("skipped" in entry), entry


@pytest.mark.slow
def test_every_target_is_reported_with_a_verdict(quick_run: dict[str, Any]) -> None:
    """Every target is listed, PASS, FAIL or n/a, in the JSON and in the printed report."""
    from benchmarks.targets import TARGETS

    targets = quick_run["results"]["targets"]
    assert len(targets) == len(TARGETS)
    assert {target["status"] for target in targets} <= {"PASS", "FAIL", "n/a"}
    for target in targets:
        assert target["target"] in quick_run["stdout"]


@pytest.mark.slow
def test_printed_report_is_markdown_with_every_section(quick_run: dict[str, Any]) -> None:
    """The report has a heading per section, the machine, the libraries, each row, and says a
    quick run is no result."""
    stdout = quick_run["stdout"]
    for heading in (
        "Targets",
        "Machine",
        "Libraries",
        "Throughput",
        "The command line, end to end",
        "Goodput under faults",
        "Rate limits",
        "Contention",
        "Memory",
        "Decode",
    ):
        assert f"\n### {heading}" in stdout
    for row in ROWS:
        assert f"\n| {row} |" in stdout
    assert "aiohttp " in stdout
    assert "Not a result" in stdout


@pytest.mark.slow
def test_every_contention_case_ran_once_in_order(quick_run: dict[str, Any]) -> None:
    """The quick round runs each contention case once, in the section's order, with no run that
    failed to report."""
    runs = quick_run["results"]["contention"]["runs"]
    assert [run["label"] for run in runs] == list(CONTENTION_CASES)
    assert [run for run in runs if "failed" in run or "problem" in run] == []


@pytest.mark.slow
def test_simulator_cases_count_the_servers_requests(quick_run: dict[str, Any]) -> None:
    """Against the simulator, requests and 503s are the server's count: at least one request
    per id, 503s only where the server sends them, and none at all from a fault-free one."""
    summary = quick_run["results"]["contention"]["summary"]
    for label in ("capacity 8", "storm's fault-free pair", "50% 503 storm", "dead API"):
        assert summary[label]["requests_per_id"]["median"] >= 1.0, label
    assert summary["storm's fault-free pair"]["share_503"]["median"] == 0.0
    assert summary["dead API"]["share_503"]["median"] == 1.0
    assert summary["capacity 8"]["ok_share"]["median"] == 1.0
    assert summary["capacity 8"]["goodput"]["median"] > 0
    assert summary["50% 503 storm"]["wall_vs_fault_free"]["median"] > 0


@pytest.mark.slow
def test_shared_key_cases_report_their_use_of_the_one_bucket(quick_run: dict[str, Any]) -> None:
    """K processes on one bucket fetched every id between them and report the share of the
    limit used and of 429s."""
    summary = quick_run["results"]["contention"]["summary"]
    for label in ("shared key, K=1", "shared key, K=2"):
        entry = summary[label]
        assert entry["ok_share"]["median"] == 1.0, label
        assert entry["limit_used"]["median"] > 0, label
        assert 0 <= entry["share_429"]["median"] < 1, label


@pytest.mark.slow
def test_command_cases_report_an_exit_status_and_the_connections_counted(
    quick_run: dict[str, Any],
) -> None:
    """The end-to-end sweeps against a silent server, a closed port and a closing server each
    report one exit status; the closing server counted at least one connection."""
    summary = quick_run["results"]["contention"]["summary"]
    for label in ("silent server", "closed port", "accept and close"):
        assert len(summary[label]["exit_statuses"]) == 1, label
        assert summary[label]["wall_s"]["median"] > 0, label
    assert summary["accept and close"]["connections"]["median"] >= 1


@pytest.mark.slow
def test_report_is_made_from_the_json_alone(quick_run: dict[str, Any]) -> None:
    """``python -m benchmarks.report results.json`` prints the report the run printed."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "benchmarks.report", str(quick_run["json_path"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n") == quick_run["stdout"].rstrip("\n")


@pytest.mark.parametrize(
    ("value", "status"),
    [(0.97, "PASS"), (0.5, "FAIL"), (None, "n/a")],
    ids=["met", "missed", "absent"],
)
def test_a_target_row_compares_its_reading_with_its_threshold(
    value: float | None, status: str
) -> None:
    """One row of the table is PASS at its threshold, FAIL below it, and n/a unmeasured, with
    the goal and the measured value written in the row's unit."""
    from benchmarks.targets import Reading, Target, evaluate

    target = Target(
        "a ratio",
        lambda _: None if value is None else Reading(value, " (a vs b)"),
        0.97,
        ">=",
        "x",
    )
    row = evaluate(target, {})
    assert (row["goal"], row["status"]) == (">= 0.97x", status)
    assert row["measured"] == ("not measured" if value is None else f"{value:.2f}x (a vs b)")


def test_token_bucket_lets_its_burst_through_then_its_rate() -> None:
    """A bucket of 2 at 1/s lets two requests through at once, refuses the third, and lets one
    more through a second later."""
    from benchmarks.server import TokenBucket

    now = [100.0]
    bucket = TokenBucket(1.0, 2.0, clock=lambda: now[0])
    first = [bucket.take() for _ in range(3)]
    now[0] += 1.0
    second = [bucket.take() for _ in range(2)]
    assert (first, second) == ([True, True, False], [True, False])


def test_app_ids_name_their_cvm_on_the_pool_server() -> None:
    """Each app id is ``app_`` and 40 hex digits, distinct, and reads back as its integer id."""
    from benchmarks.server import app_id, cvm_id_of

    ids = [app_id(n) for n in range(1, 1001)]
    assert len(set(ids)) == 1000
    assert all(len(cvm_id) == 44 and cvm_id.startswith("app_") for cvm_id in ids)
    assert [cvm_id_of(cvm_id.encode()) for cvm_id in ids] == list(range(1, 1001))
    assert cvm_id_of(b"app_" + b"z" * 40) == 0


def test_write_results_replaces_only_the_report_between_the_markers() -> None:
    """The report goes between the markers; the hand-written text around them is kept, and a
    document without the markers is refused."""
    from benchmarks.report import BEGIN, END, replace_report

    document = f"notes by hand\n{BEGIN}\nold report\n{END}\nafter\n"
    replaced = replace_report(document, "new report\n")
    assert replaced == f"notes by hand\n{BEGIN}\n\nnew report\n\n{END}\nafter\n"
    with pytest.raises(ValueError, match="markers"):
        replace_report("no markers here", "new report\n")


def test_overhead_diagnostic_runs_with_the_network_faked() -> None:
    """``python -m benchmarks.overhead`` sweeps both kinds of ids with the canned answer and
    prints a positive CPU per request for each."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.overhead", "--ids", "200", "--repeat", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["app ids", "int ids"]
    assert all(float(line.split()[2]) > 0 for line in lines)
