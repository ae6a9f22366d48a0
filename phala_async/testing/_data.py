"""The bodies the simulator in ``phala_async.testing`` serves: pure data, no I/O.

CVM documents: every value derives from ``(seed, cvm_id)`` and the app the CVM is an instance of,
so one simulator configuration serves the same documents on every run and every machine. Each CVM
has two: the detail body (``CvmBasicInfo``, as served with ``X-Phala-Version: 2025-10-28``) and the
list item (``HostedCvm``, as served by ``/cvms/paginated``); they share name, status, ``app_id``,
node and sizes, and the item's ``hosted.id`` / ``hosted.instance_id`` are the detail's ``vm_uuid`` /
``instance_id``. ``update_documents`` changes both alike.

Shapes follow the OpenAPI schemas: the detail's ``project_id`` is a bare hashid (``"0123abcd"``),
the list item's carries the ``prj_`` prefix; ``app_id`` and ``instance_id`` are 40 lowercase hex
characters without prefix (the path form ``app_<hex>`` names the same ``app_id``).

Error bodies follow the real server: ``{"detail": "..."}``, FastAPI's 422 ``{"detail": [...]}``, or
the structured form ``{"error_code", "message", "details", "suggestions", "links"}``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

# Status mix of a typical workspace: mostly running, some stopped, a few in transition.
_STATUSES = ("running", "stopped", "starting", "stopping")
_STATUS_WEIGHTS = (80, 12, 5, 3)
_IN_TRANSITION = frozenset({"starting", "stopping"})
_NAME_PREFIXES = ("api", "worker", "web", "db", "agent")
_NODES = (
    {"id": 3, "name": "prod5", "region_identifier": "us-west"},
    {"id": 7, "name": "prod7", "region_identifier": "us-east"},
    {"id": 9, "name": "prod9", "region_identifier": None},
)
_KMS = (
    {
        "id": "kms_1a2b3c4d",
        "slug": "phala-prod5",
        "url": "https://kms.dstack-prod5.phala.network",
        "version": "v0.5.3",
        "chain_id": None,
        "kms_contract_address": None,
        "gateway_app_id": None,
    },
    {
        "id": "kms_9f8e7d6c",
        "slug": "base-mainnet",
        "url": "https://kms.dstack-base-prod7.phala.network",
        "version": "v0.5.3",
        "chain_id": 8453,
        "kms_contract_address": "0x2f83172a49584c017f2b256f0fb2dca14126ba9c",
        "gateway_app_id": "0x6aa9c6a2d2b1c4b1e6a8f0a3d7c5b1e2f3a4b5c6",
    },
)
_BASE_IMAGES = ("dstack-0.5.3", "dstack-0.4.2", "dstack-dev-0.5.3")
_EPOCH = datetime(2025, 6, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class CvmIdentity:
    """The identifiers one CVM can be looked up by."""

    id: int
    name: str
    app_id: str
    vm_uuid: str
    instance_id: str
    #: The hashid ``id`` of the ``2026-01-21`` shape, ``cvm_<8 hex>``; also a lookup key.
    hashid: str

    def app_keys(self) -> tuple[str, str]:
        """The exact path segments that name this CVM's app (shared by all its instances)."""
        return self.app_id, f"app_{self.app_id}"

    def lookup_keys(self) -> tuple[str, ...]:
        """Every exact path segment that names this CVM or its app."""
        return (
            str(self.id),
            self.name,
            *self.app_keys(),
            self.instance_id,
            self.vm_uuid,
            self.vm_uuid.replace("-", ""),
            self.hashid,
        )


def _digest(purpose: str, seed: int, cvm_id: int, size: int) -> bytes:
    return hashlib.blake2b(f"{purpose}:{seed}:{cvm_id}".encode(), digest_size=size).digest()


def cvm_identity(seed: int, cvm_id: int, app_first_id: int | None = None) -> CvmIdentity:
    """The identifiers of CVM ``cvm_id``: cheap, so they can be computed for a whole workspace.

    Args:
        seed: The simulator's seed.
        cvm_id: The CVM's integer id.
        app_first_id: The id of the first instance of the CVM's app, whose ``app_id`` it shares;
            None (or ``cvm_id``): the CVM is its app's first instance.
    """
    app_first_id = cvm_id if app_first_id is None else app_first_id
    return CvmIdentity(
        id=cvm_id,
        name=f"{_NAME_PREFIXES[cvm_id % len(_NAME_PREFIXES)]}-{cvm_id:05d}",
        app_id=_digest("app", seed, app_first_id, 20).hex(),
        vm_uuid=str(uuid.UUID(bytes=_digest("vm", seed, cvm_id, 16), version=4)),
        instance_id=_digest("instance", seed, cvm_id, 20).hex(),
        hashid=f"cvm_{_digest('hashid', seed, cvm_id, 4).hex()}",
    )


