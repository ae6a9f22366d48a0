"""Files of the command line: ids files, sweep outputs read back, the ``--output`` file replaced
only when a sweep finished, and ``--resume``."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from pathlib import Path

import pytest
from cli_support import (
    CVMS,
    by_id,
    documented,
    fetches,
    jsonl,
    no_credentials_fixture,  # noqa: F401 - an autouse fixture
    run,
    served_fixture,  # noqa: F401 - a fixture
)

from phala_async.cli._common import UsageError
from phala_async.cli._files import (
    CSV_HEADER,
    OutputFile,
    RecordFile,
    distinct_ids,
    newest_records,
    parse_ids,
    resume_from,
)
from phala_async.testing import PhalaSimulator

TORN = '{"cvm_id": "9", "ok": tr'  # a record cut short by a killed process


def ok(cvm_id: str) -> str:
    return json.dumps({"cvm_id": cvm_id, "ok": True, "cvm": {"id": int(cvm_id)}}) + "\n"


def failed(cvm_id: str) -> str:
    error = {"type": "NotFoundError", "status": 404, "message": "HTTP 404", "attempts": 1}
    return json.dumps({"cvm_id": cvm_id, "ok": False, "error": error}) + "\n"


# -- ids ------------------------------------------------------------------------------------------


def test_parse_ids_skips_blank_lines_and_comments() -> None:
    """Whole-line and trailing # comments and blank lines are not ids; the rest is stripped."""
    text = "# nightly inventory\n1\n\n   \n  app_ab  # the api\n#2\nmy-cvm\n"
    assert parse_ids(text) == ["1", "app_ab", "my-cvm"]


def test_distinct_ids_keep_the_first_of_each_id_and_every_invalid_one() -> None:
    """Forms of one id count once, in first-seen order; invalid ids are kept once each."""
    hex40 = "ab" * 20
    given = ["2", hex40, "1", f"app_{hex40}", "2", "a b", "a b", ""]
    assert distinct_ids(given) == ["2", hex40, "1", "a b", ""]


# -- reading records back -----------------------------------------------------------------------


def test_records_are_read_with_their_key_and_status(tmp_path: Path) -> None:
    """Each JSON line gives its id, normalised key, ok flag and the line as written."""
    path = tmp_path / "out.jsonl"
    path.write_text(ok("1") + failed("app_" + "ab" * 20))
    records = list(RecordFile(str(path)))
    assert [(r.cvm_id, r.key, r.ok) for r in records] == [
        ("1", "1", True),
        ("app_" + "ab" * 20, "app_" + "ab" * 20, False),
    ]
    assert records[0].line == ok("1")


def test_a_torn_last_line_is_dropped_and_reported(tmp_path: Path) -> None:
    """A last line without its newline is no record, and `torn` says it was there."""
    path = tmp_path / "out.jsonl.partial"
    path.write_text(ok("1") + ok("2") + TORN)
    records = RecordFile(str(path))
    assert [record.cvm_id for record in records] == ["1", "2"]
    assert records.torn


def test_csv_records_are_read_after_the_header(tmp_path: Path) -> None:
    """A CSV output is recognised by its header; each row gives its id and ok column."""
    path = tmp_path / "out.csv"
    row = ["7", "true", *[""] * (len(CSV_HEADER.split(",")) - 2)]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    path.write_text(CSV_HEADER + "\n" + buffer.getvalue())
    records = RecordFile(str(path))
    assert (records.format, [(r.cvm_id, r.ok) for r in records]) == ("csv", [("7", True)])


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("hello\n", "is not a sweep output"),
        (ok("1") + "not json\n" + ok("2"), "line 2: not a sweep record"),
        (ok("1") + '{"ok": true}\n', "line 2: not a sweep record"),
        (CSV_HEADER + "\n1,true\n", "line 2: not a sweep record"),
    ],
    ids=["not-records", "bad-json-line", "no-cvm-id", "short-csv-row"],
)
def test_a_file_that_is_not_a_sweep_output_is_refused(tmp_path: Path, text: str, says: str) -> None:
    """Reading a file that is not a sweep output raises UsageError naming the file and line."""
    path = tmp_path / "x.jsonl"
    path.write_text(text)
    with pytest.raises(UsageError, match=says) as caught:
        list(RecordFile(str(path)))
    assert str(path) in str(caught.value)


