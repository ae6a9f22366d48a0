"""The simulator's control API, under ``/_simulator/`` (a prefix the real API never uses), so a
client in any language can change the workspace while it tests against ``phala-async serve``.

Every route takes the simulator's credential (``X-API-Key`` or ``Authorization: Bearer``, 401
otherwise) and answers JSON; a bad request is 422 ``{"detail": "..."}`` saying what to send, an
unknown CVM 404. The routes call the simulator's public methods, so they behave as those do:

- ``GET /_simulator/cvms``: ``{"cvm_ids": [...], "forbidden_ids": [...]}``;
- ``POST /_simulator/cvms`` ``{"count": N}``: add N CVMs, ``{"added": [ids]}``;
- ``GET /_simulator/cvms/{id}``: the CVM's ``2025-10-28`` detail document;
- ``PATCH /_simulator/cvms/{id}`` ``{"status": "stopped", ...}``: change fields, the new document;
- ``DELETE /_simulator/cvms/{id}``: remove it, ``{"removed": id}``;
- ``POST /_simulator/script`` ``{"key": "3", "faults": ["503", "ok"]}``: queue answers for the
  next requests of that path segment (``"paginated"`` for the listing), ``{"queued": 2}``;
- ``GET /_simulator/stats``: ``{"total_requests", "status_counts", "in_flight", "max_in_flight"}``.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

__all__ = ["CONTROL_PREFIX", "Controlled", "add_control_routes"]

CONTROL_PREFIX = "/_simulator"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Controlled(Protocol):
    """What the control API needs of a simulator: the public methods of ``PhalaSimulator``."""

    @property
    def cvm_ids(self) -> list[int]: ...
    @property
    def forbidden_ids(self) -> list[int]: ...
    @property
    def total_requests(self) -> int: ...
    @property
    def status_counts(self) -> collections.Counter[int | str]: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def max_in_flight(self) -> int: ...
    def is_authenticated(self, headers: Mapping[str, str]) -> bool: ...
    def cvm(self, cvm_id: int) -> dict[str, Any]: ...
    def add_cvms(self, count: int) -> list[int]: ...
    def remove_cvm(self, cvm_id: int) -> None: ...
    def update_cvm(self, cvm_id: int, **fields: Any) -> None: ...
    def script(self, key: str | int, *kinds: Any) -> None: ...


class _BadRequest(Exception):
    """A control request that cannot be done; the message says what to send."""


def add_control_routes(app: web.Application, simulator: Controlled) -> None:
    """Add the control routes of ``simulator`` to ``app`` (before its catch-all route)."""

    def guarded(handler: Callable[[web.Request], Awaitable[Any]], status: int = 200) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            if not simulator.is_authenticated(request.headers):
                return web.json_response({"detail": "Authentication required"}, status=401)
            try:
                return web.json_response(await handler(request), status=status)
            except _BadRequest as exc:
                return web.json_response({"detail": str(exc)}, status=422)
            except KeyError as exc:
                return web.json_response({"detail": str(exc.args[0])}, status=404)
            except (ValueError, TypeError) as exc:
                return web.json_response({"detail": str(exc)}, status=422)

        return handle

    async def list_cvms(request: web.Request) -> Any:
        return {"cvm_ids": simulator.cvm_ids, "forbidden_ids": simulator.forbidden_ids}

    async def add_cvms(request: web.Request) -> Any:
        body = await _object(request)
        return {"added": simulator.add_cvms(body.get("count", 1))}

    async def get_cvm(request: web.Request) -> Any:
        return simulator.cvm(_cvm_id(request))

    async def update_cvm(request: web.Request) -> Any:
        cvm_id = _cvm_id(request)
        simulator.update_cvm(cvm_id, **await _object(request))
        return simulator.cvm(cvm_id)

    async def remove_cvm(request: web.Request) -> Any:
        cvm_id = _cvm_id(request)
        simulator.remove_cvm(cvm_id)
        return {"removed": cvm_id}

    async def script(request: web.Request) -> Any:
        body = await _object(request)
        key, faults = body.get("key"), body.get("faults")
        if not isinstance(key, str | int) or not isinstance(faults, list) or not faults:
            raise _BadRequest('send {"key": "<path segment>", "faults": ["503", "ok", ...]}')
        simulator.script(key, *faults)
        return {"queued": len(faults)}

    async def stats(request: web.Request) -> Any:
        return {
            "total_requests": simulator.total_requests,
            "status_counts": {str(k): v for k, v in simulator.status_counts.items()},
            "in_flight": simulator.in_flight,
            "max_in_flight": simulator.max_in_flight,
        }

    base = CONTROL_PREFIX
    app.router.add_get(f"{base}/cvms", guarded(list_cvms))
    app.router.add_post(f"{base}/cvms", guarded(add_cvms, 201))
    app.router.add_get(f"{base}/cvms/{{cvm_id}}", guarded(get_cvm))
    app.router.add_patch(f"{base}/cvms/{{cvm_id}}", guarded(update_cvm))
    app.router.add_delete(f"{base}/cvms/{{cvm_id}}", guarded(remove_cvm))
    app.router.add_post(f"{base}/script", guarded(script))
    app.router.add_get(f"{base}/stats", guarded(stats))


def _cvm_id(request: web.Request) -> int:
    raw = request.match_info["cvm_id"]
    if not raw.isdigit():
        raise _BadRequest(f"CVM {raw!r}: the control API names CVMs by integer id")
    return int(raw)


async def _object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise _BadRequest(f"the body is not JSON ({exc}): send a JSON object") from exc
    if not isinstance(body, dict):
        raise _BadRequest("send a JSON object")
    return body
