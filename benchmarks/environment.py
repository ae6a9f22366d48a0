"""The machine and the libraries a run measured on: what the report says first about a run."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import Any

LIBRARIES = (
    "phala-async",
    "aiohttp",
    "msgspec",
    "tenacity",
    "aiolimiter",
    "yarl",
    "multidict",
    "uvloop",
    "httpx",
    "httpcore",
    "anyio",
    "sniffio",
    "pydantic",
    "pydantic-core",
    "orjson",
    "phala-cloud",
)


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, Python and OS of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            models = [
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            ]
        cpu = models[0] if models else cpu
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as meminfo:
            total_kib = int(
                next(line for line in meminfo if line.startswith("MemTotal")).split()[1]
            )
        memory = f"{total_kib / 1024**2:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory": memory,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
    }


def versions(names: Sequence[str] = LIBRARIES) -> dict[str, str | None]:
    """Installed version of each library, None when it is not installed."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (other work on the machine adds noise)."""
    try:
        return [round(load, 2) for load in os.getloadavg()]
    except OSError:
        return None


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
