"""The README's Python examples are real: each block type-checks under ``mypy --strict``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[str]:
    """Every fenced ``python`` block of the README, in order."""
    return _BLOCK.findall(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_examples() -> None:
    """The README shows at least the quick example, an app and a bot."""
    blocks = python_blocks()
    assert len(blocks) >= 6
    assert any("watch_cvms" in block for block in blocks)
    assert any("web.Application" in block for block in blocks)


def test_every_readme_example_passes_mypy_strict(tmp_path: Path) -> None:
    """``mypy --strict`` finds no error in any Python block of the README."""
    files = []
    for number, block in enumerate(python_blocks(), start=1):
        path = tmp_path / f"readme_example_{number}.py"
        path.write_text(block, encoding="utf-8")
        files.append(str(path))
    mypy = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(  # noqa: S603 - our own interpreter on files this test wrote
        [*mypy, "--no-error-summary", *files],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.stdout == "", done.stdout
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("bad", ["x: int = 'not an int'\n"])
def test_the_check_catches_a_type_error(tmp_path: Path, bad: str) -> None:
    """The same mypy run reports an error in a block that is wrong, so the check can fail."""
    path = tmp_path / "wrong.py"
    path.write_text(bad, encoding="utf-8")
    done = subprocess.run(  # noqa: S603 - our own interpreter on a file this test wrote
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "c"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1
    assert "Incompatible types in assignment" in done.stdout
