"""One writer per output: an exclusive OS lock on ``PATH.lock`` that a sweep holds for its whole
run, for its ``-o FILE`` and its ``--store`` database alike.

The lock is the operating system's (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows), so
it dies with the process that holds it: a SIGKILLed sweep never leaves a stale lock behind. The
lock file itself stays beside FILE (removing it would race with a process about to lock it); it
holds the holder's pid, start time and command, to name it to a second sweep that is refused.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import IO

__all__ = ["OutputBusyError", "holding", "lock_path"]


class OutputBusyError(Exception):
    """Another process holds the lock: the message names it and says what to do."""


def lock_path(path: str) -> str:
    """The lock file of the output at ``path``."""
    return path + ".lock"


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(file: IO[str]) -> bool:
        try:
            file.seek(0)
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(file: IO[str]) -> bool:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


@contextlib.contextmanager
def holding(path: str, what: str, command: str) -> Iterator[None]:
    """Hold the exclusive lock of the output at ``path`` while the block runs.

    Args:
        path: the output (``-o FILE`` or the ``--store`` database); the lock is ``path.lock``.
        what: how the messages name it (``--output``, ``--store``).
        command: the holder's command line, credentials masked, written for a refused sweep
            to name it (see :func:`masked_command`).

    Raises:
        OutputBusyError: another process holds it; nothing was touched.
        OSError: the lock file cannot be created (an unwritable directory).
    """
    # "a+" creates the file without truncating it: the holder's note stays readable until locked.
    with open(lock_path(path), "a+", encoding="utf-8") as file:
        if not _try_lock(file):
            file.seek(0)
            holder = file.read().strip() or "another process"
            raise OutputBusyError(
                f"{what} {path} is being written by another sweep ({holder}); it was not "
                f"touched: wait for that sweep to end (or stop it), then run this one again"
            )
        file.seek(0)
        file.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        file.write(f"pid {os.getpid()}, started {started}: {command}")
        file.flush()
        yield
