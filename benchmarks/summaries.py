"""Summaries of a section's runs: medians and spreads (min-max) per row, pure functions of the
runs, written into the results JSON beside them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

MB = 1_000_000
SERVER_BUSY = 0.8  # server CPU share of a core above which the server, not the client, may limit
INT_IDS = " (int ids)"


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def row_name(run: dict[str, Any]) -> str:
    """A throughput run's row: the client, and the id kind when the ids were ints."""
    return str(run["client"]) + (INT_IDS if run.get("id_kind") == "int" else "")


def complete(run: dict[str, Any]) -> bool:
    """Whether a throughput run got every id exactly once with no error."""
    return (
        "failed" not in run
        and run["missing"] == 0
        and run["repeated"] == 0
        and not run["errors"]
        and run["received"] == run["ids"]
    )


def summarize_throughput(rounds: list[list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per row (client and id kind): median and spread over the rounds of wall time, CPU per
    request, requests per second, peak RSS and server CPU share; whether every run was complete;
    and the ratios to phala-async over the same ids (:func:`_add_ratios`)."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for round_runs in rounds:
        for run in round_runs:
            by_row.setdefault(row_name(run), []).append(run)
    summary: dict[str, dict[str, Any]] = {}
    for row, runs in by_row.items():
        good = [run for run in runs if "failed" not in run]
        entry: dict[str, Any] = {
            "client": runs[0]["client"],
            "id_kind": runs[0].get("id_kind", "int"),
            "runs": len(runs),
            "complete": all(complete(run) for run in runs),
            "problems": _problems(runs),
        }
        if good:
            entry["loop"] = good[0]["loop"]
            entry["wall_s"] = spread([run["wall_s"] for run in good])
            entry["cpu_us_per_request"] = spread([_cpu_us(run) for run in good])
            entry["rps"] = spread([run["requests"] / run["wall_s"] for run in good])
            entry["peak_rss_mb"] = spread([run["peak_rss_bytes"] / MB for run in good])
            shares = [run["server_cpu_s"] / run["wall_s"] for run in good if "server_cpu_s" in run]
            if shares:
                entry["server_cpu_share"] = spread(shares)
        summary[row] = entry
    _add_ratios(summary, rounds)
    return summary


def _grouped(runs: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    """The runs by their ``key`` (a command, a label), in the order each first appears."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run[key], []).append(run)
    return groups


def _cpu_us(run: dict[str, Any]) -> float:
    return float(run["cpu_s"] / max(run["requests"], 1) * 1e6)


def _problems(runs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for index, run in enumerate(runs, 1):
        if "failed" in run:
            problems.append(f"run {index}: {run['failed']}")
        elif not complete(run):
            problems.append(
                f"run {index}: {run['received']}/{run['ids']} received, {run['missing']} missing, "
                f"{run['repeated']} repeated, errors {run['errors']}"
            )
    return problems


def _add_ratios(summary: dict[str, dict[str, Any]], rounds: list[list[dict[str, Any]]]) -> None:
    """Against phala-async over the same kind of ids: ``speed`` is phala-async's req/s over the
    row's, ``cpu_efficiency`` the row's CPU per request over phala-async's (both from the
    medians; above 1, phala-async does better), and the same two ratios within each round
    (runs of one round ran back to back, so they share the machine's noise)."""
    for row, entry in summary.items():
        base_row = "phala-async" + (INT_IDS if entry["id_kind"] == "int" else "")
        base = summary.get(base_row)
        if base is None or "rps" not in base or "rps" not in entry:
            continue
        entry["speed"] = base["rps"]["median"] / entry["rps"]["median"]
        entry["cpu_efficiency"] = (
            entry["cpu_us_per_request"]["median"] / base["cpu_us_per_request"]["median"]
        )
        speeds, efficiencies = [], []
        for round_runs in rounds:
            runs = {row_name(run): run for run in round_runs if "failed" not in run}
            if base_row in runs and row in runs:
                ours, theirs = runs[base_row], runs[row]
                speeds.append(
                    (ours["requests"] / ours["wall_s"]) / (theirs["requests"] / theirs["wall_s"])
                )
                efficiencies.append(_cpu_us(theirs) / _cpu_us(ours))
        if speeds:
            entry["speed_per_round"] = spread(speeds)
            entry["cpu_efficiency_per_round"] = spread(efficiencies)


def summarize_commands(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per command: wall and CPU seconds (median and spread), ids per second, completeness."""
    summary = {}
    for command, of_command in _grouped(runs, "command").items():
        good = [run for run in of_command if "failed" not in run]
        entry: dict[str, Any] = {
            "runs": len(of_command),
            "complete": all(
                "failed" not in run and run["every_id_once"] and run["ok_records"] == run["ids"]
                for run in of_command
            ),
            "problems": [run["failed"] for run in of_command if "failed" in run],
        }
        if good:
            entry["wall_s"] = spread([run["wall_s"] for run in good])
            entry["cpu_s"] = spread([run["cpu_s"] for run in good])
            entry["ids_per_s"] = spread([run["ids"] / run["wall_s"] for run in good])
        summary[command] = entry
    return summary


def summarize_scenarios(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scenario label: medians and spreads of the times to each share of the ids, wall,
    requests per id and 429 share, the limit's use for a rate-limit case, and the worst run's
    failed ids."""
    summary = {}
    for label, of_label in _grouped(runs, "label").items():
        good = [run for run in of_label if "failed" not in run]
        entry: dict[str, Any] = {
            "runs": len(of_label),
            "problems": [run["failed"] for run in of_label if "failed" in run],
        }
        if good:
            entry["ids"] = good[0]["ids"]
            entry["wall_s"] = spread([run["wall_s"] for run in good])
            for share in good[0]["time_to"]:
                values = [run["time_to"][share] for run in good if run["time_to"][share]]
                if values:
                    entry[f"time_to_{share}"] = spread(values)
            entry["requests_per_id"] = spread([run["requests"] / run["ids"] for run in good])
            entry["share_429"] = spread([run["rate_limited"] / run["requests"] for run in good])
            entry["failed_ids"] = max(sum(run["errors"].values()) for run in good)
            entry["missing_ids"] = max(run["ids"] - run["results"] for run in good)
            if "limit" in good[0]:
                entry["limit"] = good[0]["limit"]
                entry["kind"] = good[0]["kind"]
                entry["limit_used"] = spread([limit_used(run) for run in good])
        summary[label] = entry
    return summary


def limit_used(run: dict[str, Any]) -> float:
    """The share of a rate limit a sweep used. For a token bucket: the ids fetched over the
    most any client could have been let through in the sweep's time, a full bucket (one second
    of the rate) plus the rate times the wall time. For the simulator's fixed window: ids per
    second over the limit, as the suite measured it before."""
    if run["kind"] == "bucket":
        return float(run["ok"] / (run["limit"] + run["limit"] * run["wall_s"]))
    return float(run["ok"] / run["wall_s"] / run["limit"])


def summarize_memory(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak RSS per sweep size, and the growth from the smallest to the largest."""
    sizes = sorted({run["ids"] for run in runs})
    per_size: dict[str, Any] = {}
    for size in sizes:
        of_size = [run for run in runs if run["ids"] == size]
        good = [run for run in of_size if "failed" not in run]
        per_size[str(size)] = {
            "runs": len(of_size),
            "complete": all(complete(run) for run in of_size),
            "problems": _problems(of_size),
        }
        if good:
            per_size[str(size)]["peak_rss_mb"] = spread(
                [run["peak_rss_bytes"] / MB for run in good]
            )
            per_size[str(size)]["wall_s"] = spread([run["wall_s"] for run in good])
    summary: dict[str, Any] = {"sizes": sizes, "per_size": per_size}
    small, large = per_size[str(sizes[0])], per_size[str(sizes[-1])]
    if len(sizes) > 1 and "peak_rss_mb" in small and "peak_rss_mb" in large:
        summary["growth_mb"] = large["peak_rss_mb"]["median"] - small["peak_rss_mb"]["median"]
    return summary


#: What a contention run may measure; each one present is summarised as median and spread.
CONTENTION_MEASURES = (
    "wall_s",
    "ok_share",
    "requests_per_id",
    "share_503",
    "share_429",
    "limit_used",
    "goodput",
    "wall_vs_fault_free",
    "exit_status",
    "connections",
)


def summarize_contention(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per contention case: the spread of each of :data:`CONTENTION_MEASURES` it has, its ids,
    the exit statuses seen, and what went wrong in a run."""
    summary = {}
    for label, of_label in _grouped(runs, "label").items():
        good = [run for run in of_label if "failed" not in run]
        entry: dict[str, Any] = {
            "runs": len(of_label),
            "ids": of_label[0]["ids"],
            "problems": [
                run.get("failed") or run["problem"]
                for run in of_label
                if "failed" in run or "problem" in run
            ],
        }
        for measure in CONTENTION_MEASURES:
            values = [run[measure] for run in good if run.get(measure) is not None]
            if values:
                entry[measure] = spread(values)
        if any("exit_status" in run for run in good):
            entry["exit_statuses"] = sorted({run["exit_status"] for run in good})
        summary[label] = entry
    return summary


def run_notes(results: dict[str, Any]) -> list[str]:
    """What this run's own numbers say about their reliability: a busy server, a loaded machine,
    a run that failed."""
    notes = []
    busy = results.get("server_busiest")
    if busy is not None and busy > SERVER_BUSY:
        notes.append(f"The server used up to {busy:.0%} of a core: it may have limited a client.")
    load = results["meta"].get("load_before") or [0.0]
    if load[0] > 0.5:
        cores = results["meta"]["machine"]["cores"]
        notes.append(
            f"Other work was running (load average {load[0]} on {cores} cores before the run): "
            "single runs are noisy; read the medians and the per-round ratios."
        )
    for row, entry in results.get("throughput", {}).get("summary", {}).items():
        notes += [f"{row}: {problem}" for problem in entry["problems"]]
    for command, entry in results.get("command_line", {}).get("summary", {}).items():
        if not entry["complete"]:
            notes.append(f"{command}: some runs did not write one ok record per id")
        notes += [f"{command}: {problem}" for problem in entry["problems"]]
    for section in ("goodput", "rate_limit", "contention"):
        for label, entry in results.get(section, {}).get("summary", {}).items():
            notes += [f"{label}: {problem}" for problem in entry["problems"]]
    return notes