def _timestamp(rng: random.Random) -> str:
    moment = _EPOCH + timedelta(seconds=rng.randrange(200 * 24 * 3600))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _maybe(rng: random.Random, value: Any, null_chance: float = 0.2) -> Any:
    return None if rng.random() < null_chance else value


def cvm_documents(seed: int, identity: CvmIdentity) -> tuple[dict[str, Any], dict[str, Any]]:
    """The detail document (``CvmBasicInfo``) and the list item (``HostedCvm``) of one CVM."""
    # Fake data, not security: a seeded PRNG keeps every document reproducible.
    rng = random.Random(f"{seed}:{identity.id}")  # noqa: S311 -- reproducible fake data, not secrets
    status = rng.choices(_STATUSES, _STATUS_WEIGHTS)[0]
    running = status == "running"
    node = dict(rng.choice(_NODES))
    gateway_domain = f"dstack-{node['name']}.phala.network"
    vcpu = rng.choice((1, 2, 4, 8, 16))
    memory = rng.choice((1024, 2048, 4096, 8192, 16384, 32768))
    disk_size = rng.choice((20, 40, 80, 100, 200))
    base_image = rng.choice(_BASE_IMAGES)
    hashid = f"{rng.getrandbits(32):08x}"
    project_id = _maybe(rng, hashid)
    dashboard = _maybe(rng, f"https://{identity.app_id}-8090.{gateway_domain}")
    urls = [
        {
            "app": f"https://{identity.app_id}-{port}.{gateway_domain}",
            "instance": f"https://{identity.instance_id}-{port}.{gateway_domain}",
        }
        for port in rng.sample((80, 443, 3000, 8080), k=rng.randint(1, 2))
    ]
    public_urls = _maybe(rng, urls if running else [], null_chance=0.05)
    detail: dict[str, Any] = {
        "id": identity.id,
        "teepod_id": None,  # admin only
        "teepod": node,
        "name": identity.name,
        "status": status,
        "in_progress": status in _IN_TRANSITION,
        "app_id": identity.app_id,
        "vm_uuid": identity.vm_uuid,
        "instance_id": identity.instance_id,
        "vcpu": vcpu,
        "memory": memory,
        "disk_size": disk_size,
        "base_image": base_image,
        "encrypted_env_pubkey": _maybe(rng, f"{rng.getrandbits(256):064x}"),
        "listed": rng.random() < 0.3,
        "project_id": project_id,
        "project_type": _maybe(rng, rng.choice(("webdemo", "production"))),
        "instance_type": f"tdx.{('small', 'medium', 'large')[min(vcpu // 4, 2)]}",
        "public_sysinfo": _maybe(rng, rng.random() < 0.5),
        "public_logs": _maybe(rng, rng.random() < 0.5),
        "dapp_dashboard_url": dashboard,
        "syslog_endpoint": _maybe(rng, f"https://{identity.app_id}-syslog.{gateway_domain}", 0.5),
        "kms_info": _maybe(rng, dict(rng.choice(_KMS)), null_chance=0.05),
        "contract_address": _maybe(rng, f"0x{rng.getrandbits(160):040x}", 0.5),
        "deployer_address": _maybe(rng, f"0x{rng.getrandbits(160):040x}", 0.5),
        "scheduled_delete_at": _timestamp(rng) if rng.random() < 0.1 else None,
        "public_urls": public_urls,
        "gateway_domain": _maybe(rng, gateway_domain, null_chance=0.05),
        # Fields the real server sends beyond the published schema; clients must ignore them.
        "machine_info": {"vcpu": vcpu, "memory": memory, "disk_size": disk_size, "gpu_count": 0},
        "updated_at": _timestamp(rng),
    }
    hours, minutes = rng.randrange(1, 2000), rng.randrange(60)
    hosted: dict[str, Any] = {
        "id": identity.vm_uuid,
        "name": identity.name,
        "status": status,
        "uptime": f"{hours}h {minutes}m" if running else "",
        "app_url": dashboard,
        "app_id": identity.app_id,
        "instance_id": identity.instance_id,
        "configuration": None,
        "exited_at": None if running else detail["updated_at"],
        "boot_progress": "done" if running else None,
        "boot_error": None,
        "shutdown_progress": None,
        "image_version": base_image.rpartition("-")[2],
        "events": [],
    }
    item: dict[str, Any] = {
        "hosted": hosted,
        "name": identity.name,
        "managed_user": None,
        "node": node,
        "listed": detail["listed"],
        "status": status,
        "in_progress": detail["in_progress"],
        "dapp_dashboard_url": dashboard,
        "syslog_endpoint": detail["syslog_endpoint"],
        "allow_upgrade": False,
        "project_id": None if project_id is None else f"prj_{project_id}",
        "project_type": detail["project_type"],
        "billing_period": _maybe(rng, "monthly", 0.5),
        "kms_info": detail["kms_info"],
        "contract_address": detail["contract_address"],
        "deployer_address": detail["deployer_address"],
        "vcpu": vcpu,
        "memory": memory,
        "disk_size": disk_size,
        "gateway_domain": detail["gateway_domain"],
        "public_urls": public_urls or [],
    }
    return detail, item


