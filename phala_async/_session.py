"""The client's own ``aiohttp.ClientSession``: its pool, TLS trust and tracing, from one frozen
:class:`SessionOptions` value fixed when the client is made.

Everything here is decided once per session, never per request: the trust store is chosen when
the session is built, and aiohttp's ``trust_env`` stays off (it would look the environment and
``~/.netrc`` up again on every request, in a thread). The proxy, resolved from the arguments and
the environment when the client was made, is sent per request by
:class:`~phala_async._http.Exchange`: aiohttp has no session-wide ``Proxy-Authorization``, and
would send a session's default headers (the credential) to the proxy in its CONNECT request.
The one per-request addition here is :class:`PoolConnector`, which tells the exchange whether a
request's connection came from the pool.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from ._http import NEW, POOLED, REUSED, WANT_NEW

__all__ = ["PoolConnector", "SessionOptions", "open_session", "tls_context"]

#: OpenSSL's variables for the default trust store: read when the session is built.
CERT_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR")

# Set on a connection's protocol once it has carried a request.
_SERVED = "_phala_async_served"


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """How the client's own session connects.

    Attributes:
        concurrency: connections in the pool at most (all to the one API host).
        ssl: the context that verifies the API, from ``ssl=`` or ``ca_file=``; None for the
            default trust (see :func:`tls_context`).
        trace_configs: aiohttp ``TraceConfig`` objects the session reports to.
        https: whether the API is reached over https; a trust store is loaded only then.
    """

    concurrency: int
    ssl: ssl.SSLContext | None = None
    trace_configs: tuple[aiohttp.TraceConfig, ...] = ()
    https: bool = True


def tls_context(
    options: SessionOptions, environ: Mapping[str, str] = os.environ
) -> ssl.SSLContext | bool:
    """The ``ssl`` argument of the connector: the caller's context; else, for an https API when
    ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` is set, a default context made now (OpenSSL reads
    them as it loads the default store); else True, aiohttp's default context, made at import.
    """
    if options.ssl is not None:
        return options.ssl
    # Loading a store takes tens of milliseconds: not for a plain-http API (the simulator).
    if options.https and any(environ.get(name) for name in CERT_ENV):
        # aiohttp's default context was made when it was imported, perhaps before the variable
        # was set; a new one reads it now. Loading the store takes some milliseconds, once.
        context = ssl.create_default_context()
        context.set_alpn_protocols(("http/1.1",))
        return context
    return True


def warm_malloc() -> None:
    """Raise glibc's mmap threshold above asyncio's 256 KiB read buffer, once per process.

    asyncio's default loop reads each response into a fresh 256 KiB buffer. Until the process
    has freed one block larger than glibc's mmap threshold (128 KiB at start), glibc serves each
    such buffer from a new mapping and unmaps it afterwards: two page faults per read, measured
    at 15-30 us of system CPU per request in a sweep. Whether some earlier code happened to free
    such a block is luck; freeing one 1 MiB block here makes it certain. Elsewhere (another
    allocator, another platform) this is one short-lived allocation and nothing more.
    """
    global _malloc_warmed
    if not _malloc_warmed:
        _malloc_warmed = True
        bytearray(1 << 20)


_malloc_warmed = False


def open_session(options: SessionOptions, **defaults: Any) -> aiohttp.ClientSession:
    """A new session for the client, with ``defaults`` (headers, timeout) as its own.

    aiohttp's silent resend of a request whose pooled connection dropped is turned off: the
    client resends such a request itself (:meth:`Exchange.get <phala_async._http.Exchange.get>`),
    counting it, and on a new connection.
    """
    warm_malloc()
    # Every request goes to the one API host, so ``limit`` alone bounds the pool; a per-host
    # limit as well would cost two set updates a request and bound nothing more.
    connector = PoolConnector(limit=options.concurrency, ssl=tls_context(options))
    session = aiohttp.ClientSession(
        connector=connector,
        trace_configs=list(options.trace_configs) or None,
        trust_env=False,
        **defaults,
    )
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


class PoolConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that records, for the request it hands a connection to, whether that
    connection was reused from the pool; and that opens a new one when the request asks.

    The record is :data:`~phala_async._http.POOLED`, in the request's own task: a request that
    fails on a reused connection before any answer met a connection the server had closed
    while it was idle, and is resent; one on a new connection really failed. This costs a read
    of a context variable and of the connection's marks per request, well under a microsecond.
    """

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature, overridden
    ) -> Connection:
        state = POOLED.get()
        try:
            connection = await super().connect(req, traces, timeout)
            # Inlined (this runs per request): a protocol is marked when it first carries one.
            marks = connection._protocol.__dict__ if connection._protocol is not None else {}
            if _SERVED in marks:
                if state != WANT_NEW:
                    if state != REUSED:
                        POOLED.set(REUSED)
                    return connection
                connection = await self._new_connection(connection, req, traces, timeout)
            else:
                marks[_SERVED] = True
        except BaseException:
            if POOLED.get() != NEW:
                POOLED.set(NEW)  # no connection was handed over
            raise
        if state != NEW:
            POOLED.set(NEW)
        return connection

    async def _new_connection(
        self,
        connection: Connection,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature, passed on
    ) -> Connection:
        """Close pooled connections until the pool makes a new one.

        A resend after a stale connection: the pool's other idle connections are likely as
        stale (a server or load balancer that closes idle connections closes them all).
        Bounded: the pool holds at most ``limit`` connections.
        """
        for _ in range(self.limit + 1):
            connection.close()
            connection = await super().connect(req, traces, timeout)
            if not _served(connection):
                break
        return connection


def _served(connection: Connection) -> bool:
    """Whether the connection has carried a request before; marks it as having done so."""
    marks = connection.protocol.__dict__ if connection.protocol is not None else {}
    if _SERVED in marks:
        return True
    marks[_SERVED] = True
    return False
