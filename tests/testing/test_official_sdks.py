"""The official SDKs, which nobody here wrote, run against ``phala-async serve``: the TypeScript SDK
(``@phala/cloud`` 0.2.9, installed by npm into ``.cache/npm-sdk/``) through ``official_ts_sdk.mjs``
in a node subprocess, and the Python SDK (``phala-cloud`` 0.2.0, in the test environment) in
process. Each calls ``getCvmInfo`` for every id form of every CVM and ``getCvmList`` for every
page, and the SDK's own schemas validate the answers.

The only rejections allowed are named here. The TypeScript SDK rewrites a bare 40-hex id to
``app_<hex>`` before the request, so an instance id reaches the server as an app id: 404. Its
schema for ``2025-10-28`` refuses
``null`` in ``public_sysinfo``, ``public_logs`` and ``public_urls``, which the reference page marks
nullable (we follow the reference). The Python SDK checks a detail of ``2025-10-28`` with its
``2026-05-22`` model and one of ``2026-01-21`` with a model whose ``id`` is an integer, both against
the reference's shapes, so only its ``id`` is refused there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import TIMEOUT, subprocess_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SDK_DIR = ROOT / ".cache" / "npm-sdk"
TS_SDK = "@phala/cloud@0.2.9"
TS_ENTRY = SDK_DIR / "node_modules" / "@phala" / "cloud" / "dist" / "index.mjs"
SCRIPT = Path(__file__).with_name("official_ts_sdk.mjs")
CVMS = 25
#: Item 6 of the reference notes: fields the TypeScript 2025-10-28 schema wrongly refuses as null.
TS_ALLOWED = frozenset({"public_sysinfo", "public_logs", "public_urls"})


def _need_node() -> str:
    """The node executable; the tests skip without node and npm, except in CI."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are needed in CI for the official TypeScript SDK test")
        pytest.skip("node/npm not installed: the official TypeScript SDK cannot run")
    if not TS_ENTRY.is_file():  # `make test` installs it; a direct pytest run does it here
        subprocess.run(  # noqa: S603 - npm from PATH, a pinned package
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(SDK_DIR), TS_SDK],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return node


@pytest.fixture(name="served", scope="module")
def served_fixture() -> Iterator[dict[str, Any]]:
    """``phala-async serve`` on a free port with CVMS CVMs; its URL, key and every id form."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "phala_async", "serve", "--port", "0", "--cvms", str(CVMS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=subprocess_env(),
    )
    try:
        assert process.stdout is not None
        banner = {}
        for _ in range(20):
            name, _, value = process.stdout.readline().partition(":")
            banner[name.strip()] = value.strip().split()[0] if value.strip() else ""
            if name in ("try", ""):
                break
        base_url, key = banner["base URL"], banner["API key"]
        control = base_url.removesuffix("/api/v1") + "/_simulator"
        forms = []
        for cvm_id in range(1, CVMS + 1):
            request = urllib.request.Request(  # noqa: S310 - our own local server
                f"{control}/cvms/{cvm_id}", headers={"X-API-Key": key}
            )
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310
                cvm = json.loads(answer.read())
            forms += [
                (f"{cvm_id}:id", {"id": str(cvm_id)}),
                (f"{cvm_id}:name", {"name": cvm["name"]}),
                (f"{cvm_id}:uuid", {"uuid": cvm["vm_uuid"]}),
                (f"{cvm_id}:app_id", {"app_id": f"app_{cvm['app_id']}"}),
                (f"{cvm_id}:instance_id", {"instance_id": cvm["instance_id"]}),
            ]
        yield {"base_url": base_url, "key": key, "forms": forms}
    finally:
        process.terminate()
        process.communicate(timeout=TIMEOUT)


def _run_ts(served: dict[str, Any], version: str) -> dict[str, Any]:
    node = _need_node()
    done = subprocess.run(  # noqa: S603 - node and our own script
        [node, str(SCRIPT), str(TS_ENTRY), served["base_url"], served["key"], version,
         json.dumps(served["forms"])],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_typescript_sdk_at_its_default_version_accepts_every_answer(
    served: dict[str, Any],
) -> None:
    """At its default (2026-01-21) every id form and every page validates, CVMInfo ids back."""
    result = _run_ts(served, "default")
    assert result["version"] == "2026-01-21"
    assert [(r["form"], r["ok"], r.get("status")) for r in result["info"]] == [
        (form, False, 404) if form.endswith(":instance_id") else (form, True, None)
        for form, _ in served["forms"]
    ]
    assert {r["id"][:4] for r in result["info"] if r["ok"]} == {"cvm_"}
    assert [(p["ok"], p["items"]) for p in result["pages"]] == [(True, 10), (True, 10), (True, 5)]


def test_the_typescript_sdk_at_2025_10_28_refuses_only_the_named_nulls(
    served: dict[str, Any],
) -> None:
    """At 2025-10-28 every refusal is a null the reference allows (TS_ALLOWED); pages validate."""
    result = _run_ts(served, "2025-10-28")
    by_instance = [r for r in result["info"] if r["form"].endswith(":instance_id")]
    refused = [r for r in result["info"] if not r["ok"] and r not in by_instance]
    assert len(result["info"]) == 5 * CVMS
    assert {(r["ok"], r["status"]) for r in by_instance} == {(False, 404)}
    assert {issue for r in refused for issue in r["issues"]} <= TS_ALLOWED
    assert all(r["kind"] == "ZodError" for r in refused)
    assert len(refused) < len(result["info"])  # most CVMs carry no null there
    assert [(p["ok"], p["items"]) for p in result["pages"]] == [(True, 10), (True, 10), (True, 5)]


@pytest.mark.parametrize(
    ("version", "detail_ok"),
    [(None, True), ("2026-06-23", True), ("2026-05-22", True), ("2026-01-21", False),
     ("2025-10-28", False)],
    ids=["default", "2026-06-23", "2026-05-22", "2026-01-21", "2025-10-28"],
)  # fmt: skip
async def test_the_python_sdk_gets_valid_answers(
    served: dict[str, Any], version: str | None, detail_ok: bool
) -> None:
    """Every page validates in every version; details validate where the SDK's model matches the
    reference, and elsewhere only ``id`` is refused."""
    try:
        import phala_cloud  # only this test needs it
    except ImportError:
        pytest.fail("phala-cloud is not installed: `make venv` installs phala-cloud==0.2.0")
    options = {} if version is None else {"version": version}
    client = phala_cloud.AsyncPhalaCloud(
        api_key=served["key"], base_url=served["base_url"], **options
    )
    async with client:
        # It sends any id as given, and takes a name as an `id`.
        forms = [{"id": form["name"]} if "name" in form else form for _, form in served["forms"]]
        details = [await client.safe_get_cvm_info(form) for form in forms]
        pages = [await client.safe_get_cvm_list({"page": n, "page_size": 10}) for n in (1, 2, 3)]
    assert [page.ok for page in pages] == [True, True, True]
    assert [len(page.data.items) for page in pages if page.data is not None] == [10, 10, 5]
    assert {result.ok for result in details} == {detail_ok}
    if not detail_ok:
        assert {str(result.error).splitlines()[1] for result in details} == {"id"}
