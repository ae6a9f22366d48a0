"""Summaries, targets and tables: pure functions of the measurements, printed or as Markdown.

Two ratios, each in one direction only: the *speedup* of phala-async over a client is
``rps(phala-async) / rps(client)`` (above 1: phala-async is faster), and a client's *CPU ratio* is
``cpu_per_request(client) / cpu_per_request(phala-async)`` (below 1: the client spends less).
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


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def complete(run: dict[str, Any]) -> bool:
    """Whether a run got every id exactly once with no error."""
    return (
        "failed" not in run
        and run["missing"] == 0
        and run["repeated"] == 0
        and not run["errors"]
        and run["received"] == run["ids"]
    )


def summarize_throughput(rounds: list[list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per client: median and spread over the rounds of wall time, CPU per request, requests per
    second, peak RSS and server CPU share; whether every run was complete."""
    by_client: dict[str, list[dict[str, Any]]] = {}
    for round_runs in rounds:
        for run in round_runs:
            by_client.setdefault(run["client"], []).append(run)
    summary: dict[str, dict[str, Any]] = {}
    for client, runs in by_client.items():
        good = [run for run in runs if "failed" not in run]
        entry: dict[str, Any] = {
            "runs": len(runs),
            "complete": all(complete(run) for run in runs),
            "problems": _problems(runs),
        }
        if good:
            entry["loop"] = good[0]["loop"]
            entry["wall_s"] = _spread([run["wall_s"] for run in good])
            entry["cpu_us_per_request"] = _spread(
                [run["cpu_s"] / max(run["requests"], 1) * 1e6 for run in good]
            )
            entry["rps"] = _spread([run["requests"] / run["wall_s"] for run in good])
            entry["peak_rss_mb"] = _spread([run["peak_rss_bytes"] / MB for run in good])
            entry["faults_per_request"] = _spread(
                [run.get("minor_faults", 0) / max(run["requests"], 1) for run in good]
            )
            shares = [run["server_cpu_s"] / run["wall_s"] for run in good if "server_cpu_s" in run]
            if shares:
                entry["server_cpu_share"] = _spread(shares)
        summary[client] = entry
    _add_ratios(summary, rounds)
    return summary


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
    """``speedup``: rps(phala-async) / rps(client) from the medians, and the spread of the same
    ratio within each round (runs of one round ran back to back, so they share the noise)."""
    base = summary.get("phala-async")
    if base is None or "rps" not in base:
        return
    for client, entry in summary.items():
        if "rps" not in entry:
            continue
        entry["speedup"] = base["rps"]["median"] / entry["rps"]["median"]
        entry["cpu_ratio"] = (
            entry["cpu_us_per_request"]["median"] / (base["cpu_us_per_request"]["median"])
        )
        paired = []
        for round_runs in rounds:
            runs = {run["client"]: run for run in round_runs if "failed" not in run}
            if "phala-async" in runs and client in runs:
                ours, theirs = runs["phala-async"], runs[client]
                paired.append(
                    (ours["requests"] / ours["wall_s"]) / (theirs["requests"] / theirs["wall_s"])
                )
        if paired:
            entry["speedup_per_round"] = _spread(paired)


def run_notes(results: dict[str, Any]) -> list[str]:
    """Notes about this run's own numbers: page-fault churn, a busy server, a loaded machine."""
    notes = []
    for client, entry in results.get("throughput", {}).get("summary", {}).items():
        faults = entry.get("faults_per_request", {}).get("median", 0.0)
        if faults > 1.0:
            notes.append(
                f"{client} made {faults:.1f} page faults per request in this run (see the note on "
                "asyncio's read buffer); its system CPU is part of its CPU per request."
            )
    busy = results.get("server_busiest")
    if busy is not None and busy > SERVER_BUSY:
        notes.append(f"The server used up to {busy:.0%} of a core: it may have limited a client.")
    load = results["meta"].get("load_before") or [0.0]
    if load[0] > 0.5:
        cores = results["meta"]["machine"]["cores"]
        notes.append(
            f"Other work was running (load average {load[0]} on {cores} cores before the run): "
            "these numbers are noisy; re-measure on a quiet machine."
        )
    return notes


