"""The report: Markdown made from a run's results JSON alone (``render`` is a pure function of it).

``python -m benchmarks --json out.json`` writes the JSON; ``python -m benchmarks.report
out.json`` prints its report again. ``--write-results`` puts the report into
``benchmarks/RESULTS.md`` between :data:`BEGIN` and :data:`END`, under the method notes written
there by hand. The targets are data, in ``benchmarks/targets.py``; the summaries are
``benchmarks/summaries.py``'s.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.decode import DECODERS

BEGIN = "<!-- The report of the last full run begins here; `--write-results` rewrites it. -->"
END = "<!-- The report ends here. -->"

#: A table cell: its text for a row's name and summary entry.
Cell = Callable[[str, dict[str, Any]], str]
#: A table column: its heading and its cell.
Column = tuple[str, Cell]


def _fmt(
    value: dict[str, float] | None, digits: int = 0, scale: float = 1.0, unit: str = ""
) -> str:
    if not value:
        return "-"
    median, low, high = (value[k] * scale for k in ("median", "min", "max"))
    return f"{median:,.{digits}f}{unit} ({low:,.{digits}f}-{high:,.{digits}f})"


def spread(key: str, digits: int = 0, scale: float = 1.0, unit: str = "") -> Cell:
    """``key``'s median and min-max."""
    return lambda _, entry: _fmt(entry.get(key), digits, scale, unit)


def percent(key: str) -> Cell:
    return spread(key, 1, 100, "%")


def _ratio(entry: dict[str, Any], key: str) -> str:
    if key not in entry:
        return "-"
    per_round = entry.get(f"{key}_per_round")
    within = f" ({per_round['min']:.2f}-{per_round['max']:.2f})" if per_round else ""
    return f"{entry[key]:.2f}x{within}"


def _complete(_: str, entry: dict[str, Any]) -> str:
    return f"yes ({entry['runs']} runs)" if entry["complete"] else "NO"


def _heading(name: str) -> Callable[[str, dict[str, Any]], str]:
    return lambda row, _: name.format(row)


def _plain(key: str, default: str = "-") -> Callable[[str, dict[str, Any]], str]:
    return lambda _, entry: str(entry.get(key, default))


THROUGHPUT: list[Column] = [
    ("client", _heading("{}")),
    ("loop", _plain("loop")),
    ("wall s", spread("wall_s", 2)),
    ("CPU us/req", spread("cpu_us_per_request", 1)),
    ("req/s", spread("rps")),
    ("peak RSS MB", spread("peak_rss_mb", 1)),
    (
        "server CPU",
        lambda _, e: f"{e['server_cpu_share']['median']:.0%}" if "server_cpu_share" in e else "-",
    ),
    ("phala-async CPU efficiency", lambda _, e: _ratio(e, "cpu_efficiency")),
    ("phala-async speed", lambda _, e: _ratio(e, "speed")),
    ("complete", _complete),
]
COMMANDS: list[Column] = [
    ("command", _heading("`{}`")),
    ("wall s", spread("wall_s", 2)),
    ("CPU s", spread("cpu_s", 2)),
    ("ids/s", spread("ids_per_s")),
    ("complete", _complete),
]
SHARES = ("50%", "95%", "100%")
GOODPUT: list[Column] = [
    ("sweep", _heading("{}")),
    *((f"to {share} s", spread(f"time_to_{share}", 2)) for share in SHARES),
    ("requests/id", spread("requests_per_id", 3)),
    ("failed ids (worst)", _plain("failed_ids")),
]
RATES: list[Column] = [
    ("sweep", _heading("{}")),
    ("ids", lambda _, e: f"{e.get('ids', 0):,}"),
    ("limit used", percent("limit_used")),
    ("429s of requests", percent("share_429")),
    ("wall s", spread("wall_s", 1)),
    ("failed ids (worst)", _plain("failed_ids")),
]
MEMORY: list[Column] = [
    ("ids in the sweep", lambda row, _: f"{int(row):,}"),
    ("peak RSS MB", spread("peak_rss_mb", 1)),
    ("wall s", spread("wall_s", 1)),
    ("complete", lambda _, e: "yes" if e["complete"] else "NO"),
]
CONTENTION: list[Column] = [
    ("case", _heading("{}")),
    ("ids", lambda _, e: f"{e['ids']:,}"),
    ("wall s", spread("wall_s", 2)),
    ("ids ok", percent("ok_share")),
    ("requests/id", spread("requests_per_id", 2)),
    ("503s of requests", percent("share_503")),
    ("429s of requests", percent("share_429")),
    ("limit used", percent("limit_used")),
    ("goodput", percent("goodput")),
    ("exit status", lambda _, e: ", ".join(map(str, e.get("exit_statuses", []))) or "-"),
    ("connections", spread("connections")),
]


