"""The ``phala-async`` command line: ``get``, ``sweep``, ``serve`` and ``demo``.

:func:`main` parses the arguments, runs one command on an event loop (uvloop when installed) and
returns the exit status: 0 every id ok, 1 some ids failed (the others are still written), 2 bad
usage or configuration, 130 interrupted. Credentials never appear in anything it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import msgspec

from ._bulk import SweepResult
from ._cli_output import (
    NullWriter,
    RecordWriter,
    Redactor,
    UsageError,
    logging_to_stderr,
    open_writer,
    print_error,
)
from ._cli_progress import (
    SweepReport,
    distinct_ids,
    print_outcome,
    read_ids_file,
    run_sweep,
    uncancel,
    workspace_ids,
)
from ._client import PhalaClient
from ._config import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL
from ._errors import ConfigurationError
from ._version import __version__

if TYPE_CHECKING:
    from .testing import PhalaSimulator

__all__ = ["main"]

_T = TypeVar("_T")

PROG = "phala-async"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# What `serve --fault-rate` and the demo inject: failures a client must retry. No random 429s:
# a real one comes from a limit (`--rate`), and random ones teach the client's adaptive pacing a
# limit that is not there, so it crawls.
SIMULATED_FAULTS = ("500", "502", "503", "504", "reset")
# The demo: 5% of requests fail, and 429s with `Retry-After: 1` above a request budget per
# second, so that retries, the shared pause and the adaptive pacing all show.
DEMO_FAULT_RATE = 0.05
DEMO_RATE_LIMIT = 200.0

_DEFAULTS = {
    name: parameter.default for name, parameter in inspect.signature(PhalaClient).parameters.items()
}

_DESCRIPTION = """\
Fetch Phala Cloud CVM details from the shell: one, a list, or a whole workspace,
retried and bounded, written as JSON lines or CSV. Options may go before or after
the command."""

_EPILOG = """\
examples:
  phala-async demo                        sweep 1,000 simulated CVMs, no account needed
  export PHALA_CLOUD_API_KEY=phak_...     your key (Phala Cloud dashboard, API keys)
  phala-async get 1234 my-cvm-name        CVM details, one JSON object per line
  phala-async sweep --all -o cvms.jsonl   every CVM of the workspace, a record per line
  phala-async sweep --ids-file ids.txt --format csv -o cvms.csv
  cut -d, -f1 list.csv | phala-async sweep --ids-file -
  phala-async serve                       a local API to try --base-url against

