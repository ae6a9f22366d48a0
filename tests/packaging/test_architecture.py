"""The package reads top-down: the core imports neither ``cli/`` nor ``testing/``, only the top
imports the client, and there is no import circle.

Modules are named by their dotted path inside the package (``_client``, ``cli._main``,
``testing._data``); a sub-package's ``__init__`` by the sub-package (``cli``), the package's own by
``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import phala_async

PACKAGE = Path(phala_async.__file__).resolve().parent
# The sub-packages that stand above (the command line) or beside (the simulator) the core.
OUTSIDE_THE_CORE = {"cli", "testing"}
# Besides the command line: the package root, which re-exports, and `python -m phala_async`.
CLIENT_USERS = {"__init__", "__main__"}
# `python -m phala_async` is the command line's second entry point, so it may import `cli`.
CLI_ENTRY_POINTS = {"__main__"}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """The dotted name of the module at ``path`` inside ``package``."""
    parts = path.relative_to(package).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def imports_of(source: str, module: str, modules: set[str]) -> set[str]:
    """The package modules (names from ``modules``) that ``module``, holding ``source``, imports."""
    here = [] if module == "__init__" else module.split(".")
    # `from .` in a package (a name others sit under) is the package, in a module its parent.
    is_package = module == "__init__" or any(name.startswith(f"{module}.") for name in modules)
    package = here if is_package else here[:-1]
    found: set[str] = set()

    def add(target: list[str], names: list[str]) -> None:
        for name in names:
            candidate = ".".join([*target, name])
            found.add(candidate if candidate in modules else ".".join(target) or "__init__")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and (node.module + ".").startswith("phala_async."):
                target = node.module.split(".")[1:]
            else:
                continue
            add(target, [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("phala_async."):
                    found.add(alias.name.removeprefix("phala_async."))
    return found & modules


def graph() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {
        name: imports_of(path.read_text(encoding="utf-8"), name, modules)
        for name, path in paths.items()
    }


def outside_the_core(module: str) -> bool:
    """Whether ``module`` belongs to ``cli/`` or ``testing/``."""
    return module.split(".")[0] in OUTSIDE_THE_CORE


def test_the_package_has_the_cli_and_testing_sub_packages() -> None:
    """``cli`` and ``testing`` are sub-packages, and no ``_cli*`` or ``_sim_*`` module is left at
    the top."""
    names = set(graph())
    assert {"cli", "cli._main", "testing", "testing._simulator"} <= names
    assert [name for name in names if name == "_cli" or name.startswith(("_cli_", "_sim_"))] == []


def test_the_core_imports_neither_the_cli_nor_the_simulator() -> None:
    """No module outside ``cli/`` and ``testing/`` (but ``__main__``) imports either."""
    offenders = {
        name: sorted(filter(outside_the_core, imported))
        for name, imported in graph().items()
        if not outside_the_core(name) and name not in CLI_ENTRY_POINTS
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_only_the_package_root_and_the_cli_import_the_client() -> None:
    """No module but ``__init__``, ``__main__`` and the command line's imports ``_client``."""
    importers = {name for name, imported in graph().items() if "_client" in imported}
    assert {name for name in importers if name.split(".")[0] != "cli"} <= CLIENT_USERS


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


MODULES = {"__init__", "_client", "_client_options", "cli", "cli._main", "testing", "testing._data"}


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        pytest.param("_bulk", "from . import _client\n", {"_client"}, id="relative-module"),
        pytest.param("_bulk", "from ._client import X\n", {"_client"}, id="relative-name"),
        pytest.param(
            "_bulk", "from ._client_options import X\n", {"_client_options"}, id="not-a-prefix"
        ),
        pytest.param("cli._main", "from .._client import X\n", {"_client"}, id="parent"),
        pytest.param("testing", "from . import _data\n", {"testing._data"}, id="sub-package-init"),
        pytest.param("_bulk", "from .testing import X\n", {"testing"}, id="sub-package"),
        pytest.param(
            "_bulk", "from phala_async.testing import _data\n", {"testing._data"}, id="absolute"
        ),
        pytest.param("_bulk", "from phala_async import cli\n", {"cli"}, id="absolute-package"),
        pytest.param("_bulk", "import phala_async.cli._main\n", {"cli._main"}, id="import"),
        pytest.param("cli._main", "from phala_async import X\n", {"__init__"}, id="root"),
    ],
)
def test_imports_are_found_in_every_form(module: str, source: str, expected: set[str]) -> None:
    """The scan sees relative and absolute imports alike, so the checks above can fail."""
    assert imports_of(source, module, MODULES) == expected
