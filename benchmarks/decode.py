"""The decode benchmark: one documented-shape body, decoded in-process by each decoder.

Each decoder is timed ``timeit``-style: a loop of ``number`` calls, repeated ``repeat`` times; the
figure is the median time per call. Peers that are not installed are reported as such.
"""

from __future__ import annotations

import json
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import msgspec

from phala_async import CvmDetail
from phala_async._models import decode_cvm
from phala_async.testing import PhalaSimulator

#: Decoders in the order they are shown; the first is the one the others are compared with.
DECODERS = (
    "phala-async (msgspec Struct)",
    "pydantic v2 model_validate_json",
    "json.loads",
    "orjson",
)


def representative_body(candidates: int = 300) -> bytes:
    """A simulator body with as many fields filled as any: non-empty ``public_urls``, and the
    fewest nulls among the first ``candidates`` CVMs (seed 0, so the same body every run)."""
    sim = PhalaSimulator(cvms=candidates)
    best: tuple[int, int] | None = None
    for cvm_id in sim.cvm_ids:
        document = sim.cvm(cvm_id)
        if not document.get("public_urls"):
            continue
        nulls = sum(value is None for value in document.values())
        if best is None or nulls < best[0]:
            best = (nulls, cvm_id)
    assert best is not None, "no simulator CVM has public_urls"
    return json.dumps(sim.cvm(best[1]), separators=(",", ":")).encode()


def _decoders(body: bytes) -> dict[str, Callable[[], Any] | str]:
    """Each decoder as a no-argument call on ``body``, or why it cannot run here."""
    decoders: dict[str, Callable[[], Any] | str] = {
        DECODERS[0]: lambda: decode_cvm(body, cvm_id=None)
    }
    try:
        from benchmarks.pydantic_model import CvmDetailModel
    except ImportError:
        decoders[DECODERS[1]] = "pydantic is not installed"
    else:
        _check_same_model(body, CvmDetailModel)
        decoders[DECODERS[1]] = lambda: CvmDetailModel.model_validate_json(body)
    decoders[DECODERS[2]] = lambda: json.loads(body)
    try:
        import orjson
    except ImportError:
        decoders[DECODERS[3]] = "orjson is not installed"
    else:
        decoders[DECODERS[3]] = lambda: orjson.loads(body)
    return decoders


def _check_same_model(body: bytes, model: Any) -> None:
    """The pydantic model must have the Struct's fields and decode the body to the same values."""
    struct_fields = [field.name for field in msgspec.structs.fields(CvmDetail)]
    assert list(model.model_fields) == struct_fields, "the pydantic model's fields drifted"
    typed = msgspec.to_builtins(decode_cvm(body, cvm_id=None))
    validated = model.model_validate_json(body).model_dump(mode="json")
    validated["scheduled_delete_at"] = typed["scheduled_delete_at"]  # same instant, both forms
    assert typed == validated, "the pydantic model decodes the body differently"


def run(*, repeat: int = 7, min_seconds: float = 0.2) -> dict[str, Any]:
    """Time every decoder; return the body size and, per decoder, µs per call or a reason."""
    body = representative_body()
    results: dict[str, Any] = {}
    for name, call in _decoders(body).items():
        if isinstance(call, str):
            results[name] = {"skipped": call}
            continue
        timer = timeit.Timer(call)
        number, _ = timer.autorange()  # calls per loop so that one loop takes >= 0.2 s
        number = max(1, int(number * min_seconds / 0.2))
        loops = timer.repeat(repeat=repeat, number=number)
        per_call = [loop / number * 1e6 for loop in loops]
        results[name] = {
            "median_us": statistics.median(per_call),
            "min_us": min(per_call),
            "max_us": max(per_call),
            "number": number,
            "repeat": repeat,
        }
    return {"body_bytes": len(body), "decoders": results}
