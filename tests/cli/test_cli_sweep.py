"""``sweep``'s outcome: the exit status (a plain function), the refused credential (exit 3, FILE
left as it was), FILE replaced once every id was attempted, and messages that read well."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from cli_support import (
    SECRET_KEY,
    SECRET_TOKEN,
    WRONG_KEY,
    fetches,
    jsonl,
    no_credentials_fixture,  # noqa: F401 - an autouse fixture
    run,
    served_fixture,  # noqa: F401 - a fixture
    simulator_thread,
)

from phala_async import (
    APIConnectionError,
    AuthenticationError,
    CvmResult,
    InternalServerError,
    PermissionDeniedError,
    PhalaClient,
)
from phala_async._client import ClientStats
from phala_async.cli import main
from phala_async.cli._common import Stop
from phala_async.cli._files import OutputFile
from phala_async.cli._progress import Tally
from phala_async.cli._sweep import SweepReport, describe_failure, exit_status, file_note
from phala_async.testing import PhalaSimulator

GOOD = b'{"cvm_id":"1","ok":true,"cvm":{"id":1}}\n' * 3  # yesterday's inventory


def report(
    *, ok: int = 0, skipped: int = 0, failed: dict[str, int] | None = None, **outcome: Any
) -> SweepReport:
    tally = Tally(ok=ok, skipped=skipped)
    tally.failed.update(failed or {})
    return SweepReport(tally, ClientStats(), 1.0, **outcome)


def stopped_by(signal_received: signal.Signals | None) -> Stop:
    stop = Stop()
    stop.signal = signal_received
    return stop


def status_error(cls: type[Any], status: int) -> Any:
    return cls(f"request: HTTP {status}", status_code=status)


@pytest.mark.parametrize(
    ("outcome", "stop", "expected"),
    [
        (report(ok=3), None, 0),
        (report(ok=2, failed={"NotFoundError": 1}), None, 1),
        (report(ok=2, failure=status_error(InternalServerError, 500)), None, 4),
        (report(ok=2, failure=APIConnectionError("TLS handshake failed")), None, 4),
        (report(ok=2, failure=status_error(AuthenticationError, 401)), None, 3),
        (report(failure=status_error(PermissionDeniedError, 403)), None, 4),
        (report(failed={"AuthenticationError": 5}), None, 3),
        (report(failed={"AuthenticationError": 2, "PermissionDeniedError": 3}), None, 3),
        (report(failed={"PermissionDeniedError": 2, "InvalidCvmIdError": 1}), None, 1),
        (report(failed={"AuthenticationError": 2, "NotFoundError": 1}), None, 1),
        (report(ok=1, failed={"PermissionDeniedError": 2}), None, 1),
        (report(skipped=2, failed={"PermissionDeniedError": 1}), None, 1),
        (report(skipped=2, failed={"AuthenticationError": 1}), None, 3),
        (report(failed={"InvalidCvmIdError": 2}), None, 1),
        (report(ok=1, interrupted=True), None, 130),
        (report(ok=1, interrupted=True), signal.SIGTERM, 143),
        (report(failed={"AuthenticationError": 1}, interrupted=True), signal.SIGTERM, 143),
    ],
    ids=[
        "all-ok",
        "one-failed",
        "listing-failed",
        "tls-ended-it",
        "401-ended-it",
        "403-ended-it",
        "401-for-every-id",
        "401-or-403-for-every-id",
        "403-for-every-id-asked",
        "401-and-404",
        "some-ok-the-rest-403",
        "resumed-the-rest-403",
        "resumed-the-rest-401",
        "only-invalid-ids",
        "ctrl-c",
        "sigterm",
        "sigterm-wins-over-401",
    ],
)
def test_exit_status_of_each_outcome(
    outcome: SweepReport, stop: signal.Signals | None, expected: int
) -> None:
    """Each way a sweep ends maps to its documented exit status."""
    assert exit_status(outcome, stopped_by(stop)) == expected


def test_a_failed_listing_is_described_without_the_word_request() -> None:
    """A listing page's error reads `listing the workspace failed with HTTP ...`."""
    error = InternalServerError("request: HTTP 500 Internal Server Error", status_code=500)
    error.attempts = 4
    assert describe_failure(error) == (
        "listing the workspace failed with HTTP 500 Internal Server Error (after 4 attempts)"
    )


