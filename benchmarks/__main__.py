"""``python -m benchmarks``: phala-async against its peers, in one run against one local server.

Starts one server process, runs every client in its own process over the same ids at the same
concurrency in interleaved rounds, then the memory and decode benchmarks, and prints the tables
and the targets of issue 4 (measured and reported, never asserted). ``make bench`` builds the
environment with every peer installed (``benchmarks/.venv-bench``) and runs this.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import decode, report
from benchmarks.harness import run_client, running_server
from benchmarks.peers import CLIENTS, DEFAULT_CLIENTS

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
MEMORY_SIZES = (10_000, 100_000)
QUICK = {"ids": 200, "memory_sizes": (100, 400), "decode_repeat": 3, "decode_seconds": 0.02}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and one round: checks the harness only"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds (default 3; 3 at least for results)",
    )
    parser.add_argument("--ids", type=int, default=10_000, help="ids per client per round")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument(
        "--clients",
        default=",".join(DEFAULT_CLIENTS),
        help=f"comma-separated, from {', '.join(CLIENTS)} (default: all that are installed)",
    )
    parser.add_argument(
        "--cold-malloc",
        action="store_true",
        help="leave glibc's malloc as a fresh process has it (see run_client.settle_malloc)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory benchmark")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode benchmark")
    parser.add_argument(
        "--server", choices=("pool", "simulator"), default="pool", help="see benchmarks/server.py"
    )
    parser.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    parser.add_argument(
        "--write-results", action="store_true", help=f"write {RESULTS_PATH.name} (full runs only)"
    )
    parser.add_argument(
        "--markdown", metavar="PATH", help=f"write the {RESULTS_PATH.name} text to PATH instead"
    )
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Validate the options; return the clients to run."""
    for name in ("rounds", "ids", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.write_results and (args.quick or args.rounds < 3):
        parser.error("--write-results needs a full run: at least 3 rounds and no --quick")
    clients = [name.strip() for name in args.clients.split(",") if name.strip()]
    unknown = [name for name in clients if name not in CLIENTS]
    if unknown:
        parser.error(f"unknown client(s) {', '.join(unknown)}; choose from {', '.join(CLIENTS)}")
    return clients


def _missing_modules(client: str) -> list[str]:
    return [module for module in CLIENTS[client][2] if importlib.util.find_spec(module) is None]


def run(args: argparse.Namespace, clients: list[str]) -> dict[str, Any]:
    """Every measurement of one run, summarised, with the targets evaluated."""
    ids = QUICK["ids"] if args.quick else args.ids
    rounds = 1 if args.quick else args.rounds
    memory_sizes: tuple[int, ...] = QUICK["memory_sizes"] if args.quick else MEMORY_SIZES
    skipped = {c: f"needs {', '.join(m)}" for c in clients if (m := _missing_modules(c))}
    runnable = [client for client in clients if client not in skipped]
    results: dict[str, Any] = {
        "meta": {
            "date": report.now(),
            "machine": report.machine(),
            "versions": report.versions(),
            "load_before": report.load_average(),
            "options": {
                "ids": ids,
                "rounds": rounds,
                "concurrency": args.concurrency,
                "clients": runnable,
                "quick": args.quick,
                "cold_malloc": args.cold_malloc,
            },
        },
        "skipped_clients": skipped,
    }
    served = max(ids, *memory_sizes)
    with running_server(served, impl=args.server) as server:
        results["meta"]["server"] = {"impl": server.impl, "loop": server.loop, "cvms": served}
        all_rounds: list[list[dict[str, Any]]] = []
        for number in range(1, rounds + 1):
            round_runs = []
            for client in runnable:
                result = run_client(
                    server,
                    client,
                    ids=ids,
                    concurrency=args.concurrency,
                    cold_malloc=args.cold_malloc,
                )
                _progress(f"round {number}/{rounds} {client}", result)
                round_runs.append(result)
            all_rounds.append(round_runs)
        if runnable:
            results["throughput"] = {
                "rounds": all_rounds,
                "summary": report.summarize_throughput(all_rounds),
            }
        memory_runs: list[dict[str, Any]] = []
        if not args.no_memory:
            for number in range(1, rounds + 1):
                for size in memory_sizes:
                    result = run_client(
                        server,
                        "phala-async",
                        ids=size,
                        concurrency=args.concurrency,
                        cold_malloc=args.cold_malloc,
                    )
                    _progress(f"memory {number}/{rounds} {size:,} ids", result)
                    memory_runs.append(result)
            results["memory"] = {**report.summarize_memory(memory_runs), "runs": memory_runs}
    shares = [
        run["server_cpu_s"] / run["wall_s"]
        for run in [
            *(r for rs in results.get("throughput", {}).get("rounds", []) for r in rs),
            *memory_runs,
        ]
        if "server_cpu_s" in run and run.get("wall_s")
    ]
    results["server_busiest"] = max(shares) if shares else None
    if not args.no_decode:
        _progress("decode", None)
        results["decode"] = decode.run(
            repeat=QUICK["decode_repeat"] if args.quick else 7,
            min_seconds=QUICK["decode_seconds"] if args.quick else 0.2,
        )
    results["meta"]["load_after"] = report.load_average()
    results["notes"] = report.run_notes(results)
    results["targets"] = report.targets(
        results.get("throughput", {}).get("summary", {}),
        results.get("memory"),
        results.get("decode"),
    )
    return results


def _progress(what: str, result: dict[str, Any] | None) -> None:
    if result is None:
        print(f"... {what}", file=sys.stderr, flush=True)
    elif "failed" in result:
        print(f"... {what}: FAILED {result['failed']}", file=sys.stderr, flush=True)
    else:
        rate = result["requests"] / result["wall_s"]
        print(
            f"... {what}: {result['wall_s']:.2f}s, {rate:,.0f} req/s", file=sys.stderr, flush=True
        )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    clients = _check(parser, args)
    results = run(args, clients)
    print(report.render_text(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(report.render_markdown(results))
    if args.write_results:
        RESULTS_PATH.write_text(report.render_markdown(results))
        print(f"\nwrote {RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
