"""Processes: the server, each client run, and the server's CPU time between two moments."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
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
    cvms: int, *, impl: str = "pool", python: str = sys.executable
) -> Iterator[Server]:
    """Start ``python -m benchmarks.server`` and stop it on leaving, whatever happens."""
    command = [python, "-m", "benchmarks.server", "--cvms", str(cvms), "--impl", impl]
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


def run_client(
    server: Server,
    client: str,
    *,
    ids: int,
    concurrency: int,
    python: str = sys.executable,
    timeout: float = CLIENT_TIMEOUT,
    cold_malloc: bool = False,
) -> dict[str, Any]:
    """Run one client sweep in its own process; return its JSON report plus the server's CPU."""
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
        *(["--cold-malloc"] if cold_malloc else []),
    ]
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