def test_file_note_says_where_the_records_are_and_what_to_run_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note names FILE when replaced, FILE.partial and --resume when not."""
    monkeypatch.chdir(tmp_path)
    Path("cvms.jsonl").write_bytes(GOOD)
    output = OutputFile("cvms.jsonl")
    assert file_note(output, replaced=True, failed=0) == "The records are in cvms.jsonl."
    assert file_note(output, replaced=True, failed=1) == (
        "The records are in cvms.jsonl; add --resume to the same command to retry the 1 failed id."
    )
    assert file_note(output, replaced=False, failed=0) == (
        "cvms.jsonl was left as it was; the records so far are in cvms.jsonl.partial: run the same "
        "command with --resume to continue."
    )


def test_file_note_does_not_say_left_as_it_was_of_a_file_that_never_existed(
    tmp_path: Path,
) -> None:
    """With no FILE before the sweep, the note says it was not written."""
    output = OutputFile(str(tmp_path / "day2.jsonl"))
    assert file_note(output, replaced=False, failed=0).startswith(
        f"{tmp_path / 'day2.jsonl'} was not written; the records so far are in "
    )


@pytest.mark.parametrize(
    ("credential", "source"),
    [
        (["--api-key", WRONG_KEY], "the API key from --api-key"),
        (["--token", WRONG_KEY], "the OAuth token from --token"),
        ([], "the API key from $PHALA_CLOUD_API_KEY"),
    ],
    ids=["api-key", "token", "environment"],
)
def test_a_refused_credential_exits_3_naming_its_source_and_leaves_file_as_it_was(
    served: PhalaSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    credential: list[str],
    source: str,
) -> None:
    """A refused credential: exit 3 after one request, FILE byte for byte, one line saying
    which credential."""
    output = tmp_path / "keep.jsonl"
    output.write_bytes(GOOD)
    monkeypatch.setenv("PHALA_CLOUD_API_KEY", WRONG_KEY)
    args = ["--base-url", served.base_url, *credential, "sweep", "1", "2", "-o", str(output)]
    assert main(args) == 3
    assert output.read_bytes() == GOOD
    err = capsys.readouterr().err
    refused = [line for line in err.splitlines() if line.startswith("phala-async:")]
    assert refused == [
        f"phala-async: the API refused {source} (HTTP 401 Unauthorized): check it, or pass "
        f"another with --api-key, --token or $PHALA_CLOUD_API_KEY"
    ]
    assert WRONG_KEY not in err
    assert served.total_requests == 1  # the sweep ended at the first refusal


def test_a_credential_refused_for_the_listing_exits_3(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sweep --all` with a wrong key: the listing's 401 ends it with 3 and FILE as it was."""
    output = tmp_path / "keep.jsonl"
    output.write_bytes(GOOD)
    assert run(served, "sweep", "--all", "-o", str(output), key=WRONG_KEY) == 3
    assert output.read_bytes() == GOOD
    err = capsys.readouterr().err
    assert "the API refused the API key from --api-key (HTTP 401 Unauthorized)" in err
    assert "request:" not in err


