"""msgspec Structs for the documented response shapes, and the decoders built once at import.

The shapes are those of ``X-Phala-Version: 2025-10-28``, the version every request pins: the body
of ``GET /cvms/{cvm_id}`` is ``CvmBasicInfo``, which :class:`CvmDetail` mirrors field for field.
Fields the server adds later are ignored, never an error.

The Structs are frozen and untracked by the garbage collector (``gc=False``: about 5% faster to
decode, and less for the collector to scan in a large sweep). That is safe because a decoded value
holds only strings, numbers and other such Structs; do not put a Struct inside its own lists.
"""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from ._errors import DecodeError, subject

__all__ = [
    "CvmDetail",
    "CvmNetworkUrls",
    "CvmNode",
    "CvmPage",
    "GuestEvent",
    "HostedCvm",
    "KMSInfo",
    "ManagedUser",
    "VmConfiguration",
    "VmInfo",
    "decode_cvm",
    "decode_page",
]


class CvmNode(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The node (teepod) a CVM runs on."""

    id: int
    name: str
    region_identifier: str | None = None


class KMSInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The key management service a CVM uses."""

    id: str
    url: str
    version: str
    slug: str | None = None
    chain_id: int | None = None
    kms_contract_address: str | None = None
    gateway_app_id: str | None = None


class CvmNetworkUrls(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Public URLs for one exposed port of a CVM."""

    app: str
    instance: str


class CvmDetail(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Details of one CVM, as ``GET /cvms/{cvm_id}`` returns them (``CvmBasicInfo``).

    Required by the API: ``id``, ``name``, ``status``, ``app_id``, ``vcpu``, ``memory`` (MB) and
    ``disk_size`` (GB). Everything else may be absent or null.
    """

    id: int
    name: str
    status: str
    app_id: str
    vcpu: int
    memory: int
    disk_size: int
    teepod_id: int | None = None
    teepod: CvmNode | None = None
    in_progress: bool = False
    vm_uuid: str | None = None
    instance_id: str | None = None
    base_image: str | None = None
    encrypted_env_pubkey: str | None = None
    listed: bool = False
    project_id: str | None = None
    project_type: str | None = None
    instance_type: str | None = None
    public_sysinfo: bool | None = None
    public_logs: bool | None = None
    dapp_dashboard_url: str | None = None
    syslog_endpoint: str | None = None
    kms_info: KMSInfo | None = None
    contract_address: str | None = None
    deployer_address: str | None = None
    scheduled_delete_at: datetime | None = None
    public_urls: list[CvmNetworkUrls] | None = None
    gateway_domain: str | None = None


_cvm_decoder = msgspec.json.Decoder(CvmDetail)
# msgspec raises these too: invalid UTF-8 inside a string, and nesting deeper than it recurses.
_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_PATH = re.compile(r" - at `([^`]*)`$")


def decode_cvm(body: bytes, *, cvm_id: str | int | None) -> CvmDetail:
    """Decode a ``GET /cvms/{cvm_id}`` body.

    Raises:
        DecodeError: the body is not JSON, lacks a required field or has a value of the wrong
            type; ``path`` names where, as msgspec reported it.
    """
    try:
        return _cvm_decoder.decode(body)
    except _UNDECODABLE as exc:
        raise decode_error(exc, cvm_id=cvm_id, what="CVM details") from exc


def decode_error(exc: Exception, *, cvm_id: str | int | None, what: str) -> DecodeError:
    """Translate a msgspec failure into a :class:`DecodeError` naming the id and the JSON path."""
    reason = str(exc)
    match = _PATH.search(reason)
    path = match.group(1) if match else None
    if isinstance(exc, msgspec.ValidationError) and path is None:
        path = "$"  # msgspec names no path for the top-level object
    if not isinstance(exc, msgspec.ValidationError):
        reason = f"body is not valid JSON ({reason})"
    elif match:
        reason = reason[: match.start()]
    where = f" at {path}" if path else ""
    return DecodeError(
        f"{subject(cvm_id)}: {what} did not decode{where}: {reason}", cvm_id=cvm_id, path=path
    )


# -- the workspace listing (GET /cvms/paginated) -------------------------------------------------


class GuestEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A lifecycle event reported by a CVM's guest or runtime."""

    event: str
    body: str
    timestamp: int = 0


class VmConfiguration(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The node-side configuration of a CVM (the scalar fields; nested compose data is skipped)."""

    name: str
    image: str
    vcpu: int
    memory: int
    disk_size: int
    encrypted_env: str | None = None
    app_id: str | None = None
    user_config: str | None = None
    hugepages: bool = False
    pin_numa: bool = False
    kms_urls: list[str] = msgspec.field(default_factory=list)
    gateway_urls: list[str] = msgspec.field(default_factory=list)


class VmInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The node's view of a CVM, the ``hosted`` part of a listing entry."""

    id: str
    name: str
    status: str
    uptime: str
    app_id: str
    app_url: str | None = None
    instance_id: str | None = None
    configuration: VmConfiguration | None = None
    exited_at: str | None = None
    boot_progress: str | None = None
    boot_error: str | None = None
    shutdown_progress: str | None = None
    image_version: str | None = None
    events: list[GuestEvent] = msgspec.field(default_factory=list)


class ManagedUser(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The user a CVM is managed for."""

    id: int
    username: str


class HostedCvm(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One entry of the workspace listing (``HostedCvm``).

    To fetch its details, pass :attr:`cvm_id` (its VM UUID) to ``get_cvm`` or a sweep.
    """

    hosted: VmInfo
    name: str
    status: str
    public_urls: list[CvmNetworkUrls]
    managed_user: ManagedUser | None = None
    node: CvmNode | None = None
    listed: bool = False
    in_progress: bool = False
    dapp_dashboard_url: str | None = None
    syslog_endpoint: str | None = None
    allow_upgrade: bool = False
    project_id: str | None = None
    project_type: str | None = None
    billing_period: str | None = None
    kms_info: KMSInfo | None = None
    contract_address: str | None = None
    deployer_address: str | None = None
    vcpu: int | None = None
    memory: int | None = None
    disk_size: int | None = None
    gateway_domain: str | None = None

    @property
    def cvm_id(self) -> str:
        """The identifier that names this CVM alone, for ``GET /cvms/{cvm_id}``: its VM UUID.

        That is ``hosted.id``, the detail's ``vm_uuid``, as listed (dashed; ``normalize_cvm_id``
        drops the dashes of a v4 UUID, and the API takes either form). Not ``app_<app id>``: the
        instances of a multi-instance app share their app id, which names only one of them.
        """
        return self.hosted.id


class CvmPage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One page of ``GET /cvms/paginated`` (``PaginatedHostedCvms``)."""

    items: list[HostedCvm]
    total: int
    page: int
    page_size: int
    pages: int


_page_decoder = msgspec.json.Decoder(CvmPage)


def decode_page(body: bytes, *, cvm_id: str | int | None = None) -> CvmPage:
    """Decode a ``GET /cvms/paginated`` body.

    Raises:
        DecodeError: the body is not JSON or not the documented shape.
    """
    try:
        return _page_decoder.decode(body)
    except _UNDECODABLE as exc:
        raise decode_error(exc, cvm_id=cvm_id, what="the CVM list page") from exc