def summarize_memory(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median peak RSS per sweep size, and the growth from the smallest to the largest."""
    sizes = sorted({run["ids"] for run in runs})
    per_size: dict[str, Any] = {}
    for size in sizes:
        of_size = [run for run in runs if run["ids"] == size and "failed" not in run]
        per_size[str(size)] = {
            "runs": len([run for run in runs if run["ids"] == size]),
            "complete": all(complete(run) for run in runs if run["ids"] == size),
            "problems": _problems([run for run in runs if run["ids"] == size]),
        }
        if of_size:
            per_size[str(size)]["peak_rss_mb"] = _spread(
                [run["peak_rss_bytes"] / MB for run in of_size]
            )
            per_size[str(size)]["wall_s"] = _spread([run["wall_s"] for run in of_size])
    summary: dict[str, Any] = {"sizes": sizes, "per_size": per_size}
    small, large = per_size[str(sizes[0])], per_size[str(sizes[-1])]
    if len(sizes) > 1 and "peak_rss_mb" in small and "peak_rss_mb" in large:
        summary["growth_mb"] = large["peak_rss_mb"]["median"] - small["peak_rss_mb"]["median"]
    return summary


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


def _ratio_target(
    name: str, minimum: float, ours: float | None, theirs: float | None, unit: str, note: str
) -> dict[str, Any]:
    """A "phala-async is at least ``minimum`` times the other" target."""
    goal = f">= {minimum:g}x"
    if not ours or not theirs:
        return _target(name, goal, None, None)
    ratio = ours / theirs
    return _target(
        name, goal, f"{ratio:.2f}x ({ours:,.0f} vs {theirs:,.0f} {unit})", ratio >= minimum, note
    )


def targets(
    throughput: dict[str, dict[str, Any]],
    memory: dict[str, Any] | None,
    decode: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Each target of issue 4 with its measured ratio and PASS, FAIL or n/a (not measured)."""

    def median(client: str, key: str) -> float | None:
        entry = throughput.get(client, {})
        return entry[key]["median"] if key in entry else None

    def errors(*clients: str) -> str:
        broken = [c for c in clients if c in throughput and not throughput[c]["complete"]]
        return f"runs of {', '.join(broken)} had errors" if broken else ""

    def rps(client: str) -> float | None:
        return median(client, "rps")

    found = [
        _ratio_target(
            "throughput vs bare aiohttp loop",
            0.95,
            rps("phala-async"),
            rps("aiohttp"),
            "req/s",
            errors("phala-async", "aiohttp"),
        ),
        _ratio_target(
            "throughput vs official SDK (phala-cloud 0.2.0)",
            10,
            rps("phala-async"),
            rps("phala-cloud"),
            "req/s",
            errors("phala-async", "phala-cloud"),
        ),
    ]
    ours, without, floor = (
        median(client, "cpu_us_per_request")
        for client in ("phala-async", "phala-async-noretry", "aiohttp")
    )
    name, goal = "CPU the retry machinery adds per request", "< 10% of the bare loop's CPU/req"
    if ours and without and floor:
        added = ours - without
        note = (
            f"phala-async in all: {ours:.0f} us/req, {ours / floor:.2f}x the bare loop; "
            f"with retries, pacing and budget off: {without:.0f} us/req. "
            + errors("phala-async", "phala-async-noretry", "aiohttp")
        )
        measured = f"{added:+.1f} us = {added / floor:+.2%} of {floor:.1f} us"
        found.append(_target(name, goal, measured, added / floor < 0.10, note.strip()))
    else:
        found.append(_target(name, goal, None, None))
    decoders = (decode or {}).get("decoders", {})
    typed = decoders.get(DECODERS[0], {}).get("median_us")
    pydantic = decoders.get(DECODERS[1], {}).get("median_us")
    name, goal = "decode vs pydantic v2 on the same model", ">= 4x"
    if typed and pydantic:
        measured = f"{pydantic / typed:.2f}x ({pydantic:.2f} vs {typed:.2f} us per body)"
        found.append(_target(name, goal, measured, pydantic / typed >= 4))
    else:
        found.append(_target(name, goal, None, None))
    name, goal = "peak RSS growth, 100,000-id over 10,000-id sweep", "<= 20 MB"
    if memory is not None and "growth_mb" in memory:
        growth = memory["growth_mb"]
        sizes = memory["sizes"]
        incomplete = [s for s in sizes if not memory["per_size"][str(s)]["complete"]]
        found.append(
            _target(
                f"peak RSS growth, {sizes[-1]:,}-id over {sizes[0]:,}-id sweep",
                goal,
                f"{growth:+.1f} MB",
                growth <= 20,
                f"sweeps of {incomplete} ids had errors" if incomplete else "",
            )
        )
    else:
        found.append(_target(name, goal, None, None))
    found.append(
        _ratio_target(
            "phala-async on uvloop vs bare aiohttp loop on the default loop",
            1.2,
            rps("phala-async-uvloop"),
            rps("aiohttp"),
            "req/s",
            errors("phala-async-uvloop", "aiohttp"),
        )
    )
    return found


# -- tables --------------------------------------------------------------------------------------


def _fmt(spread: dict[str, float] | None, digits: int = 0, scale: float = 1.0) -> str:
    if not spread:
        return "-"
    median, low, high = (spread[k] * scale for k in ("median", "min", "max"))
    return f"{median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def throughput_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    header = [
        "client",
        "loop",
        "wall s",
        "CPU us/req",
        "page faults/req",
        "req/s",
        "peak RSS MB",
        "server CPU",
        "phala-async speedup",
        "CPU/req vs phala-async",
        "complete",
    ]
    rows = [header]
    for client, entry in summary.items():
        share = entry.get("server_cpu_share")
        rows.append(
            [
                client,
                entry.get("loop", "-"),
                _fmt(entry.get("wall_s"), 2),
                _fmt(entry.get("cpu_us_per_request")),
                _fmt(entry.get("faults_per_request"), 2),
                _fmt(entry.get("rps")),
                _fmt(entry.get("peak_rss_mb"), 1),
                f"{share['median']:.0%}" if share else "-",
                _speedup(entry),
                f"{entry['cpu_ratio']:.2f}x" if "cpu_ratio" in entry else "-",
                "yes" if entry["complete"] else "NO",
            ]
        )
    return rows


