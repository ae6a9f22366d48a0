"""The benchmark harness still runs end to end: ``python -m benchmarks --quick`` on tiny sizes.

Only the structure of its output is checked (every request accounted for, every number present),
never a speed: speed targets are measured by ``make bench`` and reported, not asserted. The peers
that need the benchmark environment (httpx, pydantic, phala-cloud, uvloop) are not installed here,
so the run covers phala-async and the bare aiohttp loop, which need only the project's own
dependencies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ("phala-async", "phala-async-noretry", "aiohttp")
TARGETS = 6

pytestmark = pytest.mark.skipif(
    not (ROOT / "benchmarks" / "__main__.py").is_file(),
    reason="the benchmarks/ directory is not here (it is not shipped in the sdist or wheel)",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--quick`` run of the harness: its printed report, JSON and Markdown."""
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
            "--markdown",
            str(out / "RESULTS.md"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {
        "stdout": done.stdout,
        "results": json.loads((out / "results.json").read_text()),
        "markdown": (out / "RESULTS.md").read_text(),
    }


def test_every_client_ran_once_in_the_single_quick_round(quick_run: dict[str, Any]) -> None:
    """The quick run has one round with each requested client, in the order given."""
    rounds = quick_run["results"]["throughput"]["rounds"]
    assert [[run["client"] for run in round_runs] for round_runs in rounds] == [list(CLIENTS)]


def test_every_request_is_accounted_for(quick_run: dict[str, Any]) -> None:
    """Each client received every id exactly once, with no error and no failed run."""
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


@pytest.mark.parametrize("measure", ["wall_s", "cpu_us_per_request", "rps", "peak_rss_mb"])
def test_summary_has_a_positive_median_and_spread_per_client(
    quick_run: dict[str, Any], measure: str
) -> None:
    """Every client's summary carries the measure as median, min and max, all positive."""
    summary = quick_run["results"]["throughput"]["summary"]
    assert set(summary) == set(CLIENTS)
    for client, entry in summary.items():
        spread = entry[measure]
        assert spread["min"] <= spread["median"] <= spread["max"], (client, spread)
        assert spread["min"] > 0, (client, spread)
        assert entry["complete"] is True, client


def test_speedups_are_relative_to_phala_async(quick_run: dict[str, Any]) -> None:
    """phala-async's own speedup is exactly 1 and every other client has a positive one."""
    summary = quick_run["results"]["throughput"]["summary"]
    assert summary["phala-async"]["speedup"] == 1.0
    assert all(entry["speedup"] > 0 for entry in summary.values())


def test_memory_sweeps_report_peak_rss_and_growth(quick_run: dict[str, Any]) -> None:
    """Both memory sweeps completed and the growth between them is their medians' difference."""
    memory = quick_run["results"]["memory"]
    small, large = (memory["per_size"][str(size)] for size in memory["sizes"])
    assert (small["complete"], large["complete"]) == (True, True)
    expected = large["peak_rss_mb"]["median"] - small["peak_rss_mb"]["median"]
    assert memory["growth_mb"] == pytest.approx(expected)


def test_decode_times_phala_async_and_skips_absent_peers(quick_run: dict[str, Any]) -> None:
    """The decode benchmark times phala-async and json.loads, and names why a peer did not run."""
    decoders = quick_run["results"]["decode"]["decoders"]
    assert decoders["phala-async (msgspec Struct)"]["median_us"] > 0
    assert decoders["json.loads"]["median_us"] > 0
    for entry in decoders.values():
        assert ("median_us" in entry) != ("skipped" in entry), entry


def test_every_target_is_reported_with_a_verdict(quick_run: dict[str, Any]) -> None:
    """All six targets are listed, each PASS, FAIL or n/a, in the JSON and the printed table."""
    targets = quick_run["results"]["targets"]
    assert len(targets) == TARGETS
    assert {target["status"] for target in targets} <= {"PASS", "FAIL", "n/a"}
    for target in targets:
        assert target["target"] in quick_run["stdout"]


def test_printed_report_has_each_table_and_client(quick_run: dict[str, Any]) -> None:
    """The printed report has the throughput, memory, decode and target tables and each client."""
    stdout = quick_run["stdout"]
    for heading in ("Throughput", "Memory", "Decode", "Targets"):
        assert f"\n{heading}" in stdout
    for client in CLIENTS:
        assert f"\n{client} " in stdout


def test_markdown_names_the_machine_and_marks_a_quick_run(quick_run: dict[str, Any]) -> None:
    """The RESULTS.md text has its sections, library versions, and says a quick run is no result."""
    markdown = quick_run["markdown"]
    for section in ("## Machine", "## Libraries", "## Throughput", "## Memory", "## Targets"):
        assert section in markdown
    assert "aiohttp " in markdown
    assert "msgspec " in markdown
    assert "Not a result" in markdown
