"""An inventory you can trust: one writer per FILE (an OS lock, none left behind by SIGKILL),
outages that keep yesterday's FILE (exit 4), diffs by CVM, checked field paths, 403 as a fact
about one CVM, and the papercuts of issue 16. Real files, real subprocesses where the lock or a
signal is what is tested."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import (
    SECRET_KEY,
    TIMEOUT,
    jsonl,
    lines_in,
    module_process,
    no_credentials_fixture,  # noqa: F401 - an autouse fixture
    posix_only,
    run,
    run_module,
    served_fixture,  # noqa: F401 - a fixture
    simulator_thread,
    wait_until,
)

from phala_async._errors import with_tls_hint
from phala_async.cli import main
from phala_async.cli._guard import SAME_FAILURE_LIMIT
from phala_async.cli._output import TABLE_COLUMNS, format_table_row
from phala_async.cli._progress import fit_line
from phala_async.testing import PhalaSimulator

IDS = 40


def sweep_args(simulator: PhalaSimulator, output: Path, *more: str) -> list[str]:
    return [
        "--base-url", simulator.base_url, "--api-key", SECRET_KEY, "--quiet",
        "sweep", *map(str, range(1, IDS + 1)), "-o", str(output), *more,
    ]  # fmt: skip


@pytest.fixture(name="slow")
def slow_fixture() -> Iterator[PhalaSimulator]:
    """40 CVMs answered 50 ms each: a sweep at concurrency 1 runs about two seconds."""
    with simulator_thread(cvms=IDS, api_key=SECRET_KEY, latency=0.05) as simulator:
        yield simulator


# -- one writer per FILE ------------------------------------------------------------------------


@posix_only
@pytest.mark.slow  # processes run one after another
def test_a_second_sweep_on_one_file_exits_4_at_once_naming_the_first(
    slow: PhalaSimulator, tmp_path: Path
) -> None:
    """While a sweep writes FILE, the same command exits 4 naming the first one's pid, and FILE
    then holds the first sweep's complete output."""
    output = tmp_path / "race.jsonl"
    args = sweep_args(slow, output, "--concurrency", "1")
    with module_process(*args, stderr=subprocess.PIPE) as first:
        wait_until(lambda: lines_in(Path(f"{output}.partial")) >= 2, "the first sweep wrote")
        requests_before = slow.total_requests
        second = run_module(*args)
        assert second.returncode == 4
        assert f"pid {first.pid}" in second.stderr
        assert "being written by another sweep" in second.stderr
        assert first.wait(TIMEOUT) == 0
    assert slow.total_requests == IDS  # the second sweep sent nothing
    assert requests_before <= IDS
    records = jsonl(output.read_text())
    assert sorted(int(record["cvm_id"]) for record in records) == list(range(1, IDS + 1))
    assert not Path(f"{output}.partial").exists()


@posix_only
@pytest.mark.slow  # processes run one after another
def test_resume_takes_the_same_lock(slow: PhalaSimulator, tmp_path: Path) -> None:
    """--resume on a FILE another sweep is writing exits 4 and leaves its partial file alone."""
    output = tmp_path / "cvms.jsonl"
    args = sweep_args(slow, output, "--concurrency", "1")
    with module_process(*args) as first:
        wait_until(lambda: lines_in(Path(f"{output}.partial")) >= 2, "the first sweep wrote")
        resumed = run_module(*args, "--resume")
        assert resumed.returncode == 4
        assert first.wait(TIMEOUT) == 0
    assert len(jsonl(output.read_text())) == IDS


@posix_only
@pytest.mark.slow  # processes run one after another
def test_a_sigkilled_holder_leaves_no_lock_behind(slow: PhalaSimulator, tmp_path: Path) -> None:
    """After the holder is SIGKILLed, the next sweep on FILE takes the lock and completes."""
    output = tmp_path / "cvms.jsonl"
    args = sweep_args(slow, output, "--concurrency", "1")
    with module_process(*args) as holder:
        wait_until(lambda: lines_in(Path(f"{output}.partial")) >= 2, "the holder wrote")
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(TIMEOUT) == -signal.SIGKILL
    done = run_module(*args, "--resume")
    assert done.returncode == 0, done.stderr
    assert len(jsonl(output.read_text())) == IDS


