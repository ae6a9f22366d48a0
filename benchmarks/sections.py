"""The benchmark's sections, each run against servers of its own, in interleaved rounds.

- :func:`throughput`: every client over the same ids, app ids from a file and ints, CPU per
  request beside requests per second;
- :func:`command_line`: ``phala-async sweep --ids-file`` against a bare aiohttp script, end to end;
- :func:`goodput`: a sweep of the simulator with faults against the same sweep without;
- :func:`rate_limit`: sweeps against a token bucket and the simulator's fixed window;
- :func:`memory`: peak RSS of a small and a large sweep.

Each returns the raw runs; ``summaries.py`` summarises them. ``contention.py`` is a section too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import server as bench_server
from benchmarks.harness import Server, run_client, run_command, run_scenario, running_server
from phala_async.testing import PhalaSimulator

Progress = Callable[[str, dict[str, Any] | None], None]

#: The simulator's faults in the goodput section: two 5xx, a reset and a cut-short body.
GOODPUT_FAULTS = ("500", "503", "reset", "truncate")


@dataclass(frozen=True)
class Sizes:
    """How big each section's sweeps are."""

    ids: int = 10_000
    cli_ids: int = 10_000
    goodput_ids: int = 2_000
    goodput_latency: float = 0.05
    goodput_fault_rate: float = 0.2
    bucket_seconds: float = 15.0  # each token-bucket sweep asks for this many seconds of limit
    window_ids: int = 3_000
    memory_sizes: tuple[int, int] = (10_000, 100_000)


QUICK_SIZES = Sizes(
    ids=200,
    cli_ids=200,
    goodput_ids=100,
    bucket_seconds=2.0,
    window_ids=300,
    memory_sizes=(100, 400),
)


def write_ids(path: Path, ids: Sequence[str]) -> Path:
    """Write ``ids`` one a line, as a user's ids file has them."""
    path.write_text("".join(f"{cvm_id}\n" for cvm_id in ids), encoding="utf-8")
    return path


def pool_app_ids(count: int) -> list[str]:
    """``app_<hex>`` ids of CVMs ``1..count`` on the pool server."""
    return [bench_server.app_id(n) for n in range(1, count + 1)]


def simulator_app_ids(count: int, seed: int = 0) -> list[str]:
    """``app_<hex>`` ids of CVMs ``1..count`` of a simulator with ``seed``, as its workspace
    listing (and so ``phala-async sweep --all``) gives them."""
    sim = PhalaSimulator(cvms=count, seed=seed)
    return [f"app_{sim.cvm(cvm_id)['app_id']}" for cvm_id in sim.cvm_ids]


# -- throughput ------------------------------------------------------------------------------


def throughput(
    server: Server,
    workdir: Path,
    clients: Sequence[str],
    *,
    ids: int,
    rounds: int,
    slow_rounds: int,
    slow_clients: Sequence[str],
    int_clients: Sequence[str],
    concurrency: int,
    cold_malloc: bool,
    progress: Progress,
) -> list[list[dict[str, Any]]]:
    """Each client over app ids read from a file, and ``int_clients`` over ``range`` ints too,
    in interleaved rounds; ``slow_clients`` run in the first ``slow_rounds`` rounds only.

    The runs a target compares (``int_clients`` over each kind of ids) run back to back, and
    every other round runs in reverse order, so that neither of a pair always runs first.
    """
    ids_file = write_ids(workdir / "ids.txt", pool_app_ids(ids))
    paired = [client for client in int_clients if client in clients]
    cases: list[tuple[str, Path | None]] = [(client, ids_file) for client in paired]
    cases += [(client, None) for client in paired]
    cases += [(client, ids_file) for client in clients if client not in paired]
    all_rounds = []
    for number in range(1, rounds + 1):
        round_runs = []
        for client, file in cases if number % 2 else cases[::-1]:
            if client in slow_clients and number > slow_rounds:
                continue
            result = run_client(
                server,
                client,
                ids=ids,
                concurrency=concurrency,
                ids_file=file,
                cold_malloc=cold_malloc,
            )
            kind = "int ids" if file is None else "app ids"
            progress(f"throughput {number}/{rounds} {client} ({kind})", result)
            round_runs.append(result)
        all_rounds.append(round_runs)
    return all_rounds


# -- the command line, end to end ------------------------------------------------------------


def command_line(
    server: Server, workdir: Path, *, ids: int, rounds: int, progress: Progress
) -> list[dict[str, Any]]:
    """``phala-async sweep --ids-file ids.txt -o out.jsonl`` and the bare aiohttp script over
    the same file, each a fresh process, alternating; each output is checked for every id."""
    ids_list = pool_app_ids(ids)
    ids_file = write_ids(workdir / "cli-ids.txt", ids_list)
    # An installed package has its bytecode compiled; a run without it would time the compiler.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env.update(PHALA_CLOUD_API_KEY=server.api_key, PHALA_CLOUD_API_PREFIX=server.base_url)
    commands = {
        "phala-async sweep": [
            *phala_async_command(),
            "sweep",
            "--ids-file",
            str(ids_file),
            "-o",
            str(workdir / "cli-out.jsonl"),
        ],
        "bare aiohttp script": [
            sys.executable,
            str(Path(__file__).with_name("bare_sweep.py")),
            str(ids_file),
            str(workdir / "bare-out.jsonl"),
        ],
    }
    outputs = {"phala-async sweep": "cli-out.jsonl", "bare aiohttp script": "bare-out.jsonl"}
    for command in commands.values():  # untimed: writes the bytecode, warms the file cache
        run_command(command, env=env)
    runs = []
    for number in range(1, rounds + 1):
        for name, command in commands.items():
            output = workdir / outputs[name]
            output.unlink(missing_ok=True)
            result = {"command": name, "ids": ids, **run_command(command, env=env)}
            result.update(check_records(output, ids_list))
            progress(f"command line {number}/{rounds} {name}", result)
            runs.append(result)
    return runs