def _speedup(entry: dict[str, Any]) -> str:
    if "speedup" not in entry:
        return "-"
    paired = entry.get("speedup_per_round")
    spread = f" ({paired['min']:.2f}-{paired['max']:.2f})" if paired else ""
    return f"{entry['speedup']:.2f}x{spread}"


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
    rows = [["decoder", "us per body", "phala-async speedup"]]
    for name, entry in decoders.items():
        if "skipped" in entry:
            rows.append([name, entry["skipped"], "-"])
            continue
        low, high = entry["min_us"], entry["max_us"]
        speedup = f"{entry['median_us'] / ours:.2f}x" if ours else "-"
        rows.append([name, f"{entry['median_us']:.2f} ({low:.2f}-{high:.2f})", speedup])
    return rows


def target_rows(found: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["target", "goal", "measured", "result", "note"]]
    rows += [[t["target"], t["goal"], t["measured"], t["status"], t["note"]] for t in found]
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(rows[0]), line(["---"] * len(rows[0])), *map(line, rows[1:])])


#: What every reader of the numbers should know; RESULTS.md lists them under "Notes".
METHOD_NOTES = (
    "Each client process makes one cold sweep, as a user's script would: CPU per request "
    "includes the event loop, the GC, connection set-up and the kernel's socket work.",
    "The server is `benchmarks/server.py`'s `pool` implementation: the simulator's documents, "
    "the requested id put in, served by a minimal asyncio protocol on uvloop, so that it costs a "
    "fraction of a client's CPU (see the server CPU column). `--server simulator` serves through "
    "the simulator itself (aiohttp.web, request log); it costs 60-80 us per request on this "
    "machine, close to a client, so it can become the bottleneck.",
    "Page faults/req: on the default event loop asyncio reads each response into a fresh "
    "256 KiB buffer. Until glibc's malloc has freed one block above its mmap threshold, each "
    "such buffer is mapped, shrunk and unmapped again (mmap/mremap/munmap, about two page "
    "faults and 10-20 us of system CPU per read). When that first happens depends on a "
    "client's allocation history, not on its per-request code: under strace one cold "
    "10,000-id phala-async sweep made about 4,900 such map/unmap triples and the bare aiohttp "
    "loop none. So every client process first frees one 1 MiB block, which puts malloc where a "
    "warm process has it (`--cold-malloc` skips this). uvloop reads into a buffer of its own "
    "and never pays it.",
    "httpx and phala-cloud: `sniffio` is installed in the benchmark environment. Without it "
    "httpcore 1.0 retries `import sniffio` (a failing path search) several times a request, "
    "adding about 0.4 ms per request; even with it, httpcore's connection pool rescans every "
    "connection for every request, which is most of httpx's cost at concurrency 32.",
    "phala-cloud runs with the httpx client it builds itself (httpx's default pool: 100 "
    "connections, 20 kept alive), validating each body with a pydantic `TypeAdapter` it builds "
    "per call, as its users get it.",
)


