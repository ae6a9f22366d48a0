"""``python -m benchmarks.store``: what ``sweep --store`` costs, as users run it.

Two figures, each against the shipped simulator (``phala-async serve`` in its own process) with
ids as strings from a file, the command line end to end (process start included):

- wall and CPU time (the sweep's, its store writer process's included): ``sweep --ids-file
  ids.txt -o FILE`` (A) against the same plus ``--store`` into a fresh database (B: the first
  snapshot, every record new, the dearest case) and into a database that already holds the
  fleet (C: the nightly case, an unchanged fleet), in rounds of A, B, C with the order rotating;
  the median of each and of the per-round ratios to A;
- size: the database after one snapshot, and after a second snapshot of the unchanged fleet.

Targets (issue 16): recording adds under 10% to the sweep's wall time; the unchanged second
snapshot grows the database by under 10% of the first. Measured and printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TIMEOUT = 600.0


@contextmanager
def simulator(cvms: int) -> Iterator[tuple[str, str]]:
    """``phala-async serve`` on a free port: its base URL and key."""
    process = subprocess.Popen(
        [sys.executable, "-m", "phala_async", "serve", "--port", "0", "--cvms", str(cvms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        text = ""
        while "API key:" not in text:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("the simulator did not start")
            text += line
        base_url = re.search(r"base URL: (\S+)", text)
        api_key = re.search(r"API key:\s+(\S+)", text)
        assert base_url
        assert api_key
        yield base_url.group(1), api_key.group(1)
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def sweep(base_url: str, api_key: str, *args: str) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one ``phala-async sweep`` process; fails unless
    it exits 0."""
    command = [sys.executable, "-m", "phala_async", "--base-url", base_url, "--quiet", "sweep"]
    env = {**os.environ, "PHALA_CLOUD_API_KEY": api_key}
    cpu_before = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"sweep exited {done.returncode}: {done.stderr}")
    return elapsed, _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def size(path: Path) -> int:
    """Bytes of an SQLite database and its WAL, if one is left."""
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


#: The three kinds of sweep, each a round: A, the sweep alone; B and C, with --store.
KINDS = {
    "A": "-o FILE",
    "B": "-o FILE --store NEW.db (first snapshot)",
    "C": "-o FILE --store DB (an unchanged fleet's next snapshot)",
}


def measure(
    ids: int, runs: int, progress: Callable[[str, dict[str, Any] | None], None] | None = None
) -> dict[str, Any]:
    """Every figure of the module's docstring, as JSON: per kind the median wall and CPU
    seconds, and for B and C the medians of the per-round ratios to A (``wall_added`` and
    ``cpu_added``, 0.05 for +5%, with their min and max); the database's size after one and two
    snapshots, and ``growth``."""
    with tempfile.TemporaryDirectory() as scratch, simulator(ids) as (base_url, key):
        work = Path(scratch)
        id_file = work / "ids.txt"
        id_file.write_text("".join(f"{cvm_id}\n" for cvm_id in range(1, ids + 1)))
        common = ["--ids-file", str(id_file), "-o", str(work / "cvms.jsonl")]
        sweep(base_url, key, *common)  # warm up: imports compiled, the simulator's pages cached
        nightly = work / "nightly.db"
        sweep(base_url, key, *common, "--store", str(nightly))  # the first night's snapshot
        timed: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
        for run in range(runs):
            if progress is not None:
                progress(f"store, round {run + 1} of {runs}", None)
            kinds = [
                ("A", common),
                ("B", [*common, "--store", str(work / f"fresh{run}.db")]),
                ("C", [*common, "--store", str(nightly)]),
            ]
            shift = run % len(kinds)  # each kind goes first, second and third in turn
            for label, extra in kinds[shift:] + kinds[:shift]:
                timed[label].append(sweep(base_url, key, *extra))
        database = work / "growth.db"
        sweep(base_url, key, *common, "--store", str(database))
        first = size(database)
        sweep(base_url, key, *common, "--store", str(database))
        second = size(database)
    result: dict[str, Any] = {"ids": ids, "rounds": runs, "kinds": {}}
    for label, name in KINDS.items():
        entry = {
            "name": name,
            "wall_s": statistics.median(run[0] for run in timed[label]),
            "cpu_s": statistics.median(run[1] for run in timed[label]),
        }
        if label != "A":
            pairs = list(zip(timed["A"], timed[label], strict=True))
            walls = [b[0] / a[0] - 1 for a, b in pairs]
            entry.update(
                wall_added=statistics.median(walls),
                wall_added_min=min(walls),
                wall_added_max=max(walls),
                cpu_added=statistics.median(b[1] / a[1] - 1 for a, b in pairs),
            )
        result["kinds"][label] = entry
    result.update(first_bytes=first, second_bytes=second, growth=(second - first) / first)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store", description=__doc__)
    parser.add_argument("--ids", type=int, default=10_000, help="CVMs and ids (default 10000)")
    # Nine rounds, not five: on a shared two-core machine one round's ratio to its A ranges over
    # +-20 points (measured), and the median of five still moved by several points run to run.
    parser.add_argument("--runs", type=int, default=9, help="rounds of A, B, C (default 9)")
    args = parser.parse_args(argv)
    found = measure(args.ids, args.runs)
    print(f"sweep of {args.ids} ids, {args.runs} rounds of A, B, C (order rotating), medians:")
    for label, entry in found["kinds"].items():
        print(
            f"  {label}  wall {entry['wall_s']:.3f} s, CPU {entry['cpu_s']:.3f} s   {entry['name']}"
        )
    for label in ("B", "C"):
        entry = found["kinds"][label]
        print(
            f"  {label} against A: {100 * entry['wall_added']:+.1f}% wall (target < 10%), "
            f"{100 * entry['cpu_added']:+.1f}% CPU"
        )
    first, second = found["first_bytes"], found["second_bytes"]
    print(f"database after one snapshot: {first:,} bytes; after a second, unchanged: {second:,}")
    print(
        f"  growth {100 * found['growth']:.1f}% of the first "
        f"({(second - first) / args.ids:.0f} bytes per CVM; target < 10%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
