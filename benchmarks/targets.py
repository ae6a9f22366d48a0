"""Every target of ``make bench`` as data: :data:`TARGETS`, one row each (its name, the measure it
reads, the threshold, the direction of the comparison and the unit), and :func:`evaluate`, the one
place that compares and formats.

A measure reads the run's results (their JSON) and returns a :class:`Reading`, or None when the
run did not measure it (the target is then "n/a"). Ratios are always "phala-async relative to the
other", so above 1 is better for phala-async: CPU per request is the other's over phala-async's,
and times are the reference's over phala-async's.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.decode import DECODERS
from benchmarks.summaries import INT_IDS

Results = dict[str, Any]

#: How a value, a threshold, and the min and max of a spread of each unit are written.
UNITS = {
    "x": ("{:.2f}x", "{:g}x", "{:.2f}"),
    "%": ("{:.1%}", "{:.0%}", "{:.1%}"),
    "+%": ("{:+.1%}", "{:.0%}", "{:+.1%}"),
    "MB": ("{:+.1f} MB", "{:g} MB", "{:+.1f}"),
    "s": ("{:.2f} s", "{:g} s", "{:.2f}"),
    "req/id": ("{:.2f} req/id", "{:g} req/id", "{:.2f}"),
    "exit": ("exit {:g}", "exit {:g}", "{:g}"),
    "connections": ("{:g} connections", "{:g} connections", "{:g}"),
}
DIRECTIONS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Reading:
    """What a measure read: the value compared, the words after it, a note, whether the run's
    other conditions held (every id fetched, say), and for a spread its min and max."""

    value: float
    detail: str = ""
    note: str = ""
    holds: bool = True
    low: float | None = None
    high: float | None = None
    name: str | None = None  # a name that depends on the run's sizes
    before: str = ""  # words before the value


Measure = Callable[[Results], Reading | None]


@dataclass(frozen=True)
class Target:
    """One target: ``measure``'s value ``direction`` ``threshold``, in ``unit``."""

    name: str
    measure: Measure
    threshold: float
    direction: str
    unit: str
    goal: str = ""  # words after the threshold in the goal column


def _median(entry: dict[str, Any] | None, key: str) -> float | None:
    if not entry or key not in entry:
        return None
    return float(entry[key]["median"])


def _summary(results: Results, section: str) -> dict[str, Any]:
    summary: dict[str, Any] = (results.get(section) or {}).get("summary", {})
    return summary


def _errors(summary: dict[str, dict[str, Any]], *rows: str) -> str:
    broken = [row for row in rows if row in summary and not summary[row]["complete"]]
    return f"runs of {', '.join(broken)} had errors" if broken else ""


# -- the measures ----------------------------------------------------------------------------------


def cpu_vs_bare(suffix: str) -> Measure:
    """Bare aiohttp's CPU per request over phala-async's, over the ids of ``suffix``'s rows."""

    def read(results: Results) -> Reading | None:
        throughput = _summary(results, "throughput")
        ours, bare = throughput.get("phala-async" + suffix), throughput.get("aiohttp" + suffix)
        mine, theirs = _median(ours, "cpu_us_per_request"), _median(bare, "cpu_us_per_request")
        if not mine or not theirs or bare is None:
            return None
        per_round = bare.get("cpu_efficiency_per_round")
        note = (
            f"per round {per_round['min']:.2f}-{per_round['max']:.2f}x; " if per_round else ""
        ) + _errors(throughput, "phala-async" + suffix, "aiohttp" + suffix)
        detail = f" ({mine:.1f} vs {theirs:.1f} us/req)"
        return Reading(theirs / mine, detail, note.strip("; "))

    return read


def command_line(results: Results) -> Reading | None:
    commands = _summary(results, "command_line")
    ours = _median(commands.get("phala-async sweep"), "wall_s")
    bare = _median(commands.get("bare aiohttp script"), "wall_s")
    if not ours or not bare:
        return None
    cpu_ours = _median(commands.get("phala-async sweep"), "cpu_s")
    cpu_bare = _median(commands.get("bare aiohttp script"), "cpu_s")
    note = f"CPU {cpu_ours:.2f} vs {cpu_bare:.2f} s" if cpu_ours and cpu_bare else ""
    incomplete = [c for c, entry in commands.items() if not entry["complete"]]
    if incomplete:
        note += f"; incomplete output from {', '.join(incomplete)}"
    return Reading(bare / ours, f" ({ours:.2f} vs {bare:.2f} s, process start included)", note)