# -- the whole report ----------------------------------------------------------------------------

_RATIO_NOTE = (
    'Ratios read one way: "phala-async speedup" is req/s of phala-async over req/s of the client '
    "in that row (above 1: phala-async is faster), from the medians, with the range of the same "
    'ratio within each round in brackets. "CPU/req vs phala-async" is the client\'s CPU per '
    "request over phala-async's (below 1: the client spends less CPU). Spreads are min-max over "
    "the rounds."
)


def render_text(results: dict[str, Any]) -> str:
    """The printed report: tables and targets."""
    meta = results["meta"]
    options = meta["options"]
    parts = [
        f"phala-async benchmarks, {meta['date']}: {options['ids']:,} ids per round, concurrency "
        f"{options['concurrency']}, {options['rounds']} interleaved rounds"
        + (" (QUICK: tiny sizes, not a result)" if options["quick"] else ""),
        f"server: {meta['server']['impl']} on {meta['server']['loop']}; "
        f"load average before {meta['load_before']}, after {meta.get('load_after')}",
    ]
    if results.get("throughput"):
        parts += [
            "",
            "Throughput",
            text_table(throughput_rows(results["throughput"]["summary"])),
            _RATIO_NOTE,
        ]
        for client, entry in results["throughput"]["summary"].items():
            for problem in entry["problems"]:
                parts.append(f"  ! {client} {problem}")
    if results.get("skipped_clients"):
        parts.append(
            "not run: " + "; ".join(f"{c} ({why})" for c, why in results["skipped_clients"].items())
        )
    if results.get("memory"):
        parts += [
            "",
            "Memory (phala-async stream_cvms, default loop)",
            text_table(memory_rows(results["memory"])),
        ]
        if "growth_mb" in results["memory"]:
            parts.append(f"growth: {results['memory']['growth_mb']:+.1f} MB")
    if results.get("decode"):
        parts += [
            "",
            f"Decode (one {results['decode']['body_bytes']}-byte documented-shape body)",
            text_table(decode_rows(results["decode"])),
        ]
    parts += ["", "Targets", text_table(target_rows(results["targets"]))]
    parts += ["", "Notes", *(f"- {note}" for note in (*METHOD_NOTES, *results.get("notes", ())))]
    busy = results.get("server_busiest")
    if busy is not None:
        verdict = (
            "the server may have limited the clients" if busy > SERVER_BUSY else "not saturated"
        )
        parts.append(f"server CPU: at most {busy:.0%} of one core during any run ({verdict})")
    return "\n".join(parts)


