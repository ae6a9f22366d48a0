"""phala-async's ``CvmDetail`` written as pydantic v2 models: the same fields, types and defaults.

The decode benchmark compares ``CvmDetailModel.model_validate_json`` with phala-async's msgspec
decoder on the same body. Like the Structs, the models are frozen and ignore unknown fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class CvmNodeModel(_Frozen):
    id: int
    name: str
    region_identifier: str | None = None


class KMSInfoModel(_Frozen):
    id: str
    url: str
    version: str
    slug: str | None = None
    chain_id: int | None = None
    kms_contract_address: str | None = None
    gateway_app_id: str | None = None


class CvmNetworkUrlsModel(_Frozen):
    app: str
    instance: str


class CvmDetailModel(_Frozen):
    id: int
    name: str
    status: str
    app_id: str
    vcpu: int
    memory: int
    disk_size: int
    teepod_id: int | None = None
    teepod: CvmNodeModel | None = None
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
    kms_info: KMSInfoModel | None = None
    contract_address: str | None = None
    deployer_address: str | None = None
    scheduled_delete_at: datetime | None = None
    public_urls: list[CvmNetworkUrlsModel] | None = None
    gateway_domain: str | None = None
    machine_info: Any = None
    updated_at: datetime | None = None
