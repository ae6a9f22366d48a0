"""Summaries, targets and the report: pure functions of the measurements, rendered as Markdown.

``render`` gives the one report a run prints; ``--write-results`` puts it into
``benchmarks/RESULTS.md`` between :data:`BEGIN` and :data:`END`, under the method notes written
there by hand. Ratios are always "phala-async relative to the other", so above 1 is better for
phala-async: CPU per request is the other's over phala-async's, and times are the reference's over
phala-async's.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from benchmarks.decode import DECODERS

MB = 1_000_000
LIBRARIES = (
    "phala-async",
    "aiohttp",
    "msgspec",
    "tenacity",
    "aiolimiter",
    "yarl",
    "multidict",
    "uvloop",
    "httpx",
    "httpcore",
    "anyio",
    "sniffio",
    "pydantic",
    "pydantic-core",
    "orjson",
    "phala-cloud",
)
SERVER_BUSY = 0.8  # server CPU share of a core above which the server, not the client, may limit
BEGIN = "<!-- The report of the last full run begins here; `--write-results` rewrites it. -->"
END = "<!-- The report ends here. -->"
INT_IDS = " (int ids)"


# -- the environment -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, Python and OS of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            models = [
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            ]
        cpu = models[0] if models else cpu
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as meminfo:
            total_kib = int(
                next(line for line in meminfo if line.startswith("MemTotal")).split()[1]
            )
        memory = f"{total_kib / 1024**2:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory": memory,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
    }


def versions(names: Sequence[str] = LIBRARIES) -> dict[str, str | None]:
    """Installed version of each library, None when it is not installed."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (other work on the machine adds noise)."""
    try:
        return [round(load, 2) for load in os.getloadavg()]
    except OSError:
        return None


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- summaries -----------------------------------------------------------------------------------


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
    by_command: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_command.setdefault(run["command"], []).append(run)
    summary = {}
    for command, of_command in by_command.items():
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
    by_label: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_label.setdefault(run["label"], []).append(run)
    summary = {}
    for label, of_label in by_label.items():
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
    for section in ("goodput", "rate_limit"):
        for label, entry in results.get(section, {}).get("summary", {}).items():
            notes += [f"{label}: {problem}" for problem in entry["problems"]]
    return notes


# -- targets -------------------------------------------------------------------------------------


def _target(
    name: str, goal: str, measured: str | None, passed: bool | None, note: str = ""
) -> dict[str, Any]:
    status = "n/a" if passed is None else ("PASS" if passed else "FAIL")
    return {
        "target": name,
        "goal": goal,
        "measured": measured or "not measured",
        "status": status,
        "note": note,
    }


