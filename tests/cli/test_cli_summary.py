"""Tests for what a monitor reads of the CLI: ``--summary-json FILE`` on ``sweep`` and
``watch``, the watch's outage lines, and ``-vv``'s answer log."""

from __future__ import annotations

import io
import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_support import (
    SECRET_KEY,
    interrupt_when,
    jsonl,
    no_credentials_fixture,  # noqa: F401 - an autouse fixture
    run,
    served_fixture,  # noqa: F401 - the `served` fixture
)

from phala_async.cli import main
from phala_async.cli._summary import sweep_why
from phala_async.testing import PhalaSimulator

SUMMARY_KEYS = [
    "command",
    "exit_status",
    "why",
    "wall_time_s",
    "counts",
    "failures",
    "requests",
    "retries",
    "client",
]


def read_summary(path: Path) -> dict[str, Any]:
    """The summary file, checked to hold every documented key in order and no credential."""
    text = path.read_text()
    assert SECRET_KEY not in text
    summary: dict[str, Any] = json.loads(text)
    assert list(summary) == SUMMARY_KEYS
    return summary


def test_a_sweep_with_a_missing_cvm_summarises_its_failure(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sweep of 3 ids, one missing: exit status 1, why, counts and the failure by kind."""
    path = tmp_path / "summary.json"
    code = run(served, "sweep", "1", "2", "999", "-q", "--summary-json", str(path))
    summary = read_summary(path)
    assert code == 1
    assert summary["command"] == "sweep"
    assert (summary["exit_status"], summary["why"]) == (1, "1 id failed")
    assert summary["counts"] == {"total": 3, "ok": 2, "failed": 1, "skipped": 0}
    assert summary["failures"] == {"NotFoundError": 1}
    assert (summary["requests"], summary["retries"]) == (served.total_requests, 0) == (3, 0)
    assert summary["client"]["ok"] == 2
    assert len(jsonl(capsys.readouterr().out)) == 3


def test_a_sweep_that_did_every_id_says_so(served: PhalaSimulator, tmp_path: Path) -> None:
    """A sweep whose every id was fetched: exit status 0, ``every id ok``."""
    path = tmp_path / "summary.json"
    code = run(
        served,
        "sweep",
        "--all",
        "-q",
        "-o",
        str(tmp_path / "out.jsonl"),
        "--summary-json",
        str(path),
    )
    summary = read_summary(path)
    assert (code, summary["exit_status"], summary["why"]) == (0, 0, "every id ok")
    assert summary["counts"]["ok"] == summary["counts"]["total"] == 30


def test_a_refused_credential_is_the_summarys_why(served: PhalaSimulator, tmp_path: Path) -> None:
    """A sweep refused with 401 says so, with exit status 3, and never holds the key sent."""
    path = tmp_path / "summary.json"
    code = run(served, "sweep", "1", "-q", "--summary-json", str(path), key="phak_" + "x" * 30)
    summary = read_summary(path)
    assert "phak_" + "x" * 30 not in path.read_text()
    assert (code, summary["exit_status"]) == (3, 3)
    assert summary["why"].startswith("the API refused the credential")


def test_a_summary_that_cannot_be_written_fails_the_command(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A summary into a missing directory: exit status 1 and a message naming the file."""
    path = tmp_path / "missing" / "summary.json"
    code = run(served, "sweep", "1", "-q", "--summary-json", str(path))
    assert code == 1
    assert f"cannot write the summary to {path}" in capsys.readouterr().err
    assert not path.exists()


def test_a_watch_summarises_its_rounds_and_events(
    served: PhalaSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``watch --rounds 3``: exit status 0, three rounds, events by kind."""
    path = tmp_path / "summary.json"
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    with interrupt_when(lambda: False):
        code = run(
            served,
            "watch",
            "1",
            "2",
            "--interval",
            "0.01",
            "--rounds",
            "3",
            "--initial",
            "-q",
            "--summary-json",
            str(path),
        )
    summary = read_summary(path)
    assert code == 0
    assert (summary["command"], summary["why"]) == ("watch", "3 rounds done")
    assert summary["counts"] == {
        "rounds": 3,
        "added": 2,
        "changed": 0,
        "removed": 0,
        "error": 0,
        "unavailable": 0,
        "available": 0,
    }
    assert summary["requests"] == served.total_requests == 6


def test_a_watch_of_an_api_that_is_down_writes_one_unavailable_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three rounds against a port nothing listens on: one ``unavailable`` line, no errors."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "summary.json"
    stdout = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    with interrupt_when(lambda: False):
        code = main(
            [
                "--base-url",
                f"http://127.0.0.1:{port}/api/v1",
                "--api-key",
                SECRET_KEY,
                "--max-attempts",
                "1",
                "watch",
                "1",
                "2",
                "3",
                "--interval",
                "0.01",
                "--rounds",
                "3",
                "-q",
                "--summary-json",
                str(path),
            ]
        )
    lines = jsonl(stdout.getvalue())
    summary = read_summary(path)
    assert code == 0
    assert [(line["kind"], line["cvm_id"]) for line in lines] == [("unavailable", None)]
    assert lines[0]["error"]["type"] == "APIUnreachableError"
    assert summary["counts"]["unavailable"] == 1
    assert summary["failures"] == {"APIUnreachableError": 1}


@pytest.mark.parametrize(
    ("status", "options", "why"),
    [
        (130, {"stopped_by": "SIGINT"}, "interrupted by SIGINT"),
        (1, {"failure": "HTTP 500"}, "stopped early: HTTP 500"),
        (1, {"failed": 2}, "2 ids failed"),
        (0, {}, "every id ok"),
    ],
    ids=["interrupted", "stopped-early", "failed-ids", "ok"],
)
def test_sweep_why_says_what_ended_the_sweep(
    status: int, options: dict[str, Any], why: str
) -> None:
    """Each way a sweep ends has its own words."""
    given = {"stopped_by": None, "refused": None, "failure": None, "failed": 0} | options
    assert sweep_why(status, **given) == why


def test_vv_logs_each_answer_with_its_status_and_duration_but_no_credential(
    served: PhalaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-vv get 1 999``: one log line per answer with its status and seconds, no key."""
    code = run(served, "-vv", "get", "1", "999")
    err = capsys.readouterr().err
    assert code == 1
    answers = sorted(
        line for line in err.splitlines() if "DEBUG phala_async: GET" in line and ": HTTP " in line
    )
    assert len(answers) == 2
    assert re.search(r"GET /cvms/1: HTTP 200 in \d+\.\d{3}s$", answers[0])
    assert re.search(r"GET /cvms/999: HTTP 404 in \d+\.\d{3}s$", answers[1])
    assert SECRET_KEY not in err