# Detail fields that name the CVM: fixed for its lifetime (`name` is one too, but may change).
IDENTIFIER_FIELDS = frozenset({"id", "app_id", "vm_uuid", "instance_id"})
# Detail fields the list item carries under the same name, and those `hosted` carries too.
_ITEM_SAME = frozenset(
    {
        "name",
        "status",
        "in_progress",
        "listed",
        "dapp_dashboard_url",
        "syslog_endpoint",
        "project_type",
        "kms_info",
        "contract_address",
        "deployer_address",
        "vcpu",
        "memory",
        "disk_size",
        "gateway_domain",
    }
)
_HOSTED_SAME = frozenset({"name", "status"})
_SIZES = ("vcpu", "memory", "disk_size")


def update_documents(
    detail: dict[str, Any], item: dict[str, Any], fields: Mapping[str, Any]
) -> None:
    """Set ``fields`` in a detail document and the same facts in its list item, in place.

    Values are stored as given, not validated. Where the item spells a fact differently, it follows
    the detail: ``teepod`` is the item's ``node``, ``project_id`` gets the ``prj_`` prefix, a null
    ``public_urls`` is an empty list, ``dapp_dashboard_url`` is also ``hosted.app_url``,
    ``base_image``'s version is ``hosted.image_version``; sizes are mirrored in the detail's
    ``machine_info``.
    """
    detail.update(fields)
    hosted = item["hosted"]
    for name, value in fields.items():
        if name in _ITEM_SAME:
            item[name] = value
        if name in _HOSTED_SAME:
            hosted[name] = value
    if "teepod" in fields:
        item["node"] = fields["teepod"]
    if "dapp_dashboard_url" in fields:
        hosted["app_url"] = fields["dapp_dashboard_url"]
    if "project_id" in fields:
        project_id = fields["project_id"]
        item["project_id"] = None if project_id is None else f"prj_{project_id}"
    if "public_urls" in fields:
        item["public_urls"] = fields["public_urls"] or []
    if "base_image" in fields:
        base_image = fields["base_image"]
        hosted["image_version"] = None if base_image is None else str(base_image).rpartition("-")[2]
    machine = detail.get("machine_info")
    if isinstance(machine, dict) and "machine_info" not in fields:
        machine.update({size: fields[size] for size in _SIZES if size in fields})


# -- answers -------------------------------------------------------------------------------------


def encode(document: object) -> bytes:
    """Compact JSON bytes of ``document``."""
    return json.dumps(document, separators=(",", ":")).encode()


def _validation_error(loc: list[str], msg: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind, **extra}


def _structured_error(code: str, message: str, details: list[Any], hint: str) -> bytes:
    error = {"error_code": code, "message": message, "details": details, "suggestions": [hint]}
    return encode({**error, "links": []})


