"""``watch`` on the command line: events written against a simulator whose CVMs change between
rounds (the change made as the round's last line is written, so no test sleeps for it), the event
line and text line as plain functions, exit statuses, and the real command stopped by SIGTERM or by
a closed stdout."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cli_support import (
    SECRET_KEY,
    TIMEOUT,
    WRONG_KEY,
    Terminal,
    documented,
    interrupt_when,
    jsonl,
    module_process,
    no_credentials_fixture,  # noqa: F401 - an autouse fixture
    posix_only,
    run,
    served_fixture,  # noqa: F401 - a fixture
    simulator_thread,
)

from phala_async import CvmDetail, CvmEvent, InternalServerError
from phala_async.cli._output import Redactor
from phala_async.cli._watch import event_json, event_text, format_watch_summary
from phala_async.testing import PhalaSimulator

INTERVAL = "0.05"  # seconds between rounds
KEYS = ["kind", "cvm_id", "changes", "cvm", "error", "time"]  # the documented line, in order
SUMMARY = re.compile(r"^Watched (\d+) rounds? in \d+\.\ds: ", re.M)


class Stdout(io.StringIO):
    """A stdout that calls ``after(lines)`` each time a line is complete: in the command's own
    thread, between two events, so a test changes the simulator at a known point of the watch."""

    def __init__(self, after: Callable[[int], None] | None = None, *, tty: bool = False) -> None:
        super().__init__()
        self._after = after
        self._tty = tty
        self.lines = 0

    def isatty(self) -> bool:
        return self._tty

    def write(self, text: str) -> int:
        written = super().write(text)
        for _ in range(text.count("\n")):
            self.lines += 1
            if self._after is not None:
                self._after(self.lines)
        return written


def at_line(number: int, change: Callable[[], object]) -> Callable[[int], None]:
    """An ``after`` hook that makes ``change`` once, when line ``number`` is written."""

    def after(lines: int) -> None:
        if lines == number:
            change()

    return after


def watch(
    simulator: PhalaSimulator,
    monkeypatch: pytest.MonkeyPatch,
    *args: str,
    stdout: Stdout | None = None,
    key: str = SECRET_KEY,
) -> tuple[int, Stdout]:
    """``main`` running ``watch --interval INTERVAL args`` against ``simulator``, and its stdout.
    A watch that would not end is interrupted after TIMEOUT seconds (status 130), so that a
    broken test fails instead of hanging the suite."""
    stdout = stdout or Stdout()
    monkeypatch.setattr(sys, "stdout", stdout)
    with interrupt_when(lambda: False):
        code = run(simulator, "watch", "--interval", INTERVAL, *args, key=key)
    return code, stdout


def moved(simulator: PhalaSimulator, cvm_id: int, region: str) -> dict[str, Any]:
    """The teepod of ``cvm_id`` moved to ``region``."""
    return {**simulator.cvm(cvm_id)["teepod"], "region_identifier": region}


# -- events from a changing workspace ---------------------------------------------------------


def test_a_changed_cvm_is_one_event_with_each_field_old_and_new(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A status and a nested field changed after the first round come as one ``changed`` line
    with both paths, the CVM as it is now, and no error."""
    with simulator_thread(cvms=3, api_key=SECRET_KEY) as simulator:
        old = simulator.cvm(2)
        change = at_line(
            3, lambda: simulator.update_cvm(2, status="stopped", teepod=moved(simulator, 2, "eu"))
        )
        code, out = watch(
            simulator, monkeypatch, "1", "2", "3", "--initial", "--rounds", "2",
            stdout=Stdout(change),
        )  # fmt: skip
        now = documented(simulator, 2)
    assert code == 0
    events = jsonl(out.getvalue())
    assert len(events) == 4
    assert sorted((event["kind"], event["cvm_id"]) for event in events[:3]) == [
        ("added", "1"),
        ("added", "2"),
        ("added", "3"),
    ]
    changed = events[3]
    assert changed["kind"] == "changed"
    assert changed["cvm_id"] == "2"
    assert changed["changes"] == {
        "status": [old["status"], "stopped"],
        "teepod.region_identifier": [old["teepod"]["region_identifier"], "eu"],
    }
    assert changed["cvm"] == now
    assert changed["error"] is None