def render_markdown(results: dict[str, Any]) -> str:
    """``benchmarks/RESULTS.md``."""
    meta = results["meta"]
    options = meta["options"]
    machine_info = meta["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {meta['date']} by `python -m benchmarks --rounds {options['rounds']} --ids "
        f"{options['ids']} --concurrency {options['concurrency']}` (`make bench`). Regenerate with "
        "`make bench` then `benchmarks/.venv-bench/bin/python -m benchmarks --write-results`.",
        "",
    ]
    if options["rounds"] < 3 or options["quick"]:
        lines += ["**Not a result: fewer than 3 rounds or quick sizes.**", ""]
    lines += [
        "## Machine",
        "",
        f"- CPU: {machine_info['cpu']}, {machine_info['cores']} cores "
        f"({machine_info['usable_cores']} usable), {machine_info['memory']} memory",
        f"- {machine_info['python']} on {machine_info['os']}",
        f"- load average (1, 5, 15 min) before the run {meta['load_before']}, after "
        f"{meta.get('load_after')}: other work shared the machine"
        if (meta["load_before"] or [0])[0] > 0.5
        else f"- load average (1, 5, 15 min) before the run {meta['load_before']}",
        "",
        "## Libraries",
        "",
        ", ".join(f"{name} {version}" for name, version in meta["versions"].items() if version),
        "",
        "## Setup",
        "",
        f"- Server: one process (`benchmarks/server.py`, `{meta['server']['impl']}` on "
        f"{meta['server']['loop']}) on 127.0.0.1 serving the simulator's documented-shape "
        "`CvmBasicInfo` bodies with faults off.",
        f"- Each client runs in its own process over ids 1..{options['ids']:,} at concurrency "
        f"{options['concurrency']}; rounds interleave the clients (A B C A B C ...). CPU is the "
        "client process's own user + system time (`getrusage`), peak memory its `ru_maxrss`"
        + (
            "; glibc's malloc left as a fresh process has it (`--cold-malloc`)."
            if options.get("cold_malloc")
            else "; malloc settled first (see the notes)."
        ),
        "- Peers: phala-async `stream_cvms` (typed decode, default retry policy), the same on "
        "uvloop, the same with retries/pacing/retry budget off (to cost the retry machinery), a "
        "bare aiohttp loop (one session, pool limit = concurrency, a semaphore, `json.loads`, no "
        "retries), plain httpx with `json.loads`, and the official `phala-cloud` 0.2.0 "
        '`AsyncPhalaCloud.get_cvm_info` (pinned `version="2026-01-21"`), the last three under '
        "`asyncio.gather` and a semaphore as their users would write it.",
        "",
    ]
    if results.get("throughput"):
        lines += [
            "## Throughput",
            "",
            markdown_table(throughput_rows(results["throughput"]["summary"])),
            "",
            _RATIO_NOTE,
            "",
        ]
        for client, entry in results["throughput"]["summary"].items():
            lines += [f"- {client} {problem}" for problem in entry["problems"]]
    if results.get("memory"):
        lines += [
            "## Memory",
            "",
            "Peak RSS of a phala-async `stream_cvms` sweep, each in its own process.",
            "",
            markdown_table(memory_rows(results["memory"])),
            "",
        ]
        if "growth_mb" in results["memory"]:
            lines += [f"Growth: {results['memory']['growth_mb']:+.1f} MB.", ""]
    if results.get("decode"):
        lines += [
            "## Decode",
            "",
            f"One {results['decode']['body_bytes']}-byte documented-shape body "
            "from the simulator, decoded in-process; median of repeated timeit loops, "
            "microseconds per body.",
            "",
            markdown_table(decode_rows(results["decode"])),
            "",
        ]
    lines += ["## Targets", "", markdown_table(target_rows(results["targets"])), ""]
    busy = results.get("server_busiest")
    if busy is not None:
        lines += [
            f"Server CPU: at most {busy:.0%} of one core during any client run"
            + (" (it may have limited the clients)." if busy > SERVER_BUSY else " (not saturated).")
        ]
    notes = (*METHOD_NOTES, *results.get("notes", ()))
    lines += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines).rstrip() + "\n"
