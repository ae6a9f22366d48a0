"""A real forward proxy for the network tests: proxy.py, run in a subprocess on 127.0.0.1.

proxy.py (a test-only dependency) is a full HTTP proxy: it tunnels https through CONNECT and
relays plain http requests, as a corporate proxy does. Its plugin ``_proxy_plugin.Recorder``
records every request it receives, so a test can check what crossed the proxy, and refuses
(403, 407) when a test asks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

_STARTUP_SECONDS = 20.0
_STOP_SECONDS = 10.0


class ForwardProxy:
    """A running proxy.py, with what it saw and what it should refuse."""

    def __init__(self, directory: Path, port: int) -> None:
        self._directory = directory
        self.port = port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, without credentials."""
        return f"http://127.0.0.1:{self.port}"

    def seen(self) -> list[dict[str, Any]]:
        """Every request the proxy received since the last :meth:`reset`, in order."""
        log = self._directory / "seen.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def refuse(self, status: int) -> None:
        """Answer every request with ``status`` from now on."""
        (self._directory / "refuse").write_text(str(status))

    def require(self, user: str, password: str) -> None:
        """Require these Basic credentials (407 without them) from now on."""
        (self._directory / "credentials").write_text(f"{user}:{password}")

    def reset(self) -> None:
        """Forget what was seen, and let every request through again."""
        for name in ("seen.jsonl", "refuse", "credentials"):
            (self._directory / name).unlink(missing_ok=True)


@contextmanager
def forward_proxy() -> Iterator[ForwardProxy]:
    """Start proxy.py on a free port of 127.0.0.1; stop it (and its workers) on leaving."""
    directory = Path(tempfile.mkdtemp(prefix="phala-test-proxy-"))
    port_file = directory / "port"
    here = str(Path(__file__).parent)
    env = {
        **os.environ,
        "PHALA_TEST_PROXY_DIR": str(directory),
        "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable, "-m", "proxy",
        "--hostname", "127.0.0.1",
        "--port", "0",
        "--port-file", str(port_file),
        "--plugins", "_proxy_plugin.Recorder",
        "--num-acceptors", "1",
        "--num-workers", "1",
        "--log-level", "WARNING",
    ]  # fmt: skip
    with (directory / "proxy.log").open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)  # noqa: S603
    try:
        deadline = time.monotonic() + _STARTUP_SECONDS
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"proxy.py did not start: {(directory / 'proxy.log').read_text()[-2000:]}"
                )
            time.sleep(0.02)
        yield ForwardProxy(directory, int(port_file.read_text()))
    finally:
        process.terminate()
        try:
            process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


#: Variables that change where the client connects or whom it trusts.
NETWORK_VARIABLES = (
    "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY",
    "https_proxy", "http_proxy", "no_proxy", "all_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
)  # fmt: skip


@pytest.fixture
def clean_network_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the machine's proxy variables nor its CA variables reach the test."""
    for name in NETWORK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