def test_all_reports_cvms_added_and_removed_among_app_instances(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--all`` over apps of three instances names each CVM by its own id, then reports a new
    CVM as ``added`` and a removed instance as ``removed`` while its app's others stay."""
    with simulator_thread(cvms=6, instances_per_app=3, api_key=SECRET_KEY) as simulator:
        added: list[int] = []

        def change() -> None:
            added.extend(simulator.add_cvms(1))
            simulator.remove_cvm(2)

        code, out = watch(
            simulator, monkeypatch, "--all", "--initial", "--rounds", "2",
            stdout=Stdout(at_line(6, change)),
        )  # fmt: skip
        new = documented(simulator, added[0])
    assert code == 0
    events = jsonl(out.getvalue())
    first, second = events[:6], events[6:]
    assert [event["kind"] for event in first] == ["added"] * 6
    assert len({event["cvm_id"] for event in first}) == 6
    assert len({event["cvm"]["app_id"] for event in first}) == 2
    assert sorted((event["kind"], event["cvm"]["id"]) for event in second) == [
        ("added", added[0]),
        ("removed", 2),
    ]
    by_kind = {event["kind"]: event for event in second}
    assert by_kind["added"]["cvm"] == new
    first_ids = {event["cvm"]["id"]: event["cvm_id"] for event in first}
    assert by_kind["removed"]["cvm_id"] == first_ids[2]


def test_fields_limit_the_changes_that_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--fields status``, a round that changes vcpu and status reports the status alone."""
    with simulator_thread(cvms=2, api_key=SECRET_KEY) as simulator:
        old = simulator.cvm(1)
        change = at_line(1, lambda: simulator.update_cvm(1, vcpu=old["vcpu"] + 1, status="stopped"))
        code, out = watch(
            simulator, monkeypatch, "1", "--fields", "status", "--initial", "--rounds", "2",
            stdout=Stdout(change),
        )  # fmt: skip
    assert code == 0
    [_, changed] = jsonl(out.getvalue())
    assert changed["changes"] == {"status": [old["status"], "stopped"]}


def test_rounds_ends_the_watch_after_that_many_rounds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--rounds 3`` fetches each id three times, then ends with 0 and its summary, without
    waiting for a fourth round; no change, so no line."""
    with simulator_thread(cvms=3, api_key=SECRET_KEY) as simulator:
        code, out = watch(simulator, monkeypatch, "1", "2", "--rounds", "3")
        requests = simulator.requests
    assert code == 0
    assert out.getvalue() == ""
    assert (requests["1"], requests["2"], requests["3"]) == (3, 3, 0)
    summary = SUMMARY.search(capsys.readouterr().err)
    assert summary is not None
    assert summary.group(1) == "3"


def test_ids_file_names_the_cvms_to_watch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--ids-file`` reads one id a line, skipping comments, each id watched once."""
    ids = tmp_path / "ids.txt"
    ids.write_text("# to watch\n2\n\n3  # db\n2\n", encoding="utf-8")
    with simulator_thread(cvms=5, api_key=SECRET_KEY) as simulator:
        code, out = watch(
            simulator, monkeypatch, "--ids-file", str(ids), "--initial", "--rounds", "1"
        )
    assert code == 0
    assert sorted(event["cvm_id"] for event in jsonl(out.getvalue())) == ["2", "3"]


@pytest.mark.parametrize(
    ("tty", "forced", "text"),
    [(True, None, True), (False, None, False), (True, "jsonl", False), (False, "text", True)],
    ids=["terminal", "pipe", "jsonl-on-a-terminal", "text-in-a-pipe"],
)
def test_text_on_a_terminal_json_lines_elsewhere_unless_format_says(
    monkeypatch: pytest.MonkeyPatch, tty: bool, forced: str | None, text: bool
) -> None:
    """The lines are for people on a terminal and JSON in a pipe; ``--format`` overrides."""
    with simulator_thread(cvms=2, api_key=SECRET_KEY) as simulator:
        name, status = simulator.cvm(1)["name"], simulator.cvm(1)["status"]
        options = ["--format", forced] if forced else []
        code, out = watch(
            simulator, monkeypatch, "1", "--initial", "--rounds", "1", *options,
            stdout=Stdout(tty=tty),
        )  # fmt: skip
    assert code == 0
    [line] = out.getvalue().splitlines()
    if text:
        assert re.fullmatch(rf"\d\d:\d\d:\d\d added   1 {re.escape(f'{name} ({status})')}", line)
    else:
        assert json.loads(line)["kind"] == "added"


def test_on_a_terminal_stderr_says_what_is_watched_and_how_to_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With stderr on a terminal, the first line names the CVMs, the interval and Ctrl-C."""
    stderr = Terminal()
    monkeypatch.setattr(sys, "stderr", stderr)
    with simulator_thread(cvms=2, api_key=SECRET_KEY) as simulator:
        assert watch(simulator, monkeypatch, "1", "2", "--rounds", "1")[0] == 0
    assert stderr.getvalue().splitlines()[0] == "Watching 2 CVMs every 0.05s; Ctrl-C stops."


# -- how it ends ------------------------------------------------------------------------------


def test_a_wrong_key_exits_3_after_one_request(
    served: PhalaSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused key ends the watch at the first request with 3 and the refusal line, which
    names where the key came from and never the key."""
    code, out = watch(served, monkeypatch, "--all", key=WRONG_KEY)
    err = capsys.readouterr().err
    assert code == 3
    assert served.total_requests == 1
    assert out.getvalue() == ""
    assert err == (
        "phala-async: the API refused the API key from --api-key (HTTP 401 Unauthorized): check "
        "it, or pass another with --api-key, --token or $PHALA_CLOUD_API_KEY\n"
    )


def test_output_that_cannot_be_written_ends_the_watch_with_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stdout that fails (a full disk) ends the watch with 1 and says so on stderr."""

    def full(lines: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with simulator_thread(cvms=2, api_key=SECRET_KEY) as simulator:
        code, _ = watch(
            simulator, monkeypatch, "1", "--initial", "--rounds", "1", stdout=Stdout(full)
        )
    assert code == 1
    err = capsys.readouterr().err
    assert "the events could not be written (No space left on device)" in err


def test_ctrl_c_ends_the_watch_with_130_and_its_summary(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while watching ends with 130, every line written whole, and a summary that says
    it was interrupted."""
    out = Stdout()
    with (
        simulator_thread(cvms=3, api_key=SECRET_KEY) as simulator,
        interrupt_when(lambda: out.lines >= 3),
    ):
        code, _ = watch(simulator, monkeypatch, "--all", "--initial", stdout=out)
    assert code == 130
    assert [event["kind"] for event in jsonl(out.getvalue())] == ["added"] * 3
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"Interrupted by Ctrl-C after \d+ rounds? in \d+\.\ds: 3 added, 0 changed, 0 removed, "
        r"0 errors\.\n",
        err,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["watch"], "nothing to watch: give ids"),
        (["watch", "--all", "1"], "--all watches the whole workspace"),
        (["watch", "--ids-file", "/no/such/ids.txt"], "cannot read"),
        (["watch", "--ids-file", os.devnull], f"no ids in {os.devnull}"),
        (
            ["watch", "1", "--fields", "status,statuss"],
            "'statuss' is not a field of a CVM: did you mean 'status'?",
        ),
        (["watch", "1", "--rounds", "0"], "--rounds: must be > 0"),
        (["watch", "1", "--interval", "0"], "--interval: must be > 0"),
        (["watch", "1", "--format", "csv"], "invalid choice: 'csv'"),
    ],
    ids=[
        "nothing-to-watch",
        "all-with-ids",
        "missing-ids-file",
        "empty-ids-file",
        "unknown-field",
        "zero-rounds",
        "zero-interval",
        "csv",
    ],
)
def test_bad_usage_exits_2_with_a_one_line_fix(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad watch command line exits 2 before any request, with one line saying what to do."""
    with simulator_thread(cvms=2, api_key=SECRET_KEY) as simulator:
        assert run(simulator, *args) == 2
        requests = simulator.total_requests
    out, err = capsys.readouterr()
    assert requests == 0
    assert out == ""
    assert says in err.splitlines()[-1]
    assert SECRET_KEY not in err


# -- the real command -------------------------------------------------------------------------


@contextlib.contextmanager
def killed_after(process: subprocess.Popen[str], seconds: float = TIMEOUT) -> Iterator[None]:
    """Kill ``process`` if the block is still running after ``seconds``, so that a read from
    its pipe that would wait forever ends (at end of file) and the test fails instead."""
    timer = threading.Timer(seconds, process.kill)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@posix_only
def test_sigterm_ends_the_command_with_143_cleanly() -> None:
    """SIGTERM to ``python -m phala_async watch``: exit 143, the lines written are whole events,
    and stderr holds the summary alone."""
    with (
        simulator_thread(cvms=5) as simulator,
        module_process(
            "--base-url", simulator.base_url, "--api-key", simulator.api_key,
            "watch", "--all", "--initial", "--interval", INTERVAL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ) as process,
        killed_after(process),
    ):  # fmt: skip
        assert process.stdout is not None
        first = [json.loads(process.stdout.readline()) for _ in range(5)]
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 143, err
    assert [event["kind"] for event in first] == ["added"] * 5
    assert sorted(event["cvm"]["id"] for event in first) == [1, 2, 3, 4, 5]
    assert out == ""
    assert re.fullmatch(
        r"Interrupted by SIGTERM after \d+ rounds? in \d+\.\ds: 5 added, 0 changed, 0 removed, "
        r"0 errors\.\n",
        err,
    )


@posix_only
def test_a_closed_stdout_ends_the_command_quietly_with_0() -> None:
    """``watch --all --initial | head -1``: once the reader is gone the command ends with 0 and
    prints nothing on stderr."""
    with (
        simulator_thread(cvms=300) as simulator,  # more lines than a pipe holds
        module_process(
            "--base-url", simulator.base_url, "--api-key", simulator.api_key,
            "watch", "--all", "--initial",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ) as process,
        killed_after(process),
    ):  # fmt: skip
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        process.stdout.close()
        _, err = process.communicate(timeout=TIMEOUT)
    assert first["kind"] == "added"
    assert process.returncode == 0, err
    assert err == ""


# -- the lines, as plain functions ------------------------------------------------------------

WHEN = datetime(2025, 11, 29, 14, 0, 3, 120000, tzinfo=timezone(timedelta(hours=2)))


def sample(**changes: Any) -> CvmDetail:
    base = {
        "id": 1234,
        "name": "api-1",
        "status": "running",
        "app_id": "a" * 40,
        "vcpu": 2,
        "memory": 2048,
        "disk_size": 20,
        "teepod": {"id": 3, "name": "prod5", "region_identifier": "us-west"},
    }
    return msgspec.convert({**base, **changes}, CvmDetail)


def server_error(message: str, cvm_id: str | None = None) -> InternalServerError:
    return InternalServerError(message, status_code=503, cvm_id=cvm_id)


def test_an_event_line_has_the_documented_keys_in_order_and_the_time_in_utc() -> None:
    """A ``changed`` event is one JSON object: kind, cvm_id, changes as [old, new], the CVM as it
    is now, a null error and the time in UTC to the millisecond."""
    before, after = sample(), sample(status="stopped")
    event = CvmEvent(
        kind="changed",
        cvm_id="1234",
        before=before,
        after=after,
        changes={"status": ("running", "stopped")},
    )
    line = event_json(event, WHEN, Redactor(()))
    assert "\n" not in line
    decoded = json.loads(line)
    assert list(decoded) == KEYS
    assert decoded == {
        "kind": "changed",
        "cvm_id": "1234",
        "changes": {"status": ["running", "stopped"]},
        "cvm": msgspec.to_builtins(after),
        "error": None,
        "time": "2025-11-29T12:00:03.120Z",
    }


@pytest.mark.parametrize(
    ("event", "cvm"),
    [
        (CvmEvent(kind="added", cvm_id="1234", after=sample()), sample()),
        (CvmEvent(kind="removed", cvm_id="1234", before=sample()), sample()),
        (CvmEvent(kind="error", cvm_id=None, error=server_error("request: HTTP 500")), None),
    ],
    ids=["added", "removed-shows-the-cvm-last-seen", "error-has-no-cvm"],
)
def test_the_cvm_of_an_event_line_is_the_one_seen_last(event: CvmEvent, cvm: Any) -> None:
    """``cvm`` is the CVM as seen now, as last seen for ``removed``, and null for ``error``;
    ``changes`` is empty but for ``changed``."""
    decoded = json.loads(event_json(event, WHEN, Redactor(())))
    assert decoded["cvm"] == (None if cvm is None else msgspec.to_builtins(cvm))
    assert decoded["changes"] == {}


@pytest.mark.parametrize("render", [event_json, event_text], ids=["jsonl", "text"])
def test_an_error_event_names_its_type_and_never_the_credential(render: Any) -> None:
    """The error's type and message are written, with a credential in the message masked."""
    error = server_error(f"CVM '7': HTTP 503 (key {SECRET_KEY} was sent)", "7")
    line = render(CvmEvent(kind="error", cvm_id="7", error=error), WHEN, Redactor([SECRET_KEY]))
    assert SECRET_KEY not in line
    assert "HTTP 503 (key *** was sent)" in line
    if render is event_json:
        assert json.loads(line)["error"] == {
            "type": "InternalServerError",
            "message": "CVM '7': HTTP 503 (key *** was sent)",
        }


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            CvmEvent(
                kind="changed",
                cvm_id="1234",
                before=sample(),
                after=sample(status="stopped", vcpu=4),
                changes={"status": ("running", "stopped"), "vcpu": (2, 4)},
            ),
            "changed 1234 status: 'running' -> 'stopped'; vcpu: 2 -> 4",
        ),
        (CvmEvent(kind="added", cvm_id="1234", after=sample()), "added   1234 api-1 (running)"),
        (CvmEvent(kind="removed", cvm_id="9", before=sample()), "removed 9 api-1 (running)"),
        (
            CvmEvent(
                kind="error",
                cvm_id="7",
                error=server_error("CVM '7': HTTP 503\nupstream down", "7"),
            ),
            "error   7 HTTP 503 upstream down",
        ),
        (
            CvmEvent(kind="error", cvm_id=None, error=server_error("request: HTTP 500")),
            "error   listing HTTP 500",
        ),
        (
            CvmEvent(kind="unavailable", cvm_id=None, error=server_error("request: HTTP 503")),
            "unavailable API HTTP 503",
        ),
        (CvmEvent(kind="available", cvm_id=None), "available API answers again"),
    ],
    ids=[
        "changed",
        "added",
        "removed",
        "error-on-one-line",
        "failed-listing",
        "unavailable",
        "available",
    ],
)
def test_a_text_line_reads_as_time_kind_id_and_what_happened(
    event: CvmEvent, expected: str
) -> None:
    """The text line is the local time, the kind, the id, then the changes or the CVM's name and
    status or the error, on one line."""
    local = WHEN.astimezone()
    assert event_text(event, local, Redactor(())) == f"{local:%H:%M:%S} {expected}"


def test_the_summary_counts_rounds_and_events_by_kind() -> None:
    """The closing line gives rounds, wall time, and each kind of event, with how it ended."""
    seen = Counter({"added": 3, "changed": 1, "error": 1})
    assert format_watch_summary(seen, 4, 2.04) == (
        "Watched 4 rounds in 2.0s: 3 added, 1 changed, 0 removed, 1 error."
    )
    assert format_watch_summary(Counter(), 1, 0.5, stopped="Interrupted by SIGTERM") == (
        "Interrupted by SIGTERM after 1 round in 0.5s: 0 added, 0 changed, 0 removed, 0 errors."
    )


def test_the_summary_says_how_often_the_api_was_unavailable() -> None:
    """An outage is counted on the closing line; a watch without one keeps the line it had."""
    seen = Counter({"unavailable": 2, "available": 2, "changed": 1})
    assert format_watch_summary(seen, 9, 1.0) == (
        "Watched 9 rounds in 1.0s: 0 added, 1 changed, 0 removed, 0 errors, "
        "the API unavailable 2 times."
    )
