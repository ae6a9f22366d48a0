"""Compare two sweeps CVM by CVM: :func:`diff_snapshots`, the comparison behind ``phala-async
diff``, and :func:`check_field_paths`, which turns a misspelt field path into an error with a
suggestion. What changed in one CVM is :func:`phala_async._changes.field_changes`.

Records are paired by the CVM they are about, not by the id as typed: a fetched CVM by its own
integer ``id`` (the same whether it was swept by integer id, VM UUID, name or app id), a failed
id, which has no body, by its normalised id, matched to the CVM when the other records name it
(its integer id, VM UUID, instance id or name). Two sweeps of one fleet with ids in different
forms therefore differ in nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias

import msgspec

from ._bulk import CvmResult
from ._changes import FieldChange, field_changes, record_identity
from ._errors import APIStatusError, ConfigurationError
from ._ids import id_key
from ._models import CvmDetail

__all__ = [
    "DIFFERENCE_KINDS",
    "CvmDifference",
    "SweepRecord",
    "check_field_paths",
    "compare_paired",
    "diff_snapshots",
    "field_paths",
    "pair_records",
]

#: The kinds of difference, in the order a report lists them.
DIFFERENCE_KINDS = ("added", "removed", "changed", "failed")

#: One record of a sweep: a :class:`CvmResult` from ``stream_cvms``/``get_cvms``, or a mapping
#: of the shape ``phala-async sweep`` writes (``{"cvm_id", "ok", "cvm"}`` or ``{"cvm_id", "ok",
#: "error"}``), as ``json.loads`` of one of its lines gives it.
SweepRecord: TypeAlias = CvmResult | Mapping[str, Any]


class CvmDifference(NamedTuple):
    """One CVM that differs between two sweeps.

    Attributes:
        kind: one of :data:`DIFFERENCE_KINDS`.
        cvm_id: the id as the new sweep had it (the old one's when the new has none).
        name: the CVM's name, when a side that fetched it says.
        changes: what changed (``changed``), in path order.
        side: ``"old"`` or ``"new"``, where it failed (``failed``).
        error: that side's error: its ``type``, ``status`` and ``message`` (``failed``).
    """

    kind: str
    cvm_id: str
    name: str | None = None
    changes: tuple[FieldChange, ...] = ()
    side: str | None = None
    error: Mapping[str, Any] | None = None


def _struct_paths(struct: type[msgspec.Struct], prefix: str = "") -> Iterable[str]:
    for field in msgspec.structs.fields(struct):
        path = prefix + field.encode_name
        yield path
        nested = [
            kind
            for kind in getattr(field.type, "__args__", (field.type,))
            if isinstance(kind, type) and issubclass(kind, msgspec.Struct)
        ]
        for kind in nested:
            yield from _struct_paths(kind, path + ".")


def field_paths() -> frozenset[str]:
    """Every field path of :class:`CvmDetail`, nested ones included (``teepod.region_identifier``);
    a list is one field as a whole."""
    return _FIELD_PATHS


_FIELD_PATHS = frozenset(_struct_paths(CvmDetail))


def check_field_paths(paths: Iterable[str], *, known: Collection[str] = _FIELD_PATHS) -> None:
    """Refuse a path that names no field, with the closest real one as a suggestion.

    Args:
        paths: the field paths given (``status``, ``teepod.name``).
        known: the paths that exist (default :func:`field_paths`).

    Raises:
        ConfigurationError: a path names no field; the message names it and suggests one.
    """
    for path in paths:
        if path in known:
            continue
        close = difflib.get_close_matches(path, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "field paths are CvmDetail's"
        raise ConfigurationError(
            f"{path!r} is not a field of a CVM: {hint} (nested ones by path, such as 'teepod.name')"
        )


def _as_mapping(record: SweepRecord) -> Mapping[str, Any]:
    if isinstance(record, Mapping):
        return record
    if record.cvm is not None:
        return {"cvm_id": record.cvm_id, "ok": True, "cvm": msgspec.to_builtins(record.cvm)}
    error = record.error
    status = error.status_code if isinstance(error, APIStatusError) else None
    described = {"type": type(error).__name__, "status": status, "message": str(error)}
    return {"cvm_id": record.cvm_id, "ok": False, "error": described}


def _cvm(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cvm = record.get("cvm")
    return cvm if record.get("ok") and isinstance(cvm, Mapping) else None


_ALIASES = ("id", "vm_uuid", "instance_id", "name")


def pair_records(
    old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]
) -> tuple[dict[str, Mapping[str, Any]], dict[str, Mapping[str, Any]]]:
    """Both sides' records keyed by the CVM they are about (see the module's docstring): the
    last record of each id as given, and of each CVM a fetched record before a failed one."""
    sides = []
    aliases: dict[str, str] = {}
    for records in (old, new):
        newest = {id_key(str(record.get("cvm_id"))): record for record in records}
        sides.append(newest)
        for typed, record in newest.items():
            cvm = _cvm(record)
            if cvm is None or cvm.get("id") is None:
                continue
            identity = record_identity(record)
            aliases[typed] = identity
            for name in _ALIASES:
                if cvm.get(name):
                    aliases.setdefault(id_key(str(cvm[name])), identity)
    paired: list[dict[str, Mapping[str, Any]]] = []
    for newest in sides:
        by_cvm: dict[str, Mapping[str, Any]] = {}
        for typed, record in newest.items():
            identity = aliases.get(typed, typed)
            if identity not in by_cvm or _cvm(record) is not None:
                by_cvm[identity] = record
        paired.append(by_cvm)
    return paired[0], paired[1]


def _name(*cvms: Mapping[str, Any] | None) -> str | None:
    return next((str(cvm["name"]) for cvm in cvms if cvm and cvm.get("name")), None)


def _error(record: Mapping[str, Any]) -> Mapping[str, Any]:
    error = record.get("error")
    return dict(error) if isinstance(error, Mapping) else {}


def _order(difference: CvmDifference) -> tuple[int, int, str]:
    digits = difference.cvm_id.isdigit()
    return (
        DIFFERENCE_KINDS.index(difference.kind),
        int(difference.cvm_id) if digits else 0,
        difference.cvm_id,
    )


def compare_paired(
    old: Mapping[str, Mapping[str, Any]],
    new: Mapping[str, Mapping[str, Any]],
    *,
    fields: Sequence[str] = (),
    ignore: Sequence[str] = (),
) -> list[CvmDifference]:
    """Every CVM that differs between two sides already paired by :func:`pair_records`."""
    differences = []
    for key in old.keys() | new.keys():
        before, after = old.get(key), new.get(key)
        was = _cvm(before) if before is not None else None
        now = _cvm(after) if after is not None else None
        if was is not None and now is not None:
            if was == now:
                continue
            changes = field_changes(was, now, fields=fields, ignore=ignore)
            if changes:
                cvm_id = str(after["cvm_id"]) if after is not None else key
                differences.append(
                    CvmDifference("changed", cvm_id, _name(now, was), changes=changes)
                )
        elif after is not None and now is None:
            if before is None or was is not None:
                differences.append(
                    CvmDifference(
                        "failed", str(after["cvm_id"]), _name(was), side="new", error=_error(after)
                    )
                )
        elif before is not None and was is None:
            if after is None or now is not None:
                differences.append(
                    CvmDifference(
                        "failed",
                        str(before["cvm_id"]),
                        _name(now),
                        side="old",
                        error=_error(before),
                    )
                )
        elif after is not None:
            differences.append(CvmDifference("added", str(after["cvm_id"]), _name(now)))
        elif before is not None:
            differences.append(CvmDifference("removed", str(before["cvm_id"]), _name(was)))
    return sorted(differences, key=_order)


def diff_snapshots(
    old: Iterable[SweepRecord],
    new: Iterable[SweepRecord],
    *,
    fields: Sequence[str] = (),
    ignore: Sequence[str] = (),
) -> list[CvmDifference]:
    """What changed between two sweeps of a fleet, CVM by CVM.

    A CVM fetched only in ``new`` is ``added``, only in ``old`` ``removed``, in both with a
    counted field different ``changed``; an id that failed on one side only is ``failed`` on
    that side (one that failed on both is no difference: nothing is known of it either time).
    Records pair by the CVM, whatever form of id each sweep was given. Sorted by kind, then id::

        async with PhalaClient(api_key=key) as client:
            before = await client.get_cvms(ids)
            ...
            after = await client.get_cvms(ids)
        for difference in diff_snapshots(before, after, ignore=["in_progress"]):
            print(difference.kind, difference.cvm_id, difference.changes)

    Args:
        old: the earlier sweep's records (:class:`CvmResult` or mappings, see
            :data:`SweepRecord`).
        new: the later sweep's.
        fields: only changes under these field paths count (all when empty).
        ignore: changes under these paths never count (volatile ones such as ``in_progress``).

    Raises:
        ConfigurationError: a path in ``fields`` or ``ignore`` names no field of a CVM (the
            message suggests the closest one).

    Returns:
        The differences, empty when the two sweeps agree.
    """
    if isinstance(fields, str) or isinstance(ignore, str):
        raise ConfigurationError("fields and ignore are lists of paths, not a str: pass [path]")
    check_field_paths([*fields, *ignore])
    before, after = pair_records(map(_as_mapping, old), map(_as_mapping, new))
    return compare_paired(before, after, fields=fields, ignore=ignore)