def goodput(results: Results) -> Reading | None:
    summary = _summary(results, "goodput")
    calm = _median(summary.get("fault-free"), "time_to_95%")
    stormy = _median(summary.get("20% faults"), "time_to_95%")
    if not calm or not stormy:
        return None
    entry = summary["20% faults"]
    to_100 = _median(entry, "time_to_100%")
    calm_100 = _median(summary.get("fault-free"), "time_to_100%")
    note = (
        f"time to 100%: {to_100:.2f} vs {calm_100:.2f} s; "
        f"at most {entry['failed_ids']} id(s) failed in a run"
        if to_100 and calm_100
        else ""
    )
    return Reading(calm / stormy, f" ({stormy:.2f} vs {calm:.2f} s)", note)


def rate_use(label: str, most_429: float) -> Measure:
    """The share of the limit a rate-limit sweep used; it holds only with fewer than
    ``most_429`` of its requests answered 429 and no id failed."""

    def read(results: Results) -> Reading | None:
        entry = _summary(results, "rate_limit").get(label)
        used, share = _median(entry, "limit_used"), _median(entry, "share_429")
        if entry is None or used is None or share is None:
            return None
        failed = entry["failed_ids"]
        note = f"{failed} id(s) failed in the worst run" if failed else ""
        holds = share < most_429 and failed == 0
        return Reading(used, f" of the limit, {share:.1%} 429s", note, holds)

    return read


def rps_vs(ours: str, theirs: str) -> Measure:
    """Row ``ours``'s requests per second over row ``theirs``'s."""

    def read(results: Results) -> Reading | None:
        throughput = _summary(results, "throughput")
        mine, other = _median(throughput.get(ours), "rps"), _median(throughput.get(theirs), "rps")
        if not mine or not other:
            return None
        detail = f" ({mine:,.0f} vs {other:,.0f} req/s)"
        return Reading(mine / other, detail, _errors(throughput, ours, theirs))

    return read


def retry_cpu(results: Results) -> Reading | None:
    throughput = _summary(results, "throughput")
    cpu, without, bare = (
        _median(throughput.get(row), "cpu_us_per_request")
        for row in ("phala-async", "phala-async-noretry", "aiohttp")
    )
    if not cpu or not without or not bare:
        return None
    added = cpu - without
    note = f"phala-async {cpu:.1f} us/req; with retries, pacing and budget off {without:.1f}"
    return Reading(added / bare, f" of {bare:.1f} us", note, before=f"{added:+.1f} us = ")


def decode(results: Results) -> Reading | None:
    decoders = (results.get("decode") or {}).get("decoders", {})
    typed = decoders.get(DECODERS[0], {}).get("median_us")
    pydantic = decoders.get(DECODERS[1], {}).get("median_us")
    if not typed or not pydantic:
        return None
    return Reading(pydantic / typed, f" ({pydantic:.2f} vs {typed:.2f} us per body)")


def store_added(kind: str, what: str) -> Measure:
    """What ``--store`` adds to a sweep's wall time, for ``kind`` B (the first snapshot) or C
    (an unchanged fleet's next): the median of the per-round ratios to the sweep alone."""

    def measure(results: Results) -> Reading | None:
        found = (results.get("store") or {}).get("kinds", {}).get(kind)
        if not found or "wall_added" not in found:
            return None
        ids = results["store"]["ids"]
        return Reading(
            found["wall_added"],
            f" (CPU {found['cpu_added']:+.1%})",
            low=found["wall_added_min"],
            high=found["wall_added_max"],
            name=f"sweep --store, {what}: wall added to a {ids:,}-id sweep",
        )

    return measure


