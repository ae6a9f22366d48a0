"""``sweep`` run in-process: the records (JSON lines, CSV, table) checked id by id, where the ids
come from, the progress line and summary, the exit status (a plain function), the refused
credential (exit 3, FILE left as it was), FILE replaced once every id was attempted, and messages
that read well."""

from __future__ import annotations

import csv
import io
import signal
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from cli_support import (
    CVMS,
    SECRET_KEY,
    SECRET_TOKEN,
    WRONG_KEY,
    Terminal,
    by_id,
    documented,
    fetches,
    jsonl,
    lines_in,
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
    NotFoundError,
    PermissionDeniedError,
    PhalaClient,
)
from phala_async._client import ClientStats
from phala_async.cli import main
from phala_async.cli._common import Stop
from phala_async.cli._files import OutputFile
from phala_async.cli._output import CSV_COLUMNS, Redactor, record_writer
from phala_async.cli._progress import Tally
from phala_async.cli._sweep import SweepReport, describe_failure, exit_status, file_note
from phala_async.testing import Fault, PhalaSimulator

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
    """`sweep --all` with a wrong key: the listing's 401 ends it with 3, FILE byte for byte, and
    stderr names where the key came from, never the key."""
    output = tmp_path / "keep.jsonl"
    output.write_bytes(GOOD)
    assert run(served, "sweep", "--all", "-o", str(output), key=WRONG_KEY) == 3
    assert output.read_bytes() == GOOD
    out, err = capsys.readouterr()
    assert "the API refused the API key from --api-key (HTTP 401 Unauthorized)" in err
    assert "request:" not in err
    assert WRONG_KEY not in out + err
    assert served.requests["paginated"] == 1


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


