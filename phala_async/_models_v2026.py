"""msgspec Structs for the ``CVMInfo`` shape, the answer of ``X-Phala-Version: 2026-01-21``.

With that version ``GET /cvms/{cvm_id}`` answers ``CVMInfoDetail`` and each entry of
``GET /cvms/paginated`` is ``CVMInfo`` (in the OpenAPI document, schema
``teehouse__api__routes__cvms__v20260121__schemas__CVMInfo``): a hashid string ``id``
(``cvm_...``), the sizes nested in ``resource``, the node in ``node_info``, the image in ``os``,
the public address in ``gateway``. :class:`CvmInfo` mirrors both (the detail adds only
``compose_file``).

The same rules as the ``2025-10-28`` Structs hold: frozen, unknown fields ignored, every datetime
aware (see :mod:`phala_async._models`), values the schema leaves open (``services``,
``compose_file``) kept as raw JSON. Enumerations the server may extend (``kms_type``, the node's
``status``, ``billing_period``) are plain strings, so a new value is not an error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias

import msgspec

from ._models import CvmDetail, CvmNetworkUrls, decode_entries, decode_lenient, make_aware
from ._models import CvmPage as CvmPage

__all__ = [
    "AnyCvm",
    "CvmGateway",
    "CvmInfo",
    "CvmKms",
    "CvmLogs",
    "CvmOs",
    "CvmProgress",
    "CvmResource",
    "NodeRef",
    "UserRef",
    "WorkspaceRef",
    "decode_cvm_info",
    "decode_info_page",
]


class CvmResource(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The size and billing of a CVM (``CVMResourceInfo``); note ``memory_in_gb``, not MB."""

    instance_type: str | None = None
    vcpu: int | None = None
    memory_in_gb: float | None = None
    disk_in_gb: int | None = None
    gpus: int | None = None
    #: A decimal, sent as a string to keep its precision.
    compute_billing_price: str | None = None
    billing_period: str | None = None


class NodeRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The node a CVM runs on (``NodeRef``)."""

    object_type: str = "node"
    id: int | None = None
    node_id: int | None = None
    name: str | None = None
    region: str | None = None
    device_id: str | None = None
    ppid: str | None = None
    status: str | None = None
    version: str | None = None


class CvmOs(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The guest image of a CVM (``CVMOSInfo``)."""

    name: str | None = None
    version: str | None = None
    is_dev: bool | None = None
    os_image_hash: str | None = None


class CvmKms(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The key management of a CVM (``CVMKmsInfo``)."""

    chain_id: int | None = None
    dstack_kms_address: str | None = None
    dstack_app_address: str | None = None
    deployer_address: str | None = None
    rpc_endpoint: str | None = None
    encrypted_env_pubkey: str | None = None


class CvmProgress(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The operation a CVM is going through, if any (``CVMProgressInfo``)."""

    target: str | None = None
    started_at: datetime | None = None
    correlation_id: str | None = None

    def __post_init__(self) -> None:
        make_aware(self, "started_at")


class CvmGateway(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where a CVM is reached (``CVMGatewayInfo``)."""

    base_domain: str | None = None
    cname: str | None = None


class CvmLogs(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where a CVM's logs are read (``CVMLogUrls``)."""

    serial: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    container_log_base: str | None = None


class WorkspaceRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workspace a CVM belongs to."""

    id: str
    name: str
    object_type: str = "workspace"
    slug: str | None = None
    avatar_url: str | None = None


class UserRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The user who created a CVM."""

    object_type: str = "user"
    id: str | None = None
    username: str | None = None
    avatar_url: str | None = None


class CvmInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Details of one CVM in the ``2026-01-21`` shape (``CVMInfoDetail``; a listing entry is the
    same without ``compose_file``).

    Required by the API: ``id`` (a hashid, ``cvm_...``), ``name``, ``resource``, ``status`` and
    ``gateway``. Everything else may be absent or null.
    """

    id: str
    name: str
    resource: CvmResource
    status: str
    gateway: CvmGateway
    app_id: str | None = None
    vm_uuid: str | None = None
    instance_id: str | None = None
    node_info: NodeRef | None = None
    os: CvmOs | None = None
    kms_type: str | None = None
    kms_info: CvmKms | None = None
    in_progress: bool = False
    progress: CvmProgress | None = None
    compose_hash: str | None = None
    docker_compose_hash: str | None = None
    pre_launch_script_hash: str | None = None
    logs: CvmLogs | None = None
    #: The app's services, as the server describes them: raw JSON objects.
    services: list[Any] = msgspec.field(default_factory=list)
    endpoints: list[CvmNetworkUrls] | None = None
    public_logs: bool = False
    public_sysinfo: bool = False
    public_tcbinfo: bool = True
    gateway_enabled: bool = False
    secure_time: bool = False
    storage_fs: str = "zfs"
    workspace: WorkspaceRef | None = None
    creator: UserRef | None = None
    created_at: datetime | None = None
    deleted_at: datetime | None = None
    listed: bool = False
    project_type: str | None = None
    #: The app's compose file (detail only): a JSON object, a string, or None.
    compose_file: Any = None

    def __post_init__(self) -> None:
        make_aware(self, "created_at", "deleted_at")

    @property
    def cvm_id(self) -> str:
        """The identifier that names this CVM alone: its VM UUID, or its hashid ``id`` without
        one. Pass it to ``get_cvm`` or a sweep."""
        return self.vm_uuid or self.id


#: A CVM in either shape, as a sweep's results carry it.
AnyCvm: TypeAlias = CvmDetail | CvmInfo

_info_decoder = msgspec.json.Decoder(CvmInfo)


def decode_cvm_info(body: bytes, *, cvm_id: str | int | None) -> CvmInfo:
    """Decode a ``GET /cvms/{cvm_id}`` body of version ``2026-01-21``.

    Raises:
        DecodeError: the body is not JSON, lacks a required field or has a value of the wrong
            type; ``path`` names where.
    """
    return decode_lenient(_info_decoder, body, cvm_id=cvm_id, what="CVM details")


def decode_info_page(body: bytes, *, cvm_id: str | int | None = None) -> CvmPage:
    """Decode a ``GET /cvms/paginated`` body of version ``2026-01-21`` (``PaginatedCvmInfos``).

    Raises:
        DecodeError: the body is not JSON or its envelope is not the documented shape. An entry
            that does not decode is in the page's ``errors`` instead.
    """
    return decode_entries(body, _info_decoder, cvm_id=cvm_id)