def _median(entry: dict[str, Any] | None, key: str) -> float | None:
    if not entry or key not in entry:
        return None
    return float(entry[key]["median"])


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its measured ratio and PASS, FAIL or n/a (not measured)."""
    throughput = results.get("throughput", {}).get("summary", {})
    return [
        *_cpu_targets(throughput),
        _command_line_target(results.get("command_line", {}).get("summary", {})),
        _goodput_target(results.get("goodput", {}).get("summary", {})),
        *_rate_targets(results.get("rate_limit", {}).get("summary", {})),
        *_peer_targets(throughput),
        _decode_target(results.get("decode")),
        _memory_target(results.get("memory")),
    ]


def _errors(summary: dict[str, dict[str, Any]], *rows: str) -> str:
    broken = [row for row in rows if row in summary and not summary[row]["complete"]]
    return f"runs of {', '.join(broken)} had errors" if broken else ""


def _cpu_targets(throughput: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for suffix, ids in (("", "app ids read from a file"), (INT_IDS, "range() ints")):
        ours, bare = throughput.get("phala-async" + suffix), throughput.get("aiohttp" + suffix)
        name = f"stream_cvms CPU per request vs the bare aiohttp loop, {ids}"
        goal = ">= 0.97x (bare CPU/req over ours)"
        mine, theirs = _median(ours, "cpu_us_per_request"), _median(bare, "cpu_us_per_request")
        if not mine or not theirs or bare is None:
            found.append(_target(name, goal, None, None))
            continue
        ratio = theirs / mine
        per_round = bare.get("cpu_efficiency_per_round")
        note = (
            f"per round {per_round['min']:.2f}-{per_round['max']:.2f}x; " if per_round else ""
        ) + _errors(throughput, "phala-async" + suffix, "aiohttp" + suffix)
        measured = f"{ratio:.2f}x ({mine:.1f} vs {theirs:.1f} us/req)"
        found.append(_target(name, goal, measured, ratio >= 0.97, note.strip("; ")))
    return found


def _command_line_target(commands: dict[str, dict[str, Any]]) -> dict[str, Any]:
    name = "phala-async sweep --ids-file -o out.jsonl vs a bare aiohttp script, wall time"
    goal = ">= 0.9x (bare wall over ours)"
    ours = _median(commands.get("phala-async sweep"), "wall_s")
    bare = _median(commands.get("bare aiohttp script"), "wall_s")
    if not ours or not bare:
        return _target(name, goal, None, None)
    ratio = bare / ours
    cpu_ours = _median(commands.get("phala-async sweep"), "cpu_s")
    cpu_bare = _median(commands.get("bare aiohttp script"), "cpu_s")
    note = f"CPU {cpu_ours:.2f} vs {cpu_bare:.2f} s" if cpu_ours and cpu_bare else ""
    incomplete = [c for c, entry in commands.items() if not entry["complete"]]
    if incomplete:
        note += f"; incomplete output from {', '.join(incomplete)}"
    measured = f"{ratio:.2f}x ({ours:.2f} vs {bare:.2f} s, process start included)"
    return _target(name, goal, measured, ratio >= 0.9, note)


def _goodput_target(goodput: dict[str, dict[str, Any]]) -> dict[str, Any]:
    name = "goodput under 20% faults: time to 95% of ids vs fault-free"
    goal = ">= 0.75x (fault-free time over faulty)"
    calm = _median(goodput.get("fault-free"), "time_to_95%")
    stormy = _median(goodput.get("20% faults"), "time_to_95%")
    if not calm or not stormy:
        return _target(name, goal, None, None)
    ratio = calm / stormy
    entry = goodput["20% faults"]
    to_100 = _median(entry, "time_to_100%")
    calm_100 = _median(goodput.get("fault-free"), "time_to_100%")
    note = (
        f"time to 100%: {to_100:.2f} vs {calm_100:.2f} s; "
        f"at most {entry['failed_ids']} id(s) failed in a run"
        if to_100 and calm_100
        else ""
    )
    measured = f"{ratio:.2f}x ({stormy:.2f} vs {calm:.2f} s)"
    return _target(name, goal, measured, ratio >= 0.75, note)


def _rate_targets(rates: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for label, entry in rates.items():
        if "adaptive off" in label:
            continue  # a comparison, not a target
        bucket = entry.get("kind") == "bucket"
        least, most_429 = (0.95, 0.03) if bucket else (0.8, 0.10)
        name = f"rate-limit use, {label} (Retry-After 1)"
        goal = f">= {least:.0%} of the limit with < {most_429:.0%} 429s"
        used, share = _median(entry, "limit_used"), _median(entry, "share_429")
        if used is None or share is None:
            found.append(_target(name, goal, None, None))
            continue
        passed = used >= least and share < most_429 and entry["failed_ids"] == 0
        note = f"{entry['failed_ids']} id(s) failed in the worst run" if entry["failed_ids"] else ""
        measured = f"{used:.1%} of the limit, {share:.1%} 429s"
        found.append(_target(name, goal, measured, passed, note))
    return found


def _peer_targets(throughput: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    def rps(row: str) -> float | None:
        return _median(throughput.get(row), "rps")

    found = []
    for name, minimum, ours, theirs in (
        ("req/s vs the bare aiohttp loop, app ids", 0.95, "phala-async", "aiohttp"),
        ("req/s vs the official SDK (phala-cloud 0.2.0)", 10, "phala-async", "phala-cloud"),
        ("req/s on uvloop vs the bare loop on asyncio", 1.2, "phala-async-uvloop", "aiohttp"),
    ):
        mine, other = rps(ours), rps(theirs)
        goal = f">= {minimum:g}x"
        if not mine or not other:
            found.append(_target(name, goal, None, None))
            continue
        ratio = mine / other
        measured = f"{ratio:.2f}x ({mine:,.0f} vs {other:,.0f} req/s)"
        found.append(
            _target(name, goal, measured, ratio >= minimum, _errors(throughput, ours, theirs))
        )
    cpu, without, bare = (
        _median(throughput.get(row), "cpu_us_per_request")
        for row in ("phala-async", "phala-async-noretry", "aiohttp")
    )
    name, goal = "CPU the retry machinery adds per request", "< 10% of the bare loop's CPU/req"
    if cpu and without and bare:
        added = cpu - without
        measured = f"{added:+.1f} us = {added / bare:+.1%} of {bare:.1f} us"
        note = f"phala-async {cpu:.1f} us/req; with retries, pacing and budget off {without:.1f}"
        found.append(_target(name, goal, measured, added / bare < 0.10, note))
    else:
        found.append(_target(name, goal, None, None))
    return found


def _decode_target(decode: dict[str, Any] | None) -> dict[str, Any]:
    decoders = (decode or {}).get("decoders", {})
    typed = decoders.get(DECODERS[0], {}).get("median_us")
    pydantic = decoders.get(DECODERS[1], {}).get("median_us")
    name, goal = "decode vs pydantic v2 on the same model", ">= 4x"
    if not typed or not pydantic:
        return _target(name, goal, None, None)
    measured = f"{pydantic / typed:.2f}x ({pydantic:.2f} vs {typed:.2f} us per body)"
    return _target(name, goal, measured, pydantic / typed >= 4)


def _memory_target(memory: dict[str, Any] | None) -> dict[str, Any]:
    name, goal = "peak RSS growth, 100,000-id over 10,000-id sweep", "<= 20 MB"
    if memory is None or "growth_mb" not in memory:
        return _target(name, goal, None, None)
    sizes = memory["sizes"]
    incomplete = [s for s in sizes if not memory["per_size"][str(s)]["complete"]]
    return _target(
        f"peak RSS growth, {sizes[-1]:,}-id over {sizes[0]:,}-id sweep",
        goal,
        f"{memory['growth_mb']:+.1f} MB",
        memory["growth_mb"] <= 20,
        f"sweeps of {incomplete} ids had errors" if incomplete else "",
    )


# -- tables --------------------------------------------------------------------------------------


def _fmt(
    value: dict[str, float] | None, digits: int = 0, scale: float = 1.0, unit: str = ""
) -> str:
    if not value:
        return "-"
    median, low, high = (value[k] * scale for k in ("median", "min", "max"))
    return f"{median:,.{digits}f}{unit} ({low:,.{digits}f}-{high:,.{digits}f})"


def _ratio(entry: dict[str, Any], key: str) -> str:
    if key not in entry:
        return "-"
    per_round = entry.get(f"{key}_per_round")
    within = f" ({per_round['min']:.2f}-{per_round['max']:.2f})" if per_round else ""
    return f"{entry[key]:.2f}x{within}"


def throughput_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = [
        [
            "client",
            "loop",
            "wall s",
            "CPU us/req",
            "req/s",
            "peak RSS MB",
            "server CPU",
            "phala-async CPU efficiency",
            "phala-async speed",
            "complete",
        ]
    ]
    for row, entry in summary.items():
        share = entry.get("server_cpu_share")
        rows.append(
            [
                row,
                entry.get("loop", "-"),
                _fmt(entry.get("wall_s"), 2),
                _fmt(entry.get("cpu_us_per_request"), 1),
                _fmt(entry.get("rps")),
                _fmt(entry.get("peak_rss_mb"), 1),
                f"{share['median']:.0%}" if share else "-",
                _ratio(entry, "cpu_efficiency"),
                _ratio(entry, "speed"),
                f"yes ({entry['runs']} runs)" if entry["complete"] else "NO",
            ]
        )
    return rows


def command_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = [["command", "wall s", "CPU s", "ids/s", "complete"]]
    for command, entry in summary.items():
        rows.append(
            [
                f"`{command}`",
                _fmt(entry.get("wall_s"), 2),
                _fmt(entry.get("cpu_s"), 2),
                _fmt(entry.get("ids_per_s")),
                f"yes ({entry['runs']} runs)" if entry["complete"] else "NO",
            ]
        )
    return rows


def goodput_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = [["sweep", "to 50% s", "to 95% s", "to 100% s", "requests/id", "failed ids (worst)"]]
    for label, entry in summary.items():
        rows.append(
            [
                label,
                _fmt(entry.get("time_to_50%"), 2),
                _fmt(entry.get("time_to_95%"), 2),
                _fmt(entry.get("time_to_100%"), 2),
                _fmt(entry.get("requests_per_id"), 3),
                str(entry.get("failed_ids", "-")),
            ]
        )
    calm, stormy = summary.get("fault-free"), summary.get("20% faults")
    if calm and stormy:
        ratios = []
        for share in ("50%", "95%", "100%"):
            a, b = _median(calm, f"time_to_{share}"), _median(stormy, f"time_to_{share}")
            ratios.append(f"{a / b:.2f}x" if a and b else "-")
        rows.append(["speed with faults vs without", *ratios, "", ""])
    return rows


def rate_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = [["sweep", "ids", "limit used", "429s of requests", "wall s", "failed ids (worst)"]]
    for label, entry in summary.items():
        rows.append(
            [
                label,
                f"{entry.get('ids', 0):,}",
                _fmt(entry.get("limit_used"), 1, 100, "%"),
                _fmt(entry.get("share_429"), 1, 100, "%"),
                _fmt(entry.get("wall_s"), 1),
                str(entry.get("failed_ids", "-")),
            ]
        )
    return rows


def memory_rows(memory: dict[str, Any]) -> list[list[str]]:
    rows = [["ids in the sweep", "peak RSS MB", "wall s", "complete"]]
    for size in memory["sizes"]:
        entry = memory["per_size"][str(size)]
        rows.append(
            [
                f"{size:,}",
                _fmt(entry.get("peak_rss_mb"), 1),
                _fmt(entry.get("wall_s"), 1),
                "yes" if entry["complete"] else "NO",
            ]
        )
    return rows


def decode_rows(decode: dict[str, Any]) -> list[list[str]]:
    decoders = decode["decoders"]
    ours = decoders.get(DECODERS[0], {}).get("median_us")
    rows = [["decoder", "us per body", "phala-async speed"]]
    for name, entry in decoders.items():
        if "skipped" in entry:
            rows.append([name, entry["skipped"], "-"])
            continue
        low, high = entry["min_us"], entry["max_us"]
        speed = f"{entry['median_us'] / ours:.2f}x" if ours else "-"
        rows.append([name, f"{entry['median_us']:.2f} ({low:.2f}-{high:.2f})", speed])
    return rows


def target_rows(found: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["target", "goal", "measured", "result", "note"]]
    rows += [[t["target"], t["goal"], t["measured"], t["status"], t["note"]] for t in found]
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(rows[0]), line(["---"] * len(rows[0])), *map(line, rows[1:])])


# -- the report ----------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    """The report of one run, in Markdown: targets, machine, libraries, then each section."""
    meta = results["meta"]
    options = meta["options"]
    info = meta["machine"]
    command = " ".join(["python -m benchmarks", *_shown_options(options["argv"])])
    lines = [f"Measured {meta['date']} by `{command}`."]
    if options["quick"] or options["rounds"] < 3:
        lines += ["", "**Not a result: quick sizes or fewer than 3 rounds.**"]
    lines += [
        "",
        "### Targets",
        "",
        markdown_table(target_rows(results["targets"])),
        "",
        "### Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"{info['memory']} memory",
        f"- {info['python']} on {info['os']}",
        f"- load average (1, 5, 15 min) before the run {meta['load_before']}, after "
        f"{meta.get('load_after')}",
        "",
        "### Libraries",
        "",
        ", ".join(f"{name} {version}" for name, version in meta["versions"].items() if version),
    ]
    if results.get("throughput"):
        lines += [
            "",
            f"### Throughput: {options['ids']:,} ids per run, concurrency "
            f"{options['concurrency']}, {options['rounds']} interleaved rounds",
            "",
            markdown_table(throughput_rows(results["throughput"]["summary"])),
        ]
    if results.get("command_line"):
        lines += [
            "",
            f"### The command line, end to end: {options['cli_ids']:,} ids from a file",
            "",
            markdown_table(command_rows(results["command_line"]["summary"])),
        ]
    if results.get("goodput"):
        lines += [
            "",
            f"### Goodput under faults: {options['goodput_ids']:,} ids, concurrency 32",
            "",
            markdown_table(goodput_rows(results["goodput"]["summary"])),
        ]
    if results.get("rate_limit"):
        lines += [
            "",
            "### Rate limits",
            "",
            markdown_table(rate_rows(results["rate_limit"]["summary"])),
        ]
    if results.get("memory"):
        lines += ["", "### Memory", "", markdown_table(memory_rows(results["memory"]))]
        if "growth_mb" in results["memory"]:
            lines += ["", f"Growth: {results['memory']['growth_mb']:+.1f} MB."]
    if results.get("decode"):
        lines += [
            "",
            f"### Decode: one {results['decode']['body_bytes']}-byte body",
            "",
            markdown_table(decode_rows(results["decode"])),
        ]
    if results.get("skipped_clients"):
        skipped = "; ".join(f"{c} ({why})" for c, why in results["skipped_clients"].items())
        lines += ["", f"Not run: {skipped}."]
    notes = results.get("notes") or []
    busy = results.get("server_busiest")
    if busy is not None:
        notes = [f"Server CPU: at most {busy:.0%} of one core during any client run.", *notes]
    if notes:
        lines += ["", "### Notes on this run", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines).rstrip() + "\n"


def _shown_options(argv: list[str]) -> list[str]:
    """The options a run was given, less where its JSON went (a path of that machine)."""
    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--json":
            skip = True
        elif not arg.startswith("--json="):
            shown.append(arg)
    return shown


def replace_report(document: str, report: str) -> str:
    """``document`` (RESULTS.md) with the text between :data:`BEGIN` and :data:`END` replaced by
    ``report``.

    Raises:
        ValueError: the markers are missing.
    """
    head, begin, rest = document.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"RESULTS.md lacks the markers {BEGIN!r} and {END!r}")
    return f"{head}{BEGIN}\n\n{report}\n{END}{tail}"