def phala_async_command() -> list[str]:
    """The installed ``phala-async`` script beside this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("phala-async")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "phala_async"]


def check_records(path: Path, ids: Sequence[str]) -> dict[str, Any]:
    """How many JSON lines of ``path`` are ok records, and whether they are one per id."""
    if not path.is_file():
        return {"records": 0, "ok_records": 0, "every_id_once": False}
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    seen = [record["cvm_id"] for record in records]
    return {
        "records": len(records),
        "ok_records": sum(1 for record in records if record.get("ok") is True),
        "every_id_once": len(seen) == len(ids) and set(seen) == set(ids),
    }


# -- goodput under faults --------------------------------------------------------------------


def goodput(
    workdir: Path, sizes: Sizes, *, rounds: int, progress: Progress
) -> list[dict[str, Any]]:
    """The same phala-async sweep (default options, concurrency 32) against the simulator
    answering in ``goodput_latency``, without faults and with ``goodput_fault_rate`` of
    requests failing, alternating."""
    count = sizes.goodput_ids
    ids_file = write_ids(workdir / "goodput-ids.txt", simulator_app_ids(count))
    common = ["--latency", str(sizes.goodput_latency)]
    faulty = [
        *common,
        "--fault-rate",
        str(sizes.goodput_fault_rate),
        "--faults",
        ",".join(GOODPUT_FAULTS),
        "--seed",
        "0",
    ]
    runs = []
    with (
        running_server(count, impl="simulator", options=common) as calm,
        running_server(count, impl="simulator", options=faulty) as stormy,
    ):
        for number in range(1, rounds + 1):
            for label, target in (("fault-free", calm), ("20% faults", stormy)):
                result = run_scenario(
                    target, ids_file, ids=count, concurrency=32, options={}, label=label
                )
                progress(f"goodput {number}/{rounds} {label}", result)
                runs.append(result)
    return runs


# -- rate limits -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RateCase:
    """One rate-limited sweep: the server's kind of limit, its rate, and the client's options."""

    label: str
    kind: str  # "bucket" or "window"
    rate: int
    concurrency: int
    options: dict[str, Any]


RATE_CASES = (
    RateCase("token bucket 100/s", "bucket", 100, 32, {}),
    RateCase("token bucket 200/s", "bucket", 200, 32, {}),
    # The suite's former rate-limit sweep, its settings unchanged: the simulator's fixed window.
    RateCase("fixed window 200/s", "window", 200, 64, {"max_attempts": 20}),
    RateCase(
        "fixed window 200/s, adaptive off",
        "window",
        200,
        64,
        {"max_attempts": 20, "adaptive": False},
    ),
)


def rate_limit(
    workdir: Path, sizes: Sizes, *, rounds: int, progress: Progress
) -> list[dict[str, Any]]:
    """Every :data:`RATE_CASES` sweep in each round. A token bucket (the pool server's) holds one
    second of its rate and its sweep asks for ``bucket_seconds`` of it; the fixed window is the
    simulator's ``rate_limit``. Every 429 says ``Retry-After: 1``."""
    runs = []
    with contextlib.ExitStack() as stack:
        servers: dict[tuple[str, int], tuple[Server, Path, int]] = {}
        for kind, rate in sorted({(case.kind, case.rate) for case in RATE_CASES}):
            if kind == "bucket":
                count = int(rate * sizes.bucket_seconds)
                ids = pool_app_ids(count)
                options = ["--bucket-rate", str(rate), "--bucket-burst", str(rate)]
                impl = "pool"
            else:
                count = sizes.window_ids
                ids = simulator_app_ids(count)
                options = ["--rate-limit", str(rate)]
                impl = "simulator"
            started = stack.enter_context(running_server(count, impl=impl, options=options))
            ids_file = write_ids(workdir / f"{kind}-{rate}-ids.txt", ids)
            servers[(kind, rate)] = (started, ids_file, count)
        for number in range(1, rounds + 1):
            for case in RATE_CASES:
                target, ids_file, count = servers[(case.kind, case.rate)]
                result = run_scenario(
                    target,
                    ids_file,
                    ids=count,
                    concurrency=case.concurrency,
                    options=case.options,
                    label=case.label,
                )
                result.update(kind=case.kind, limit=case.rate)
                progress(f"rate limit {number}/{rounds} {case.label}", result)
                runs.append(result)
    return runs


# -- memory ----------------------------------------------------------------------------------


def memory(
    server: Server, sizes: Sequence[int], *, concurrency: int, progress: Progress
) -> list[dict[str, Any]]:
    """One phala-async sweep per size over ``range`` ints (read lazily, so that the ids
    themselves take no memory), each in a fresh process."""
    runs = []
    for size in sizes:
        result = run_client(server, "phala-async", ids=size, concurrency=concurrency)
        progress(f"memory {size:,} ids", result)
        runs.append(result)
    return runs