# -- outages keep yesterday's FILE ----------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_sweep_against_a_closed_port_exits_4_and_resume_completes_it(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A complete FILE, then a sweep that reaches no API: exit 4, FILE byte for byte, the partial
    kept; --resume against the healthy API then completes it."""
    output = tmp_path / "good.jsonl"
    ids = [str(cvm_id) for cvm_id in range(1, 31)]
    assert run(served, "sweep", *ids, "-o", str(output)) == 0
    good = output.read_bytes()
    dead = f"http://127.0.0.1:{closed_port()}/api/v1"
    assert (
        main(["--base-url", dead, "--api-key", SECRET_KEY, "sweep", *ids, "-o", str(output)]) == 4
    )
    assert output.read_bytes() == good
    assert Path(f"{output}.partial").exists()
    err = capsys.readouterr().err
    assert f"no answer from the API at {dead}" in err
    assert "good.jsonl was left as it was" in err
    assert run(served, "sweep", *ids, "-o", str(output), "--resume") == 0
    assert sorted(int(r["cvm_id"]) for r in jsonl(output.read_text())) == list(range(1, 31))


class HangUpServer:
    """A TCP server on 127.0.0.1 that accepts each connection and closes it at once, counting
    them: an API that never answers over HTTP."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self.port = int(self._socket.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            connection.close()

    def __enter__(self) -> HangUpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self._socket.close()


def test_an_api_that_never_answers_gets_a_handful_of_requests_and_file_is_kept(
    tmp_path: Path,
) -> None:
    """3,000 ids against a server that hangs up on every connection: exit 4 after a handful of
    connections (not one per id), FILE byte for byte."""
    output = tmp_path / "good.jsonl"
    output.write_text('{"cvm_id":"1","ok":true,"cvm":{"id":1}}\n')
    good = output.read_bytes()
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(str(cvm_id) for cvm_id in range(1, 3001)) + "\n")
    with HangUpServer() as server:
        done = run_module(
            "--base-url", f"http://127.0.0.1:{server.port}/api/v1", "--api-key", SECRET_KEY,
            "sweep", "--ids-file", str(ids_file), "-o", str(output),
        )  # fmt: skip
        accepted = server.accepted
    print(f"connections accepted: {accepted}")  # shown with -s: the figure in the report
    assert done.returncode == 4, done.stderr
    assert output.read_bytes() == good
    assert 1 <= accepted <= 80  # the first ids' attempts and those in flight, not 3,000


def test_a_wrong_base_url_ends_the_sweep_early_with_the_hint(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A base URL without /api/v1: the sweep stops after a few 404s that are not the API's,
    exits 4, and the last lines say to check the base URL."""
    root = served.base_url.removesuffix("/api/v1")
    ids = [str(cvm_id) for cvm_id in range(1, 31)]
    args = ["--base-url", root, "--api-key", SECRET_KEY, "--concurrency", "1", "sweep", *ids]
    assert main([*args, "-o", str(tmp_path / "cvms.jsonl")]) == 4
    # Those ids, and at most the one request in flight when the third came back.
    assert SAME_FAILURE_LIMIT <= served.total_requests <= SAME_FAILURE_LIMIT + 1
    err = capsys.readouterr().err
    assert "check the base URL: it should end in /api/v1" in err.splitlines()[-2]
    assert "Stopped early after 3 of 30 ids" in err
    assert "was not written" in err


# -- 403 is about the CVM -----------------------------------------------------------------------


def test_get_of_a_cvm_of_another_workspace_exits_1_naming_it(
    served: PhalaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`get 31` (another workspace's CVM) exits 1; the message names the CVM and 'not in
    workspace', never the key."""
    assert run(served, "get", "31") == 1
    err = capsys.readouterr().err
    assert "CVM '31'" in err
    assert "not in workspace" in err
    assert "refused" not in err


# -- diff by CVM, fields checked ----------------------------------------------------------------


def test_diff_of_an_all_sweep_and_an_integer_sweep_of_one_fleet_is_empty(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--all (VM UUIDs) against integer ids of the same 30 CVMs: no difference, exit 0."""
    by_uuid, by_int = tmp_path / "all.jsonl", tmp_path / "ints.jsonl"
    assert run(served, "sweep", "--all", "-o", str(by_uuid)) == 0
    assert run(served, "sweep", *map(str, range(1, 31)), "-o", str(by_int)) == 0
    capsys.readouterr()
    assert main(["diff", str(by_uuid), str(by_int)]) == 0
    assert capsys.readouterr().out.startswith("No differences between")


def test_diff_pairs_a_failed_id_with_the_cvm_another_form_names(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CVM ok by VM UUID in OLD and failed by integer id in NEW is one `failed` line, not an
    added and a removed one."""
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    uuid = served.cvm(1)["vm_uuid"]
    assert run(served, "sweep", uuid, "-o", str(old)) == 0
    new.write_text(
        json.dumps({"cvm_id": "1", "ok": False, "error": {"type": "InternalServerError",
                    "status": 503, "message": "CVM '1': HTTP 503", "attempts": 4}}) + "\n"
    )  # fmt: skip
    capsys.readouterr()
    assert main(["diff", str(old), str(new), "--format", "jsonl"]) == 1
    assert [(line["kind"], line["in"]) for line in jsonl(capsys.readouterr().out)] == [
        ("failed", "new")
    ]


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["diff", "a", "b", "--fields", "stauts"], "did you mean 'status'?"),
        (["diff", "a", "b", "--ignore", "in_progres"], "did you mean 'in_progress'?"),
        (["diff", "a", "b", "--fields", "teepod.nmae"], "did you mean 'teepod.name'?"),
        (["--api-key", SECRET_KEY, "watch", "1", "--fields", "teepod.nmae"], "'teepod.name'"),
    ],
    ids=["diff-fields", "diff-ignore", "diff-nested", "watch-nested"],
)
def test_a_misspelt_field_path_exits_2_with_a_suggestion(
    args: list[str], suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A field path that names no field exits 2 before any file or request, suggesting one."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert suggestion in err
    assert "is not a field of a CVM" in err


def test_diff_accepts_a_csv_column_as_a_field(tmp_path: Path) -> None:
    """`region`, a column of the CSV output, is a field path diff accepts."""
    old = tmp_path / "a.jsonl"
    old.write_text('{"cvm_id":"1","ok":true,"cvm":{"id":1}}\n')
    assert main(["diff", str(old), str(old), "--fields", "region,teepod_name"]) == 0


# -- papercuts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["cvm_id", "id"])
def test_an_ids_file_with_a_column_name_first_sweeps_only_the_ids(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str], header: str
) -> None:
    """`cut -d, -f1 list.csv`: a first line that is exactly cvm_id or id is not swept."""
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{header}\n1\n2\n")
    assert run(served, "sweep", "--ids-file", str(ids)) == 0
    assert [record["cvm_id"] for record in jsonl(capsys.readouterr().out)] == ["1", "2"]


