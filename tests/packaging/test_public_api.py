"""Tests that the package's public surface is exactly what ``__all__`` declares."""

from __future__ import annotations

import importlib.resources
import types

import phala_async


def _ruff_sort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 (the linter this project runs) keeps ``__all__`` in:
    SCREAMING_SNAKE_CASE first, then CamelCase, then everything else, each alphabetical."""
    if name.isupper() and len(name) > 1:
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted() -> None:
    """``__all__`` is kept sorted, the way the project's linter sorts it."""
    assert phala_async.__all__ == sorted(phala_async.__all__, key=_ruff_sort_key)


def test_all_has_no_duplicates() -> None:
    """No name is listed twice in ``__all__``."""
    assert len(phala_async.__all__) == len(set(phala_async.__all__))


def test_all_is_exactly_the_public_names() -> None:
    """Every importable name not starting with ``_`` (submodules aside) is in ``__all__``, and
    nothing else is but ``__version__``."""
    public = {
        name
        for name, value in vars(phala_async).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(phala_async.__all__) == public | {"__version__"}


def test_every_name_in_all_resolves() -> None:
    """Each name in ``__all__`` is an attribute of the package."""
    missing = [name for name in phala_async.__all__ if not hasattr(phala_async, name)]
    assert missing == []


def test_version_is_a_string() -> None:
    """``__version__`` is a non-empty version string."""
    assert isinstance(phala_async.__version__, str)
    assert phala_async.__version__.count(".") >= 1


def test_py_typed_ships() -> None:
    """The ``py.typed`` marker is in the package, so type checkers use its annotations."""
    marker = importlib.resources.files("phala_async") / "py.typed"
    assert marker.is_file()


def test_what_the_listing_and_watch_return_is_exported() -> None:
    """The types ``list_cvms``, sweeps and ``watch_cvms`` hand out can be imported by name."""
    wanted = {
        "CvmEvent",
        "CvmFailed",
        "CvmOk",
        "CvmPage",
        "CvmWatch",
        "GuestEvent",
        "HostedCvm",
        "ManagedUser",
        "StatusTimeoutError",
        "SweepResult",
        "VmConfiguration",
        "VmInfo",
    }
    assert wanted <= set(phala_async.__all__)