def table(summary: dict[str, dict[str, Any]], columns: list[Column]) -> list[list[str]]:
    """One row per summary entry, one cell per column."""
    return [[heading for heading, _ in columns]] + [
        [cell(row, entry) for _, cell in columns] for row, entry in summary.items()
    ]


def goodput_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = table(summary, GOODPUT)
    calm, stormy = summary.get("fault-free"), summary.get("20% faults")
    if calm and stormy:
        ratios = []
        for share in SHARES:
            key = f"time_to_{share}"
            a = calm[key]["median"] if key in calm else None
            b = stormy[key]["median"] if key in stormy else None
            ratios.append(f"{a / b:.2f}x" if a and b else "-")
        rows.append(["speed with faults vs without", *ratios, "", ""])
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


def store_rows(found: dict[str, Any]) -> list[list[str]]:
    rows = [["sweep", "wall s", "CPU s", "wall added (min-max)", "CPU added"]]
    for label, entry in found["kinds"].items():
        added = (
            f"{entry['wall_added']:+.1%} ({entry['wall_added_min']:+.1%} to "
            f"{entry['wall_added_max']:+.1%})"
            if "wall_added" in entry
            else "-"
        )
        cpu = f"{entry['cpu_added']:+.1%}" if "cpu_added" in entry else "-"
        rows.append(
            [
                f"{label}: {entry['name']}",
                f"{entry['wall_s']:.3f}",
                f"{entry['cpu_s']:.3f}",
                added,
                cpu,
            ]
        )
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(rows[0]), line(["---"] * len(rows[0])), *map(line, rows[1:])])


def _section(heading: str, rows: list[list[str]]) -> list[str]:
    return ["", f"### {heading}", "", markdown_table(rows)]


def render(results: dict[str, Any]) -> str:
    """The report of one run, in Markdown: targets, machine, libraries, then each section."""
    meta = results["meta"]
    options = meta["options"]
    info = meta["machine"]
    command = " ".join(["python -m benchmarks", *_shown_options(options["argv"])])
    lines = [f"Measured {meta['date']} by `{command}`."]
    if options["quick"] or options["rounds"] < 3:
        lines += ["", "**Not a result: quick sizes or fewer than 3 rounds.**"]
    targets = [
        [t["target"], t["goal"], t["measured"], t["status"], t["note"]] for t in results["targets"]
    ]
    lines += _section("Targets", [["target", "goal", "measured", "result", "note"], *targets])
    lines += [
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
        heading = (
            f"Throughput: {options['ids']:,} ids per run, concurrency "
            f"{options['concurrency']}, {options['rounds']} interleaved rounds"
        )
        lines += _section(heading, table(results["throughput"]["summary"], THROUGHPUT))
    if results.get("command_line"):
        heading = f"The command line, end to end: {options['cli_ids']:,} ids from a file"
        lines += _section(heading, table(results["command_line"]["summary"], COMMANDS))
    if results.get("goodput"):
        heading = f"Goodput under faults: {options['goodput_ids']:,} ids, concurrency 32"
        lines += _section(heading, goodput_rows(results["goodput"]["summary"]))
    if results.get("rate_limit"):
        lines += _section("Rate limits", table(results["rate_limit"]["summary"], RATES))
    if results.get("contention"):
        heading = (
            "Contention: servers that push back or never answer, concurrency 32, "
            f"{options.get('contention_rounds', 1)} interleaved round(s)"
        )
        lines += _section(heading, table(results["contention"]["summary"], CONTENTION))
    if results.get("memory"):
        lines += _section("Memory", table(results["memory"]["per_size"], MEMORY))
        if "growth_mb" in results["memory"]:
            lines += ["", f"Growth: {results['memory']['growth_mb']:+.1f} MB."]
    if results.get("decode"):
        heading = f"Decode: one {results['decode']['body_bytes']}-byte body"
        lines += _section(heading, decode_rows(results["decode"]))
    if results.get("store"):
        found = results["store"]
        heading = (
            f"The snapshot store: sweep of {found['ids']:,} ids from a file, {found['rounds']} "
            "rounds of A, B, C, the order rotating"
        )
        lines += _section(heading, store_rows(found))
        lines += [
            "",
            f"Database: {found['first_bytes']:,} bytes after one snapshot, "
            f"{found['second_bytes']:,} after a second of the unchanged fleet "
            f"({found['growth']:+.1%}).",
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("results", help="the JSON a run wrote with --json")
    args = parser.parse_args(argv)
    print(render(json.loads(Path(args.results).read_text())), end="")


if __name__ == "__main__":
    main()
