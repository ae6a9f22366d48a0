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

from ._bulk import CvmFailed, CvmOk, CvmResult, CvmStream, SweepResult
from ._client import API_VERSION, ClientStats, PhalaClient
from ._diff import CvmDifference, FieldChange, SweepRecord, diff_snapshots
from ._errors import (
    APIConnectionError,
    APIProxyError,
    APIStatusError,
    APITimeoutError,
    APITLSError,
    APIUnreachableError,
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
    StatusTimeoutError,
    UnprocessableEntityError,
)
from ._ids import normalize_cvm_id
from ._listing import CvmListing
from ._models import (
    CvmDetail,
    CvmNetworkUrls,
    CvmNode,
    CvmPage,
    GuestEvent,
    HostedCvm,
    KMSInfo,
    ManagedUser,
    VmConfiguration,
    VmInfo,
)
from ._version import __version__
from ._watch import VOLATILE_FIELDS, CvmEvent, CvmWatch

__all__ = [
    "API_VERSION",
    "VOLATILE_FIELDS",
    "APIConnectionError",
    "APIProxyError",
    "APIStatusError",
    "APITLSError",
    "APITimeoutError",
    "APIUnreachableError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ClientStats",
    "ConfigurationError",
    "CvmDetail",
    "CvmDifference",
    "CvmEvent",
    "CvmFailed",
    "CvmListing",
    "CvmNetworkUrls",
    "CvmNode",
    "CvmOk",
    "CvmPage",
    "CvmResult",
    "CvmStream",
    "CvmWatch",
    "DecodeError",
    "EventLoopError",
    "FieldChange",
    "GuestEvent",
    "HostedCvm",
    "InternalServerError",
    "InvalidCvmIdError",
    "KMSInfo",
    "ManagedUser",
    "NotFoundError",
    "PermissionDeniedError",
    "PhalaClient",
    "PhalaError",
    "RateLimitError",
    "ResponseError",
    "ResponseTooLargeError",
    "StatusTimeoutError",
    "SweepRecord",
    "SweepResult",
    "UnprocessableEntityError",
    "VmConfiguration",
    "VmInfo",
    "__version__",
    "diff_snapshots",
    "normalize_cvm_id",
]
