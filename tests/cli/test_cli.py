"""The ``phala-async`` command line, run in-process (``main``) and as a subprocess, against the
simulator: get, sweep records and summary, usage errors, secrets, serve, demo and help."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import queue
import socket
import subprocess
import sys
import threading
import types
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cli_support import (
    CVMS,
    SECRET_KEY,
    SECRET_TOKEN,
    TIMEOUT,
    Terminal,
    by_id,
    documented,
    fetches,
    interrupt_when,
    jsonl,
    lines_in,
    no_credentials_fixture,  # noqa: F401 - an autouse fixture
    posix_only,
    run,
    run_module,
    served_fixture,  # noqa: F401 - a fixture
    simulator_thread,
    subprocess_env,
)

from phala_async import CvmResult, NotFoundError
from phala_async._client import ClientStats
from phala_async.cli import build_parser, main
from phala_async.cli._common import make_client, plural
from phala_async.cli._output import CSV_COLUMNS, Redactor, record_writer
from phala_async.cli._progress import Tally, format_progress, format_summary
from phala_async.testing import Fault, PhalaSimulator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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


# -- get ------------------------------------------------------------------------------------


def test_get_prints_each_cvm_in_the_documented_shape(
    served: PhalaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`get 3 1 2` prints three JSON lines, in that order, each the documented CVM."""
    assert run(served, "get", "3", "1", "2") == 0
    out, err = capsys.readouterr()
    assert jsonl(out) == [documented(served, cvm_id) for cvm_id in (3, 1, 2)]
    assert err == ""


