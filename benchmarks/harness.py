"""Processes: the server, each client run, and the server's CPU time between two moments.

Every measured client runs in a process of its own. Its wall time is taken by this harness around
the whole process (``run_command``) or by the client around its sweep (``run_client``,
``run_scenario``); CPU is user + system time, from ``wait4`` for the whole process or from the
client's own ``getrusage(RUSAGE_SELF)`` around its sweep.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLIENT_TIMEOUT = 900.0  # seconds one client run may take before it is killed and reported


@dataclass
class Server:
    """A running benchmark server process."""

    process: subprocess.Popen[str]
    base_url: str
    api_key: str
    impl: str
    loop: str

    def cpu_seconds(self) -> float | None:
        """User + system CPU the server process has used so far (Linux ``/proc``), else None."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as stat:
                # Fields after the parenthesised command name; utime and stime are 14th and 15th.
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running_server(
    cvms: int, *, impl: str = "pool", options: Sequence[str] = (), python: str = sys.executable
) -> Iterator[Server]:
    """Start ``python -m benchmarks.server`` (``options`` are its own command-line options) and
    stop it on leaving, whatever happens."""
    command = [python, "-m", "benchmarks.server", "--cvms", str(cvms), "--impl", impl, *options]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_repo_root()
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the benchmark server exited before listening: {command}")
        ready = json.loads(line)
        yield Server(process, ready["base_url"], ready["api_key"], ready["impl"], ready["loop"])
    finally:
        if process.stdin is not None:
            process.stdin.close()  # the server stops when its stdin closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def server_stats(server: Server) -> dict[str, Any] | None:
    """The simulator's counters (``--control``: total requests and answers by status), or None
    for a server that keeps none."""
    if server.impl != "simulator":
        return None
    root = server.base_url.removesuffix("/api/v1")
    # The URL is the benchmark server's own, http://127.0.0.1:<port>: no other scheme can come in.
    stats_url = f"{root}/_simulator/stats"
    request = urllib.request.Request(stats_url, headers={"X-API-Key": server.api_key})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            stats: dict[str, Any] = json.loads(answer.read())
    except OSError:
        return None
    return stats


def run_client(
    server: Server,
    client: str,
    *,
    ids: int,
    concurrency: int,
    ids_file: Path | None = None,
    python: str = sys.executable,
    timeout: float = CLIENT_TIMEOUT,
    cold_malloc: bool = False,
) -> dict[str, Any]:
    """Run one client sweep in its own process, over ids ``1..ids`` as ints or, with
    ``ids_file``, as the strings of that file; return its JSON report plus the server's CPU."""
    command = [
        python,
        "-m",
        "benchmarks.run_client",
        "--client",
        client,
        "--base-url",
        server.base_url,
        "--api-key",
        server.api_key,
        "--ids",
        str(ids),
        "--concurrency",
        str(concurrency),
        *(["--ids-file", str(ids_file)] if ids_file is not None else []),
        *(["--cold-malloc"] if cold_malloc else []),
    ]
    return _run_reporting(command, server, client, ids, timeout)


def run_scenario(
    server: Server,
    ids_file: Path,
    *,
    ids: int,
    concurrency: int,
    options: Mapping[str, Any],
    label: str,
    python: str = sys.executable,
    timeout: float = CLIENT_TIMEOUT,
) -> dict[str, Any]:
    """Run ``python -m benchmarks.scenario_client``: one phala-async sweep of ``ids_file`` with
    ``PhalaClient`` ``options``, reporting when each share of the ids was done."""
    command = [
        python,
        "-m",
        "benchmarks.scenario_client",
        "--base-url",
        server.base_url,
        "--api-key",
        server.api_key,
        "--ids-file",
        str(ids_file),
        "--concurrency",
        str(concurrency),
        "--options",
        json.dumps(dict(options)),
    ]
    report = _run_reporting(command, server, label, ids, timeout)
    report["label"] = label
    return report


def run_scenarios_together(
    server: Server,
    ids_files: Sequence[Path],
    *,
    concurrency: int,
    options: Mapping[str, Any],
    python: str = sys.executable,
    timeout: float = CLIENT_TIMEOUT,
) -> list[dict[str, Any]]:
    """Start one ``benchmarks.scenario_client`` per file at once, all against ``server``; wait
    for every one (each killed after ``timeout``) and return their reports in file order."""
    command = [
        python,
        "-m",
        "benchmarks.scenario_client",
        "--base-url",
        server.base_url,
        "--api-key",
        server.api_key,
        "--concurrency",
        str(concurrency),
        "--options",
        json.dumps(dict(options)),
        "--ids-file",
    ]
    processes = [
        subprocess.Popen(
            [*command, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=_repo_root(),
        )
        for path in ids_files
    ]
    deadline = time.monotonic() + timeout
    reports = []
    for path, process in zip(ids_files, processes, strict=True):
        try:
            out, err = process.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            reports.append(_failed(str(path), 0, f"timed out after {timeout:.0f}s"))
            continue
        if process.returncode != 0 or not out.strip():
            tail = err.strip().splitlines()[-1:] or ["no output"]
            reports.append(_failed(str(path), 0, f"exit {process.returncode}: {tail[0]}"))
        else:
            reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def run_command(
    command: Sequence[str], *, env: Mapping[str, str], timeout: float = CLIENT_TIMEOUT
) -> dict[str, Any]:
    """Run ``command`` in the environment ``env`` (the whole of it) to its end: its wall time
    from start to exit (process start included) and its own CPU (user + system, from
    ``wait4``'s resource usage)."""
    with tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=_repo_root(),
            env=dict(env),
        )
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        errors = stderr.read()
    result: dict[str, Any] = {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "returncode": process.returncode,
    }
    if process.returncode != 0:
        tail = errors.strip().splitlines()[-1:] or ["no output"]
        result["failed"] = f"exit {process.returncode}: {tail[0]}"
    return result


def _run_reporting(
    command: list[str], server: Server, client: str, ids: int, timeout: float
) -> dict[str, Any]:
    """Run a client process that prints its JSON report as its last line of output."""
    server_cpu_before = server.cpu_seconds()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=_repo_root(), check=False
        )
    except subprocess.TimeoutExpired:
        return _failed(client, ids, f"timed out after {timeout:.0f}s")
    server_cpu_after = server.cpu_seconds()
    if done.returncode != 0 or not done.stdout.strip():
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return _failed(client, ids, f"exit {done.returncode}: {tail[0]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if server_cpu_before is not None and server_cpu_after is not None:
        report["server_cpu_s"] = server_cpu_after - server_cpu_before
    return report


def _failed(client: str, ids: int, why: str) -> dict[str, Any]:
    return {
        "client": client,
        "ids": ids,
        "failed": why,
        "requests": 0,
        "received": 0,
        "missing": ids,
        "repeated": 0,
        "errors": {"run failed": 1},
    }


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