def test_sweep_writes_jsonl_records_checked_id_by_id(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every id gets an ok record holding its documented CVM, and the exit status is 0."""
    output = tmp_path / "cvms.jsonl"
    ids = [str(cvm_id) for cvm_id in served.cvm_ids]
    assert run(served, "sweep", *ids, "--output", str(output)) == 0
    records = by_id(jsonl(output.read_text()))
    assert sorted(records) == sorted(ids)
    for cvm_id, record in records.items():
        assert record == {"cvm_id": cvm_id, "ok": True, "cvm": documented(served, int(cvm_id))}
    assert capsys.readouterr().out == ""


def test_sweep_records_failures_with_type_status_and_attempts(
    served: PhalaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 403 and a 404 become failed records on stdout with their type, status and attempts."""
    assert run(served, "sweep", "2", "31", "999") == 1
    records = by_id(jsonl(capsys.readouterr().out))
    assert records["2"]["ok"] is True
    for cvm_id, kind, status in (
        ("31", "PermissionDeniedError", 403),
        ("999", "NotFoundError", 404),
    ):
        record = records[cvm_id]
        assert (record["ok"], "cvm" in record) == (False, False)
        error = record["error"]
        assert (error["type"], error["status"], error["attempts"]) == (kind, status, 1)
        assert f"HTTP {status}" in error["message"]


def test_sweep_writes_csv_rows_checked_id_by_id(served: PhalaSimulator, tmp_path: Path) -> None:
    """CSV has the documented columns and one row per id with the CVM's fields or its error."""
    output = tmp_path / "cvms.csv"
    assert (
        run(served, "sweep", "1", "2", "3", "4", "5", "31", "--format", "csv", "-o", str(output))
        == 1
    )
    with output.open(newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = {row["cvm_id"]: row for row in reader}
    assert set(rows) == {"1", "2", "3", "4", "5", "31"}
    for cvm_id in range(1, 6):
        row, document = rows[str(cvm_id)], served.cvm(cvm_id)
        assert (row["ok"], row["id"], row["attempts"]) == ("true", str(cvm_id), "1")
        for column in ("name", "status", "app_id", "instance_id", "vm_uuid"):
            assert row[column] == (document.get(column) or "")
        for column in ("vcpu", "memory", "disk_size"):
            assert row[column] == str(document[column])
        teepod = document.get("teepod") or {}
        assert row["teepod_name"] == (teepod.get("name") or "")
        assert row["region"] == (teepod.get("region_identifier") or "")
        assert row["scheduled_delete_at"] == (document.get("scheduled_delete_at") or "")
        assert row["error_type"] == row["error_status"] == row["error_message"] == ""
    failed = rows["31"]
    assert (failed["ok"], failed["name"], failed["error_type"], failed["error_status"]) == (
        "false",
        "",
        "PermissionDeniedError",
        "403",
    )


def test_sweep_format_table_has_a_row_per_id_with_the_error_of_a_failed_one(
    served: PhalaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sweep --format table` prints a header, then a row per id; a failed id says why."""
    assert run(served, "sweep", "2", "999", "--format", "table") == 1
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["CVM_ID", "NAME", "STATUS", "VCPU", "MEMORY_MB", "REGION", "ERROR"]
    by_first = {row.split()[0]: row for row in rows}
    assert sorted(by_first) == ["2", "999"]
    assert by_first["2"].split()[1:3] == [served.cvm(2)["name"], served.cvm(2)["status"]]
    assert by_first["999"][header.index("STATUS") :].startswith("failed")
    assert by_first["999"][header.index("ERROR") :].startswith("CVM '999': HTTP 404 Not Found")


def test_ids_file_gives_one_record_per_distinct_id(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Blank lines and # comments are skipped, duplicates (also in another form) fetched once, and
    invalid ids reported as failed InvalidCvmIdError records, without a request."""
    app_hex = served.cvm(4)["app_id"]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(
        f"# ids to check\n1\n\n  2  # web\n1\n../etc\n\n{app_hex}\na b\napp_{app_hex}\n../etc\n2\n"
    )
    assert run(served, "sweep", "--ids-file", str(ids_file)) == 1
    records = by_id(jsonl(capsys.readouterr().out))
    assert sorted(records) == sorted(["1", "2", "../etc", app_hex, "a b"])
    assert records[app_hex]["cvm"] == documented(served, 4)
    for invalid in ("../etc", "a b"):
        error = records[invalid]["error"]
        assert (error["type"], error["status"], error["attempts"]) == ("InvalidCvmIdError", None, 0)
    assert served.requests == {"1": 1, "2": 1, f"app_{app_hex}": 1}


def test_ids_are_read_from_stdin_with_a_dash(
    served: PhalaSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--ids-file -` reads ids from stdin, one per line, together with ids given as arguments."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("5\n\n6\n5\n"))
    assert run(served, "sweep", "7", "--ids-file", "-") == 0
    assert sorted(by_id(jsonl(capsys.readouterr().out))) == ["5", "6", "7"]


def test_all_sweeps_exactly_the_workspace(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--all` writes one ok record per workspace CVM, none for the forbidden ones."""
    output = tmp_path / "all.jsonl"
    assert run(served, "sweep", "--all", "-o", str(output)) == 0
    records = jsonl(output.read_text())
    assert sorted(record["cvm"]["id"] for record in records) == served.cvm_ids
    assert not {record["cvm"]["id"] for record in records} & set(served.forbidden_ids)
    for record in records:
        assert record["cvm"] == documented(served, record["cvm"]["id"])
        assert record["cvm_id"] == record["cvm"]["vm_uuid"]
        assert fetches(served, record["cvm_id"]) == 1  # the id is what was asked for, once
    assert served.requests["paginated"] == 1
    assert f"Swept {CVMS} ids" in capsys.readouterr().err


def test_a_listing_that_fails_midway_keeps_page_one_in_the_partial_file_and_exits_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """If page 2 of the workspace fails, FILE is not written, page 1's records are in
    FILE.partial, the message names the listing, and it exits 4 (stopped early)."""
    output = tmp_path / "cvms.jsonl"
    with simulator_thread(cvms=150, api_key=SECRET_KEY) as simulator:
        simulator.script("paginated", Fault.OK, Fault.HTTP_500)
        code = run(simulator, "--max-attempts", "1", "sweep", "--all", "-o", str(output))
    assert code == 4
    assert not output.exists()
    records = jsonl((tmp_path / "cvms.jsonl.partial").read_text())
    assert sorted(record["cvm"]["id"] for record in records) == list(range(1, 101))
    err = capsys.readouterr().err
    assert "phala-async: the sweep stopped early: listing the workspace failed with HTTP 500" in err
    assert "Stopped early after 100 of 150 ids" in err
    assert "run the same command with --resume to continue" in err


def test_summary_counts_ok_failures_by_type_and_retries(
    served: PhalaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retried id ends ok, and the summary counts ok, failures by type and the retry."""
    served.script(3, Fault.HTTP_503)  # set before any request, so no race with the server thread
    assert run(served, "sweep", "1", "2", "3", "31", "998", "999") == 1
    out, err = capsys.readouterr()
    assert by_id(jsonl(out))["3"]["ok"] is True
    assert served.requests["3"] == 2
    assert "Swept 6 ids in " in err
    assert "3 ok, 3 failed (2 NotFoundError, 1 PermissionDeniedError); 1 retry, " in err


def test_progress_line_is_drawn_only_on_a_terminal(
    served: PhalaSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With stderr a terminal, the sweep redraws a progress line ending at 30/30; otherwise not."""

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    ids = [str(cvm_id) for cvm_id in served.cvm_ids]
    assert run(served, "sweep", *ids) == 0
    drawn = terminal.getvalue()
    assert drawn.count("\r\x1b[K") >= 2
    assert f"{CVMS}/{CVMS} 100%" in drawn
    monkeypatch.undo()
    assert run(served, "sweep", *ids) == 0
    assert "\r" not in capsys.readouterr().err


def test_progress_line_of_sweep_all_counts_against_the_workspace_total(
    served: PhalaSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sweep --all` draws done/total from the listing's total, and ends at 30/30 100%."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert run(served, "sweep", "--all", "-o", str(tmp_path / "all.jsonl")) == 0
    drawn = [line for line in terminal.getvalue().split("\r\x1b[K") if "/30 " in line]
    assert drawn
    assert drawn[-1].startswith(f"[############] {CVMS}/{CVMS} 100%")


def test_no_progress_line_when_the_records_go_to_the_same_terminal(
    served: PhalaSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stdout and stderr one terminal, records get whole lines and no progress is drawn."""
    stdout, stderr = Terminal(), Terminal()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    assert run(served, "sweep", "--all") == 0
    assert "\r" not in stderr.getvalue()
    assert stderr.getvalue().startswith(f"Swept {CVMS} ids in ")
    assert len(by_id(jsonl(stdout.getvalue()))) == CVMS


def test_quiet_prints_no_progress_and_no_summary(
    served: PhalaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --quiet a successful sweep prints nothing on stderr."""
    assert run(served, "--quiet", "sweep", "1", "2") == 0
    out, err = capsys.readouterr()
    assert len(jsonl(out)) == 2
    assert err == ""


@pytest.mark.parametrize(("output_format", "header"), [("jsonl", 0), ("csv", 1)])
def test_each_record_is_on_disk_before_the_next_is_written(
    tmp_path: Path, output_format: str, header: int
) -> None:
    """Records are flushed one by one, so a sweep killed at any point keeps what it wrote."""
    path = tmp_path / f"records.{output_format}"
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = record_writer(output_format, stream, redact=Redactor(()))
        for written in (1, 2, 3):
            error = NotFoundError("CVM 'x': HTTP 404", status_code=404, cvm_id=f"x{written}")
            writer.write(CvmResult(cvm_id=f"x{written}", error=error, attempts=1))
            assert lines_in(path) == header + written
