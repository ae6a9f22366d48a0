"""The ``phala-async`` command line run in-process (``main``) against the simulator: get, usage
errors, secrets, serve, demo, help, and the progress and summary lines as plain functions. ``sweep``
is in ``test_cli_sweep.py``, the command as a subprocess in ``test_cli_process.py``."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
import sys
import types
from typing import Any

import pytest
from cli_support import (
    SECRET_KEY,
    SECRET_TOKEN,
    Terminal,
    answers,
    documented,
    interrupt_when,
    jsonl,
    no_credentials_fixture,  # noqa: F401 - an autouse fixture
    posix_only,
    run,
    served_fixture,  # noqa: F401 - a fixture
    simulator_thread,
)

from phala_async._client import ClientStats
from phala_async.cli import build_parser, main
from phala_async.cli._common import make_client, plural
from phala_async.cli._output import Redactor
from phala_async.cli._progress import Tally, format_progress, format_summary
from phala_async.testing import Fault, PhalaSimulator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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


# -- sweep: progress, summary, retries --------------------------------------------------------


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


def test_redactor_masks_credentials_but_not_short_values() -> None:
    """Credentials are masked wherever they appear; values too short to be one are left alone."""
    redact = Redactor([SECRET_KEY, None, "", "k"])
    assert redact(f"echo {SECRET_KEY}!{SECRET_KEY}") == "echo ***!***"
    assert redact("workspace") == "workspace"


# -- serve ----------------------------------------------------------------------------------


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