def test_the_newest_record_of_an_id_wins(tmp_path: Path) -> None:
    """An id written twice (failed, then retried by --resume) counts by its last record."""
    path = tmp_path / "out.jsonl"
    path.write_text(failed("1") + ok("2") + ok("1"))
    newest = newest_records(RecordFile(str(path)))
    assert [(key, record.ok) for key, record in newest.items()] == [("1", True), ("2", True)]


# -- the output file ----------------------------------------------------------------------------


def test_keep_leaves_file_as_it_was_and_the_records_in_the_partial_file(tmp_path: Path) -> None:
    """An output that is kept, not committed, never touches FILE."""
    path = tmp_path / "cvms.jsonl"
    path.write_bytes(b"yesterday\n")
    output = OutputFile(str(path))
    output.begin().write(ok("1"))
    output.keep()
    assert path.read_bytes() == b"yesterday\n"
    assert (tmp_path / "cvms.jsonl.partial").read_text() == ok("1")


def test_commit_replaces_file_keeping_its_permissions(tmp_path: Path) -> None:
    """A committed output replaces FILE, with FILE's mode, and no partial file is left."""
    path = tmp_path / "cvms.jsonl"
    path.write_bytes(b"yesterday\n")
    path.chmod(0o640)
    output = OutputFile(str(path))
    output.begin().write(ok("1"))
    output.commit()
    assert path.read_text() == ok("1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["cvms.jsonl"]


def test_begin_replaces_a_partial_file_left_by_an_earlier_sweep(tmp_path: Path) -> None:
    """A sweep without --resume starts FILE.partial afresh."""
    (tmp_path / "cvms.jsonl.partial").write_text(ok("5") + TORN)
    output = OutputFile(str(tmp_path / "cvms.jsonl"))
    output.begin().write(ok("1"))
    output.keep()
    assert (tmp_path / "cvms.jsonl.partial").read_text() == ok("1")


# -- resume -------------------------------------------------------------------------------------


def test_resume_reads_the_partial_file_before_file(tmp_path: Path) -> None:
    """With both present, --resume continues FILE.partial: its newest ok records are kept."""
    (tmp_path / "cvms.jsonl").write_text(ok("7"))
    (tmp_path / "cvms.jsonl.partial").write_text(
        failed("1") + ok("2") + ok("1") + failed("3") + TORN
    )
    resumed = resume_from(str(tmp_path / "cvms.jsonl"), "jsonl")
    assert resumed is not None
    assert (resumed.source, resumed.done, resumed.retried, resumed.torn) == (
        str(tmp_path / "cvms.jsonl.partial"),
        frozenset({"1", "2"}),
        1,
        True,
    )
    assert list(resumed.lines) == [ok("2"), ok("1")]


def test_resume_of_nothing_is_a_plain_sweep(tmp_path: Path) -> None:
    """Without FILE or FILE.partial there is nothing to resume."""
    assert resume_from(str(tmp_path / "cvms.jsonl"), "jsonl") is None


def test_resume_in_another_format_is_refused(tmp_path: Path) -> None:
    """A CSV partial file resumed with --format jsonl is a usage error naming the right one."""
    (tmp_path / "cvms.out").write_text(CSV_HEADER + "\n")
    with pytest.raises(UsageError, match="pass --format csv to resume it"):
        resume_from(str(tmp_path / "cvms.out"), "jsonl")


def test_resume_fetches_only_ids_without_an_ok_record(
    served: PhalaSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From a partial file with an ok, a failed, a retried and a torn record, --resume fetches
    the rest, and FILE ends with exactly one record per id, each the newest."""
    output = tmp_path / "cvms.jsonl"
    partial = tmp_path / "cvms.jsonl.partial"
    partial.write_text(ok("1") + failed("2") + failed("3") + ok("3") + TORN)
    assert run(served, "sweep", "1", "2", "3", "4", "-o", str(output), "--resume") == 0
    records = by_id(jsonl(output.read_text()))
    assert sorted(records) == ["1", "2", "3", "4"]
    assert all(record["ok"] for record in records.values())
    assert records["1"] == json.loads(ok("1"))  # kept as it was, not fetched again
    assert records["4"]["cvm"] == documented(served, 4)
    assert served.requests == {"2": 1, "4": 1}
    assert not partial.exists()
    err = capsys.readouterr().err
    assert f"Resuming from {partial}: 2 ids already ok, 1 failed id to retry; its last line" in err
    assert "2 ids already ok, not fetched again" in err


def test_resume_from_file_itself_retries_only_the_failed_ids(
    served: PhalaSimulator, tmp_path: Path
) -> None:
    """A finished sweep with a failed id, resumed, asks again for that id alone."""
    output = tmp_path / "cvms.jsonl"
    assert run(served, "sweep", "1", "2", "31", "-o", str(output)) == 1
    assert run(served, "sweep", "1", "2", "31", "-o", str(output), "--resume") == 1
    assert (served.requests["1"], served.requests["2"], served.requests["31"]) == (1, 1, 2)
    assert sorted(by_id(jsonl(output.read_text()))) == ["1", "2", "31"]


def test_resume_of_sweep_all_skips_the_ids_already_ok(
    served: PhalaSimulator, tmp_path: Path
) -> None:
    """`sweep --all --resume` over a partial file of 10 records fetches the other 20 only."""
    output = tmp_path / "all.jsonl"
    assert run(served, "sweep", "--all", "-o", str(output)) == 0
    first_ten = output.read_text().splitlines(keepends=True)[:10]
    (tmp_path / "all.jsonl.partial").write_text("".join(first_ten) + TORN)
    served.reset_counters()
    assert run(served, "sweep", "--all", "-o", str(output), "--resume") == 0
    records = by_id(jsonl(output.read_text()))
    assert len(records) == CVMS
    kept = [json.loads(line)["cvm_id"] for line in first_ten]
    assert [fetches(served, cvm_id) for cvm_id in kept] == [0] * 10
    assert sum(fetches(served, cvm_id) for cvm_id in records) == CVMS - 10


def test_resume_of_a_csv_sweep_from_an_ids_file(served: PhalaSimulator, tmp_path: Path) -> None:
    """A CSV sweep stopped after two rows resumes with one header and a row per id."""
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# three\n1\n2\n3\n")
    output = tmp_path / "cvms.csv"
    command = ["sweep", "--ids-file", str(ids_file), "--format", "csv", "-o", str(output)]
    assert run(served, *command) == 0
    header, first, second, _ = output.read_text().splitlines(keepends=True)
    (tmp_path / "cvms.csv.partial").write_text(header + first + second[:10])
    served.reset_counters()
    assert run(served, *command, "--resume") == 0
    lines = output.read_text().splitlines()
    assert lines[0] == CSV_HEADER
    assert sorted(row["cvm_id"] for row in csv.DictReader(lines)) == ["1", "2", "3"]
    assert served.requests == {"2": 1, "3": 1}


def test_resume_drops_earlier_records_of_ids_no_longer_swept(
    served: PhalaSimulator, tmp_path: Path
) -> None:
    """A kept record whose id this sweep does not cover (a CVM deleted since) is not in FILE."""
    output = tmp_path / "cvms.jsonl"
    (tmp_path / "cvms.jsonl.partial").write_text(ok("1") + ok("99999") + ok("2"))
    assert run(served, "sweep", "1", "2", "3", "-o", str(output), "--resume") == 0
    assert sorted(by_id(jsonl(output.read_text()))) == ["1", "2", "3"]
    assert served.requests == {"3": 1}