def store_growth(results: Results) -> Reading | None:
    found = results.get("store")
    if not found:
        return None
    per_cvm = (found["second_bytes"] - found["first_bytes"]) / found["ids"]
    return Reading(found["growth"], f" ({per_cvm:.0f} bytes per CVM)")


def memory(results: Results) -> Reading | None:
    found = results.get("memory")
    if found is None or "growth_mb" not in found:
        return None
    sizes = found["sizes"]
    incomplete = [s for s in sizes if not found["per_size"][str(s)]["complete"]]
    note = f"sweeps of {incomplete} ids had errors" if incomplete else ""
    name = f"peak RSS growth, {sizes[-1]:,}-id over {sizes[0]:,}-id sweep"
    return Reading(found["growth_mb"], note=note, name=name)


def case(label: str, key: str, worst_of: tuple[str, ...] = ()) -> Measure:
    """The median of ``key`` in contention case ``label`` with its min and max (with
    ``worst_of``, the case among those labels whose median is highest)."""

    def read(results: Results) -> Reading | None:
        summary = _summary(results, "contention")
        labels = worst_of or (label,)
        entries = [(name, summary[name]) for name in labels if key in summary.get(name, {})]
        if not entries:
            return None
        name, entry = max(entries, key=lambda pair: pair[1][key]["median"])
        spread = entry[key]
        notes = [f"{name}: {problem}" for problem in entry["problems"]]
        if worst_of:
            notes.insert(0, f"worst: {name}")
        if len(entry.get("exit_statuses", [])) > 1:
            notes.append(f"exit statuses {entry['exit_statuses']}")
        return Reading(
            spread["median"], note="; ".join(notes), low=spread["min"], high=spread["max"]
        )

    return read


SHARED = tuple(f"shared key, K={k}" for k in (1, 2, 4))

