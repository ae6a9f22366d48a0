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
from ._changes import FieldChange
from ._client import API_VERSION, ClientStats, PhalaClient
from ._client_options import ClientOptions
from ._diff import CvmDifference, SweepRecord, diff_snapshots
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
    StatusFailedError,
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
from ._models_v2026 import (
    AnyCvm,
    CvmGateway,
    CvmInfo,
    CvmKms,
    CvmLogs,
    CvmOs,
    CvmProgress,
    CvmResource,
    NodeRef,
    UserRef,
    WorkspaceRef,
)
from ._version import __version__
from ._versions import API_VERSIONS
from ._watch import DEFAULT_FAIL_ON, VOLATILE_FIELDS, CvmEvent, CvmWatch

__all__ = [
    "API_VERSION",
    "API_VERSIONS",
    "DEFAULT_FAIL_ON",
    "VOLATILE_FIELDS",
    "APIConnectionError",
    "APIProxyError",
    "APIStatusError",
    "APITLSError",
    "APITimeoutError",
    "APIUnreachableError",
    "AnyCvm",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ClientOptions",
    "ClientStats",
    "ConfigurationError",
    "CvmDetail",
    "CvmDifference",
    "CvmEvent",
    "CvmFailed",
    "CvmGateway",
    "CvmInfo",
    "CvmKms",
    "CvmListing",
    "CvmLogs",
    "CvmNetworkUrls",
    "CvmNode",
    "CvmOk",
    "CvmOs",
    "CvmPage",
    "CvmProgress",
    "CvmResource",
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
    "NodeRef",
    "NotFoundError",
    "PermissionDeniedError",
    "PhalaClient",
    "PhalaError",
    "RateLimitError",
    "ResponseError",
    "ResponseTooLargeError",
    "StatusFailedError",
    "StatusTimeoutError",
    "SweepRecord",
    "SweepResult",
    "UnprocessableEntityError",
    "UserRef",
    "VmConfiguration",
    "VmInfo",
    "WorkspaceRef",
    "__version__",
    "diff_snapshots",
    "normalize_cvm_id",
]
