"""The built wheel holds the package and nothing else.

The wheel is built here, from a fresh sdist as `make dist` builds it: a stale one is never tested.
Run as a script, ``python tests/test_wheel.py WHEEL`` prints the wheel's file list and exits 1 if a
file is missing or unexpected (`make dist` does this).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from phala_async import __version__

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "phala_async"
BUILD_TIMEOUT = 300  # seconds: building, hatchling fetched on a cold cache


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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built now from an sdist of the source tree, as `make dist` builds it."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(  # noqa: S603 - our own interpreter running build
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("*.whl")
    return built


def test_wheel_holds_the_package_and_licence_and_nothing_else(wheel: Path) -> None:
    """The wheel holds every package file, py.typed and LICENSE, and no tests or benchmarks."""
    assert wheel_problems(wheel, ROOT, __version__) == []


def test_wheel_check_names_missing_and_unexpected_files(tmp_path: Path) -> None:
    """A wheel lacking a module and holding a test fails the check, which names both."""
    names = expected_wheel_files(ROOT, __version__) - {f"{PACKAGE}/_sim_data.py"}
    names |= {"tests/conftest.py"}
    bad = tmp_path / "bad.whl"
    with zipfile.ZipFile(bad, "w") as archive:
        for name in names:
            archive.writestr(name, "License-Expression: Apache-2.0\nLicense-File: LICENSE\n")
    assert wheel_problems(bad, ROOT, __version__) == [
        f"missing: {PACKAGE}/_sim_data.py",
        "unexpected: tests/conftest.py",
    ]


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
