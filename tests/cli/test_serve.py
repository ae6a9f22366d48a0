"""``phala-async serve`` as users run it: a subprocess with every simulator option, changed at run
time through its control API while a ``phala-async watch`` subprocess reports the change."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from cli_support import TIMEOUT, subprocess_env

pytestmark = pytest.mark.slow


class Served:
    """What ``serve`` printed: where it listens, the key, the CA file, and the control API."""

    def __init__(self, banner: dict[str, str]) -> None:
        self.base_url = banner["base URL"]
        self.api_key = banner["API key"].split()[0]
        self.ca_file = banner.get("CA file", "").split()[0] if "CA file" in banner else None
        self.control = banner["control"].split()[0].removesuffix("/cvms")
        self.context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None

    def call(self, method: str, path: str, body: object = None, *, key: str | None = None) -> Any:
        """One control API request; the JSON answer, or ``(status, answer)`` of an HTTP error."""
        request = urllib.request.Request(  # noqa: S310 - our own https server
            self.control + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"X-API-Key": key or self.api_key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self.context) as answer:  # noqa: S310
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


def _process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "phala_async", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )


@pytest.fixture(name="served", scope="module")
def served_fixture() -> Iterator[Served]:
    """``serve --instances-per-app 3 --tls --capacity 8`` on a free port, until the tests end."""
    process = _process(
        "serve", "--port", "0", "--cvms", "6", "--instances-per-app", "3", "--tls",
        "--capacity", "8", "--forbidden", "1", "--latency-ms", "1",
    )  # fmt: skip
    try:
        banner: dict[str, str] = {}
        assert process.stdout is not None
        for _ in range(20):  # the banner is a few lines; "try:" is its last
            name, _, value = process.stdout.readline().partition(":")
            if not name:
                break
            banner[name.strip()] = value.strip()
            if name == "try":
                break
        assert "try" in banner, f"serve did not start: {banner}"
        yield Served(banner)
    finally:
        process.terminate()
        process.communicate(timeout=TIMEOUT)


def test_serve_prints_an_https_base_url_and_the_ca_file(served: Served) -> None:
    """With ``--tls`` the banner gives an https URL and a CA file that verifies the server."""
    assert served.base_url.startswith("https://127.0.0.1:")
    assert served.call("GET", "/cvms") == {"cvm_ids": [1, 2, 3, 4, 5, 6], "forbidden_ids": [7]}


def test_the_control_api_refuses_a_wrong_key(served: Served) -> None:
    """A control request without the simulator's key is 401."""
    assert served.call("GET", "/cvms", key="phak_wrong") == (
        401,
        {"detail": "Authentication required"},
    )


def test_the_control_api_says_what_to_send(served: Served) -> None:
    """An unknown field is 422 naming it; an unknown CVM is 404."""
    status, answer = served.call("PATCH", "/cvms/2", {"colour": "red"})
    assert (status, "colour" in answer["detail"]) == (422, True)
    assert served.call("DELETE", "/cvms/99")[0] == 404


def test_a_running_watch_reports_a_change_made_through_the_control_api(served: Served) -> None:
    """``watch --all`` sees every CVM, then the status set by ``PATCH /_simulator/cvms/4``."""
    watch = _process(
        "--base-url", served.base_url, "--api-key", served.api_key,
        "--ca-file", str(served.ca_file), "watch", "--all", "--initial", "--interval", "0.05",
        "--rounds", "400", "--format", "jsonl",
    )  # fmt: skip
    try:
        assert watch.stdout is not None
        added = [json.loads(watch.stdout.readline()) for _ in range(6)]
        assert sorted(event["cvm"]["id"] for event in added) == [1, 2, 3, 4, 5, 6]
        assert {event["kind"] for event in added} == {"added"}
        new_status = (
            "stopped" if served.call("GET", "/cvms/4")["status"] != "stopped" else "running"
        )
        assert served.call("PATCH", "/cvms/4", {"status": new_status})["status"] == new_status
        changed = json.loads(watch.stdout.readline())
    finally:
        watch.kill()
        watch.communicate(timeout=TIMEOUT)
    assert changed["kind"] == "changed"
    assert changed["cvm"]["id"] == 4
    assert changed["changes"]["status"][1] == new_status


def test_instances_share_their_app_id(served: Served) -> None:
    """``--instances-per-app 3``: CVMs 1-3 are one app, 4-6 the next."""
    app_ids = [served.call("GET", f"/cvms/{i}")["app_id"] for i in range(1, 7)]
    assert len(set(app_ids[:3])) == len(set(app_ids[3:])) == 1
    assert app_ids[0] != app_ids[3]
