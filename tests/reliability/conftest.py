"""Fixtures of the reliability suite: a simulator in its own process, and the soak size.

``--soak-ids N`` is registered here, so it is understood when pytest is pointed at this folder
(``pytest tests/reliability --soak-ids 200000``); ``PHALA_SOAK_IDS=200000`` works from anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from _server_process import ServerProcess, StartServer

DEFAULT_SOAK_IDS = 20_000


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-ids",
        type=int,
        default=None,
        help=f"ids in the fault soak (default {DEFAULT_SOAK_IDS}, or $PHALA_SOAK_IDS)",
    )


@pytest.fixture
def soak_ids(request: pytest.FixtureRequest) -> int:
    """How many ids the fault soak sweeps: ``--soak-ids``, else ``$PHALA_SOAK_IDS``, else 20,000."""
    given = request.config.getoption("soak_ids", default=None)
    if given is None:
        given = int(os.environ.get("PHALA_SOAK_IDS", DEFAULT_SOAK_IDS))
    return int(given)


@pytest.fixture
def server_process() -> Iterator[StartServer]:
    """Start simulators in child processes (``PhalaSimulator`` keyword arguments); every one is
    stopped after the test, killed if it does not exit within ten seconds."""
    started: list[ServerProcess] = []

    def start(**options: Any) -> ServerProcess:
        server = ServerProcess(**options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop(timeout=10.0)