def test_get_reports_each_failure_on_stderr_and_exits_1(
    served: PhalaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Failed ids get one stderr line each and exit 1; the others are still printed."""
    assert run(served, "get", "1", "31", "999", "../etc") == 1
    out, err = capsys.readouterr()
    assert jsonl(out) == [documented(served, 1)]
    lines = err.splitlines()
    assert len(lines) == 3
    assert "CVM '31': HTTP 403" in lines[0]
    assert "CVM '999': HTTP 404" in lines[1]
    assert "invalid CVM id '../etc'" in lines[2]


def test_get_runs_as_a_subprocess(served: PhalaSimulator) -> None:
    """`python -m phala_async get` prints the CVM and the failure, and exits 1."""
    done = run_module("--base-url", served.base_url, "--api-key", SECRET_KEY, "get", "7", "999")
    assert done.returncode == 1
    assert jsonl(done.stdout) == [documented(served, 7)]
    assert "CVM '999': HTTP 404 Not Found" in done.stderr


def test_get_reads_ids_from_stdin_with_a_dash_skipping_comments(
    served: PhalaSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`get 4 -` takes the ids on stdin after 4, skipping blank lines and # comments."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("# production\n2\n\n  3  # the db\n"))
    assert run(served, "get", "4", "-") == 0
    assert jsonl(capsys.readouterr().out) == [documented(served, n) for n in (4, 2, 3)]


def test_get_prints_indented_json_on_a_terminal(
    served: PhalaSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stdout a terminal, `get` prints each CVM as indented JSON, one after another."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert run(served, "get", "1", "2") == 0
    text, decoder, found = terminal.getvalue(), json.JSONDecoder(), []
    assert text.startswith('{\n  "id": 1,\n')
    position = 0
    while position < len(text.rstrip()):
        value, position = decoder.raw_decode(text, position)
        found.append(value)
        position += 1  # the newline after each object
    assert found == [documented(served, 1), documented(served, 2)]


def test_get_format_table_has_a_row_per_cvm_under_aligned_columns(
    served: PhalaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`get --format table` prints a header and one row per CVM, its name and status in columns
    starting where the header's do."""
    assert run(served, "get", "1", "12", "--format", "table") == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["CVM_ID", "NAME", "STATUS", "VCPU", "MEMORY_MB", "REGION"]
    assert len(rows) == 2
    for row, cvm_id in zip(rows, (1, 12), strict=True):
        document = served.cvm(cvm_id)
        assert row.split()[:3] == [str(cvm_id), document["name"], document["status"]]
        assert row[header.index("NAME") :].startswith(document["name"])
        assert row[header.index("STATUS") :].startswith(document["status"])


def test_get_format_csv_writes_the_sweep_columns(
    served: PhalaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`get --format csv` writes the sweep's CSV header and one ok row per CVM."""
    assert run(served, "get", "5", "6", "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(row["cvm_id"], row["ok"], row["name"]) for row in rows] == [
        ("5", "true", served.cvm(5)["name"]),
        ("6", "true", served.cvm(6)["name"]),
    ]


# -- sweep: records -------------------------------------------------------------------------


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


def test_sweep_runs_as_a_subprocess_with_the_key_from_the_environment(
    served: PhalaSimulator,
) -> None:
    """`python -m phala_async sweep --all --format csv` with PHALA_CLOUD_API_KEY writes every
    workspace CVM as a CSV row to stdout, and prints no secret."""
    done = run_module(
        "sweep", "--all", "--format", "csv", "--base-url", served.base_url,
        PHALA_CLOUD_API_KEY=SECRET_KEY,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert sorted(int(row["id"]) for row in rows) == served.cvm_ids
    for row in rows:
        assert row["name"] == served.cvm(int(row["id"]))["name"]
    assert f"Swept {CVMS} ids" in done.stderr
    assert SECRET_KEY not in done.stdout + done.stderr


# -- sweep: progress, summary, retries --------------------------------------------------------


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


@posix_only
def test_ctrl_c_keeps_completed_records_in_the_partial_file_and_exits_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Interrupted mid-sweep, `main` stops cleanly: FILE not written, complete records in
    FILE.partial, a summary that says how to continue, and 130."""
    output = tmp_path / "cvms.jsonl"
    partial = tmp_path / "cvms.jsonl.partial"
    with (
        simulator_thread(cvms=400, latency=0.02, api_key=SECRET_KEY) as simulator,
        interrupt_when(lambda: lines_in(partial) >= 5),
    ):
        code = run(simulator, "--concurrency", "2", "sweep", "--all", "-o", str(output))
    assert code == 130
    assert not output.exists()
    records = jsonl(partial.read_text())
    assert 5 <= len(records) < 400
    assert all(record["ok"] for record in records)
    err = capsys.readouterr().err
    assert f"Interrupted by Ctrl-C after {len(records)} of 400 ids" in err
    assert f"the records so far are in {partial}: run the same command with --resume" in err


# -- exit status 2 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["sweep", "1"], "no credentials: pass --api-key"),
        (["--api-key", SECRET_KEY, "--base-url", "ftp://x", "get", "1"], "must be an absolute"),
        (["--api-key", SECRET_KEY, "sweep", "--ids-file", "/no/such/ids.txt"], "cannot read"),
        (["--api-key", SECRET_KEY, "sweep"], "nothing to sweep: give ids"),
        (["--api-key", SECRET_KEY, "sweep", "--all", "1"], "--all sweeps the whole workspace"),
        (["--api-key", SECRET_KEY, "--token", SECRET_TOKEN, "get", "1"], "not both"),
        (["--api-key", SECRET_KEY, "--timeout", "-1", "get", "1"], "--timeout: must be > 0"),
        (["--api-key", SECRET_KEY, "sweep", "1", "-o", "/no/such/dir/x.jsonl"], "cannot write"),
        (["frobnicate"], "invalid choice"),
        (
            ["--api-key", SECRET_KEY, "--base-url", "http://cvms.example/api/v1", "get", "1"],
            "use https, or pass --allow-insecure-http",
        ),
        (["--api-key", SECRET_KEY, "sweep", "1", "--resume"], "give that FILE"),
        (
            ["--api-key", SECRET_KEY, "sweep", "1", "-o", "x", "--format", "table", "--resume"],
            "a table",
        ),
    ],
    ids=[
        "no-credentials",
        "bad-url",
        "missing-ids-file",
        "nothing-to-sweep",
        "all-with-ids",
        "key-and-token",
        "negative-timeout",
        "unwritable-output",
        "unknown-command",
        "plain-http-elsewhere",
        "resume-without-output",
        "resume-a-table",
    ],
)
def test_bad_usage_or_configuration_exits_2_with_a_one_line_fix(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad command line exits 2, prints nothing on stdout, and ends with one line saying
    what to do."""
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    last = err.splitlines()[-1]
    assert last.startswith("phala-async")
    assert says in last
    assert SECRET_KEY not in err
    assert SECRET_TOKEN not in err


def test_bad_usage_exits_2_as_a_subprocess() -> None:
    """`python -m phala_async get 1` with no credentials exits 2 and says how to pass one."""
    done = run_module("get", "1")
    assert done.returncode == 2
    assert "--api-key" in done.stderr
    assert done.stdout == ""


# -- secrets --------------------------------------------------------------------------------


@pytest.mark.parametrize("credential", ["--api-key", "--token", "environment"])
def test_no_secret_in_anything_printed_even_verbose(
    credential: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With -vv, retries, failures, get and sweep --all, neither key nor token is ever printed."""
    with simulator_thread(cvms=5, api_key=SECRET_KEY, token=SECRET_TOKEN) as simulator:
        simulator.script(2, Fault.HTTP_503)
        simulator.script(3, Fault.RATE_LIMIT)
        given = {"--api-key": ["--api-key", SECRET_KEY], "--token": ["--token", SECRET_TOKEN]}
        if credential == "environment":
            monkeypatch.setenv("PHALA_CLOUD_API_KEY", SECRET_KEY)
        prefix = ["-vv", "--base-url", simulator.base_url, *given.get(credential, [])]
        assert main([*prefix, "get", "1", "2", "404404"]) == 1
        assert main([*prefix, "sweep", "3", "4", "6", "a b"]) == 1
        assert main([*prefix, "sweep", "--all"]) == 0
    out, err = capsys.readouterr()
    assert "retrying CVM '2'" in err  # the logs did run
    assert "GET /cvms/paginated" in err
    assert "credential=" in err
    for secret in (SECRET_KEY, SECRET_TOKEN):
        assert secret not in out
        assert secret not in err


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


def test_redactor_masks_credentials_but_not_short_values() -> None:
    """Credentials are masked wherever they appear; values too short to be one are left alone."""
    redact = Redactor([SECRET_KEY, None, "", "k"])
    assert redact(f"echo {SECRET_KEY}!{SECRET_KEY}") == "echo ***!***"
    assert redact("workspace") == "workspace"


# -- serve ----------------------------------------------------------------------------------


@posix_only
def test_serve_as_a_subprocess_prints_a_base_url_that_answers() -> None:
    """`serve --port 0` prints its base URL and test key; the URL serves CVMs until SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "phala_async", "serve", "--port", "0", "--cvms", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None

    def read_lines() -> None:
        for line in process.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=read_lines)
    reader.start()
    try:
        printed: list[str] = []
        while not printed or not printed[-1].startswith("try:"):
            printed.append(lines.get(timeout=TIMEOUT))
        banner = "".join(printed)
        base_url = next(line for line in printed if line.startswith("base URL:")).split()[-1]
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/api/v1")
        assert "API key:  phak_simulator_test_key" in banner
        assert f"--base-url {base_url}" in printed[-1]
        cvm, page = answers(base_url, "/cvms/3"), answers(base_url, "/cvms/paginated")
        assert cvm is not None
        assert cvm["id"] == 3
        assert page is not None
        assert page["total"] == 5
        process.terminate()
        assert process.wait(TIMEOUT) == 0
    finally:
        process.kill()
        process.wait(TIMEOUT)
        reader.join(TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@posix_only
def test_serve_in_process_answers_until_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    """`main(["serve"])` serves CVMs on the given port and returns 0 on Ctrl-C."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/api/v1"
    seen: list[dict[str, Any] | None] = []

    def served_one() -> bool:
        seen.append(answers(base_url, "/cvms/2"))
        return seen[-1] is not None

    with interrupt_when(served_one):
        code = main(["serve", "--port", str(port), "--cvms", "3"])
    assert code == 0
    assert seen[-1] is not None
    assert seen[-1]["id"] == 2
    out, err = capsys.readouterr()
    assert f"base URL: {base_url}" in out
    assert "API key:  phak_simulator_test_key" in out
    assert "simulator stopped" in err


def test_serve_on_a_busy_port_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A port already taken exits 2 with a message to pick another."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    assert "pick another --port" in capsys.readouterr().err


# -- demo -----------------------------------------------------------------------------------


def test_demo_in_process_sweeps_every_cvm_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`demo --cvms 200` ends with every id ok despite faults and a rate limit, and says so."""
    assert main(["demo", "--cvms", "200"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "Swept 200 ids" in err
    assert "200 ok, 0 failed" in err


def test_demo_as_a_subprocess_writes_records_only_with_output(tmp_path: Path) -> None:
    """`python -m phala_async demo --cvms 200 -o FILE` exits 0 and writes 200 ok records."""
    output = tmp_path / "demo.jsonl"
    done = run_module("demo", "--cvms", "200", "-o", str(output))
    assert done.returncode == 0, done.stderr
    records = jsonl(output.read_text())
    assert sorted(record["cvm"]["id"] for record in records) == list(range(1, 201))
    assert "200 ok, 0 failed" in done.stderr
    assert done.stdout == ""


# -- help, version, event loop ----------------------------------------------------------------


def test_help_shows_every_command_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    """--help exits 0 and lists the commands, the credentials variable, examples and every exit
    status."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for text in ("get", "sweep", "diff", "serve", "demo", "PHALA_CLOUD_API_KEY", "examples:"):
        assert text in out
    lines = [line.strip() for line in out.partition("exit status:\n")[2].splitlines()]
    statuses = [line for line in lines if line[:1].isdigit()]
    assert [line.split()[0] for line in statuses] == ["0", "1", "2", "3", "4", "130"]
    assert "3    the API refused the credential (401); a 403 is about one CVM: exit 1" in statuses
    assert "4    the sweep stopped before every id was attempted (the API unreachable, a" in (
        statuses
    )
    assert "143 stopped by SIGTERM" in statuses[-1]


@pytest.mark.parametrize(
    ("command", "shown", "not_shown"),
    [
        ("serve", ["--port", "--fault-rate"], ["--api-key", "--base-url", "--timeout", "--quiet"]),
        ("demo", ["--concurrency", "--quiet", "--output"], ["--api-key", "--token", "--base-url"]),
        ("sweep", ["--allow-insecure-http", "--resume", "every id was attempted"], ["--port"]),
        ("diff", ["--fields", "--ignore"], ["--api-key", "--concurrency"]),
    ],
    ids=["serve", "demo", "sweep", "diff"],
)
def test_command_help_lists_only_the_options_the_command_uses(
    command: str, shown: list[str], not_shown: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`COMMAND --help` shows its own options and none that it would ignore."""
    assert main([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert all(text in out for text in shown)
    assert not [text for text in not_shown if text in out]


def test_allow_insecure_http_lets_a_plain_http_base_url_through() -> None:
    """With --allow-insecure-http the client takes a plain http URL to another host."""
    args = build_parser().parse_args(
        ["--api-key", SECRET_KEY, "--base-url", "http://cvms.example/api/v1",
         "get", "--allow-insecure-http", "1"]
    )  # fmt: skip
    assert make_client(args).base_url == "http://cvms.example/api/v1"


def test_uvloop_runs_the_command_when_installed(
    served: PhalaSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """When `uvloop` imports, its new_event_loop makes the loop the command runs on."""
    made: list[asyncio.AbstractEventLoop] = []

    def new_event_loop() -> asyncio.AbstractEventLoop:
        made.append(asyncio.new_event_loop())
        return made[-1]

    monkeypatch.setitem(sys.modules, "uvloop", types.SimpleNamespace(new_event_loop=new_event_loop))
    assert run(served, "get", "1") == 0
    assert len(made) == 1
    assert made[0].is_closed()
    assert jsonl(capsys.readouterr().out) == [documented(served, 1)]


# -- pure parts -----------------------------------------------------------------------------


def test_progress_line_shows_total_eta_failures_retries_and_pacing() -> None:
    """With a total the line has a bar, percent and ETA; without, a count; both show the rest."""
    tally = Tally(total=200, ok=48)
    tally.failed["NotFoundError"] = 2
    stats = ClientStats(retries=7, rate_limited=3, send_rate=180.4)
    line = format_progress(tally, stats, elapsed=0.5)
    assert line.startswith("[###.........] 50/200 25%  100 ids/s  ETA 2s")
    assert line.endswith("2 failed  7 retries  429: 3  paced 180/s")
    unknown = format_progress(Tally(ok=50), ClientStats(), elapsed=0.5)
    assert unknown == "50 done  100 ids/s  0 failed  0 retries  429: 0"


def test_summary_names_failures_by_type_and_the_interruption() -> None:
    """The summary counts ok and failed by type, retries and 429s, and says when interrupted."""
    tally = Tally(total=10, ok=5)
    tally.failed.update({"NotFoundError": 2, "PermissionDeniedError": 1})
    stats = ClientStats(retries=1, rate_limited=4)
    text = format_summary(tally, stats, 2.0, stopped="Interrupted by SIGTERM")
    assert text == (
        "Interrupted by SIGTERM after 8 of 10 ids in 2.0s (4 ids/s): 5 ok, 3 failed "
        "(2 NotFoundError, 1 PermissionDeniedError); 1 retry, 4 rate-limited (429) answers."
    )


def test_summary_agrees_in_number_and_counts_ids_already_ok() -> None:
    """One id is `1 id`, and ids skipped by --resume count as done but not as fetched."""
    assert format_summary(Tally(total=1, ok=1), ClientStats(), 1.0) == (
        "Swept 1 id in 1.0s (1 ids/s): 1 ok, 0 failed; 0 retries, 0 rate-limited (429) answers."
    )
    resumed = Tally(total=10, ok=2, skipped=8)
    assert format_summary(resumed, ClientStats(retries=1, rate_limited=1), 2.0) == (
        "Swept 10 ids in 2.0s (1 ids/s): 2 ok, 0 failed; 1 retry, 1 rate-limited (429) answer; "
        "8 ids already ok, not fetched again."
    )


@pytest.mark.parametrize(
    ("count", "noun", "nouns", "expected"),
    [(0, "id", None, "0 ids"), (1, "id", None, "1 id"), (2, "retry", "retries", "2 retries")],
    ids=["zero", "one", "irregular"],
)
def test_plural_agrees_with_the_count(
    count: int, noun: str, nouns: str | None, expected: str
) -> None:
    """`plural` puts the noun in the plural for every count but one."""
    assert plural(count, noun, nouns) == expected
