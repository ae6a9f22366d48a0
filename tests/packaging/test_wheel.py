"""The built wheel, installed on its own in a fresh virtual environment: it holds the package and
nothing else, and there it runs the CLI and serves the simulator without the source tree.

The wheel is built here, from a fresh sdist as `make dist` builds it: a stale one is never tested.
Each test runs from an empty temporary directory, so nothing can be imported from the source tree.
Run as a script, ``python tests/packaging/test_wheel.py WHEEL`` prints the wheel's file list and
exits 1 if a file is missing or unexpected (`make dist` does this).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from phala_async import __version__

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "phala_async"
BUILD_TIMEOUT = 300  # seconds: building, or pip fetching the dependencies on a cold cache
RUN_TIMEOUT = 60  # seconds any command of the installed package may run

# Run inside the venv, from a directory holding no source: fetch one CVM from the simulator.
FETCH_ONE_CVM = """
import asyncio, json
import phala_async
from phala_async import PhalaClient
from phala_async.testing import PhalaSimulator

async def main():
    async with PhalaSimulator(cvms=10) as sim:
        async with PhalaClient(api_key=sim.api_key, base_url=sim.base_url) as client:
            cvm = await client.get_cvm(7)
        served = sim.cvm(7)
    print(json.dumps({"file": phala_async.__file__, "got": [cvm.id, cvm.name],
                      "served": [served["id"], served["name"]]}))

asyncio.run(main())
"""


def expected_wheel_files(root: Path, version: str) -> set[str]:
    """Every file of the package in ``root`` (bytecode aside), and the metadata a wheel carries."""
    package = root / PACKAGE
    sources = {
        path.relative_to(root).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    dist_info = f"{PACKAGE}-{version}.dist-info"
    metadata = ("METADATA", "WHEEL", "RECORD", "entry_points.txt", "licenses/LICENSE")
    return sources | {f"{dist_info}/{name}" for name in metadata}


def wheel_problems(wheel: Path, root: Path, version: str) -> list[str]:
    """What is wrong with ``wheel``: files missing or unexpected, or a licence not declared."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata_name = f"{PACKAGE}-{version}.dist-info/METADATA"
        metadata = archive.read(metadata_name).decode() if metadata_name in names else ""
    expected = expected_wheel_files(root, version)
    problems = [f"missing: {name}" for name in sorted(expected - names)]
    problems += [f"unexpected: {name}" for name in sorted(names - expected)]
    problems += [
        f"METADATA lacks {line!r}"
        for line in ("License-Expression: Apache-2.0", "License-File: LICENSE")
        if line not in metadata.splitlines()
    ]
    return problems


def run(*command: str | Path, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``command`` run from ``cwd``, without the caller's PYTHONPATH or PHALA_CLOUD_* variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME"} and not key.startswith("PHALA_CLOUD_")
    }
    return subprocess.run(  # noqa: S603 - our interpreter, pip, build and the installed CLI
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def scripts(venv: Path) -> Path:
    """Where ``venv`` keeps its interpreter and console scripts."""
    return venv / ("Scripts" if sys.platform == "win32" else "bin")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built now from an sdist of the source tree, as `make dist` builds it."""
    out = tmp_path_factory.mktemp("dist")
    done = run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out, timeout=BUILD_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh virtual environment holding the wheel, and its dependencies as pip resolves them."""
    root = tmp_path_factory.mktemp("venv")
    created = run(sys.executable, "-m", "venv", root, cwd=root, timeout=BUILD_TIMEOUT)
    assert created.returncode == 0, created.stderr
    python = scripts(root) / "python"
    install = (python, "-m", "pip", "install", "--disable-pip-version-check", wheel)
    installed = run(*install, cwd=root, timeout=BUILD_TIMEOUT)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return root


def test_wheel_holds_the_package_and_licence_and_nothing_else(wheel: Path) -> None:
    """The wheel holds every package file, py.typed and LICENSE, and no tests or benchmarks."""
    assert wheel_problems(wheel, ROOT, __version__) == []


def test_wheel_check_names_missing_and_unexpected_files(tmp_path: Path) -> None:
    """A wheel lacking a module and holding a test fails the check, which names both."""
    names = expected_wheel_files(ROOT, __version__) - {f"{PACKAGE}/testing/_data.py"}
    names |= {"tests/conftest.py"}
    bad = tmp_path / "bad.whl"
    with zipfile.ZipFile(bad, "w") as archive:
        for name in names:
            archive.writestr(name, "License-Expression: Apache-2.0\nLicense-File: LICENSE\n")
    assert wheel_problems(bad, ROOT, __version__) == [
        f"missing: {PACKAGE}/testing/_data.py",
        "unexpected: tests/conftest.py",
    ]


def test_installed_cli_prints_the_version(venv: Path, tmp_path: Path) -> None:
    """`phala-async --version` from the wheel prints the version of phala_async/_version.py."""
    done = run(scripts(venv) / "phala-async", "--version", cwd=tmp_path, timeout=RUN_TIMEOUT)
    assert (done.returncode, done.stdout) == (0, f"phala-async {__version__}\n"), done.stderr


def test_installed_cli_demo_sweeps_every_cvm(venv: Path, tmp_path: Path) -> None:
    """`phala-async demo --cvms 50` from the wheel runs the simulator and sweeps all 50 CVMs."""
    command = (scripts(venv) / "phala-async", "demo", "--cvms", "50")
    done = run(*command, cwd=tmp_path, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert "Swept 50 ids" in done.stderr
    assert "50 ok, 0 failed" in done.stderr


def test_installed_package_fetches_a_cvm_from_its_simulator(venv: Path, tmp_path: Path) -> None:
    """Imported from the venv, PhalaClient fetches CVM 7 as PhalaSimulator serves it."""
    command = (scripts(venv) / "python", "-I", "-W", "error", "-c", FETCH_ONE_CVM)
    done = run(*command, cwd=tmp_path, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # a warning at exit (an unclosed session) is only printed
    result = json.loads(done.stdout)
    assert Path(result["file"]).is_relative_to(venv)
    assert result["got"] == result["served"]
    assert result["got"][0] == 7


def main(argv: Sequence[str]) -> int:
    """Print each wheel's files, then any problem; 1 if there is one."""
    failed = False
    for wheel in map(Path, argv):
        with zipfile.ZipFile(wheel) as archive:
            print(f"{wheel.name}:", *sorted(archive.namelist()), sep="\n  ")
        problems = wheel_problems(wheel, ROOT, __version__)
        if problems:
            print(*problems, sep="\n", file=sys.stderr)
            failed = True
        else:
            print("ok: the whole package, py.typed and LICENSE; no tests, no benchmarks")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
