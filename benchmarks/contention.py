"""The ``contention`` section: the request engine against servers that push back or never answer.

Every client runs in a process of its own over app ids read as strings from a file; each round
runs every case, in reverse order every other round. The cases:

- ``capacity 8``: the simulator answers 8 requests at once and 503s the rest at once;
- ``50% 503 storm`` beside ``storm's fault-free pair``: half the requests answered 503 at random;
- ``shared key, K=...``: K processes started together on one token bucket (the pool server's);
- ``silent server``, ``closed port``, ``accept and close``: ``phala-async sweep`` end to end
  against a server that accepts and never answers, a port nothing listens on, and a server that
  closes every connection it accepts (which counts them);
- ``dead API``: every request answered 503.

Counts of requests and 503s are the server's (the simulator's ``/_simulator/stats``) where it
keeps them; the pool server keeps none, so the shared-key cases use the clients' own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    Server,
    run_command,
    run_scenario,
    run_scenarios_together,
    running_server,
    server_stats,
)
from benchmarks.sections import (
    Progress,
    phala_async_command,
    pool_app_ids,
    simulator_app_ids,
    write_ids,
)

LOCAL_SERVER_SECONDS = 300.0  # the silent and closing servers stop after this long, whatever


@dataclass(frozen=True)
class ContentionSizes:
    """How big each contention case is."""

    capacity: int = 8
    latency: float = 0.05
    capacity_ids: int = 2_000
    storm_ids: int = 2_000
    bucket_rate: int = 100
    shared_ids: int = 1_600
    shared_processes: tuple[int, ...] = (1, 2, 4)
    silent_ids: int = 20
    closed_ids: int = 3_000
    dead_ids: int = 1_000


QUICK_CONTENTION = ContentionSizes(
    capacity_ids=100,
    storm_ids=100,
    shared_ids=200,
    shared_processes=(1, 2),
    silent_ids=5,
    closed_ids=100,
    dead_ids=50,
)


def _cli_env(base_url: str, api_key: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env.update(PHALA_CLOUD_API_KEY=api_key, PHALA_CLOUD_API_PREFIX=base_url)
    return env


def _server_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, int]:
    """Requests and 503s the simulator counted between two reads of its counters (the control
    API's own requests are not counted)."""
    if before is None or after is None:
        return {}
    was = before["status_counts"]
    return {
        "server_requests": after["total_requests"] - before["total_requests"],
        "server_503": after["status_counts"].get("503", 0) - was.get("503", 0),
    }


def _scenario(
    server: Server, ids_file: Path, ids: int, label: str, options: dict[str, Any]
) -> dict[str, Any]:
    """One sweep in its own process, with what the server counted during it."""
    before = server_stats(server)
    result = run_scenario(server, ids_file, ids=ids, concurrency=32, options=options, label=label)
    result.update(_server_delta(before, server_stats(server)))
    if "failed" not in result:
        result["ok_share"] = result["ok"] / ids
        requests = result.get("server_requests", result["requests"])
        result["requests_per_id"] = requests / ids
        if "server_503" in result:
            result["share_503"] = result["server_503"] / max(requests, 1)
    return result


@contextlib.contextmanager
def local_server(answer: str) -> Iterator[tuple[str, Callable[[], int]]]:
    """A TCP server on 127.0.0.1 in a thread of this process: ``"never"`` accepts and reads but
    never answers, ``"close"`` closes every connection it accepts. Yields its base URL and a
    function that counts the connections it accepted; stops on leaving (or after
    :data:`LOCAL_SERVER_SECONDS`)."""
    accepted = [0]
    ready = threading.Event()
    port: list[int] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        if answer == "never":
            with contextlib.suppress(OSError):
                while await reader.read(65536):
                    pass
        writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOCAL_SERVER_SECONDS)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        if not ready.wait(10):
            raise RuntimeError(f"the {answer!r} server did not start")
        yield f"http://127.0.0.1:{port[0]}/api/v1", lambda: accepted[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        # Handlers still reading a client that never hung up are cancelled with the loop.
        with contextlib.suppress(RuntimeError):
            loop.close()


def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _sweep_command(
    workdir: Path,
    label: str,
    ids: int,
    base_url: str,
    options: list[str],
    connections: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """``phala-async sweep --ids-file`` end to end (process start included): its wall time,
    exit status and, where the server counts them, the connections it made."""
    ids_file = write_ids(workdir / f"{label}-ids.txt", pool_app_ids(ids))
    output = workdir / f"{label}-out.jsonl"
    output.unlink(missing_ok=True)
    command = [
        *phala_async_command(),
        "sweep",
        "--ids-file",
        str(ids_file),
        "-o",
        str(output),
        "-q",
        *options,
    ]
    before = connections() if connections else 0
    result = {"label": label, "ids": ids, **run_command(command, env=_cli_env(base_url, "x"))}
    result["exit_status"] = result["returncode"]
    if result["returncode"] not in (0, 1, 4):  # 4: the sweep stopped, the answer expected here
        result["problem"] = result.get("failed", "")
    result.pop("failed", None)  # an exit status other than 0 is what these cases measure
    if connections:
        result["connections"] = connections() - before
    return result


def _shared(workdir: Path, sizes: ContentionSizes, processes: int) -> dict[str, Any]:
    """``processes`` sweeps started together on one fresh token bucket, the ids split evenly:
    the share of the limit they used together, from the first start to the last finish, the
    bucket's initial burst left out."""
    rate = sizes.bucket_rate
    ids = pool_app_ids(sizes.shared_ids)
    files = [
        write_ids(workdir / f"shared-{processes}-{k}.txt", ids[k::processes])
        for k in range(processes)
    ]
    label = f"shared key, K={processes}"
    options = ["--bucket-rate", str(rate), "--bucket-burst", str(rate)]
    with running_server(sizes.shared_ids, impl="pool", options=options) as pool:
        reports = run_scenarios_together(pool, files, concurrency=32, options={})
    result: dict[str, Any] = {"label": label, "ids": sizes.shared_ids, "processes": processes}
    failed = [report["failed"] for report in reports if "failed" in report]
    if failed:
        return {**result, "failed": "; ".join(failed)}
    span = max(r["finished_at"] for r in reports) - min(r["started_at"] for r in reports)
    ok = sum(report["ok"] for report in reports)
    requests = sum(report["requests"] for report in reports)
    result.update(
        wall_s=span,
        ok=ok,
        ok_share=ok / sizes.shared_ids,
        requests_per_id=requests / sizes.shared_ids,
        share_429=sum(report["rate_limited"] for report in reports) / max(requests, 1),
        limit_used=(ok - rate) / span / rate,
        process_walls=[report["wall_s"] for report in reports],
    )
    return result


def contention(
    workdir: Path, sizes: ContentionSizes, *, rounds: int, progress: Progress
) -> list[dict[str, Any]]:
    """Every case of the module's docstring in each round; the runs, each with its label."""
    latency = ["--latency", str(sizes.latency), "--control"]
    capacity_file = write_ids(workdir / "capacity-ids.txt", simulator_app_ids(sizes.capacity_ids))
    storm_file = write_ids(workdir / "storm-ids.txt", simulator_app_ids(sizes.storm_ids))
    dead_file = write_ids(workdir / "dead-ids.txt", simulator_app_ids(sizes.dead_ids))
    storm = ["--fault-rate", "0.5", "--faults", "503", "--seed", "0"]
    runs: list[dict[str, Any]] = []
    with (
        running_server(
            sizes.capacity_ids,
            impl="simulator",
            options=[*latency, "--capacity", str(sizes.capacity)],
        ) as capped,
        running_server(sizes.storm_ids, impl="simulator", options=[*latency, *storm]) as stormy,
        running_server(sizes.storm_ids, impl="simulator", options=latency) as calm,
        running_server(
            sizes.dead_ids,
            impl="simulator",
            options=["--fault-rate", "1", "--faults", "503", "--control"],
        ) as dead,
        local_server("never") as (silent_url, _),
        local_server("close") as (closing_url, closing_count),
    ):
        ideal = sizes.capacity_ids * sizes.latency / sizes.capacity

        def capacity() -> dict[str, Any]:
            options = {"max_attempts": 30}
            result = _scenario(capped, capacity_file, sizes.capacity_ids, "capacity 8", options)
            if "wall_s" in result:
                result["goodput"] = ideal / result["wall_s"]
            return result

        def storm_pair() -> list[dict[str, Any]]:
            options = {"max_attempts": 4}
            pair = [
                _scenario(calm, storm_file, sizes.storm_ids, "storm's fault-free pair", options),
                _scenario(stormy, storm_file, sizes.storm_ids, "50% 503 storm", options),
            ]
            if all("wall_s" in run for run in pair):
                pair[1]["wall_vs_fault_free"] = pair[1]["wall_s"] / pair[0]["wall_s"]
            return pair

        silent_options = ["--timeout", "1", "--max-attempts", "1"]
        cases: list[Callable[[], dict[str, Any] | list[dict[str, Any]]]] = [
            capacity,
            storm_pair,
            *(functools.partial(_shared, workdir, sizes, k) for k in sizes.shared_processes),
            lambda: _sweep_command(
                workdir, "silent server", sizes.silent_ids, silent_url, silent_options
            ),
            lambda: _sweep_command(
                workdir,
                "closed port",
                sizes.closed_ids,
                f"http://127.0.0.1:{closed_port()}/api/v1",
                [],
            ),
            lambda: _sweep_command(
                workdir, "accept and close", sizes.closed_ids, closing_url, [], closing_count
            ),
            lambda: _scenario(dead, dead_file, sizes.dead_ids, "dead API", {}),
        ]
        for number in range(1, rounds + 1):
            for case in cases if number % 2 else cases[::-1]:
                done = case()
                for result in done if isinstance(done, list) else [done]:
                    result["round"] = number
                    progress(f"contention {number}/{rounds} {result['label']}", result)
                    runs.append(result)
    return runs
