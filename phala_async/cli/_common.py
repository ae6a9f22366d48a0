"""What every command of the command line shares: exit statuses, the usage error, the client built
from the options, which credential was used, and running a command's coroutine so that SIGINT and
SIGTERM stop it cleanly."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from phala_async._client import PhalaClient
from phala_async._config import API_KEY_ENV
from phala_async._errors import ConfigurationError
from phala_async._models_v2026 import AnyCvm
from phala_async._versions import API_VERSION

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_STOPPED",
    "EXIT_USAGE",
    "PROG",
    "Stop",
    "StoppedBySignal",
    "UsageError",
    "client_options",
    "credential_source",
    "in_option_words",
    "make_client",
    "masked_command",
    "plural",
    "refused_message",
    "run_command",
]

_T = TypeVar("_T")

PROG = "phala-async"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
#: The sweep stopped before every id was attempted (the API unreachable, stopped early, or
#: another sweep writing the same output): FILE untouched, FILE.partial kept.
EXIT_STOPPED = 4

# The client's messages name its arguments; the command line's name its options.
_OPTION_WORDING = (
    ("pass allow_insecure_http=True", "pass --allow-insecure-http"),
    ("pass ca_file= (a PEM bundle) or ssl= (an ssl.SSLContext)", "pass --ca-file (a PEM bundle)"),
    ("pass ca_file=", "pass --ca-file"),
    ("proxy=", "--proxy "),
    ("pass api_key= or token=", "pass --api-key or --token"),
    ("base_url ", "--base-url "),
)


class UsageError(Exception):
    """A command line that cannot run (exit status 2); the message says what to do instead."""


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 id``, ``2 ids``: the count with its noun agreeing (``nouns`` when not ``noun + s``)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def masked_command(argv: list[str] | None = None) -> str:
    """The command line (default ``sys.argv``) as ``phala-async ...``, the values of
    ``--api-key`` and ``--token`` masked: safe to record and to show to another process."""
    words, hide = [PROG], False
    for word in sys.argv[1:] if argv is None else argv:
        if hide:
            words.append("***")
        elif word.startswith(("--api-key=", "--token=")):
            words.append(word.split("=", 1)[0] + "=***")
        else:
            words.append(word)
        hide = word in ("--api-key", "--token")
    return " ".join(words)


def credential_source(args: argparse.Namespace) -> str:
    """Which credential the command uses and where it came from, never its value."""
    if getattr(args, "token", None) is not None:
        return "the OAuth token from --token"
    if getattr(args, "api_key", None) is not None:
        return "the API key from --api-key"
    return f"the API key from ${API_KEY_ENV}"


def refused_message(args: argparse.Namespace, why: str) -> str:
    """The one line saying the API refused the credential: which one, from where, and ``why``."""
    return (
        f"the API refused {credential_source(args)} ({why}): check it, or pass another with "
        f"--api-key, --token or ${API_KEY_ENV}"
    )


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The request options that were given: the client's own defaults stay the single source."""
    names = ("timeout", "max_attempts", "concurrency")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def make_client(args: argparse.Namespace) -> PhalaClient[AnyCvm]:
    """The client the connection and request options describe.

    Raises:
        UsageError: no credential, both kinds, or a value the client refuses (worded with the
            command line's option names).
    """
    if args.api_key is not None and args.token is not None:
        raise UsageError("give --api-key or --token, not both")
    if args.api_key is None and args.token is None and not os.environ.get(API_KEY_ENV):
        raise UsageError(
            f"no credentials: pass --api-key KEY (a dashboard API key), --token TOKEN, or set "
            f"{API_KEY_ENV}; '{PROG} demo' runs without one"
        )
    try:
        return PhalaClient(
            api_version=getattr(args, "api_version", None) or API_VERSION,
            api_key=args.api_key,
            token=args.token,
            base_url=args.base_url,
            allow_insecure_http=args.allow_insecure_http,
            ca_file=args.ca_file,
            proxy=args.proxy,
            trust_env=args.trust_env,
            **client_options(args),
        )
    except ConfigurationError as exc:
        raise UsageError(in_option_words(str(exc))) from exc


def in_option_words(message: str) -> str:
    """A client message with its argument names (``ca_file=``) as the command line's options."""
    for words, option in _OPTION_WORDING:
        message = message.replace(words, option)
    return message


class Stop:
    """Which signal asked the command to stop: SIGTERM once seen; else Ctrl-C (SIGINT).

    Attributes:
        signal: SIGTERM when it arrived, None otherwise.
    """

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended."""
        return 128 + (self.signal or signal.SIGINT)

    @property
    def name(self) -> str:
        """``Ctrl-C`` or ``SIGTERM``."""
        return "Ctrl-C" if self.signal is None else self.signal.name


class StoppedBySignal(Exception):
    """The command was stopped by SIGINT or SIGTERM before it could finish on its own."""

    def __init__(self, stop: Stop) -> None:
        super().__init__(f"stopped by {stop.name}")
        self.exit_status = stop.exit_status


def run_command(coroutine: Coroutine[Any, Any, _T], stop: Stop | None = None) -> _T:
    """Run ``coroutine`` on uvloop when it is installed (the ``speed`` extra), else on asyncio's
    own loop. Ctrl-C and SIGTERM both cancel it; ``stop`` records which one did. A second one of
    either ends the process at once (KeyboardInterrupt; SIGTERM's default action).

    Raises:
        StoppedBySignal: the coroutine was cancelled by a signal and did not return a value.
    """
    stop = stop or Stop()
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            return runner.run(_stopping_on_sigterm(coroutine, stop))
        except (KeyboardInterrupt, asyncio.CancelledError):
            raise StoppedBySignal(stop) from None


async def _stopping_on_sigterm(coroutine: Coroutine[Any, Any, _T], stop: Stop) -> _T:
    # Docker, systemd and CI stop a process with SIGTERM: treat it as Ctrl-C, which
    # asyncio.Runner already turns into a cancellation of this task.
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - a coroutine run by asyncio.Runner has a task

    def on_sigterm() -> None:
        stop.signal = signal.SIGTERM
        loop.remove_signal_handler(signal.SIGTERM)  # the default action for a second one
        task.cancel()

    installed = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        # Not on Windows, nor outside the main thread: there SIGTERM keeps its default action.
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        installed = True
    try:
        return await coroutine
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)
