"""What changed between two records of one CVM: :func:`field_changes`, the one comparison behind
``watch`` (each ``changed`` event), ``diff`` (each ``changed`` difference) and ``history`` (each
snapshot where a stored CVM changed), and :func:`record_identity`, which CVM a sweep record is
about (how ``diff`` pairs records and the store keys them).

Pure: JSON values in, field changes out. Where the callers differ, a parameter says so: the watch
ignores :data:`phala_async.VOLATILE_FIELDS` unless asked for them, and counts an empty object as
no field at all; ``diff`` ignores only what ``--ignore`` names, and counts ``{}`` as a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ._ids import id_key

__all__ = ["FieldChange", "field_changes", "flatten", "record_identity", "selects"]


class FieldChange(NamedTuple):
    """One field that differs: its path (``teepod.region_identifier``), old and new value (None
    where the field is absent)."""

    path: str
    old: Any
    new: Any


def flatten(
    value: Mapping[str, Any], prefix: str = "", *, empty_is_value: bool = True
) -> dict[str, Any]:
    """Nested objects as ``{"a.b": value}``; lists are values as a whole.

    Args:
        value: a CVM (or any object) as JSON values.
        prefix: prepended to every path (used for the nested objects).
        empty_is_value: an empty nested object is a value of its own (``{"e": {}}``); when
            False it is no field at all, as if absent.
    """
    flat: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, Mapping) and (item or not empty_is_value):
            flat.update(flatten(item, path + ".", empty_is_value=empty_is_value))
        else:
            flat[path] = item
    return flat


def _covers(pattern: str, path: str) -> bool:
    return path == pattern or path.startswith(pattern + ".")


def selects(path: str, fields: Iterable[str], ignore: Iterable[str]) -> bool:
    """Whether a change of ``path`` counts: it is under one of ``fields`` (all count when there
    are none) and under none of ``ignore``. ``teepod`` covers ``teepod.name``."""
    fields = tuple(fields)
    if fields and not any(_covers(field, path) for field in fields):
        return False
    return not any(_covers(pattern, path) for pattern in ignore)


def field_changes(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    fields: Iterable[str] = (),
    ignore: Iterable[str] = (),
    empty_is_value: bool = True,
) -> tuple[FieldChange, ...]:
    """The fields of two records of a CVM that differ, by path, in path order.

    Args:
        old: the CVM as it was, as JSON values (``msgspec.to_builtins`` of a model, or a record's
            ``cvm``).
        new: the CVM as it is.
        fields: only changes under these paths count (all when empty); ``teepod`` covers
            ``teepod.name``.
        ignore: changes under these paths never count, such as volatile fields (``in_progress``).
        empty_is_value: whether an empty nested object is a value (see :func:`flatten`).

    Example::

        >>> field_changes({"status": "running", "in_progress": False},
        ...               {"status": "stopped", "in_progress": True}, ignore=["in_progress"])
        (FieldChange(path='status', old='running', new='stopped'),)
    """
    fields, ignore = tuple(fields), tuple(ignore)
    flat_old = flatten(old, empty_is_value=empty_is_value)
    flat_new = flatten(new, empty_is_value=empty_is_value)
    return tuple(
        FieldChange(path, flat_old.get(path), flat_new.get(path))
        for path in sorted(flat_old.keys() | flat_new.keys())
        if flat_old.get(path) != flat_new.get(path) and selects(path, fields, ignore)
    )


def record_identity(record: Mapping[str, Any]) -> str:
    """Which CVM a sweep record is about: the CVM's own integer id when it was fetched (the same
    whichever form of id the sweep was given), else the normalised id it was given."""
    cvm = record.get("cvm")
    if record.get("ok") and isinstance(cvm, Mapping) and cvm.get("id") is not None:
        return id_key(str(cvm["id"]))
    return id_key(str(record.get("cvm_id")))