TARGETS = (
    Target(
        "stream_cvms CPU per request vs the bare aiohttp loop, app ids read from a file",
        cpu_vs_bare(""),
        0.97,
        ">=",
        "x",
        " (bare CPU/req over ours)",
    ),
    Target(
        "stream_cvms CPU per request vs the bare aiohttp loop, range() ints",
        cpu_vs_bare(INT_IDS),
        0.97,
        ">=",
        "x",
        " (bare CPU/req over ours)",
    ),
    Target(
        "phala-async sweep --ids-file -o out.jsonl vs a bare aiohttp script, wall time",
        command_line,
        0.9,
        ">=",
        "x",
        " (bare wall over ours)",
    ),
    Target(
        "goodput under 20% faults: time to 95% of ids vs fault-free",
        goodput,
        0.75,
        ">=",
        "x",
        " (fault-free time over faulty)",
    ),
    *(
        Target(
            f"rate-limit use, {label} (Retry-After 1)",
            rate_use(label, most_429),
            least,
            ">=",
            "%",
            f" of the limit with < {most_429:.0%} 429s",
        )
        for label, least, most_429 in (
            ("token bucket 100/s", 0.95, 0.03),
            ("token bucket 200/s", 0.95, 0.03),
            ("fixed window 200/s", 0.8, 0.10),
        )
    ),
    Target(
        "req/s vs the bare aiohttp loop, app ids", rps_vs("phala-async", "aiohttp"), 0.95, ">=", "x"
    ),
    Target(
        "req/s vs the official SDK (phala-cloud 0.2.0)",
        rps_vs("phala-async", "phala-cloud"),
        10,
        ">=",
        "x",
    ),
    Target(
        "req/s on uvloop vs the bare loop on asyncio",
        rps_vs("phala-async-uvloop", "aiohttp"),
        1.2,
        ">=",
        "x",
    ),
    Target(
        "CPU the retry machinery adds per request",
        retry_cpu,
        0.10,
        "<",
        "+%",
        " of the bare loop's CPU/req",
    ),
    Target("decode vs pydantic v2 on the same model", decode, 4, ">=", "x"),
    Target("peak RSS growth, 100,000-id over 10,000-id sweep", memory, 20, "<=", "MB"),
    # -- the snapshot store (issue 16)
    Target(
        "sweep --store, unchanged fleet: wall added",
        store_added("C", "an unchanged fleet's next snapshot"),
        0.10,
        "<",
        "+%",
    ),
    Target(
        "sweep --store, first snapshot: wall added",
        store_added("B", "first snapshot"),
        0.10,
        "<",
        "+%",
    ),
    Target(
        "store growth, an unchanged fleet's second snapshot over the first",
        store_growth,
        0.10,
        "<",
        "%",
    ),
    # -- contention: the request engine's targets
    Target(
        "capacity-capped server (8 at once, 50 ms): ids ok",
        case("capacity 8", "ok_share"),
        1.0,
        ">=",
        "%",
    ),
    Target(
        "capacity-capped server: goodput, ideal time (ids x 50 ms / 8) over wall",
        case("capacity 8", "goodput"),
        0.8,
        ">=",
        "%",
    ),
    Target(
        "capacity-capped server: 503s of requests (server's count)",
        case("capacity 8", "share_503"),
        0.15,
        "<=",
        "%",
    ),
    Target(
        "50% 503 storm, max_attempts 4: ids ok", case("50% 503 storm", "ok_share"), 0.9, ">=", "%"
    ),
    Target(
        "50% 503 storm: requests per id (server's count)",
        case("50% 503 storm", "requests_per_id"),
        2.2,
        "<=",
        "req/id",
    ),
    Target(
        "50% 503 storm: wall time vs the fault-free sweep",
        case("50% 503 storm", "wall_vs_fault_free"),
        10,
        "<=",
        "x",
    ),
    Target(
        "shared key, 1 process on a 100/s bucket: limit used",
        case(SHARED[0], "limit_used"),
        0.95,
        ">=",
        "%",
    ),
    *(
        Target(
            f"shared key, {label[-1]} processes on one 100/s bucket: limit used together",
            case(label, "limit_used"),
            0.85,
            ">=",
            "%",
        )
        for label in SHARED[1:]
    ),
    Target(
        "shared key: 429s of requests, worst K",
        case("", "share_429", worst_of=SHARED),
        0.05,
        "<=",
        "%",
    ),
    Target(
        "silent server: phala-async sweep --timeout 1 --max-attempts 1, wall",
        case("silent server", "wall_s"),
        3,
        "<",
        "s",
        ", process start included",
    ),
    Target("silent server: exit status", case("silent server", "exit_status"), 4, "==", "exit"),
    Target("closed port: exit status", case("closed port", "exit_status"), 4, "==", "exit"),
    Target(
        "server that accepts and closes: connections made",
        case("accept and close", "connections"),
        5,
        "<=",
        "connections",
        ' ("a handful")',
    ),
    Target(
        "dead API (every request 503): requests per id (server's count)",
        case("dead API", "requests_per_id"),
        1.25,
        "<=",
        "req/id",
    ),
)


def evaluate(target: Target, results: Results) -> dict[str, Any]:
    """``target`` against ``results``: its row of the report, with PASS, FAIL or n/a."""
    value_form, threshold_form, bare_form = UNITS[target.unit]
    direction = "" if target.direction == "==" else f"{target.direction} "
    goal = f"{direction}{threshold_form.format(target.threshold)}{target.goal}"
    reading = target.measure(results)
    if reading is None:
        return _row(target.name, goal, "not measured", "n/a", "")
    measured = reading.before + value_form.format(reading.value) + reading.detail
    if reading.low is not None and reading.high is not None and reading.low != reading.high:
        low, high = (bare_form.format(v) for v in (reading.low, reading.high))
        measured += f" (min-max {low} to {high})"
    passed = DIRECTIONS[target.direction](reading.value, target.threshold) and reading.holds
    return _row(
        reading.name or target.name, goal, measured, "PASS" if passed else "FAIL", reading.note
    )


def _row(name: str, goal: str, measured: str, status: str, note: str) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": measured, "status": status, "note": note}


def targets(results: Results) -> list[dict[str, Any]]:
    """Every target of :data:`TARGETS` with its measured value and PASS, FAIL or n/a."""
    return [evaluate(target, results) for target in TARGETS]
