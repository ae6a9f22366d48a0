"""The package reads top-down: no import circles, and only the top imports the client."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "phala_async"
# The modules allowed to import _client: the package root, which re-exports, and the CLI.
CLIENT_USERS = {"__init__", "__main__"}


def imports_of(path: Path) -> set[str]:
    """The package modules that one module imports (by module name, without the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("phala_async."):
                found.add(node.module.split(".")[1])
            elif node.module == "phala_async":
                found.update(alias.name for alias in node.names if alias.name.startswith("_"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("phala_async."):
                    found.add(alias.name.split(".")[1])
    return found


def graph() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports."""
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    return {name: imports_of(path) & modules.keys() for name, path in modules.items()}


def test_only_the_package_root_and_the_cli_import_the_client() -> None:
    """No module but ``__init__`` and the CLI's imports ``_client``."""
    importers = {name for name, imported in graph().items() if "_client" in imported}
    assert {name for name in importers if not name.startswith("_cli")} <= CLIENT_USERS


def test_there_is_no_import_circle() -> None:
    """Following imports from any module never leads back to it."""
    edges = graph()
    circles = []
    for start in edges:
        seen: set[str] = set()
        stack = list(edges[start])
        while stack:
            name = stack.pop()
            if name == start:
                circles.append(start)
                break
            if name not in seen:
                seen.add(name)
                stack.extend(edges.get(name, ()))
    assert circles == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("from . import _client\n", {"_client"}, id="relative-module"),
        pytest.param("from ._bulk import CvmStream\n", {"_bulk"}, id="relative-name"),
        pytest.param("from phala_async import _sim_data\n", {"_sim_data"}, id="absolute"),
    ],
)
def test_imports_are_found_in_every_form(tmp_path: Path, source: str, expected: set[str]) -> None:
    """The scan sees relative and absolute imports alike, so the checks above can fail."""
    path = tmp_path / "module.py"
    path.write_text(source, encoding="utf-8")
    assert imports_of(path) == expected
