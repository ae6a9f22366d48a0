"""The simulator's answers for ``X-Phala-Version`` ``2026-01-21`` and later: pure data, no I/O.

From such a version on, the real API answers the ``CVMInfo`` shape (``CVMInfoDetail`` for one CVM,
``PaginatedCvmInfos`` for the listing). The simulator derives that document from the CVM's
``2025-10-28`` detail document, so both versions always describe the same CVM: the same name,
status, ids and node, the sizes converted (``memory_in_gb`` from MB), and a hashid ``id``
(``cvm_<8 hex>``) that the detail endpoint also takes as an identifier.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BASIC",
    "INFO",
    "SIMULATED_VERSIONS",
    "info_document",
    "shape_of",
    "unsupported_version",
]

BASIC, INFO = "basic", "info"
#: The ``X-Phala-Version`` values the simulator answers, and the shape each gets. The later
#: versions the official SDKs send by default answer the ``CVMInfo`` shape too.
SIMULATED_VERSIONS = {
    "2025-10-28": BASIC,
    "2026-01-21": INFO,
    "2026-05-22": INFO,
    "2026-06-23": INFO,
}
_KMS_TYPES = {None: "phala", 8453: "base", 1: "ethereum"}


def shape_of(version: str | None) -> str | None:
    """The shape answered for a request's ``X-Phala-Version`` (absent: ``2025-10-28``'s), or None
    for a version the simulator does not speak."""
    if version is None:
        return BASIC
    return SIMULATED_VERSIONS.get(version.strip())


def unsupported_version(version: str) -> dict[str, Any]:
    """The 400 body for a version the simulator does not speak, in the structured error form."""
    return {
        "error_code": "ERR-01-005",
        "message": f"Unsupported API version {version[:40]!r}",
        "details": [{"field": "X-Phala-Version", "value": version[:40]}],
        "suggestions": [f"Send one of: {', '.join(SIMULATED_VERSIONS)}"],
        "links": [],
    }


def info_document(detail: dict[str, Any], hashid: str, *, listing: bool) -> dict[str, Any]:
    """The ``CVMInfo`` document of the CVM whose ``2025-10-28`` detail document is ``detail``.

    Args:
        detail: the ``CvmBasicInfo`` document, as served now (changes included).
        hashid: the CVM's ``cvm_...`` hashid.
        listing: a listing entry (``CVMInfo``) rather than the detail (``CVMInfoDetail``, which adds
            ``compose_file``).
    """
    node = detail.get("teepod") if isinstance(detail.get("teepod"), dict) else None
    kms = detail.get("kms_info") if isinstance(detail.get("kms_info"), dict) else None
    memory = detail.get("memory")
    gateway_domain = detail.get("gateway_domain")
    updated = detail.get("updated_at")
    document: dict[str, Any] = {
        "id": hashid,
        "name": detail.get("name"),
        "app_id": detail.get("app_id"),
        "vm_uuid": detail.get("vm_uuid"),
        "instance_id": detail.get("instance_id"),
        "resource": {
            "instance_type": detail.get("instance_type"),
            "vcpu": detail.get("vcpu"),
            "memory_in_gb": memory / 1024 if isinstance(memory, int | float) else None,
            "disk_in_gb": detail.get("disk_size"),
            "gpus": 0,
            "compute_billing_price": None,
            "billing_period": None,
        },
        "node_info": None
        if node is None
        else {
            "object_type": "node",
            "id": node.get("id"),
            "node_id": node.get("id"),
            "name": node.get("name"),
            "region": node.get("region_identifier"),
            "device_id": None,
            "ppid": None,
            "status": "ONLINE",
            "version": None,
        },
        "os": _os(detail.get("base_image")),
        "kms_type": None if kms is None else _KMS_TYPES.get(kms.get("chain_id"), "phala"),
        "kms_info": None
        if kms is None
        else {
            "chain_id": kms.get("chain_id"),
            "dstack_kms_address": kms.get("kms_contract_address"),
            "dstack_app_address": detail.get("contract_address"),
            "deployer_address": detail.get("deployer_address"),
            "rpc_endpoint": None,
            "encrypted_env_pubkey": detail.get("encrypted_env_pubkey"),
        },
        "status": detail.get("status"),
        "in_progress": detail.get("in_progress", False),
        "progress": None,
        "compose_hash": None,
        "docker_compose_hash": None,
        "pre_launch_script_hash": None,
        "gateway": {"base_domain": gateway_domain, "cname": None},
        "logs": {
            "serial": None,
            "stdout": None,
            "stderr": None,
            "container_log_base": detail.get("syslog_endpoint"),
        },
        "services": [],
        "endpoints": detail.get("public_urls"),
        "public_logs": bool(detail.get("public_logs")),
        "public_sysinfo": bool(detail.get("public_sysinfo")),
        "public_tcbinfo": True,
        "gateway_enabled": gateway_domain is not None,
        "secure_time": False,
        "storage_fs": "zfs",
        "workspace": {
            "object_type": "workspace",
            "id": "ws_0123abcd",
            "name": "simulated",
            "slug": "simulated",
            "avatar_url": None,
        },
        "creator": None,
        "created_at": updated if isinstance(updated, str) else None,
        "deleted_at": None,
        "listed": detail.get("listed", False),
        "project_type": detail.get("project_type"),
    }
    if not listing:
        document["compose_file"] = None
    return document


def _os(base_image: object) -> dict[str, Any] | None:
    if not isinstance(base_image, str):
        return None
    name, _, version = base_image.rpartition("-")
    return {
        "name": name or base_image,
        "version": version or None,
        "is_dev": "-dev" in base_image,
        "os_image_hash": None,
    }
