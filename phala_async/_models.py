"""msgspec Structs for the documented response shapes, and the decoders built once at import.

The shapes are those of ``X-Phala-Version: 2025-10-28``, the version every request pins: the body
of ``GET /cvms/{cvm_id}`` is ``CvmBasicInfo``, which :class:`CvmDetail` mirrors field for field.
Fields the server adds later are ignored, never an error.

Lenient where the API is loose, strict where it matters: a field the official schema types as any
JSON value (a listing entry's ``hosted.configuration``, ``machine_info``) is kept as that raw value;
a timestamp is read as the reference means it (a date alone is midnight UTC, an empty string is
None, a missing offset is UTC), so every datetime returned is aware; a listing entry that does not
decode is set aside with its error while the rest of its page is used. A required field that is
missing or of the wrong type is still a :class:`DecodeError`.

The Structs are frozen and untracked by the garbage collector (``gc=False``: about 5% faster to
decode, and less for the collector to scan in a large sweep). That is safe because a decoded value
holds only strings, numbers and other such Structs; do not put a Struct inside its own lists.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import msgspec.structs

from ._errors import DecodeError, subject

_T = TypeVar("_T")

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
    "aware",
    "decode_cvm",
    "decode_lenient",
    "decode_page",
]


def aware(moment: datetime | None) -> datetime | None:
    """``moment`` with UTC as its offset if it has none (the API's timestamps are UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def make_aware(struct: msgspec.Struct, *names: str) -> None:
    """Give the naive datetimes of a just decoded, frozen ``struct`` the UTC offset, in place."""
    for name in names:
        moment = getattr(struct, name)
        if moment is not None and moment.tzinfo is None:
            msgspec.structs.force_setattr(struct, name, moment.replace(tzinfo=UTC))


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
    #: The node's view of the machine (sizes, GPUs), as the server sends it: any JSON value.
    machine_info: Any = None
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        make_aware(self, "scheduled_delete_at", "updated_at")


_cvm_decoder = msgspec.json.Decoder(CvmDetail)
# msgspec raises these too: invalid UTF-8 inside a string, and nesting deeper than it recurses.
_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_PATH = re.compile(r" - at `([^`]*)`$")
# Keys whose string values are timestamps, in every shape this package decodes.
TIMESTAMP_FIELDS = frozenset(
    {"scheduled_delete_at", "updated_at", "created_at", "deleted_at", "started_at"}
)
_DATE_ONLY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_BAD_TIMESTAMP = "Invalid RFC3339 encoded datetime"


def decode_cvm(body: bytes, *, cvm_id: str | int | None) -> CvmDetail:
    """Decode a ``GET /cvms/{cvm_id}`` body.

    Raises:
        DecodeError: the body is not JSON, lacks a required field or has a value of the wrong
            type; ``path`` names where, as msgspec reported it.
    """
    return decode_lenient(_cvm_decoder, body, cvm_id=cvm_id, what="CVM details")


def decode_lenient(
    decoder: msgspec.json.Decoder[_T], body: bytes, *, cvm_id: str | int | None, what: str
) -> _T:
    """Decode ``body`` with ``decoder``; a timestamp in a form RFC 3339 does not allow (a date
    alone, an empty string) is read as the API means it and the body decoded once more.

    The loose timestamps are rare, so the usual body is decoded once, at full speed.

    Raises:
        DecodeError: the body does not decode, timestamps read leniently or not.
    """
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        if _BAD_TIMESTAMP not in str(exc):
            raise decode_error(exc, cvm_id=cvm_id, what=what) from exc
    except _UNDECODABLE as exc:
        raise decode_error(exc, cvm_id=cvm_id, what=what) from exc
    try:
        return decoder.decode(msgspec.json.encode(_loose_timestamps(msgspec.json.decode(body))))
    except _UNDECODABLE as exc:
        raise decode_error(exc, cvm_id=cvm_id, what=what) from exc


def _loose_timestamps(value: Any) -> Any:
    """``value`` with its timestamp strings made RFC 3339: a date alone is midnight UTC, an empty
    string null."""
    if isinstance(value, list):
        return [_loose_timestamps(item) for item in value]
    if not isinstance(value, dict):
        return value
    fixed = {}
    for key, item in value.items():
        if key in TIMESTAMP_FIELDS and isinstance(item, str):
            text = item.strip()
            item = None if not text else f"{text}T00:00:00Z" if _DATE_ONLY.fullmatch(text) else text
        fixed[key] = _loose_timestamps(item)
    return fixed


def decode_error(exc: Exception, *, cvm_id: str | int | None, what: str) -> DecodeError:
    """Translate a msgspec failure into a :class:`DecodeError` naming the id and the JSON path."""
    path, reason = _where_and_why(exc)
    where = f" at {path}" if path else ""
    return DecodeError(
        f"{subject(cvm_id)}: {what} did not decode{where}: {reason}", cvm_id=cvm_id, path=path
    )


def _where_and_why(exc: BaseException) -> tuple[str | None, str]:
    """The JSON path msgspec named (``$`` for the top level) and its reason without the path."""
    reason = str(exc)
    match = _PATH.search(reason)
    path = match.group(1) if match else None
    if isinstance(exc, msgspec.ValidationError) and path is None:
        path = "$"  # msgspec names no path for the top-level object
    if not isinstance(exc, msgspec.ValidationError):
        reason = f"body is not valid JSON ({reason})"
    elif match:
        reason = reason[: match.start()]
    return path, reason


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
    """The node's view of a CVM, the ``hosted`` part of a listing entry.

    ``configuration`` is the raw JSON value the server sent (the official schema types it as any
    value: an object, ``{}``, a string, null); :meth:`vm_configuration` reads it as a
    :class:`VmConfiguration` when it is one.
    """

    id: str
    name: str
    status: str
    uptime: str
    app_id: str
    app_url: str | None = None
    instance_id: str | None = None
    configuration: Any = None
    exited_at: str | None = None
    boot_progress: str | None = None
    boot_error: str | None = None
    shutdown_progress: str | None = None
    image_version: str | None = None
    events: list[GuestEvent] = msgspec.field(default_factory=list)

    def vm_configuration(self) -> VmConfiguration | None:
        """``configuration`` as a :class:`VmConfiguration`, or None when it is not one."""
        try:
            return msgspec.convert(self.configuration, VmConfiguration)
        except msgspec.ValidationError:
            return None


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
    machine_info: Any = None
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        make_aware(self, "updated_at")

    @property
    def cvm_id(self) -> str:
        """The identifier that names this CVM alone, for ``GET /cvms/{cvm_id}``: its VM UUID.

        That is ``hosted.id``, the detail's ``vm_uuid``, as listed (dashed; ``normalize_cvm_id``
        drops the dashes of a v4 UUID, and the API takes either form). Not ``app_<app id>``: the
        instances of a multi-instance app share their app id, which names only one of them.
        """
        return self.hosted.id


class CvmPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of ``GET /cvms/paginated`` (``PaginatedHostedCvms``, or with
    ``api_version="2026-01-21"`` ``PaginatedCvmInfos``, whose items are :class:`CvmInfo`).

    Attributes:
        items: the entries that decoded, in the page's order.
        errors: one :class:`DecodeError` per entry that did not; its message names the entry's
            position and whatever id it carries.
    """

    items: list[Any]
    total: int
    page: int
    page_size: int
    pages: int
    errors: list[DecodeError] = msgspec.field(default_factory=list)


class _RawPage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    items: list[msgspec.Raw]
    total: int
    page: int
    page_size: int
    pages: int


_raw_page_decoder = msgspec.json.Decoder(_RawPage)
_entry_decoder = msgspec.json.Decoder(HostedCvm)


def decode_page(body: bytes, *, cvm_id: str | int | None = None) -> CvmPage:
    """Decode a ``GET /cvms/paginated`` body whose items are :class:`HostedCvm`.

    Raises:
        DecodeError: the body is not JSON or its envelope (``items``, ``total``...) is not the
            documented shape. An entry that does not decode is in ``errors`` instead.
    """
    return decode_entries(body, _entry_decoder, cvm_id=cvm_id)


def decode_entries(
    body: bytes, entry_decoder: msgspec.json.Decoder[Any], *, cvm_id: str | int | None = None
) -> CvmPage:
    """Decode a listing page, each entry with ``entry_decoder``, one bad entry not failing the
    others.

    Raises:
        DecodeError: the body is not JSON or its envelope is not the documented shape.
    """
    what = "the CVM list page"
    raw = decode_lenient(_raw_page_decoder, body, cvm_id=cvm_id, what=what)
    items: list[Any] = []
    errors: list[DecodeError] = []
    for position, entry in enumerate(raw.items):
        try:
            items.append(decode_lenient(entry_decoder, entry, cvm_id=None, what="entry"))
        except DecodeError as exc:
            errors.append(_entry_error(exc, entry, raw.page, position))
    return CvmPage(
        items=items,
        total=raw.total,
        page=raw.page,
        page_size=raw.page_size,
        pages=raw.pages,
        errors=errors,
    )


def _entry_error(exc: DecodeError, entry: msgspec.Raw, page: int, position: int) -> DecodeError:
    """The error of a listing entry that did not decode, named by its place and any id it has."""
    document = msgspec.json.decode(entry)  # valid JSON: the page decoded around it
    found = _carried_id(document)
    inner, reason = _where_and_why(exc.__cause__ or exc)
    path = f"$.items[{position}]" + (inner or "$")[1:]
    named = f" ({found!r})" if found is not None else ""
    return DecodeError(
        f"listing entry {position + 1} of page {page}{named} did not decode at {path}: {reason}; "
        "the other entries were used",
        cvm_id=found,
        path=path,
    )


def _carried_id(document: Any) -> str | int | None:
    """The first id an undecodable listing entry carries: ``hosted.id``, ``vm_uuid``, ``id``,
    ``name``."""
    if not isinstance(document, dict):
        return None
    hosted = document.get("hosted")
    candidates = [hosted.get("id") if isinstance(hosted, dict) else None]
    candidates += [document.get(key) for key in ("vm_uuid", "id", "name")]
    for found in candidates:
        if isinstance(found, str | int) and not isinstance(found, bool):
            return found
    return None
