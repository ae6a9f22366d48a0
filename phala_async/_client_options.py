"""The keyword options of ``PhalaClient`` beside ``api_version``, as one TypedDict: each is
documented here, once, and the constructor's overloads (one per API version, for the result
type) need not repeat them. Also for code that passes options on::

    def make_client(**options: Unpack[ClientOptions]) -> PhalaClient: ...
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from ssl import SSLContext
from typing import TypedDict

import aiohttp

__all__ = ["ClientOptions"]


class ClientOptions(TypedDict, total=False):
    """Every ``PhalaClient`` option but ``api_version``, all keyword-only and optional."""

    #: a dashboard API key, sent as ``X-API-Key``. Defaults to ``$PHALA_CLOUD_API_KEY``.
    api_key: str | None
    #: an OAuth access token, sent as ``Authorization: Bearer``. Give it or ``api_key``.
    token: str | None
    #: the API prefix; defaults to ``$PHALA_CLOUD_API_PREFIX``, then
    #: ``https://cloud-api.phala.com/api/v1``.
    base_url: str | None
    #: seconds one attempt may take, from connecting to the last byte. Retries each get their own
    #: ``timeout``.
    timeout: float
    #: requests made for one id at most, the first included (1 disables retries).
    max_attempts: int
    #: requests in flight at most, across every call on this client; also the size of the connection
    #: pool.
    concurrency: int
    #: an ``aiohttp.ClientSession`` to use instead of the client's own. It is not closed by
    #: :meth:`aclose`; its own pool limit then also applies.
    session: aiohttp.ClientSession | None
    #: seconds of the first retry's backoff; it doubles each retry.
    backoff_initial: float
    #: the longest backoff, in seconds.
    backoff_max: float
    #: the longest ``Retry-After`` honoured; a longer one raises at once.
    retry_after_cap: float
    #: bodies larger than this are refused unread (:class:`ResponseTooLargeError`).
    max_response_bytes: int
    #: allow a plain ``http://`` base URL to a host other than loopback.
    allow_insecure_http: bool
    #: find the capacity the client shares by itself: the requests in flight adapt between 1 and
    #: ``concurrency`` (they grow while answers come back well and shrink on overload: 503s beyond
    #: the server's capacity, timeouts, 429s), and after a throttled answer (429, or 503 with
    #: ``Retry-After``) sends are paced just under what the server let through. On by default; off,
    #: ``concurrency`` requests are always allowed in flight and nothing is paced.
    adaptive: bool
    #: a hard cap in requests per second, for accounts that know their limit.
    rate_limit: float | None
    #: hold retries back while most recent requests fail (of the last 100, or 4 x ``concurrency`` if
    #: more) and refuse them once the API is dead (none of those succeeded, and nothing has for 5
    #: seconds, or ever), so a down API sees little more than one request per id; a held-back id
    #: waits, it is never dropped while the API still answers. On by default.
    retry_budget: bool
    #: seconds a successful ``get_cvm`` answer is reused (0, the default: no cache). Errors are
    #: never cached; ``get_cvm(..., fresh=True)`` skips the cache.
    cache_ttl: float
    #: answers the cache keeps at most, least recently used dropped first.
    cache_size: int
    #: an ``ssl.SSLContext`` to verify the API's certificate with (own session only).
    ssl: SSLContext | None
    #: a PEM bundle of the CAs to trust instead of the system's (own session only). Without ``ssl``
    #: or ``ca_file``, ``$SSL_CERT_FILE`` / ``$SSL_CERT_DIR`` are honoured.
    ca_file: str | os.PathLike[str] | None
    #: an ``http://[user:password@]host:port`` proxy to reach the API through; https requests go
    #: through a CONNECT tunnel, so the proxy never sees the credential.
    proxy: str | None
    #: read ``$HTTPS_PROXY`` / ``$HTTP_PROXY`` / ``$NO_PROXY`` when the client is made and no
    #: ``proxy`` is given. On by default.
    trust_env: bool
    #: ``aiohttp.TraceConfig`` objects for the client's own session (tracing, OpenTelemetry); each
    #: attempt, retries included, is one traced request.
    trace_configs: Sequence[aiohttp.TraceConfig] | None
    #: an ``opentelemetry.metrics.MeterProvider`` to report metrics to (requests by status class,
    #: the request duration, retries, 429s, in flight, the window and send rate); default the global
    #: one when ``opentelemetry-api`` is installed (``pip install 'phala-async[otel]'``), and
    #: nothing at all without it.
    meter_provider: object | None
