"""``phala-async diff OLD NEW``: the comparison as plain functions (what changed within one CVM is
in ``tests/unit/test_changes.py``), then the command on crafted pairs of sweep outputs (exit 0
when equal, 1 when not, 2 when it cannot compare)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cli_support import jsonl

from phala_async import CvmDifference, FieldChange, diff_snapshots
from phala_async.cli import main
from phala_async.cli._diff import format_jsonl, format_text
from phala_async.cli._files import CSV_HEADER

Difference = CvmDifference

CVM: dict[str, Any] = {
    "id": 5,
    "name": "web-5",
    "status": "running",
    "vcpu": 2,
    "teepod": {"id": 3, "name": "prod5", "region_identifier": "us-west"},
    "public_urls": [{"app": "https://a", "instance": "https://b"}],
}
ERROR = {"type": "NotFoundError", "status": 404, "message": "CVM '7': HTTP 404", "attempts": 1}


def cvm(**changes: Any) -> dict[str, Any]:
    """CVM with top-level ``changes``; ``teepod__name=...`` changes a nested field."""
    changed = copy.deepcopy(CVM)
    for key, value in changes.items():
        if "__" in key:
            outer, inner = key.split("__")
            changed[outer][inner] = value
        else:
            changed[key] = value
    return changed


def ok_line(cvm_id: str, document: dict[str, Any]) -> str:
    """An ok record; an integer id is also the CVM's own ``id``, as the API answers."""
    if cvm_id.isdigit():
        document = {**document, "id": int(cvm_id)}
    return json.dumps({"cvm_id": cvm_id, "ok": True, "cvm": document}) + "\n"


def failed_line(cvm_id: str) -> str:
    return json.dumps({"cvm_id": cvm_id, "ok": False, "error": ERROR}) + "\n"


def records(*lines: str) -> list[dict[str, Any]]:
    """The records of JSON lines, as ``json.loads`` gives them."""
    return [json.loads(line) for line in lines]


def compare(
    old: list[dict[str, Any]], new: list[dict[str, Any]], *_: str, **options: Any
) -> list[CvmDifference]:
    return diff_snapshots(old, new, **options)


# -- the comparison, without files -------------------------------------------------------------


def test_compare_reports_each_kind_of_difference() -> None:
    """Added, removed, changed and failed-on-one-side are each reported, sorted by kind then id;
    unchanged ids and ids failed on both sides are not."""
    old = records(
        ok_line("1", cvm()),
        ok_line("2", cvm(name="gone")),
        ok_line("10", cvm()),
        ok_line("3", cvm()),
        failed_line("4"),
        failed_line("6"),
    )
    new = records(
        ok_line("10", cvm(status="stopped")),
        ok_line("1", cvm()),
        ok_line("5", cvm(name="fresh")),
        failed_line("3"),
        ok_line("4", cvm()),
        failed_line("6"),
    )
    assert compare(old, new, "jsonl") == [
        Difference("added", "5", "fresh"),
        Difference("removed", "2", "gone"),
        Difference("changed", "10", "web-5", (FieldChange("status", "running", "stopped"),)),
        Difference("failed", "3", "web-5", side="new", error=ERROR),  # named by the ok side
        Difference("failed", "4", "web-5", side="old", error=ERROR),
    ]


def test_compare_matches_ids_given_in_another_form() -> None:
    """`app_<hex>` in OLD and the bare hex in NEW are one CVM: no difference."""
    hex40 = "ab" * 20
    assert (
        compare(records(ok_line(f"app_{hex40}", cvm())), records(ok_line(hex40, cvm())), "jsonl")
        == []
    )


def test_compare_ignores_what_ignore_names_and_counts_only_fields() -> None:
    """A change only in an ignored field, or outside --fields, is no difference."""
    old, new = records(ok_line("1", cvm())), records(ok_line("1", cvm(status="stopped")))
    assert compare(old, new, "jsonl", ignore=["status"]) == []
    assert compare(old, new, "jsonl", fields=["teepod"]) == []
    assert len(compare(old, new, "jsonl", fields=["status", "teepod"])) == 1


def test_text_report_has_a_line_per_id_and_per_field_then_the_counts() -> None:
    """The report for people names the side a failure is on and shows values as JSON."""
    differences = [
        Difference("added", "5", "fresh"),
        Difference("changed", "10", "web-5", (FieldChange("teepod.name", "a", None),)),
        Difference("failed", "3", side="new", error=ERROR),
    ]
    assert list(format_text(differences, "old.jsonl", "new.jsonl")) == [
        "added    5   fresh",
        "changed  10  web-5",
        '           teepod.name: "a" -> null',
        "failed   3   failed in new.jsonl: CVM '7': HTTP 404",
        "1 added, 1 changed, 1 failed.",
    ]
    assert list(format_text([], "a", "b")) == ["No differences between a and b."]