exit status: 0 all ids ok, 1 some ids failed (the others are written), 2 bad usage or
configuration, 130 interrupted (Ctrl-C; completed records are kept).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _number(kind: Callable[[str], float], rule: str, check: Callable[[float], bool]) -> Any:
    """An argparse type: ``kind`` of the text, refused with ``rule`` unless ``check`` passes."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_POSITIVE_INT = _number(int, "> 0", lambda value: value > 0)
_POSITIVE = _number(float, "> 0", lambda value: value > 0)
_COUNT = _number(int, ">= 0", lambda value: value >= 0)
_FRACTION = _number(float, "between 0 and 1", lambda value: 0 <= value <= 1)
_PORT = _number(int, "from 0 to 65535", lambda value: 0 <= value <= 65535)


def _global_options(*, in_command: bool) -> _Parser:
    # Built twice, for the top-level parser and for every command, so options may go before or
    # after the command name. In a command, SUPPRESS keeps an option that was not repeated there
    # from overwriting what came before the name. (Two builds: argparse shares Action objects
    # with the parsers a parent is given to, defaults included.)
    options = _Parser(add_help=False, argument_default=argparse.SUPPRESS if in_command else None)
    group = options.add_argument_group("connection options (any command)")
    group.add_argument(
        "--api-key", metavar="KEY", help=f"a dashboard API key (phak_...); default ${API_KEY_ENV}"
    )
    group.add_argument(
        "--token", metavar="TOKEN", help="an OAuth access token, instead of an API key"
    )
    group.add_argument(
        "--base-url",
        metavar="URL",
        help=f"the API prefix; default ${BASE_URL_ENV}, else {DEFAULT_BASE_URL}",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_POSITIVE,
        help=f"seconds one request may take (default {_DEFAULTS['timeout']:g})",
    )
    group.add_argument(
        "--max-attempts",
        metavar="N",
        type=_POSITIVE_INT,
        help=f"requests per id at most, retries included; 1 disables retries "
        f"(default {_DEFAULTS['max_attempts']})",
    )
    group.add_argument(
        "--concurrency",
        metavar="N",
        type=_POSITIVE_INT,
        help=f"requests in flight at most (default {_DEFAULTS['concurrency']})",
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar and no summary on stderr"
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        help="log retries (-v) and every request (-vv) to stderr; credentials are never logged",
    )
    return options


def _output_options(parser: argparse.ArgumentParser, *, default_to: str) -> None:
    parser.add_argument(
        "--format", choices=("jsonl", "csv"), default="jsonl", help="record format (default jsonl)"
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help=f"write the records to FILE (default {default_to})"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``phala-async``."""
    parser = _Parser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_options(in_command=False)],
    )
    parser.set_defaults(verbose=0)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    options = _global_options(in_command=True)

    def command(name: str, summary: str, run: Callable[..., int]) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary, parents=[options])
        sub.set_defaults(run=run)
        return sub

    get = command("get", "Print CVMs as JSON, one object per line; errors go to stderr.", _get)
    get.add_argument(
        "ids",
        nargs="+",
        metavar="ID",
        help="integer id, name, app_<hex> app id, VM UUID or instance id",
    )
    sweep = command(
        "sweep",
        "Fetch many CVMs and write one record per id as each completes.",
        _sweep_command,
    )
    sweep.add_argument("ids", nargs="*", metavar="ID", help="ids to fetch (any form get takes)")
    sweep.add_argument(
        "--ids-file", metavar="FILE", help="read ids from FILE, one per line ('-' for stdin)"
    )
    sweep.add_argument("--all", action="store_true", help="fetch every CVM of the workspace")
    _output_options(sweep, default_to="stdout")
    serve = command(
        "serve",
        "Run the local Phala Cloud simulator on 127.0.0.1 until Ctrl-C.",
        _serve_command,
    )
    serve.add_argument(
        "--port",
        metavar="P",
        type=_PORT,
        default=8787,
        help="port on 127.0.0.1; 0 picks a free one (default 8787)",
    )
    serve.add_argument(
        "--cvms",
        metavar="N",
        type=_COUNT,
        default=1000,
        help="CVMs in the workspace (default 1000)",
    )
    serve.add_argument(
        "--fault-rate",
        metavar="F",
        type=_FRACTION,
        default=0.0,
        help="share of requests failing with 500/502/503/504 or a reset, 0 to 1 (default 0)",
    )
    serve.add_argument(
        "--rate",
        metavar="R",
        type=_POSITIVE,
        help="requests answered per second before 429 + Retry-After (default: no limit)",
    )
    serve.add_argument(
        "--seed",
        metavar="S",
        type=int,
        default=0,
        help="seed of the CVM data and the faults (default 0)",
    )
    demo = command(
        "demo",
        "Sweep a simulated workspace with faults and a rate limit, to see it work.",
        _demo_command,
    )
    demo.add_argument("--cvms", metavar="N", type=_COUNT, default=1000, help="CVMs to sweep (1000)")
    _output_options(demo, default_to="none: nothing is written")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``phala-async`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE if exc.code else EXIT_OK
    redact = Redactor((args.api_key, args.token, os.environ.get(API_KEY_ENV)))
    with logging_to_stderr(args.verbose, redact):
        try:
            code: int = args.run(args, redact)
        except (UsageError, ConfigurationError) as exc:
            print_error(redact(str(exc)))
            return EXIT_USAGE
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader of stdout went away (`| head`): stop quietly, as other tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILED
        return code


# -- get ------------------------------------------------------------------------------------


def _get(args: argparse.Namespace, redact: Redactor) -> int:
    client = _make_client(args)
    results = _run(_get_all(client, args.ids))
    failed = 0
    for result in results:
        if result.cvm is not None:
            sys.stdout.write(msgspec.json.encode(result.cvm).decode() + "\n")
        else:
            failed += 1
            print_error(redact(str(result.error)))
    sys.stdout.flush()
    return EXIT_FAILED if failed else EXIT_OK


async def _get_all(client: PhalaClient, ids: list[str]) -> list[SweepResult]:
    async with client:
        return await client.get_cvms(ids)


# -- sweep ----------------------------------------------------------------------------------


def _sweep_command(args: argparse.Namespace, redact: Redactor) -> int:
    if args.all and (args.ids or args.ids_file):
        raise UsageError("--all sweeps the whole workspace: give it no ids and no --ids-file")
    if not (args.all or args.ids or args.ids_file):
        raise UsageError("nothing to sweep: give ids, --ids-file FILE ('-' for stdin), or --all")
    given = args.ids + (read_ids_file(args.ids_file) if args.ids_file is not None else [])
    ids = None if args.all else distinct_ids(given)
    client = _make_client(args)
    writer = open_writer(args.format, args.output, redact=redact)
    try:
        source = workspace_ids(client) if ids is None else ids
        total = None if ids is None else len(ids)
        report = _run(
            run_sweep(
                client, source, total=total, writer=writer, show_progress=_shows_progress(args)
            )
        )
    finally:
        writer.close()
    return _finish(report, args, redact)


def _finish(report: SweepReport, args: argparse.Namespace, redact: Redactor) -> int:
    destination = args.output if args.output not in (None, "-") else None
    print_outcome(report, quiet=args.quiet, destination=destination, redact=redact)
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if report.failure or report.tally.failed else EXIT_OK


def _shows_progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() and not args.quiet


# -- serve and demo ---------------------------------------------------------------------------


def _simulator(**options: Any) -> PhalaSimulator:
    from .testing import PhalaSimulator  # aiohttp.web is loaded only for these two commands

    return PhalaSimulator(host="127.0.0.1", **options)


def _serve_command(args: argparse.Namespace, redact: Redactor) -> int:
    simulator = _simulator(
        cvms=args.cvms,
        fault_rate=args.fault_rate,
        faults=SIMULATED_FAULTS,
        rate_limit=args.rate,
        seed=args.seed,
        port=args.port,
    )
    try:
        return _run(_serve(simulator))
    except OSError as exc:
        raise UsageError(
            f"cannot listen on 127.0.0.1:{args.port} ({exc.strerror}): pick another --port, "
            f"or --port 0 for any free one"
        ) from exc


async def _serve(simulator: PhalaSimulator) -> int:
    async with simulator:
        url, key = simulator.base_url, simulator.api_key
        print(
            f"Phala Cloud API simulator: {len(simulator.cvm_ids)} CVMs, running until Ctrl-C\n"
            f"base URL: {url}\n"
            f"API key:  {key}  (a fixed test value, not a secret)\n"
            f"try:      {PROG} --base-url {url} --api-key {key} sweep --all",
            flush=True,
        )
        stopped = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # Not on Windows, nor outside the main thread: Ctrl-C still works there.
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
        try:
            await stopped.wait()
        except asyncio.CancelledError:  # Ctrl-C: the normal way to stop a server
            uncancel()
    print("simulator stopped", file=sys.stderr)
    return EXIT_OK


def _demo_command(args: argparse.Namespace, redact: Redactor) -> int:
    simulator = _simulator(
        cvms=args.cvms,
        fault_rate=DEMO_FAULT_RATE,
        faults=SIMULATED_FAULTS,
        rate_limit=DEMO_RATE_LIMIT,
        rate_limit_retry_after=1,
    )
    writer = (
        NullWriter()
        if args.output is None
        else open_writer(args.format, args.output, redact=redact)
    )
    try:
        report = _run(_demo(simulator, writer, args))
    finally:
        writer.close()
    code = _finish(report, args, redact)
    if not args.quiet:
        print(
            f"\nYour own workspace: export {API_KEY_ENV}=phak_... and run "
            f"`{PROG} sweep --all -o cvms.jsonl` ({PROG} --help for more).",
            file=sys.stderr,
        )
    return code


async def _demo(
    simulator: PhalaSimulator, writer: RecordWriter, args: argparse.Namespace
) -> SweepReport:
    async with simulator:
        if not args.quiet:
            faults = "/".join(SIMULATED_FAULTS).replace("reset", "connection reset")
            print(
                f"Demo: a local Phala Cloud API simulator with {args.cvms} CVMs at "
                f"{simulator.base_url}.\nIt fails {DEMO_FAULT_RATE:.0%} of requests ({faults}) "
                f"and answers 429 with Retry-After: 1\nabove {DEMO_RATE_LIMIT:g} requests/s. "
                f"Sweeping the whole workspace, as `{PROG} sweep --all` does:",
                file=sys.stderr,
            )
        client = PhalaClient(
            api_key=simulator.api_key, base_url=simulator.base_url, **_client_options(args)
        )
        # The demo knows its workspace size, so the bar can show a total and an ETA.
        return await run_sweep(
            client,
            workspace_ids(client),
            total=args.cvms,
            writer=writer,
            show_progress=_shows_progress(args),
        )


# -- shared plumbing --------------------------------------------------------------------------


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    # Only what was given: the client's own defaults stay the single source.
    names = ("timeout", "max_attempts", "concurrency")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _make_client(args: argparse.Namespace) -> PhalaClient:
    if args.api_key is not None and args.token is not None:
        raise UsageError("give --api-key or --token, not both")
    if args.api_key is None and args.token is None and not os.environ.get(API_KEY_ENV):
        raise UsageError(
            f"no credentials: pass --api-key KEY (a dashboard API key), --token TOKEN, or set "
            f"{API_KEY_ENV}; '{PROG} demo' runs without one"
        )
    return PhalaClient(
        api_key=args.api_key, token=args.token, base_url=args.base_url, **_client_options(args)
    )


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` on uvloop when it is installed (the ``speed`` extra), else on asyncio's
    own loop. Ctrl-C cancels it; if it does not finish then, KeyboardInterrupt is raised."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coroutine)
