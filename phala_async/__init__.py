"""phala-async: a fast, typed asyncio client for the Phala Cloud API.

Fetch one CVM or thousands, typed into msgspec Structs, retried on transient failures, and
bounded in concurrency and memory::

    import asyncio
    from phala_async import PhalaClient

    async def main() -> None:
        async with PhalaClient(api_key="phak_...") as client:
            cvm = await client.get_cvm(1234)
            print(cvm.name, cvm.status)

    asyncio.run(main())
"""

from ._bulk import CvmResult, CvmStream
from ._client import API_VERSION, ClientStats, PhalaClient
from ._errors import (
    APIConnectionError,
    APIProxyError,
    APIStatusError,
    APITimeoutError,
    APITLSError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    DecodeError,
    EventLoopError,
    InternalServerError,
    InvalidCvmIdError,
    NotFoundError,
    PermissionDeniedError,
    PhalaError,
    RateLimitError,
    ResponseError,
    ResponseTooLargeError,
    UnprocessableEntityError,
)
from ._ids import normalize_cvm_id
from ._models import CvmDetail, CvmNetworkUrls, CvmNode, KMSInfo
from ._version import __version__

__all__ = [
    "API_VERSION",
    "APIConnectionError",
    "APIProxyError",
    "APIStatusError",
    "APITLSError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ClientStats",
    "ConfigurationError",
    "CvmDetail",
    "CvmNetworkUrls",
    "CvmNode",
    "CvmResult",
    "CvmStream",
    "DecodeError",
    "EventLoopError",
    "InternalServerError",
    "InvalidCvmIdError",
    "KMSInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "PhalaClient",
    "PhalaError",
    "RateLimitError",
    "ResponseError",
    "ResponseTooLargeError",
    "UnprocessableEntityError",
    "__version__",
    "normalize_cvm_id",
]