def test_jsonl_report_has_one_object_per_id() -> None:
    """The report for programs: kind, id, name, and the changes or the failure."""
    differences = [
        Difference("changed", "10", "web-5", (FieldChange("status", "running", "stopped"),)),
        Difference("failed", "3", side="old", error=ERROR),
    ]
    assert [json.loads(line) for line in format_jsonl(differences)] == [
        {
            "kind": "changed",
            "cvm_id": "10",
            "name": "web-5",
            "changes": [{"path": "status", "old": "running", "new": "stopped"}],
        },
        {"kind": "failed", "cvm_id": "3", "in": "old", "error": ERROR},
    ]


# -- the command ------------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """OLD and NEW paths in a temporary directory, not yet written."""
    return tmp_path / "old.jsonl", tmp_path / "new.jsonl"


def test_the_same_records_in_another_order_exit_0(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Two outputs with the same records in any order have no difference: exit 0."""
    old, new = pair
    old.write_text(ok_line("1", cvm()) + ok_line("2", cvm(name="b")) + failed_line("3"))
    new.write_text(failed_line("3") + ok_line("2", cvm(name="b")) + ok_line("1", cvm()))
    assert main(["diff", str(old), str(new)]) == 0
    assert capsys.readouterr().out == f"No differences between {old} and {new}.\n"


def test_each_kind_of_difference_exits_1(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A crafted pair with one of each kind prints each, and exits 1."""
    old, new = pair
    old.write_text(ok_line("1", cvm()) + ok_line("2", cvm()) + ok_line("3", cvm()))
    new.write_text(
        ok_line("1", cvm(teepod__region_identifier="eu")) + failed_line("3") + ok_line("4", cvm())
    )
    assert main(["diff", str(old), str(new), "--format", "jsonl"]) == 1
    found = {(line["kind"], line["cvm_id"]): line for line in jsonl(capsys.readouterr().out)}
    assert sorted(found) == [("added", "4"), ("changed", "1"), ("failed", "3"), ("removed", "2")]
    assert found[("changed", "1")]["changes"] == [
        {"path": "teepod.region_identifier", "old": "us-west", "new": "eu"}
    ]
    assert found[("failed", "3")]["in"] == "new"


def test_ignore_and_fields_decide_the_exit_status(pair: tuple[Path, Path]) -> None:
    """A change in a volatile field counts unless --ignore names it, or --fields leaves it out."""
    old, new = pair
    old.write_text(ok_line("1", cvm()))
    new.write_text(ok_line("1", cvm(status="stopped", vcpu=4)))
    assert main(["diff", str(old), str(new)]) == 1
    assert main(["diff", str(old), str(new), "--ignore", "status,vcpu"]) == 0
    assert main(["diff", str(old), str(new), "--ignore", "status", "--ignore", "vcpu"]) == 0
    assert main(["diff", str(old), str(new), "--fields", "teepod,name"]) == 0
    assert main(["diff", str(old), str(new), "--fields", "vcpu"]) == 1


def test_csv_outputs_compare_by_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two CSV outputs compare their CVM columns; a changed region is reported by its column."""
    columns = CSV_HEADER.split(",")

    def row(region: str) -> str:
        cells = dict.fromkeys(columns, "")
        cells.update(cvm_id="1", ok="true", id="1", name="web-1", region=region, attempts="1")
        return CSV_HEADER + "\n" + ",".join(cells[column] for column in columns) + "\n"

    (tmp_path / "a.csv").write_text(row("us-west"))
    (tmp_path / "b.csv").write_text(row("eu"))
    assert (
        main(["diff", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--format", "jsonl"]) == 1
    )
    assert jsonl(capsys.readouterr().out)[0]["changes"] == [
        {"path": "region", "old": "us-west", "new": "eu"}
    ]


@pytest.mark.parametrize(
    ("old_text", "new_name", "says"),
    [
        (None, "new.jsonl", "cannot read"),
        ("hello\n", "new.jsonl", "is not a sweep output"),
        ("{}\n", "new.jsonl", "line 1: not a sweep record"),
        (CSV_HEADER + "\n", "new.jsonl", "compare two outputs of one --format"),
    ],
    ids=["missing", "not-a-sweep-output", "not-a-record", "csv-against-jsonl"],
)
def test_what_cannot_be_compared_exits_2(
    pair: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    old_text: str | None,
    new_name: str,
    says: str,
) -> None:
    """An unreadable file, or two outputs of different formats, exit 2 with one line why."""
    old, new = pair
    if old_text is not None:
        old.write_text(old_text)
    new.write_text(ok_line("1", cvm()))
    assert main(["diff", str(old), str(new.parent / new_name)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert says in err.splitlines()[-1]


def test_a_torn_last_line_is_skipped_with_a_note(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A partial file cut short compares without its last line, and stderr says so."""
    old, new = pair
    old.write_text(ok_line("1", cvm()))
    new.write_text(ok_line("1", cvm()) + '{"cvm_id": "2", "ok": tr')
    assert main(["diff", str(old), str(new)]) == 0
    assert f"{new}: its last line was cut short" in capsys.readouterr().err
