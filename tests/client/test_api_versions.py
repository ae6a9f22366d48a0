"""``api_version``: the header sent, the shape decoded, and the simulator speaking both versions."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import msgspec
import pytest
from cli_support import SECRET_KEY, jsonl, simulator_thread

from phala_async import ConfigurationError, CvmDetail, CvmInfo, DecodeError, PhalaClient
from phala_async._models_v2026 import decode_cvm_info
from phala_async.cli import main
from phala_async.testing import PhalaSimulator


def test_an_unknown_version_is_a_configuration_error_naming_the_supported_ones() -> None:
    """``api_version="2024-01-01"`` fails at construction and lists what to pass."""
    with pytest.raises(ConfigurationError, match="2025-10-28, 2026-01-21"):
        PhalaClient(api_key="phak_x", api_version="2024-01-01")


async def test_the_2026_client_sweeps_a_thousand_cvms_as_cvminfo() -> None:
    """Every result of a 1,000-id sweep is a CvmInfo, and every request sent the version."""
    async with PhalaSimulator(cvms=1000) as sim:
        client = PhalaClient(api_key=sim.api_key, base_url=sim.base_url, api_version="2026-01-21")
        async with client:
            results = await client.get_cvms(sim.cvm_ids)
        assert [type(result.cvm) for result in results] == [CvmInfo] * 1000
        assert {record.phala_version for record in sim.request_log} == {"2026-01-21"}
        assert sim.total_requests == 1000


async def test_the_2026_listing_names_each_cvm_by_its_vm_uuid() -> None:
    """With 2026-01-21 the listing's entries are CvmInfo, keyed by VM UUID, one per instance."""
    async with PhalaSimulator(cvms=7, instances_per_app=3) as sim:
        client = PhalaClient(api_key=sim.api_key, base_url=sim.base_url, api_version="2026-01-21")
        async with client:
            entries = [entry async for entry in client.list_cvms(page_size=3)]
        assert [entry.cvm_id for entry in entries] == [sim.cvm(i)["vm_uuid"] for i in sim.cvm_ids]
        assert sim.requests["paginated"] == 3


async def test_the_hashid_names_the_cvm_in_both_versions() -> None:
    """The ``cvm_...`` id of the 2026 shape fetches the same CVM with the default version."""
    async with PhalaSimulator(cvms=3) as sim:
        async with PhalaClient(
            api_key=sim.api_key, base_url=sim.base_url, api_version="2026-01-21"
        ) as new:
            info = await new.get_cvm(2)
        async with PhalaClient(api_key=sim.api_key, base_url=sim.base_url) as old:
            detail = await old.get_cvm(info.id)
        assert isinstance(detail, CvmDetail)
        assert (detail.id, detail.vm_uuid) == (2, info.vm_uuid)


async def test_the_simulator_answers_an_unknown_version_400_in_the_structured_form() -> None:
    """``X-Phala-Version: 1999-01-01`` gets 400 with ``error_code`` and the versions to send."""
    async with PhalaSimulator(cvms=1) as sim, aiohttp.ClientSession() as session:
        headers = {"X-API-Key": sim.api_key, "X-Phala-Version": "1999-01-01"}
        async with session.get(f"{sim.base_url}/cvms/1", headers=headers) as response:
            status, body = response.status, await response.json()
    assert status == 400
    assert body["error_code"] == "ERR-01-005"
    assert "2026-01-21" in body["suggestions"][0]


@pytest.mark.parametrize("name", ["teepod_id", "node_id"])
async def test_the_listing_filters_by_node(name: str) -> None:
    """``teepod_id`` (or ``node_id``) keeps the entries of that node alone, ``total`` too."""
    async with PhalaSimulator(cvms=40) as sim, aiohttp.ClientSession() as session:
        on_node = [i for i in sim.cvm_ids if sim.cvm(i)["teepod"]["id"] == 7]
        url = f"{sim.base_url}/cvms/paginated?page_size=100&{name}=7"
        async with session.get(url, headers={"X-API-Key": sim.api_key}) as response:
            page = await response.json()
    assert page["total"] == len(on_node) > 0
    assert [item["hosted"]["id"] for item in page["items"]] == [
        sim.cvm(i)["vm_uuid"] for i in on_node
    ]


