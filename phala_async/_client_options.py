"""The keyword options of ``PhalaClient`` beside ``api_version``, as one TypedDict, so that the
constructor's overloads (one per API version, for the result type) need not repeat them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from ssl import SSLContext
from typing import TypedDict

import aiohttp

__all__ = ["ClientOptions"]


class ClientOptions(TypedDict, total=False):
    """Every ``PhalaClient`` option but ``api_version``; see ``PhalaClient`` for each."""

    api_key: str | None
    token: str | None
    base_url: str | None
    timeout: float
    max_attempts: int
    concurrency: int
    session: aiohttp.ClientSession | None
    backoff_initial: float
    backoff_max: float
    retry_after_cap: float
    max_response_bytes: int
    allow_insecure_http: bool
    adaptive: bool
    rate_limit: float | None
    retry_budget: bool
    cache_ttl: float
    cache_size: int
    ssl: SSLContext | None
    ca_file: str | os.PathLike[str] | None
    proxy: str | None
    trust_env: bool
    trace_configs: Sequence[aiohttp.TraceConfig] | None
    meter_provider: object | None
