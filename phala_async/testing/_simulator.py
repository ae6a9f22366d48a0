"""``PhalaSimulator``, the server itself: its settings, routes, handlers and counters.

Public through :mod:`phala_async.testing`, whose docstring describes what it serves.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from aiohttp import web

from . import _data as data
from ._faults import (
    DEFAULT_FAULTS,
    Aborted,
    Fault,
    FixedWindow,
    StaleConnections,
    as_fault,
    fault_answer,
    format_retry_after,
    respond,
)
from ._state import Workspace
from ._v2026 import shape_of, unsupported_version

if TYPE_CHECKING:
    from ._tls import ServerCertificates

_LOG_SIZE = 100_000  # request_log keeps the last this many records
_SHUTDOWN_TIMEOUT = 0.5  # seconds close() lets in-flight handlers finish before cancelling them
_BACKLOG = 128  # pending connections the listening socket queues (aiohttp's TCPSite default)
_TLS_CERTS = ("valid", "wrong_host", "self_signed")


@dataclasses.dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the simulator saw it; credentials are never stored.

    Attributes:
        time: ``loop.time()`` when the handler finished.
        path: The request path, without the query string.
        cvm_key: The segment after ``/cvms/`` (``"paginated"`` for the list), None for other paths.
        status: The status answered, ``"reset"`` for a connection aborted by ``Fault.RESET``,
            ``"dropped"`` for one closed by ``drop_after``, or ``"unanswered"`` if the handler was
            cancelled (at shutdown).
        header_names: Lower-cased names of the request headers.
        authenticated: Whether a valid credential was sent.
        phala_version: The ``X-Phala-Version`` header, if any.
        user_agent: The ``User-Agent`` header, if any.
    """

    time: float
    path: str
    cvm_key: str | None
    status: int | str
    header_names: frozenset[str]
    authenticated: bool
    phala_version: str | None
    user_agent: str | None


_Answer = Callable[[web.Request, str], tuple[int, bytes]]


