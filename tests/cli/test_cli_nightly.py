"""The README's nightly inventory script, taken from the README (so a change there is a change
here), run with ``sh`` in a subprocess against a dead API, a refusing one and a healthy one; and
its two ``sqlite3`` queries, run against a store two sweeps wrote."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import (
    SECRET_KEY,
    TIMEOUT,
    WRONG_KEY,
    jsonl,
    no_credentials_fixture,  # noqa: F401 - an autouse fixture
    posix_only,
    run,
    served_fixture,  # noqa: F401 - a fixture
    subprocess_env,
)

from phala_async.testing import PhalaSimulator

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(language: str, containing: str) -> str:
    """The README's fenced ``language`` block that holds ``containing``."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", README.read_text("utf-8"), re.S | re.M)
    [block] = [block for block in blocks if containing in block]
    return str(block)


def day(days_ago: int) -> str:
    today = datetime.datetime.now(datetime.UTC).date()
    return str(today - datetime.timedelta(days=days_ago))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nightly(directory: Path, base_url: str, key: str) -> subprocess.CompletedProcess[str]:
    """The README's script run by ``sh`` in ``directory``, with this interpreter's
    ``phala-async`` and ``python3`` first on PATH."""
    script = directory / "nightly-inventory.sh"
    script.write_text(readme_block("sh", "nightly-inventory.sh"), encoding="utf-8")
    bin_dir = str(Path(sys.executable).parent)
    env = subprocess_env(
        PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
        INVENTORY_DIR=str(directory),
        PHALA_CLOUD_API_KEY=key,
        PHALA_CLOUD_API_PREFIX=base_url,
    )
    return subprocess.run(  # noqa: S603 - sh on the README's script, in a temporary directory
        [shutil.which("sh") or "/bin/sh", str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )


@pytest.fixture(name="yesterday")
def yesterday_fixture(served: PhalaSimulator, tmp_path: Path) -> bytes:
    """Yesterday's inventory, swept from the simulator, with CVM 3 in another region."""
    path = tmp_path / f"cvms-{day(1)}.jsonl"
    assert run(served, "--quiet", "sweep", "--all", "-o", str(path)) == 0
    records = path.read_text().replace('"region_identifier":"', '"region_identifier":"old-', 1)
    path.write_text(records)
    return path.read_bytes()


def test_the_script_uses_no_gnu_only_date() -> None:
    """The script computes dates portably: no `date -d` (GNU only) nor `date -v` (BSD only)."""
    script = readme_block("sh", "nightly-inventory.sh")
    assert "date -d" not in script
    assert "date -v" not in script


@posix_only
@pytest.mark.slow  # processes run one after another
def test_against_a_dead_api_it_exits_1_with_a_clear_line_and_diffs_nothing(
    tmp_path: Path, yesterday: bytes
) -> None:
    """A dead API: exit 1, one line saying nothing was written, no today file, no report, and
    yesterday's file byte for byte."""
    done = nightly(tmp_path, f"http://127.0.0.1:{closed_port()}/api/v1", SECRET_KEY)
    assert done.returncode == 1, done.stderr
    assert "no answer from the API" in done.stderr
    assert not (tmp_path / f"cvms-{day(0)}.jsonl").exists()
    assert not (tmp_path / f"changes-{day(0)}.txt").exists()
    assert (tmp_path / f"cvms-{day(1)}.jsonl").read_bytes() == yesterday


@posix_only
@pytest.mark.slow  # processes run one after another
def test_against_a_refusing_api_it_exits_3(
    served: PhalaSimulator, tmp_path: Path, yesterday: bytes
) -> None:
    """A refused key: exit 3 and the line to renew it; nothing written, nothing diffed."""
    done = nightly(tmp_path, served.base_url, WRONG_KEY)
    assert done.returncode == 3
    assert "the API key was refused: renew it" in done.stderr
    assert not (tmp_path / f"cvms-{day(0)}.jsonl").exists()
    assert not (tmp_path / f"changes-{day(0)}.txt").exists()


@posix_only
@pytest.mark.slow  # processes run one after another
def test_against_a_healthy_api_it_exits_0_with_the_report(
    served: PhalaSimulator, tmp_path: Path, yesterday: bytes
) -> None:
    """A healthy API: exit 0, today's file with every CVM, a snapshot in the store, and the
    report naming the one change since yesterday."""
    done = nightly(tmp_path, served.base_url, SECRET_KEY)
    assert done.returncode == 0, done.stderr
    assert len(jsonl((tmp_path / f"cvms-{day(0)}.jsonl").read_text())) == 30
    report = (tmp_path / f"changes-{day(0)}.txt").read_text().splitlines()
    assert report[-1] == "1 changed."
    assert "teepod.region_identifier" in report[-2]
    with sqlite3.connect(tmp_path / "inventory.db") as connection:
        assert connection.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 1


def test_the_readme_queries_answer_their_questions(served: PhalaSimulator, tmp_path: Path) -> None:
    """The README's two sqlite3 queries give CVM 1234's region by snapshot and what changed
    between two snapshots, on a store of 1,234+ CVMs swept twice with one change."""
    store = tmp_path / "inventory.db"
    served.add_cvms(1234 - 32)  # ids 33..1234 are workspace CVMs
    ids = ["1234", "5", "6"]
    assert run(served, "--quiet", "sweep", *ids, "--store", str(store)) == 0
    region = served.cvm(1234)["teepod"]["region_identifier"]
    served.update_cvm(1234, teepod={**served.cvm(1234)["teepod"], "region_identifier": "mars"})
    assert run(served, "--quiet", "sweep", *ids, "--store", str(store)) == 0
    by_region, what_changed = readme_block("sql", "CVM 1234").split("\n\n")
    what_changed = what_changed.replace("= 7", "= 2").replace("= 6", "= 1")
    with sqlite3.connect(store) as connection:
        regions = connection.execute(by_region).fetchall()
        changed = connection.execute(what_changed).fetchall()
    assert [(number, value) for number, _, value in regions] == [(1, region), (2, "mars")]
    assert changed == [("1234", served.cvm(1234)["name"])]