def test_a_column_name_after_the_first_line_is_an_id(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the first line is taken for a header: `id` further down is swept (and fails)."""
    ids = tmp_path / "ids.txt"
    ids.write_text("1\nid\n")
    assert run(served, "sweep", "--ids-file", str(ids)) == 1
    assert sorted(record["cvm_id"] for record in jsonl(capsys.readouterr().out)) == ["1", "id"]


@pytest.mark.parametrize("output_format", ["jsonl", "csv"])
def test_a_sweep_output_passed_as_an_ids_file_exits_2(
    served: PhalaSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    output_format: str,
) -> None:
    """A sweep output given to --ids-file exits 2 before any request, suggesting --resume or jq."""
    swept = tmp_path / f"cvms.{output_format}"
    assert run(served, "sweep", "1", "2", "--format", output_format, "-o", str(swept)) == 0
    requests = served.total_requests
    capsys.readouterr()
    assert run(served, "sweep", "--ids-file", str(swept)) == 2
    err = capsys.readouterr().err
    assert "is a sweep output, not a list of ids" in err
    assert "--resume" in err
    assert "jq -r .cvm_id" in err
    assert served.total_requests == requests


def test_the_table_never_cuts_an_id() -> None:
    """A VM UUID and an app id are printed whole in a streamed table row."""
    widths = (36, 24, 12, 4, 9, 16, None)
    for cvm_id in ("6419403c-757f-4ae7-9f0a-3d1c2b4a5e6f", "app_" + "ab" * 20):
        row = format_table_row((cvm_id, "web", "running", "1", "2048", "us", ""), widths)
        assert row.split()[0] == cvm_id
    assert TABLE_COLUMNS[0] == "CVM_ID"


@pytest.mark.parametrize(
    ("width", "expected"),
    [
        (100, "[####] 5/10 50%  12 ids/s  ETA 1s"),
        (30, "[####] 5/10 50%  12 ids/s"),
        (22, "[####] 5/10 50%"),
        (11, "[####] 5/10"),
    ],
    ids=["fits", "between-parts", "at-a-part", "inside-a-part"],
)
def test_the_progress_line_is_cut_at_a_word_boundary(width: int, expected: str) -> None:
    """A progress line wider than the terminal loses whole words from its end."""
    assert fit_line("[####] 5/10 50%  12 ids/s  ETA 1s", width) == expected


def test_a_tls_wrong_version_number_names_an_http_server() -> None:
    """OpenSSL's `wrong version number` gets its likely cause; other reasons stay as they are."""
    assert "speaks plain http" in with_tls_hint("wrong version number")
    assert with_tls_hint("certificate verify failed") == "certificate verify failed"


def test_https_to_a_plain_http_port_says_the_server_speaks_http(
    served: PhalaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`get` over https:// to the plain-http simulator says the server likely speaks http."""
    https = served.base_url.replace("http://", "https://")
    assert main(["--base-url", https, "--api-key", SECRET_KEY, "get", "1"]) == 1
    assert "the server likely speaks plain http, not https" in capsys.readouterr().err


def test_no_credential_in_the_lock_file(slow: PhalaSimulator, tmp_path: Path) -> None:
    """The lock file names the holder's command with the key masked."""
    output = tmp_path / "cvms.jsonl"
    assert main(sweep_args(slow, output, "--concurrency", "8")) == 0
    note = Path(f"{output}.lock").read_text()
    assert f"pid {os.getpid()}" in note
    assert SECRET_KEY not in note
    assert "phala-async --base-url" in note
    assert "--api-key *** --quiet sweep 1 2 3" in note