def _is_whole(value: object, *, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


class PhalaSimulator:
    """A local Phala Cloud API server with deterministic CVMs and injectable failures.

    Workspace CVMs have ids ``1..cvms``; ids ``cvms+1..cvms+forbidden`` exist in another workspace
    (403); CVMs added later (``add_cvms``) take the ids after the highest ever given, so they never
    collide with those. CVM documents derive from ``(seed, id)`` and are encoded when the CVM is
    made or changed (``update_cvm``), not per request (the ``2026-01-21`` shape when first asked
    for). ``X-Phala-Version`` picks the shape (``SIMULATED_VERSIONS``).

    A detail request is processed in this order: counted, dropped if its connection is stale
    (``drop_after``), authenticated (401), a scripted answer for its segment (which replaces the
    rate limit and random fault), the capacity cap (503), the rate limit (429), a random fault
    with probability ``fault_rate``, ``latency``, then the lookup (422/404/403/200). The list
    endpoint only counts, drops stale connections, authenticates and applies
    ``script("paginated", ...)``.

    Args:
        cvms: Number of CVMs in the workspace.
        api_key: The accepted ``X-API-Key`` value.
        token: The accepted ``Authorization: Bearer`` token.
        forbidden: Number of extra CVMs that belong to another workspace.
        instances_per_app: CVMs that are instances of one app and share its ``app_id``: with 3,
            CVMs 1-3 are one app, 4-6 the next (forbidden and added CVMs form apps of their
            own). Each instance keeps its own id, name, VM UUID and instance id; ``app_<hex>``
            names the app's first instance still in the workspace (its lowest id), as a lookup
            by app id that takes the oldest match does.
        fault_rate: Fraction (0-1) of detail requests answered with a random fault.
        faults: The kinds random faults are drawn from, uniformly.
        fault_delay: Seconds a ``Fault.DELAY`` waits before answering.
        retry_after: ``Retry-After`` of an injected 429: seconds (fractions are sent as given, for
            fast tests) or an HTTP-date string.
        rate_limit: Answered detail requests allowed per fixed one-second window; None: no limit.
        rate_limit_retry_after: ``Retry-After`` seconds of a rate-limit 429.
        latency: Seconds added before every answer that passes the rate limit.
        capacity: Detail requests the server works on at once (its workers); one more in flight
            is answered 503 at once, without ``Retry-After``, as nginx ``limit_conn`` or a load
            balancer in front of a fixed pool does. None: no cap.
        drop_after: Requests one connection may have answered: the next request on it is not
            answered, its connection is aborted before any byte, as a load balancer closes an
            idle keep-alive connection (counted and logged with status ``"dropped"``). None: never.
        seed: Seed of the CVM data and of the random faults.
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one.
        tls: Serve HTTPS with certificates of a fresh CA from trustme (``pip install
            'phala-async[testing]'``); a client trusts it through ``ca_file`` or ``ca_pem``.
        tls_cert: The certificate the server presents: ``"valid"`` (signed by the CA for
            127.0.0.1, localhost and ::1), ``"wrong_host"`` (signed by the CA for ``other.example``
            only) or ``"self_signed"`` (for the local names, signed by itself). An unknown CA needs
            no option: serve ``"valid"`` and do not trust ``ca_file``.
        control: also serve the control API under ``/_simulator/`` (add, change and remove CVMs,
            script faults, read counters over HTTP; see the README), as ``phala-async serve``
            does.

    Raises:
        ValueError: A value is out of range; the message says what to pass.
    """

    def __init__(
        self,
        *,
        cvms: int = 100,
        api_key: str = "phak_simulator_test_key",
        token: str = "simulator-oauth-token",  # noqa: S107 -- a fixed test credential, not a secret
        forbidden: int = 0,
        instances_per_app: int = 1,
        fault_rate: float = 0.0,
        faults: Sequence[Fault | str] = DEFAULT_FAULTS,
        fault_delay: float = 2.0,
        retry_after: float | str = 0,
        rate_limit: float | None = None,
        rate_limit_retry_after: int = 1,
        latency: float = 0.0,
        capacity: int | None = None,
        drop_after: int | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        tls_cert: Literal["valid", "wrong_host", "self_signed"] = "valid",
        control: bool = False,
    ) -> None:
        counts = {"cvms": cvms, "forbidden": forbidden, "port": port}
        for name, value in {**counts, "rate_limit_retry_after": rate_limit_retry_after}.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, not {value!r}")
        for name, delay in (("fault_delay", fault_delay), ("latency", latency)):
            if not delay >= 0:  # also rejects NaN
                raise ValueError(f"{name} must be >= 0 seconds, not {delay!r}")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0.0 and 1.0, not {fault_rate!r}")
        if fault_rate and not faults:
            raise ValueError("faults is empty: pass at least one Fault when fault_rate > 0")
        if not _is_whole(instances_per_app, minimum=1):
            raise ValueError(
                f"instances_per_app must be an int >= 1 (CVMs per app), not {instances_per_app!r}"
            )
        if drop_after is not None and not _is_whole(drop_after, minimum=1):
            raise ValueError(
                "drop_after must be an int >= 1 (requests a connection answers before the next "
                f"one is dropped), or None, not {drop_after!r}"
            )
        if capacity is not None and not _is_whole(capacity, minimum=1):
            raise ValueError(
                f"capacity must be an int >= 1 (requests served at once), or None, not {capacity!r}"
            )
        if rate_limit is not None and not rate_limit > 0:
            raise ValueError(f"rate_limit must be > 0 per second, or None, not {rate_limit!r}")
        if not api_key or not token:
            raise ValueError("api_key and token must be non-empty strings")
        if tls_cert not in _TLS_CERTS:
            raise ValueError(
                f"tls_cert must be one of {', '.join(map(repr, _TLS_CERTS))}, not {tls_cert!r} "
                "(for an unknown CA, serve 'valid' and do not trust ca_file)"
            )
        if tls_cert != "valid" and not tls:
            raise ValueError(f"tls_cert={tls_cert!r} needs tls=True")
        self._api_key, self._token = api_key, token
        self._secrets = (api_key.encode(), token.encode())
        self._fault_rate, self._faults = fault_rate, tuple(as_fault(kind) for kind in faults)
        self._fault_delay, self._latency = fault_delay, latency
        self._retry_after, self._retry_after_header = retry_after, format_retry_after(retry_after)
        self._rate_limit_per_second = rate_limit
        self._capacity = capacity
        self._rate_limit = None if rate_limit is None else FixedWindow(rate_limit)
        self._rate_limit_retry_after = str(rate_limit_retry_after)
        self._host, self._port = host, port
        self._control = control
        # Faults are random but reproducible for one seed and one request order.
        self._rng = random.Random(seed)  # noqa: S311 -- fault injection, not security
        self._workspace = Workspace(
            seed=seed, cvms=cvms, forbidden=forbidden, instances_per_app=instances_per_app
        )
        self._scripts: dict[str, collections.deque[Fault]] = {}
        # Per-connection bookkeeping only when connections are dropped: the path stays light.
        self._stale = None if drop_after is None else StaleConnections(drop_after)
        self._certificates: ServerCertificates | None = None
        if tls:
            from ._tls import ServerCertificates  # trustme, only when asked

            self._certificates = ServerCertificates(tls_cert)
        self._ca_file: Path | None = None  # alone in a temporary directory, while running
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._bound_port: int | None = None
        self._connections = 0
        self._requests: collections.Counter[str] = collections.Counter()
        self._status_counts: collections.Counter[int | str] = collections.Counter()
        self._log: collections.deque[RequestRecord] = collections.deque(maxlen=_LOG_SIZE)
        self._total_requests = self._in_flight = self._max_in_flight = 0

    def __repr__(self) -> str:
        where = self.base_url if self._bound_port is not None else "not started"
        return (
            f"PhalaSimulator(cvms={len(self._workspace.cvm_ids)}, "
            f"forbidden={len(self._workspace.forbidden_ids)}, "
            f"fault_rate={self._fault_rate}, rate_limit={self._rate_limit_per_second}, {where})"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Start listening and return ``base_url``.

        Raises:
            RuntimeError: The simulator is already running.
            OSError: The address could not be bound.
        """
        if self._runner is not None:
            raise RuntimeError("the simulator is already running: call close() first")
        app = web.Application()
        app.router.add_get("/api/v1/cvms/paginated", self._handle_list)
        app.router.add_get("/api/v1/cvms/{cvm_id}", self._handle_detail)
        if self._control:
            from ._control import add_control_routes

            add_control_routes(app, self)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        server = runner.server  # aiohttp's protocol factory: one request handler per connection
        if server is None:  # pragma: no cover -- setup() always makes one
            raise RuntimeError("aiohttp's runner made no server")

        def accept() -> asyncio.BaseProtocol:
            self._connections += 1
            return server()

        tls_dir = ca_file = context = None
        try:
            if self._certificates is not None:
                tls_dir = Path(tempfile.mkdtemp(prefix="phala-simulator-"))
                ca_file, context = self._certificates.server_context(tls_dir)
            # Listening ourselves rather than through a web.TCPSite counts accepted connections.
            listener = await asyncio.get_running_loop().create_server(
                accept, self._host, self._port, ssl=context, backlog=_BACKLOG
            )
        except BaseException:
            await runner.cleanup()
            if tls_dir is not None:
                shutil.rmtree(tls_dir, ignore_errors=True)
            raise
        self._runner, self._listener, self._ca_file = runner, listener, ca_file
        self._bound_port = listener.sockets[0].getsockname()[1]
        return self.base_url

    async def close(self) -> None:
        """Stop the server; in-flight requests get a short grace period. Safe to call twice."""
        runner, listener, ca_file = self._runner, self._listener, self._ca_file
        self._runner = self._listener = self._bound_port = self._ca_file = None
        if listener is not None:
            listener.close()  # no new connections; the runner's cleanup closes the open ones
        if runner is not None:
            await runner.cleanup()
        if ca_file is not None:
            shutil.rmtree(ca_file.parent, ignore_errors=True)  # the directory start() made

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- configuration and data --------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/api/v1`` (``https://`` with ``tls``); RuntimeError before
        ``start()``."""
        if self._bound_port is None:
            raise RuntimeError("the simulator is not running: call start() or use `async with`")
        scheme = "http" if self._certificates is None else "https"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._bound_port}/api/v1"

    @property
    def ca_file(self) -> str:
        """Path of the PEM bundle of the CA to trust, in a directory removed by ``close()``.

        For example ``ssl.create_default_context(cafile=sim.ca_file)``.

        Raises:
            RuntimeError: The simulator serves plain HTTP, or is not running.
        """
        self._require_tls()
        if self._ca_file is None:
            raise RuntimeError("the simulator is not running: call start() or use `async with`")
        return str(self._ca_file)

    @property
    def ca_pem(self) -> bytes:
        """The PEM certificate of the CA to trust (the content of ``ca_file``), running or not.

        Raises:
            RuntimeError: The simulator serves plain HTTP.
        """
        return self._require_tls().ca_pem

    def _require_tls(self) -> ServerCertificates:
        if self._certificates is None:
            raise RuntimeError("the simulator serves plain HTTP: pass tls=True for a CA to trust")
        return self._certificates

    @property
    def api_key(self) -> str:
        """The accepted ``X-API-Key`` value."""
        return self._api_key

    @property
    def token(self) -> str:
        """The accepted bearer token."""
        return self._token

    @property
    def retry_after(self) -> float | str:
        """The ``Retry-After`` value of an injected ``Fault.RATE_LIMIT``."""
        return self._retry_after

    @property
    def cvm_ids(self) -> list[int]:
        """Ids of the workspace CVMs, in order; they follow ``add_cvms`` and ``remove_cvm``."""
        return self._workspace.cvm_ids

    @property
    def forbidden_ids(self) -> list[int]:
        """Ids of the CVMs that exist in another workspace (answered with 403)."""
        return self._workspace.forbidden_ids

    def cvm(self, cvm_id: int) -> dict[str, Any]:
        """A fresh copy of the JSON document served now for workspace CVM ``cvm_id``.

        Raises:
            KeyError: ``cvm_id`` is not in ``cvm_ids``.
        """
        return self._workspace.document(cvm_id)

    def add_cvms(self, count: int) -> list[int]:
        """Add ``count`` CVMs to the workspace and return their ids, in order.

        They take the ids after the highest ever given (forbidden and removed CVMs included), and
        their documents derive from the seed and the id, like the first ones. With several
        ``instances_per_app``, this call's CVMs form new apps of their own.

        Raises:
            ValueError: ``count`` is not an int >= 0.
        """
        if not _is_whole(count, minimum=0):
            raise ValueError(f"count must be an int >= 0 (CVMs to add), not {count!r}")
        return self._workspace.add(count)

    def remove_cvm(self, cvm_id: int) -> None:
        """Remove a workspace CVM: every identifier form of it then answers 404 ``ERR-03-001``.

        It leaves the listing (its ``total`` and ``pages`` follow) and ``cvm_ids``; its id is never
        given again. The app id of an app with other instances left names the next one instead.

        Raises:
            KeyError: ``cvm_id`` is not in ``cvm_ids``.
        """
        self._workspace.remove(cvm_id)

    def update_cvm(self, cvm_id: int, **fields: Any) -> None:
        """Change fields of a workspace CVM in its detail document and in its listing entry.

        Fields are named as in the detail document (``status``, ``name``, ``vcpu``, ``memory``,
        ``disk_size``, ``teepod={...}``, ...); the listing entry changes alike (``teepod`` is its
        ``node``, ``name`` and ``status`` also its ``hosted`` ones). Values are served as given, so
        a test can also serve a malformed document. A new ``name`` finds the CVM; the old one no
        longer does.
        Example: ``sim.update_cvm(3, status="stopped", teepod={"id": 9, "name": "prod9"})``.

        Raises:
            KeyError: ``cvm_id`` is not in ``cvm_ids``.
            ValueError: An unknown field or an identifier (``id``, ``app_id``, ``vm_uuid``,
                ``instance_id``), or a ``name`` that is not a free CVM name; nothing was changed.
            TypeError: A value that JSON cannot encode; nothing was changed.
        """
        self._workspace.update(cvm_id, fields)

    def script(self, key: str | int, *kinds: Fault | str) -> None:
        """Queue answers for the next requests whose path segment is ``str(key)``.

        Scripted answers are used in order, one per request, before the rate limit and random
        faults; ``Fault.OK`` is a normal answer. Use the key ``"paginated"`` for the list endpoint.
        Calling again appends to the queue.

        Raises:
            ValueError: No kinds given, or an unknown kind.
        """
        if not kinds:
            raise ValueError("pass at least one Fault to script")
        faults = [as_fault(kind) for kind in kinds]
        self._scripts.setdefault(str(key), collections.deque()).extend(faults)

    # -- counters ----------------------------------------------------------------------------

    @property
    def requests(self) -> collections.Counter[str]:
        """Requests per raw path segment under ``/cvms/`` (a copy; the list counts as "paginated").

        Every request is counted, including faults and authentication failures.
        """
        return collections.Counter(self._requests)

    @property
    def total_requests(self) -> int:
        """Requests received on any path."""
        return self._total_requests

    @property
    def status_counts(self) -> collections.Counter[int | str]:
        """Answers given by status code (a copy); ``"reset"`` counts aborted connections."""
        return collections.Counter(self._status_counts)

    @property
    def in_flight(self) -> int:
        """Detail requests being handled now."""
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most detail requests handled at once since start or ``reset_counters()``."""
        return self._max_in_flight

    @property
    def request_log(self) -> list[RequestRecord]:
        """The last 100 000 requests, oldest first (a copy)."""
        return list(self._log)

    @property
    def connections(self) -> int:
        """TCP connections accepted (failed TLS handshakes included) until ``reset_counters()``."""
        return self._connections

    def reset_counters(self) -> None:
        """Zero every counter and empty the request log; scripts and the rate limit stay."""
        self._requests.clear()
        self._status_counts.clear()
        self._log.clear()
        self._total_requests, self._max_in_flight = 0, self._in_flight
        self._connections = 0

    # -- request handling --------------------------------------------------------------------

    def is_authenticated(self, headers: Mapping[str, str]) -> bool:
        """Whether ``headers`` carry the simulator's API key or bearer token."""
        api_key = headers.get("X-API-Key")
        if api_key is not None and hmac.compare_digest(
            api_key.encode("utf-8", "surrogateescape"), self._secrets[0]
        ):
            return True
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("utf-8", "surrogateescape"), self._secrets[1]
        )

    def _record(self, request: web.Request, key: str | None, status: int | str, auth: bool) -> None:
        self._status_counts[status] += 1
        headers = request.headers
        self._log.append(
            RequestRecord(
                time=asyncio.get_running_loop().time(),
                path=request.path,
                cvm_key=key,
                status=status,
                header_names=frozenset(name.lower() for name in headers),
                authenticated=auth,
                phala_version=headers.get("X-Phala-Version"),
                user_agent=headers.get("User-Agent"),
            )
        )

    async def _handle_detail(self, request: web.Request) -> web.StreamResponse:
        segment = request.match_info["cvm_id"]
        self._requests[segment] += 1
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            return await self._serve(request, segment, self._lookup, chaos=True)
        finally:
            self._in_flight -= 1

    async def _handle_list(self, request: web.Request) -> web.StreamResponse:
        self._requests["paginated"] += 1
        return await self._serve(request, "paginated", self._page, chaos=False)

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        self._total_requests += 1
        authenticated = self.is_authenticated(request.headers)
        if self._stale is not None and self._stale.drop_if_stale(request):
            self._record(request, None, "dropped", authenticated)
            return Aborted("dropped")
        self._record(request, None, 404, authenticated)
        return respond(404, data.NO_ROUTE)

    async def _serve(
        self, request: web.Request, key: str, answer: _Answer, *, chaos: bool
    ) -> web.StreamResponse:
        self._total_requests += 1
        authenticated = self.is_authenticated(request.headers)
        status: int | str = "unanswered"
        try:
            if self._stale is not None and self._stale.drop_if_stale(request):
                response: web.StreamResponse = Aborted("dropped")
            elif authenticated:
                response = await self._answer(request, key, answer, chaos)
            else:
                response = respond(401, data.UNAUTHENTICATED)
            status = response.recorded_status if isinstance(response, Aborted) else response.status
            return response
        finally:
            self._record(request, key, status, authenticated)

    async def _answer(
        self, request: web.Request, key: str, answer: _Answer, chaos: bool
    ) -> web.StreamResponse:
        fault: Fault | None = None
        if self._scripts and (queue := self._scripts.get(key)):
            fault = queue.popleft()
            if not queue:
                del self._scripts[key]
        elif chaos:
            if self._capacity is not None and self._in_flight > self._capacity:
                return respond(503, data.OVER_CAPACITY)
            if self._rate_limit is not None and not self._rate_limit.admit():
                return respond(
                    429, data.RATE_LIMITED, **{"Retry-After": self._rate_limit_retry_after}
                )
            if self._fault_rate and self._rng.random() < self._fault_rate:
                fault = self._rng.choice(self._faults)
        if fault is Fault.DELAY:
            await asyncio.sleep(self._fault_delay)
        if self._latency:
            await asyncio.sleep(self._latency)
        status, body = answer(request, key)
        if fault in (None, Fault.OK, Fault.DELAY):
            return respond(status, body)
        return await fault_answer(
            request, fault, status, body, retry_after=self._retry_after_header
        )

    def _lookup(self, request: web.Request, segment: str) -> tuple[int, bytes]:
        shape = shape_of(request.headers.get("X-Phala-Version"))
        if shape is None:
            return _unsupported(request)
        return self._workspace.lookup(segment, shape)

    def _page(self, request: web.Request, key: str) -> tuple[int, bytes]:
        shape = shape_of(request.headers.get("X-Phala-Version"))
        if shape is None:
            return _unsupported(request)
        parsed = data.page_request(request.query)
        if isinstance(parsed, bytes):
            return 422, parsed
        return 200, self._workspace.page(parsed, shape)


def _unsupported(request: web.Request) -> tuple[int, bytes]:
    return 400, data.encode(unsupported_version(request.headers.get("X-Phala-Version", "")))