def test_diff_of_two_2026_sweeps_reports_the_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two ``--api-version 2026-01-21`` sweeps around a status change diff to that change."""
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    with simulator_thread(cvms=5, api_key=SECRET_KEY) as sim:
        common = ["--base-url", sim.base_url, "--api-key", SECRET_KEY, "--api-version"]
        assert main([*common, "2026-01-21", "sweep", "--all", "-q", "-o", str(before)]) == 0
        sim.update_cvm(3, status="stopped" if sim.cvm(3)["status"] != "stopped" else "running")
        assert main([*common, "2026-01-21", "sweep", "--all", "-q", "-o", str(after)]) == 0
    records = jsonl(before.read_text())
    assert {record["cvm"]["id"][:4] for record in records} == {"cvm_"}
    capsys.readouterr()
    status = main(["diff", str(before), str(after), "--format", "jsonl"])
    changes = jsonl(capsys.readouterr().out)
    assert status == 1
    assert [(change["kind"], [c["path"] for c in change["changes"]]) for change in changes] == [
        ("changed", ["status"])
    ]


# A CVMInfoDetail with every field of the schema set, rebuilt from the reference's OpenAPI schema
# as the official fixtures fill it (timestamps with "Z", open objects as objects).
FULL_INFO = {
    "id": "cvm_0123abcd",
    "name": "web-00001",
    "app_id": "a" * 40,
    "vm_uuid": "11111111-1111-4111-8111-111111111111",
    "instance_id": "b" * 40,
    "resource": {
        "instance_type": "tdx.small",
        "vcpu": 2,
        "memory_in_gb": 2.5,
        "disk_in_gb": 40,
        "gpus": 0,
        "compute_billing_price": "0.058",
        "billing_period": "hourly",
    },
    "node_info": {
        "object_type": "node",
        "id": 3,
        "node_id": 3,
        "name": "prod5",
        "region": "us-west",
        "device_id": "dev-1",
        "ppid": "ppid-1",
        "status": "ONLINE",
        "version": "0.5.3",
    },
    "os": {"name": "dstack", "version": "0.5.3", "is_dev": False, "os_image_hash": "0xabc"},
    "kms_type": "phala",
    "kms_info": {
        "chain_id": 8453,
        "dstack_kms_address": "0x1",
        "dstack_app_address": "0x2",
        "deployer_address": "0x3",
        "rpc_endpoint": "https://rpc.example",
        "encrypted_env_pubkey": "ff",
    },
    "status": "running",
    "in_progress": True,
    "progress": {"target": "running", "started_at": "2026-01-21T10:00:00Z", "correlation_id": "c"},
    "compose_hash": "h1",
    "docker_compose_hash": "h2",
    "pre_launch_script_hash": "h3",
    "gateway": {"base_domain": "dstack-prod5.phala.network", "cname": "app.example"},
    "logs": {"serial": "s", "stdout": "o", "stderr": "e", "container_log_base": "c"},
    "services": [{"name": "web", "image": "nginx", "ports": [80]}],
    "endpoints": [{"app": "https://a", "instance": "https://i"}],
    "public_logs": True,
    "public_sysinfo": True,
    "public_tcbinfo": False,
    "gateway_enabled": True,
    "secure_time": True,
    "storage_fs": "ext4",
    "workspace": {
        "object_type": "workspace",
        "id": "ws_1",
        "name": "w",
        "slug": "w",
        "avatar_url": None,
    },
    "creator": {"object_type": "user", "id": "usr_1", "username": "u", "avatar_url": None},
    "created_at": "2026-01-01T00:00:00Z",
    "deleted_at": None,
    "listed": True,
    "project_type": "webdemo",
    "compose_file": {"name": "app", "docker_compose_file": "services: {}"},
}


def test_every_field_of_the_cvminfo_schema_decodes_and_encodes_back() -> None:
    """A CVMInfoDetail with every field set decodes, and encodes back to the same JSON."""
    cvm = decode_cvm_info(json.dumps(FULL_INFO).encode(), cvm_id="cvm_0123abcd")
    assert cvm.progress is not None
    assert cvm.progress.started_at == datetime(2026, 1, 21, 10, tzinfo=UTC)
    assert cvm.cvm_id == FULL_INFO["vm_uuid"]
    assert msgspec.json.decode(msgspec.json.encode(cvm)) == FULL_INFO


def test_a_cvminfo_without_a_required_field_is_a_decode_error() -> None:
    """Leniency stops at required fields: a CVMInfo without ``resource`` fails at ``$``."""
    document = {key: value for key, value in FULL_INFO.items() if key != "resource"}
    with pytest.raises(DecodeError, match="missing required field `resource`"):
        decode_cvm_info(json.dumps(document).encode(), cvm_id="cvm_0123abcd")


def test_the_csv_of_a_2026_get_has_the_same_columns_in_the_same_units(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``get --api-version 2026-01-21 --format csv`` fills memory in MB and the node's name."""
    with simulator_thread(cvms=2, api_key=SECRET_KEY) as sim:
        args = ["--base-url", sim.base_url, "--api-key", SECRET_KEY, "--api-version", "2026-01-21"]
        assert main([*args, "get", "1", "--format", "csv"]) == 0
        document = sim.cvm(1)
    [header, row] = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    cells = dict(zip(header, row, strict=True))
    assert cells["memory"] == str(document["memory"])
    assert cells["teepod_name"] == document["teepod"]["name"]
    assert cells["id"].startswith("cvm_")