UNAUTHENTICATED = encode({"detail": "Authentication required"})
FORBIDDEN = encode({"detail": "CVM not in workspace"})
NO_ROUTE = encode({"detail": "Not Found"})
OVER_CAPACITY = encode({"detail": "Service Unavailable: too many requests in progress"})
INVALID_ID = encode(
    {"detail": [_validation_error(["path", "cvm_id"], "Invalid CVM identifier", "value_error")]}
)
RATE_LIMITED = _structured_error(
    "ERR-05-002", "Rate limit exceeded", [], "Wait for the Retry-After header's delay, then retry"
)
BAD_GATEWAY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    b"</h1></center><hr><center>nginx</center></body></html>"
)


def not_found(segment: str) -> bytes:
    """The 404 body for a well-formed identifier that names no CVM."""
    hint = "Check the CVM id, name, app_id, instance_id or VM UUID"
    return _structured_error("ERR-03-001", "CVM not found", [{"cvm_id": segment}], hint)


_HEX = "[0-9a-fA-F]"
# The identifier forms the API accepts: decimal id, UUID (32 hex or dashed), app_id with or
# without `app_`, instance id (40 hex), hashid (`cvm_...`), RFC 1123 name of 5-63 characters.
_ID_FORMS = re.compile(
    rf"(?P<int>[0-9]{{1,18}})|(?P<uuid>{_HEX}{{32}}|{_HEX}{{8}}(?:-{_HEX}{{4}}){{3}}-{_HEX}{{12}})"
    r"|(?:app_)?[0-9a-f]{40}|cvm_[0-9a-zA-Z]{1,60}|(?P<name>[a-z0-9][a-z0-9-]{3,61}[a-z0-9])"
)


def is_cvm_name(text: str) -> bool:
    """Whether ``text`` is a CVM name: an RFC 1123 label that no other identifier form claims."""
    form = _ID_FORMS.fullmatch(text)
    return form is not None and form["name"] is not None


def canonical_key(segment: str) -> str | None:
    """The lookup key of a path segment in canonical form, or None if it is no identifier form."""
    form = _ID_FORMS.fullmatch(segment)
    if form is None:
        return None
    if form["int"]:
        return str(int(segment))  # "007" names CVM 7
    if form["uuid"]:
        return str(uuid.UUID(segment))  # dashed, lowercase
    return segment


PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 30, 100
_QUERY_INT = re.compile(r"[+-]?[0-9]{1,18}")


@dataclasses.dataclass(frozen=True, slots=True)
class PageRequest:
    """A validated list query: the page, its size, and the node filter (``teepod_id``, or
    ``node_id`` as the official SDKs name it), if any."""

    page: int
    page_size: int
    node_id: int | None = None


def page_request(query: Mapping[str, str]) -> PageRequest | bytes:
    """The :class:`PageRequest` of a list query, or the 422 body FastAPI would answer."""
    errors: list[dict[str, Any]] = []
    page = _query_int(query, "page", 1, None, errors)
    page_size = _query_int(query, "page_size", PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, errors)
    node_id = None
    for name in ("teepod_id", "node_id"):
        if query.get(name) not in (None, ""):
            node_id = _query_int(query, name, 0, None, errors)
    return encode({"detail": errors}) if errors else PageRequest(page, page_size, node_id)


def _query_int(
    query: Mapping[str, str], name: str, default: int, maximum: int | None, errors: list[Any]
) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    loc = ["query", name]
    if not _QUERY_INT.fullmatch(raw):
        msg = "Input should be a valid integer, unable to parse string as an integer"
        errors.append(_validation_error(loc, msg, "int_parsing", input=raw))
        return default
    value = int(raw)
    if value < 1:
        msg = "Input should be greater than or equal to 1"
        errors.append(_validation_error(loc, msg, "greater_than_equal", input=raw, ctx={"ge": 1}))
    elif maximum is not None and value > maximum:
        msg = f"Input should be less than or equal to {maximum}"
        ctx = {"le": maximum}
        errors.append(_validation_error(loc, msg, "less_than_equal", input=raw, ctx=ctx))
    return value


def page_body(items: list[bytes], total: int, page: int, page_size: int) -> bytes:
    """A ``PaginatedHostedCvms`` body around already encoded items."""
    pages = -(-total // page_size)  # ceiling division; 0 when the workspace is empty
    tail = b'],"total":%d,"page":%d,"page_size":%d,"pages":%d}' % (total, page, page_size, pages)
    return b'{"items":[' + b",".join(items) + tail
