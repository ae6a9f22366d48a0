"""``python -m benchmarks``: phala-async as its users run it, against its peers and hostile servers.

Runs each section (see ``benchmarks/sections.py``) in interleaved rounds, every client in a process
of its own, then prints one Markdown report with every target and its measured ratio (measured and
reported, never asserted). ``make bench`` builds the environment with every peer installed
(``benchmarks/.venv-bench``) and runs this; ``--write-results`` also puts the report into
``benchmarks/RESULTS.md``, under the method notes.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import (
    contention,
    decode,
    environment,
    report,
    sections,
    store,
    summaries,
    targets,
)
from benchmarks.harness import running_server
from benchmarks.peers import CLIENTS, DEFAULT_CLIENTS

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
SECTIONS = (
    "throughput",
    "command_line",
    "goodput",
    "rate_limit",
    "contention",
    "memory",
    "decode",
    "store",
)
#: Ten times slower than the others and only references: run in the first rounds only.
SLOW_CLIENTS = ("httpx", "phala-cloud")
#: The clients also run over range() ints, the second row of the CPU target.
INT_CLIENTS = ("phala-async", "aiohttp")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and one round: checks the harness only"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--slow-rounds",
        type=int,
        default=2,
        help=f"rounds that also run {' and '.join(SLOW_CLIENTS)} (default 2)",
    )
    parser.add_argument(
        "--rate-rounds", type=int, default=2, help="rounds of the rate-limit sweeps (default 2)"
    )
    parser.add_argument(
        "--contention-rounds",
        type=int,
        default=2,
        help="rounds of the contention section (default 2)",
    )
    parser.add_argument(
        "--store-rounds",
        type=int,
        default=9,
        help="rounds of the store section's sweeps (default 9: its ratios are noisy)",
    )
    parser.add_argument("--ids", type=int, default=10_000, help="ids per throughput run")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument(
        "--clients",
        default=",".join(DEFAULT_CLIENTS),
        help=f"comma-separated, from {', '.join(CLIENTS)} (default: all that are installed)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, from {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--cold-malloc",
        action="store_true",
        help="leave glibc's malloc as a fresh process has it (see run_client.settle_malloc)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    parser.add_argument(
        "--write-results",
        action="store_true",
        help=f"put the report into {RESULTS_PATH.name} (full runs only)",
    )
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[str], set[str]]:
    """Validate the options; return the clients and the sections to run."""
    for name in (
        "rounds",
        "ids",
        "concurrency",
        "rate_rounds",
        "contention_rounds",
        "store_rounds",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.write_results and (args.quick or args.rounds < 3):
        parser.error("--write-results needs a full run: at least 3 rounds and no --quick")
    clients = [name.strip() for name in args.clients.split(",") if name.strip()]
    unknown = [name for name in clients if name not in CLIENTS]
    if unknown:
        parser.error(f"unknown client(s) {', '.join(unknown)}; choose from {', '.join(CLIENTS)}")
    chosen = {name.strip() for name in args.sections.split(",") if name.strip()}
    if chosen - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(chosen - set(SECTIONS)))}")
    return clients, chosen


def _missing_modules(client: str) -> list[str]:
    return [module for module in CLIENTS[client][2] if importlib.util.find_spec(module) is None]


def run(
    args: argparse.Namespace, clients: list[str], chosen: set[str], argv: list[str]
) -> dict[str, Any]:
    """Every measurement of one run, summarised, with the targets evaluated; ``argv`` are the
    options it was run with, for the report."""
    if args.quick:
        sizes = sections.QUICK_SIZES
    else:
        sizes = dataclasses.replace(sections.Sizes(), ids=args.ids, cli_ids=args.ids)
    rounds = 1 if args.quick else args.rounds
    rate_rounds = 1 if args.quick else args.rate_rounds
    skipped = {c: f"needs {', '.join(m)}" for c in clients if (m := _missing_modules(c))}
    runnable = [client for client in clients if client not in skipped]
    results: dict[str, Any] = {
        "meta": {
            "date": environment.now(),
            "machine": environment.machine(),
            "versions": environment.versions(),
            "load_before": environment.load_average(),
            "options": {
                "argv": argv,
                "ids": sizes.ids,
                "cli_ids": sizes.cli_ids,
                "goodput_ids": sizes.goodput_ids,
                "rounds": rounds,
                "contention_rounds": 1 if args.quick else args.contention_rounds,
                "concurrency": args.concurrency,
                "clients": runnable,
                "quick": args.quick,
                "cold_malloc": args.cold_malloc,
            },
        },
        "skipped_clients": skipped,
    }
    server_shares: list[float] = []
    with tempfile.TemporaryDirectory(prefix="phala-async-bench-") as tmp:
        workdir = Path(tmp)
        served = max(sizes.ids, sizes.cli_ids, *sizes.memory_sizes)
        with running_server(served) as server:
            if "throughput" in chosen and runnable:
                all_rounds = sections.throughput(
                    server,
                    workdir,
                    runnable,
                    ids=sizes.ids,
                    rounds=rounds,
                    slow_rounds=args.slow_rounds,
                    slow_clients=SLOW_CLIENTS,
                    int_clients=INT_CLIENTS,
                    concurrency=args.concurrency,
                    cold_malloc=args.cold_malloc,
                    progress=_progress,
                )
                results["throughput"] = {
                    "rounds": all_rounds,
                    "summary": summaries.summarize_throughput(all_rounds),
                }
                server_shares += [
                    run["server_cpu_s"] / run["wall_s"]
                    for round_runs in all_rounds
                    for run in round_runs
                    if "server_cpu_s" in run and run.get("wall_s")
                ]
            if "command_line" in chosen:
                runs = sections.command_line(
                    server, workdir, ids=sizes.cli_ids, rounds=rounds, progress=_progress
                )
                results["command_line"] = {
                    "runs": runs,
                    "summary": summaries.summarize_commands(runs),
                }
            if "memory" in chosen:
                runs = sections.memory(
                    server, sizes.memory_sizes, concurrency=args.concurrency, progress=_progress
                )
                results["memory"] = {**summaries.summarize_memory(runs), "runs": runs}
        if "goodput" in chosen:
            runs = sections.goodput(workdir, sizes, rounds=rounds, progress=_progress)
            results["goodput"] = {"runs": runs, "summary": summaries.summarize_scenarios(runs)}
        if "rate_limit" in chosen:
            runs = sections.rate_limit(workdir, sizes, rounds=rate_rounds, progress=_progress)
            results["rate_limit"] = {"runs": runs, "summary": summaries.summarize_scenarios(runs)}
        if "contention" in chosen:
            runs = contention.contention(
                workdir,
                contention.QUICK_CONTENTION if args.quick else contention.ContentionSizes(),
                rounds=1 if args.quick else args.contention_rounds,
                progress=_progress,
            )
            results["contention"] = {"runs": runs, "summary": summaries.summarize_contention(runs)}
    results["server_busiest"] = max(server_shares) if server_shares else None
    if "decode" in chosen:
        _progress("decode", None)
        results["decode"] = decode.run(
            repeat=3 if args.quick else 7, min_seconds=0.02 if args.quick else 0.2
        )
    if "store" in chosen:
        results["store"] = store.measure(
            500 if args.quick else 10_000,
            1 if args.quick else args.store_rounds,
            progress=_progress,
        )
    results["meta"]["load_after"] = environment.load_average()
    results["notes"] = summaries.run_notes(results)
    results["targets"] = targets.targets(results)
    return results


def _progress(what: str, result: dict[str, Any] | None) -> None:
    if result is None:
        line = f"... {what}"
    elif "failed" in result:
        line = f"... {what}: FAILED {result['failed']}"
    else:
        line = f"... {what}: {result['wall_s']:.2f}s"
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    clients, chosen = _check(parser, args)
    encoded = json.dumps(run(args, clients, chosen, argv), indent=2) + "\n"
    if args.json:
        Path(args.json).write_text(encoded)
    # The report is made from the JSON alone, as `python -m benchmarks.report out.json` makes it.
    text = report.render(json.loads(encoded))
    print(text)
    if args.write_results:
        RESULTS_PATH.write_text(report.replace_report(RESULTS_PATH.read_text(), text))
        print(f"wrote {RESULTS_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
