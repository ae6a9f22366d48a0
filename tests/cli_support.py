"""What the command-line tests share: the simulator in a background thread, ``main`` and
``python -m phala_async`` pointed at it, and readers of what they wrote.

``main`` runs its own event loop, so the CLI tests are synchronous and the simulator runs on
another loop in a background thread (:func:`simulator_thread`). Test modules import the fixtures
``served`` and ``no_credentials_in_environment`` from here (as ``served_fixture`` and
``no_credentials_fixture``, so that a test's ``served`` argument shadows no import).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from phala_async import CvmDetail
from phala_async._ids import normalize_cvm_id
from phala_async.cli import main
from phala_async.testing import PhalaSimulator

SECRET_KEY = "phak_cli-test-key-0123456789abcdef"
SECRET_TOKEN = "cli-test-oauth-token-fedcba9876543210"
WRONG_KEY = "phak_wrong-key-for-the-cli-tests-000"
TIMEOUT = 30  # seconds any subprocess, or any wait for one, may take
CVMS, FORBIDDEN = 30, 2  # the `served` workspace: ids 1..30, and 31, 32 in another workspace
_FIELDS = msgspec.structs.fields(CvmDetail)
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")


@contextlib.contextmanager
def simulator_thread(**options: Any) -> Iterator[PhalaSimulator]:
    """A PhalaSimulator serving from its own event loop in a daemon thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="simulator", daemon=True)
    thread.start()
    simulator = PhalaSimulator(**options)
    try:
        asyncio.run_coroutine_threadsafe(simulator.start(), loop).result(TIMEOUT)
        yield simulator
    finally:
        asyncio.run_coroutine_threadsafe(simulator.close(), loop).result(TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)
        loop.close()


@pytest.fixture(autouse=True, name="no_credentials_in_environment")
def no_credentials_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without the PHALA_CLOUD_* variables of whoever runs the suite."""
    monkeypatch.delenv("PHALA_CLOUD_API_KEY", raising=False)
    monkeypatch.delenv("PHALA_CLOUD_API_PREFIX", raising=False)


@pytest.fixture(name="served")
def served_fixture() -> Iterator[PhalaSimulator]:
    """30 workspace CVMs and 2 forbidden ones, accepting SECRET_KEY and SECRET_TOKEN."""
    with simulator_thread(
        cvms=CVMS, forbidden=FORBIDDEN, api_key=SECRET_KEY, token=SECRET_TOKEN
    ) as simulator:
        yield simulator


def run(simulator: PhalaSimulator, *args: str, key: str = SECRET_KEY) -> int:
    """``main`` with the simulator's URL and ``key`` before ``args``."""
    return main(["--base-url", simulator.base_url, "--api-key", key, *args])


def documented(simulator: PhalaSimulator, cvm_id: int) -> dict[str, Any]:
    """The simulator's document of ``cvm_id`` cut to the documented fields, defaults filled in."""
    document = simulator.cvm(cvm_id)
    return {f.encode_name: document.get(f.encode_name, f.default) for f in _FIELDS}


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    indexed = {record["cvm_id"]: record for record in records}
    assert len(indexed) == len(records), "one record per id"
    return indexed


def fetches(simulator: PhalaSimulator, cvm_id: str) -> int:
    """How many requests the simulator saw for ``cvm_id`` (as the client sends it)."""
    return simulator.requests[normalize_cvm_id(cvm_id)]


def lines_in(path: Path) -> int:
    """Complete lines in ``path`` so far (0 if it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_until(ready: Callable[[], bool], what: str) -> None:
    """Poll ``ready`` every 10 ms; fail the test after TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHALA_CLOUD_")}
    return {**env, **extra}


def run_module(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """``python -m phala_async args`` with a timeout (subprocess.run kills it on expiry)."""
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "phala_async", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=subprocess_env(**extra_env),
        check=False,
    )


@contextlib.contextmanager
def module_process(*args: str, **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """``python -m phala_async args`` started in the background; killed and reaped at the end."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "phala_async", *args], text=True, env=subprocess_env(), **popen
    )
    try:
        yield process
    finally:
        process.kill()
        process.communicate(timeout=TIMEOUT)


@contextlib.contextmanager
def interrupt_when(ready: Callable[[], bool]) -> Iterator[None]:
    """Send SIGINT to this process (Ctrl-C for ``main`` in the main thread) once ``ready()``
    holds, or after TIMEOUT so that a broken test ends."""
    finished = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + TIMEOUT
        while not finished.is_set() and not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not finished.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
        watcher.join(TIMEOUT)


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def answers(base_url: str, path: str = "/cvms/1") -> dict[str, Any] | None:
    """The JSON a simulator URL answers with the test key, or None when nothing answers."""
    request = urllib.request.Request(  # noqa: S310 - a loopback http URL
        base_url + path, headers={"X-API-Key": "phak_simulator_test_key"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
            answer: dict[str, Any] = json.load(response)
            return answer
    except OSError:
        return None
