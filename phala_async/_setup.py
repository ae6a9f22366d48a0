"""Building a client from its options: every value checked up front (a bad one fails at
construction with the fix), then the pieces made and wired once: the governor, the exchange,
the session's options and the pipeline that every call of the client runs through."""

from __future__ import annotations

import os
from collections.abc import Sequence
from ssl import SSLContext
from typing import NamedTuple

import aiohttp

from ._config import (
    check_api_version,
    check_positive,
    check_trace_configs,
    resolve_base_url,
    resolve_credential,
    resolve_proxy,
    resolve_tls,
)
from ._errors import ConfigurationError
from ._governor import Governor
from ._http import Exchange
from ._metrics import answer_observer
from ._models import CvmPage
from ._pipeline import Pipeline, SharedSession
from ._response import Decode
from ._retry import RetryPolicy
from ._session import SessionOptions
from ._sharing import Flights, TTLCache
from ._version import __version__
from ._versions import API_VERSION, API_VERSIONS, shape_for

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "ClientSetup", "build_client"]

DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024


class ClientSetup(NamedTuple):
    """What a new client is made of."""

    pipeline: Pipeline
    base_url: str
    credential_kind: str
    concurrency: int
    api_version: str
    decode_page: Decode[CvmPage]


def build_client(
    *,
    api_version: str = API_VERSION,
    api_key: str | None = None,
    token: str | None = None,
    base_url: str | None = None,
    timeout: float = 30.0,
    max_attempts: int = 4,
    concurrency: int = 16,
    session: aiohttp.ClientSession | None = None,
    backoff_initial: float = 0.5,
    backoff_max: float = 8.0,
    retry_after_cap: float = 60.0,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    allow_insecure_http: bool = False,
    adaptive: bool = True,
    rate_limit: float | None = None,
    retry_budget: bool = True,
    cache_ttl: float = 0.0,
    cache_size: int = 10_000,
    ssl: SSLContext | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    proxy: str | None = None,
    trust_env: bool = True,
    trace_configs: Sequence[aiohttp.TraceConfig] | None = None,
    meter_provider: object | None = None,
) -> ClientSetup:
    """Check every option of :class:`PhalaClient` (documented there) and build the client's
    pieces.

    Raises:
        ConfigurationError: an option is missing or out of range; the message says the fix.
    """
    check_positive("timeout", timeout)
    check_positive("cache_size", cache_size, integer=True)
    if (
        isinstance(cache_ttl, bool)
        or not isinstance(cache_ttl, (int, float))
        or not 0 <= cache_ttl < float("inf")
    ):
        raise ConfigurationError(
            f"cache_ttl must be a finite number of seconds >= 0 (0: no cache), not {cache_ttl!r}"
        )
    check_positive("concurrency", concurrency, integer=True)
    check_positive("max_response_bytes", max_response_bytes, integer=True)
    if rate_limit is not None:
        check_positive("rate_limit", rate_limit)
    if session is not None and not isinstance(session, aiohttp.ClientSession):
        raise ConfigurationError(
            f"session must be an aiohttp.ClientSession, not {type(session).__name__}"
        )
    if session is not None and (ssl, ca_file, proxy, trace_configs) != (None,) * 4:
        raise ConfigurationError(
            "ssl, ca_file, proxy and trace_configs configure the client's own session; "
            "with session=, set them on your session (its connector, proxy, trace_configs)"
        )
    shape = shape_for(check_api_version(api_version, API_VERSIONS))
    credential = resolve_credential(api_key, token)
    base_url = resolve_base_url(base_url, allow_insecure_http=allow_insecure_http)
    route = resolve_proxy(proxy, trust_env=trust_env, base_url=base_url)
    policy = RetryPolicy(
        max_attempts=max_attempts,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        retry_after_cap=retry_after_cap,
    )
    governor = Governor(
        concurrency=concurrency,
        adaptive=adaptive,
        rate_limit=rate_limit,
        retry_budget=retry_budget,
        retry_after_cap=policy.retry_after_cap,
    )
    exchange = Exchange(
        base_url=base_url,
        headers={
            credential.header: credential.value,
            "X-Phala-Version": shape.version,
            "User-Agent": f"phala-async/{__version__}",
            "Accept": "application/json",
        },
        timeout=float(timeout),
        max_bytes=max_response_bytes,
        proxy=route,
        on_reconnect=governor.counters.reconnect,
    )
    options = SessionOptions(
        concurrency=concurrency,
        ssl=resolve_tls(ssl, ca_file),
        trace_configs=check_trace_configs(trace_configs),
        https=base_url.startswith("https:"),
    )
    pipeline = Pipeline(
        shared=SharedSession(session, options, exchange.session_defaults()),
        exchange=exchange,
        governor=governor,
        policy=policy,
        flights=Flights(),
        cache=TTLCache(float(cache_ttl), cache_size) if cache_ttl > 0 else None,
        decode_cvm=shape.decode_cvm,
        answers=answer_observer(meter_provider, base_url, governor.snapshot),
    )
    return ClientSetup(
        pipeline=pipeline,
        base_url=base_url,
        credential_kind=credential.kind,
        concurrency=concurrency,
        api_version=shape.version,
        decode_page=shape.decode_page,
    )
