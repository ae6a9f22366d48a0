"""A `PhalaSimulator` in a process of its own, for tests that need real sockets under load.

The parent runs ``python _server_process.py '<JSON of PhalaSimulator keyword arguments>'``
through :class:`ServerProcess`. The child starts the simulator on 127.0.0.1, prints one JSON line
(``base_url``, ``api_key``, ``token``, ``pid``) on stdout, then answers each line it reads on stdin:

- ``stats``: one JSON line with ``total_requests``, ``status_counts`` (by status, ``"reset"``
  for aborted connections), ``faults`` (random faults injected, by kind), ``max_in_flight``,
  ``distinct_segments`` and ``gc_longest_pause`` (seconds the child's collector stalled it);
- ``log``: one JSON line with ``[time, status]`` for every logged request, oldest first.

It stops when its stdin closes (the parent went away or :meth:`ServerProcess.stop`), on
``quit``, or after ``max_seconds`` (a bound on a forgotten server).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import os
import random
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from phala_async.testing import PhalaSimulator

_T = TypeVar("_T")
_MAX_SECONDS = 900.0  # the child exits by itself after this, whatever the parent does


class _CountingRandom(random.Random):
    """The simulator's fault generator, counting every fault kind it draws."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.drawn: collections.Counter[str] = collections.Counter()

    def choice(self, seq: Sequence[_T]) -> _T:
        picked = super().choice(seq)
        self.drawn[str(picked)] += 1
        return picked


class CountingSimulator(PhalaSimulator):
    """A `PhalaSimulator` that also counts the random faults it injects, by kind.

    Status counts alone cannot tell a delayed or truncated answer from a normal 200; the draws
    of the fault generator can. The generator is the same seeded `random.Random` otherwise.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if not isinstance(getattr(self, "_rng", None), random.Random):
            raise RuntimeError("PhalaSimulator no longer keeps its fault generator in _rng")
        self._rng = _CountingRandom(options.get("seed", 0))

    @property
    def faults_drawn(self) -> collections.Counter[str]:
        """Random faults injected so far, by kind (a copy)."""
        return collections.Counter(self._rng.drawn)


# -- the child ---------------------------------------------------------------------------------


class _PauseMeter:
    """The longest pause of the child's garbage collector, which stalls every answer."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._started)


_pauses = _PauseMeter()


def _stats(simulator: CountingSimulator) -> dict[str, Any]:
    return {
        "gc_longest_pause": _pauses.longest,
        "total_requests": simulator.total_requests,
        "status_counts": {str(k): v for k, v in simulator.status_counts.items()},
        "faults": dict(simulator.faults_drawn),
        "max_in_flight": simulator.max_in_flight,
        "distinct_segments": len(simulator.requests),
    }


async def _serve(options: dict[str, Any]) -> None:
    max_seconds = float(options.pop("max_seconds", _MAX_SECONDS))
    simulator = CountingSimulator(**options)
    # The simulator's documents and indexes live as long as the process: keep the collector from
    # walking them at every full collection, which stalls all answers for a long soak's size.
    gc.freeze()
    await simulator.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    hello = {
        "base_url": simulator.base_url,
        "api_key": simulator.api_key,
        "token": simulator.token,
        "pid": os.getpid(),
    }
    print(json.dumps(hello), flush=True)
    try:
        async with asyncio.timeout(max_seconds):
            while line := await reader.readline():
                command = line.decode().strip()
                if command == "stats":
                    answer: Any = _stats(simulator)
                elif command == "log":
                    answer = [[record.time, record.status] for record in simulator.request_log]
                elif command == "quit":
                    break
                else:
                    answer = {"error": f"unknown command {command!r}"}
                print(json.dumps(answer), flush=True)
    except TimeoutError:
        print(f"_server_process: stopping after {max_seconds}s", file=sys.stderr)
    finally:
        await simulator.close()


# -- the parent --------------------------------------------------------------------------------


class ServerProcess:
    """A handle on a simulator running in a child process; :meth:`stop` always ends it."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self._process: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.api_key = ""
        self.token = ""

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start the child and wait (at most ``timeout`` seconds) until it listens."""
        # A fixed interpreter and a file of this repository, no shell: nothing untrusted runs.
        self._process = subprocess.Popen(  # noqa: S603
            [sys.executable, str(Path(__file__).resolve()), json.dumps(self.options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        hello = self._read_line(timeout)
        self.base_url, self.api_key, self.token = (
            hello["base_url"],
            hello["api_key"],
            hello["token"],
        )
        return self

    def _read_line(self, timeout: float) -> Any:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the server process said nothing within {timeout}s")
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the server process ended (exit code {process.poll()})")
        return json.loads(line)

    def _ask(self, command: str, timeout: float) -> Any:
        process = self._process
        assert process is not None
        assert process.stdin is not None
        process.stdin.write(command.encode() + b"\n")
        process.stdin.flush()
        return self._read_line(timeout)

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """The server's counters now (see the module docstring)."""
        answer: dict[str, Any] = self._ask("stats", timeout)
        return answer

    def settled_stats(self, quiet: float = 0.2, timeout: float = 10.0) -> dict[str, Any]:
        """The counters once ``total_requests`` has not moved for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last = self.stats()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.stats()
            if now["total_requests"] == last["total_requests"]:
                return now
            last = now
        return last

    def log(self, timeout: float = 10.0) -> list[tuple[float, int | str]]:
        """``(time, status)`` of every request the server logged, oldest first."""
        return [(when, status) for when, status in self._ask("log", timeout)]

    def stop(self, timeout: float = 10.0) -> None:
        """Close the child's stdin and wait for it to exit; kill it after ``timeout`` seconds."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(BrokenPipeError):
            if process.stdin is not None:
                process.stdin.close()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        if process.stdout is not None:
            process.stdout.close()


#: What the ``server_process`` fixture gives: start a simulator with these keyword arguments.
StartServer = Callable[..., ServerProcess]


if __name__ == "__main__":
    asyncio.run(_serve(json.loads(sys.argv[1])))
