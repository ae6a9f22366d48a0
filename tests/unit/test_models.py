"""Tests for the CVM details Struct and its decoder (``_models``)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from phala_async import CvmDetail, CvmNetworkUrls, CvmNode, DecodeError, KMSInfo
from phala_async._models import decode_cvm

APP_ID = "8d1f0c9e2b7a4f6d1e3c5b7a9f0e2d4c6b8a0f1e"
INSTANCE_ID = "1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e"

# The reference page's example body, every field present, with realistic values.
FULL_BODY: dict[str, Any] = {
    "id": 123,
    "name": "web-00123",
    "status": "running",
    "app_id": APP_ID,
    "vcpu": 2,
    "memory": 4096,
    "disk_size": 40,
    "teepod_id": 3,
    "teepod": {"id": 3, "name": "prod5", "region_identifier": "us-west"},
    "in_progress": False,
    "vm_uuid": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
    "instance_id": INSTANCE_ID,
    "base_image": "dstack-0.5.3",
    "encrypted_env_pubkey": "a3f9" * 16,
    "listed": True,
    "project_id": "0123abcd",
    "project_type": "webdemo",
    "instance_type": "tdx.small",
    "public_sysinfo": True,
    "public_logs": False,
    "dapp_dashboard_url": f"https://{APP_ID}-8090.dstack-prod5.phala.network",
    "syslog_endpoint": f"https://{APP_ID}-syslog.dstack-prod5.phala.network",
    "kms_info": {
        "id": "kms_9f8e7d6c",
        "url": "https://kms.dstack-base-prod7.phala.network",
        "version": "v0.5.3",
        "slug": "base-mainnet",
        "chain_id": 8453,
        "kms_contract_address": "0x2f83172a49584c017f2b256f0fb2dca14126ba9c",
        "gateway_app_id": "0x6aa9c6a2d2b1c4b1e6a8f0a3d7c5b1e2f3a4b5c6",
    },
    "contract_address": "0x" + "ab" * 20,
    "deployer_address": "0x" + "cd" * 20,
    "scheduled_delete_at": "2023-11-07T05:31:56Z",
    "public_urls": [
        {
            "app": f"https://{APP_ID}-443.dstack-prod5.phala.network",
            "instance": f"https://{INSTANCE_ID}-443.dstack-prod5.phala.network",
        }
    ],
    "gateway_domain": "dstack-prod5.phala.network",
}
REQUIRED = ("id", "name", "status", "app_id", "vcpu", "memory", "disk_size")


def encode(document: object) -> bytes:
    """Compact JSON bytes of a test document."""
    return json.dumps(document).encode()


def with_changes(**changes: Any) -> bytes:
    """FULL_BODY with some top-level fields replaced (``...`` removes one), as bytes."""
    document = copy.deepcopy(FULL_BODY)
    for key, value in changes.items():
        if value is ...:
            del document[key]
        else:
            document[key] = value
    return encode(document)


def test_full_reference_body_decodes_to_typed_fields() -> None:
    """Every field of the reference example lands in CvmDetail with its documented type."""
    cvm = decode_cvm(encode(FULL_BODY), cvm_id=123)
    assert (cvm.id, cvm.name, cvm.status, cvm.app_id) == (123, "web-00123", "running", APP_ID)
    assert (cvm.vcpu, cvm.memory, cvm.disk_size, cvm.teepod_id) == (2, 4096, 40, 3)
    assert cvm.teepod == CvmNode(id=3, name="prod5", region_identifier="us-west")
    assert cvm.kms_info == KMSInfo(**FULL_BODY["kms_info"])
    assert cvm.public_urls == [CvmNetworkUrls(**FULL_BODY["public_urls"][0])]
    assert (cvm.listed, cvm.in_progress, cvm.public_sysinfo, cvm.public_logs) == (
        True,
        False,
        True,
        False,
    )
    assert cvm.project_id == "0123abcd"
    assert cvm.gateway_domain == "dstack-prod5.phala.network"


def test_every_reference_field_is_modelled() -> None:
    """CvmDetail has the fields of the reference page plus the two the official schema adds."""
    assert set(CvmDetail.__struct_fields__) == set(FULL_BODY) | {"machine_info", "updated_at"}


def test_msgspec_round_trip() -> None:
    """Encoding a decoded CVM and decoding it again gives an equal CVM."""
    cvm = decode_cvm(encode(FULL_BODY), cvm_id=123)
    again = msgspec.json.decode(msgspec.json.encode(cvm), type=CvmDetail)
    assert again == cvm
    assert msgspec.to_builtins(again) == {**FULL_BODY, "machine_info": None, "updated_at": None}


def test_unknown_fields_are_ignored() -> None:
    """Fields the server adds later are ignored, at the top level and nested."""
    document = copy.deepcopy(FULL_BODY)
    document["future_top_field"] = {"vcpu": 2, "gpu_count": 0}
    document["archived_at"] = "2025-07-01T00:00:00Z"
    document["teepod"]["future_field"] = [1, 2, 3]
    cvm = decode_cvm(encode(document), cvm_id=123)
    assert cvm == decode_cvm(encode(FULL_BODY), cvm_id=123)


def test_defaults_when_only_required_fields_are_sent() -> None:
    """Absent booleans default to false and every optional field to None."""
    cvm = decode_cvm(encode({key: FULL_BODY[key] for key in REQUIRED}), cvm_id=123)
    assert cvm.in_progress is False
    assert cvm.listed is False
    optional = set(CvmDetail.__struct_fields__) - set(REQUIRED) - {"in_progress", "listed"}
    assert {name: getattr(cvm, name) for name in optional} == dict.fromkeys(optional)


def test_explicit_nulls_decode_to_none() -> None:
    """Nullable fields sent as null decode to None."""
    nullable = ("teepod", "kms_info", "public_urls", "scheduled_delete_at", "project_id")
    cvm = decode_cvm(with_changes(**dict.fromkeys(nullable)), cvm_id=123)
    assert [getattr(cvm, name) for name in nullable] == [None] * len(nullable)


def test_scheduled_delete_at_is_an_aware_datetime() -> None:
    """``scheduled_delete_at`` is a timezone-aware datetime, in UTC."""
    cvm = decode_cvm(encode(FULL_BODY), cvm_id=123)
    assert cvm.scheduled_delete_at == datetime(2023, 11, 7, 5, 31, 56, tzinfo=UTC)
    assert cvm.scheduled_delete_at is not None
    assert cvm.scheduled_delete_at.utcoffset() is not None


@pytest.mark.parametrize(
    ("target", "field"),
    [
        pytest.param("cvm", "name", id="cvm"),
        pytest.param("teepod", "name", id="node"),
        pytest.param("kms_info", "url", id="kms"),
    ],
)
def test_structs_are_frozen(target: str, field: str) -> None:
    """Decoded values cannot be modified in place."""
    cvm = decode_cvm(encode(FULL_BODY), cvm_id=123)
    value = cvm if target == "cvm" else getattr(cvm, target)
    with pytest.raises(AttributeError):
        setattr(value, field, "changed")


def test_structs_are_keyword_only() -> None:
    """Structs are built with keywords only, so fields can be added without breaking callers."""
    with pytest.raises(TypeError):
        CvmNode(3, "prod5")  # type: ignore[misc]


DECODE_FAILURES = [
    pytest.param(with_changes(vcpu="two"), "$.vcpu", id="wrong-type"),
    pytest.param(with_changes(id=1.5), "$.id", id="float-for-int"),
    pytest.param(with_changes(name=None), "$.name", id="null-in-required"),
    pytest.param(with_changes(teepod={"id": "x", "name": "prod5"}), "$.teepod.id", id="nested"),
    pytest.param(with_changes(teepod={"id": 3}), "$.teepod", id="nested-missing"),
    pytest.param(
        with_changes(public_urls=[{"app": 1, "instance": "x"}]),
        "$.public_urls[0].app",
        id="list-item",
    ),
    pytest.param(
        with_changes(scheduled_delete_at="tomorrow"), "$.scheduled_delete_at", id="bad-date"
    ),
    pytest.param(with_changes(vcpu=...), "$", id="missing-required"),
    pytest.param(b"[]", "$", id="json-array"),
    pytest.param(b"null", "$", id="json-null"),
    pytest.param(b"<html>oops</html>", None, id="not-json"),
    pytest.param(b"", None, id="empty"),
    pytest.param(encode(FULL_BODY)[:-10], None, id="truncated"),
    pytest.param(
        encode(FULL_BODY).replace(b'"dstack-0.5.3"', b'"dstack-\xff"'), None, id="not-utf8"
    ),
    pytest.param(
        encode(FULL_BODY)[:-1] + b', "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        None,
        id="deeply-nested-unknown-field",
    ),
]


@pytest.mark.parametrize(("body", "path"), DECODE_FAILURES)
def test_decode_failure_is_decode_error_with_path(body: bytes, path: str | None) -> None:
    """Every undecodable body raises DecodeError with the id and msgspec's JSON path."""
    with pytest.raises(DecodeError) as caught:
        decode_cvm(body, cvm_id="web-00123")
    assert caught.value.cvm_id == "web-00123"
    assert caught.value.path == path
    assert "'web-00123'" in str(caught.value)


@pytest.mark.parametrize(("body", "path"), DECODE_FAILURES)
def test_decode_failure_is_never_a_raw_msgspec_error(body: bytes, path: str | None) -> None:
    """The raised error is our DecodeError and not also a msgspec exception."""
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the type is what is checked
        decode_cvm(body, cvm_id=1)
    assert type(caught.value) is DecodeError
    assert not isinstance(caught.value, msgspec.MsgspecError)
