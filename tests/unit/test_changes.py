"""What changed between two records of one CVM (``_changes``): the one comparison behind
``watch``, ``diff`` and ``history``, and the identity that pairs records, as plain calls."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest

from phala_async import VOLATILE_FIELDS, CvmDetail, FieldChange
from phala_async._changes import field_changes, flatten, record_identity, selects
from phala_async._watch import diff_cvms

CVM: dict[str, Any] = {
    "id": 5,
    "name": "web-5",
    "status": "running",
    "app_id": "a" * 40,
    "vcpu": 2,
    "memory": 2048,
    "disk_size": 20,
    "in_progress": False,
    "teepod": {"id": 3, "name": "prod5", "region_identifier": "us-west"},
    "public_urls": [{"app": "https://a", "instance": "https://b"}],
}
UUID = "4c5fd0a2-8b3e-4d6f-9a1b-2c3d4e5f6a7b"


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


def model(**changes: Any) -> CvmDetail:
    """The CVM as the client decodes it, with ``changes`` as in :func:`cvm`."""
    return msgspec.convert(cvm(**changes), CvmDetail)


@pytest.mark.parametrize(
    ("empty_is_value", "empty"),
    [
        pytest.param(True, {"e": {}}, id="empty-is-a-value"),
        pytest.param(False, {}, id="empty-is-no-field"),
    ],
)
def test_flatten_names_nested_fields_by_path_and_keeps_lists_whole(
    empty_is_value: bool, empty: dict[str, Any]
) -> None:
    """Nested objects become dotted paths; a list is one value; an empty object is a value or
    nothing, as asked."""
    nested = {"a": 1, "t": {"n": "x", "r": None}, "l": [{"app": "https://a"}, 2], "e": {}}
    assert flatten(nested, empty_is_value=empty_is_value) == {
        "a": 1,
        "t.n": "x",
        "t.r": None,
        "l": [{"app": "https://a"}, 2],
        **empty,
    }


@pytest.mark.parametrize(
    ("path", "fields", "ignore", "counts"),
    [
        ("status", [], [], True),
        ("teepod.name", ["teepod"], [], True),
        ("teepod_id", ["teepod"], [], False),
        ("status", ["teepod"], [], False),
        ("public_urls", [], ["public_urls"], False),
        ("teepod.name", ["teepod"], ["teepod.name"], False),
    ],
    ids=[
        "all-count",
        "path-covers-nested",
        "prefix-is-not-a-path",
        "not-listed",
        "ignored",
        "both",
    ],
)
def test_selects_by_path_prefix(
    path: str, fields: list[str], ignore: list[str], counts: bool
) -> None:
    """A field counts when under a ``fields`` path (or there are none) and under no ``ignore``."""
    assert selects(path, fields, ignore) is counts


def test_field_changes_lists_each_changed_field_with_old_and_new() -> None:
    """Changed, added and removed fields come out by path, in path order."""
    old = cvm()
    new = cvm(status="stopped", teepod__region_identifier="eu-central", vcpu=None)
    del new["public_urls"]
    assert field_changes(old, new) == (
        FieldChange("public_urls", CVM["public_urls"], None),
        FieldChange("status", "running", "stopped"),
        FieldChange("teepod.region_identifier", "us-west", "eu-central"),
        FieldChange("vcpu", 2, None),
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({}, ["in_progress", "status", "teepod.name"], id="all"),
        pytest.param({"ignore": ["in_progress"]}, ["status", "teepod.name"], id="ignore"),
        pytest.param({"fields": ["teepod"]}, ["teepod.name"], id="fields"),
        pytest.param({"fields": ["teepod"], "ignore": ["teepod.name"]}, [], id="both"),
    ],
)
def test_field_changes_counts_only_the_fields_asked_for(
    options: dict[str, Any], expected: list[str]
) -> None:
    """``fields`` keeps the changes under its paths, ``ignore`` drops those under its own."""
    new = cvm(status="stopped", in_progress=True, teepod__name="prod6")
    assert [change.path for change in field_changes(cvm(), new, **options)] == expected


@pytest.mark.parametrize(
    ("empty_is_value", "expected"),
    [
        pytest.param(
            True, (FieldChange("m", None, {}), FieldChange("m.a", 1, None)), id="empty-is-a-value"
        ),
        pytest.param(False, (FieldChange("m.a", 1, None),), id="empty-is-no-field"),
    ],
)
def test_an_emptied_object_is_a_value_only_when_asked(
    empty_is_value: bool, expected: tuple[FieldChange, ...]
) -> None:
    """An object that lost its last field shows as ``{}`` (diff, history) or only as the field
    gone (watch)."""
    changes = field_changes({"m": {"a": 1}}, {"m": {}}, empty_is_value=empty_is_value)
    assert changes == expected


def test_the_watch_names_nested_fields_by_path() -> None:
    """A nested field that changed is named by its path, with its old and new values."""
    after = model(teepod__region_identifier="eu")
    assert diff_cvms(model(), after) == {"teepod.region_identifier": ("us-west", "eu")}


def test_the_watch_ignores_volatile_fields_by_default_but_not_when_asked() -> None:
    """``in_progress`` (one of VOLATILE_FIELDS) is ignored unless ``fields`` names it."""
    after = model(in_progress=True)
    assert "in_progress" in VOLATILE_FIELDS
    assert diff_cvms(model(), after) == {}
    assert diff_cvms(model(), after, frozenset({"in_progress"})) == {"in_progress": (False, True)}


def test_the_watch_and_diff_agree_on_a_model_and_its_record() -> None:
    """One change seen by the watch (on models) and by diff (on the records a sweep writes) is the
    same change."""
    before, after = model(), model(status="stopped", teepod__name="prod6")
    record = field_changes(msgspec.to_builtins(before), msgspec.to_builtins(after))
    assert diff_cvms(before, after) == {change.path: (change.old, change.new) for change in record}
    assert [change.path for change in record] == ["status", "teepod.name"]


@pytest.mark.parametrize(
    ("record", "identity"),
    [
        pytest.param({"cvm_id": UUID, "ok": True, "cvm": {"id": 5}}, "5", id="fetched-by-uuid"),
        pytest.param({"cvm_id": "5", "ok": True, "cvm": {"id": 5}}, "5", id="fetched-by-id"),
        pytest.param(
            {"cvm_id": "a" * 40, "ok": False, "error": {}},
            f"app_{'a' * 40}",
            id="failed-bare-app-id",
        ),
        pytest.param({"cvm_id": "../etc", "ok": False}, "\0../etc", id="failed-invalid"),
    ],
)
def test_record_identity_is_the_fetched_cvm_else_the_normalised_id(
    record: dict[str, Any], identity: str
) -> None:
    """A fetched record is its CVM's integer id whatever id was typed; a failed one its normalised
    id (an invalid id stays itself, never equal to a valid one)."""
    assert record_identity(record) == identity