def test_403_for_every_id_exits_1_each_naming_its_cvm(
    served: PhalaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ids that all answer 403 are CVMs of another workspace, never a refused key: exit 1, and
    each record names its CVM and 'not in workspace'."""
    assert run(served, "sweep", "31", "32") == 1
    out, err = capsys.readouterr()
    assert "refused" not in err
    errors = {record["cvm_id"]: record["error"] for record in jsonl(out)}
    assert sorted(errors) == ["31", "32"]
    for cvm_id, error in errors.items():
        assert error["type"] == "PermissionDeniedError"
        assert f"CVM '{cvm_id}'" in error["message"]
        assert "not in workspace" in error["message"]


def test_a_sweep_the_engine_ends_with_a_401_keeps_its_records_in_the_partial_file(
    served: PhalaSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stream that yields two results then raises AuthenticationError exits 3, leaves FILE as
    it was, and keeps the two records in FILE.partial."""

    class EndsWith401:
        def __init__(self, ids: Iterable[str]) -> None:
            self._ids = list(ids)

        async def __aenter__(self) -> AsyncIterator[CvmResult]:
            return self._results()

        async def __aexit__(self, *exc_info: object) -> None:
            return None

        async def _results(self) -> AsyncIterator[CvmResult]:
            for cvm_id in self._ids[:2]:
                error = PermissionDeniedError("HTTP 403", status_code=403, cvm_id=cvm_id)
                yield CvmResult(cvm_id=cvm_id, error=error, attempts=1)
            raise AuthenticationError("request: HTTP 401 Unauthorized", status_code=401)

    monkeypatch.setattr(PhalaClient, "stream_cvms", lambda self, ids: EndsWith401(ids))
    output = tmp_path / "keep.jsonl"
    output.write_bytes(GOOD)
    assert main(["--base-url", served.base_url, "--token", SECRET_TOKEN,
                 "sweep", "1", "2", "3", "-o", str(output)]) == 3  # fmt: skip
    assert output.read_bytes() == GOOD
    assert [
        record["cvm_id"] for record in jsonl((tmp_path / "keep.jsonl.partial").read_text())
    ] == [
        "1",
        "2",
    ]
    err = capsys.readouterr().err
    assert "the API refused the OAuth token from --token (HTTP 401 Unauthorized)" in err
    assert "Stopped early after 2 of 3 ids" in err


def test_a_sweep_with_some_failed_ids_replaces_file_and_points_to_resume(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every id attempted, one failed: exit 1, FILE replaced with all three records."""
    output = tmp_path / "cvms.jsonl"
    output.write_bytes(GOOD)
    assert run(served, "sweep", "1", "2", "999", "-o", str(output)) == 1
    records = jsonl(output.read_text())
    assert sorted((r["cvm_id"], r["ok"]) for r in records) == [
        ("1", True),
        ("2", True),
        ("999", False),
    ]
    assert not (tmp_path / "cvms.jsonl.partial").exists()
    assert "add --resume to the same command to retry the 1 failed id." in capsys.readouterr().err


def test_no_secret_in_a_refusal(served: PhalaSimulator, capsys: pytest.CaptureFixture[str]) -> None:
    """The refusal names the credential's source, never its value, even with -vv."""
    assert run(served, "-vv", "get", "1", key=SECRET_KEY + "x") == 3
    out, err = capsys.readouterr()
    assert "the API refused the API key from --api-key (HTTP 401 for the one id)" in err
    assert SECRET_KEY not in out + err


def test_all_over_apps_of_three_instances_writes_one_record_per_cvm(tmp_path: Path) -> None:
    """`--all` over a workspace whose apps run three instances each writes one ok record per
    CVM, every instance included, each fetched once."""
    output = tmp_path / "all.jsonl"
    with simulator_thread(cvms=12, instances_per_app=3, api_key=SECRET_KEY) as sim:
        assert run(sim, "sweep", "--all", "-o", str(output)) == 0
        records = jsonl(output.read_text())
        fetched = [fetches(sim, record["cvm_id"]) for record in records]
    assert sorted(record["cvm"]["id"] for record in records) == list(range(1, 13))
    assert len({record["cvm"]["app_id"] for record in records}) == 4
    assert all(record["ok"] for record in records)
    assert fetched == [1] * 12
