"""The ``phala-async`` command line: ``get``, ``sweep``, ``diff``, ``history``, ``watch``,
``serve``, ``demo``.

:func:`main` parses the arguments, runs one command and returns the exit status (see
:data:`_EPILOG`). Each command lives in its own private module of ``phala_async.cli``; this one
holds the parser.
Credentials never appear in anything the command line prints.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable, Collection, Sequence
from typing import Any, NoReturn

from phala_async._client import PhalaClient
from phala_async._config import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL
from phala_async._errors import ConfigurationError
from phala_async._setup import build_client
from phala_async._version import __version__
from phala_async._versions import API_VERSION, API_VERSIONS

from ._common import EXIT_OK, EXIT_USAGE, PROG, Stop, StoppedBySignal, UsageError
from ._diff import diff_command
from ._get import get_command
from ._history import history_command
from ._output import Redactor, logging_to_stderr, print_error
from ._sim import demo_command, serve_command
from ._summary import add_summary_option
from ._sweep import sweep_command
from ._watch import watch_command

__all__ = ["build_parser", "main"]

# The client's options and their defaults, where they are defined.
_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(build_client).parameters.items()
}
_WATCH_INTERVAL = inspect.signature(PhalaClient.watch_cvms).parameters["interval"].default

_DESCRIPTION = """\
Fetch Phala Cloud CVM details from the shell: one, a list, or a whole workspace,
retried and bounded, written as JSON lines, CSV or a table; compare two sweeps;
or watch CVMs change. Options may go before or after the command."""

_EPILOG = f"""\
examples:
  {PROG} demo                          sweep 1,000 simulated CVMs, no account needed
  export {API_KEY_ENV}=phak_...       your key (Phala Cloud dashboard, API keys)
  {PROG} get 1234 my-cvm-name          CVM details: indented JSON on a terminal,
                                            JSON lines in a pipe
  {PROG} sweep --all -o cvms.jsonl     every CVM of the workspace, a record per line
  {PROG} sweep --all -o cvms.jsonl --resume
                                            continue that sweep after it was stopped
  {PROG} diff old.jsonl cvms.jsonl     what changed since the last sweep
  {PROG} sweep --all --store inv.db    record the sweep as a snapshot in a database
  {PROG} history inv.db 1234           what changed of CVM 1234, snapshot by snapshot
  {PROG} diff inv.db@1 inv.db@latest   what changed since the first snapshot
  {PROG} watch --all --fields status   a line each time a CVM's status changes
  cut -d, -f1 list.csv | {PROG} sweep --ids-file - --format csv -o cvms.csv
                                            (a first line "cvm_id" or "id" is skipped)
  {PROG} serve                         a local API to try --base-url against

exit status:
  0    every id ok (diff: no difference)
  1    some ids failed, FILE written (diff: differences found)
  2    bad usage or configuration, or an unreadable file
  3    the API refused the credential (401); a 403 is about one CVM: exit 1
  4    the sweep stopped before every id was attempted (the API unreachable, a
       wrong base URL, a listing page failed, another sweep writing FILE):
       FILE untouched, FILE.partial kept for --resume
  130  interrupted by Ctrl-C; 143 stopped by SIGTERM (records so far are kept)
"""

_SWEEP_NOTES = """\
With -o FILE the records go to FILE.partial, each flushed as it completes, and
FILE is replaced (fsync, then an atomic rename) only once every id was attempted,
even if some failed: their records say why, and --resume retries them. If the
sweep is interrupted, ends early, gets no answer from the API, or the credential
is refused, FILE is left as it was and FILE.partial keeps the records so far; the
same command with --resume continues from there (or from FILE itself), fetching
only the ids without an ok record. A sweep without --resume replaces a
FILE.partial left by an earlier one. One sweep at a time writes FILE: it holds a
lock on FILE.lock, and a second one exits 4 at once, naming the first.
--store PATH records the sweep as a snapshot in an SQLite database (created on
first use), only once every id was attempted; see 'phala-async history'.
Ids files: one id a line; blank lines and # comments are skipped, and so is a
first line that is exactly cvm_id or id (a CSV column's name)."""

_WATCH_NOTES = """\
Each round fetches the CVMs (all of the workspace with --all, so new and deleted
ones show too) and writes one line per event as it is seen, flushed at once: on a
terminal a line for people, else one JSON object (--format forces either):
  12:00:03 changed 1234 status: 'starting' -> 'running'
  {"kind": "changed", "cvm_id": "1234", "changes": {"status": ["starting",
   "running"]}, "cvm": {...}, "error": null, "time": "2025-11-29T12:00:03.120Z"}
kind is added, changed, removed or error; changes maps each changed field, nested
ones by path (teepod.name), to [old, new], and is {} for the other kinds; cvm is
the CVM as seen now (as last seen, for removed; null for error); error is
{"type": ..., "message": ...} for a failure that says nothing about the CVM (a
503 after the retries), and the watch goes on. time is UTC. A removed CVM is
written once (added again if it comes back), an id's error once until it is
fetched again. A round without any answer from the API (refused, timed out, 5xx)
writes one "unavailable" line (cvm_id null, error set) instead of one per id, and
the first round with answers again one "available"; only real changes follow.
The watch runs until Ctrl-C (130) or SIGTERM (143), or for --rounds N (0). A
refused credential ends it with 3, a TLS failure with 1; a closed stdout with 0."""


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
_NON_NEGATIVE = _number(float, ">= 0", lambda value: value >= 0)
_PORT = _number(int, "from 0 to 65535", lambda value: 0 <= value <= 65535)

_CONNECTION, _REQUEST, _REPORTING = "connection", "request", "reporting"
_USED_BY = {
    _CONNECTION: "get, sweep, watch",
    _REQUEST: "get, sweep, watch, demo",
    _REPORTING: "get, sweep, watch, demo",
}


def _shared_options(groups: Collection[str], *, in_command: bool) -> _Parser:
    # Built for the top-level parser and for every command, so options may go before or after
    # the command name; a command lists only the groups it uses. In a command, SUPPRESS keeps an
    # option that was not repeated there from overwriting what came before the name. (One build
    # per parser: argparse shares Action objects with the parsers a parent is given to.)
    options = _Parser(add_help=False, argument_default=argparse.SUPPRESS if in_command else None)

    def group(name: str) -> argparse._ArgumentGroup:
        return options.add_argument_group(
            f"{name} options" + ("" if in_command else f" ({_USED_BY[name]})")
        )

    if _CONNECTION in groups:
        connection = group(_CONNECTION)
        connection.add_argument(
            "--api-key",
            metavar="KEY",
            help=f"a dashboard API key (phak_...); default ${API_KEY_ENV}",
        )
        connection.add_argument(
            "--token", metavar="TOKEN", help="an OAuth access token, instead of an API key"
        )
        connection.add_argument(
            "--base-url",
            metavar="URL",
            help=f"the API prefix; default ${BASE_URL_ENV}, else {DEFAULT_BASE_URL}",
        )
        connection.add_argument(
            "--api-version",
            metavar="V",
            choices=API_VERSIONS,
            help=f"the X-Phala-Version to send, which picks the records' shape: "
            f"{' or '.join(API_VERSIONS)} (default {API_VERSION}, the reference page's shape)",
        )
        connection.add_argument(
            "--allow-insecure-http",
            action="store_true",
            help="allow a plain http:// --base-url to a host other than loopback (the credential "
            "then crosses the network in clear text)",
        )
        connection.add_argument(
            "--ca-file",
            metavar="FILE",
            help="trust the CA certificates in this PEM bundle instead of the system's (also "
            "$SSL_CERT_FILE / $SSL_CERT_DIR)",
        )
        connection.add_argument(
            "--proxy",
            metavar="URL",
            help="send requests through this http:// proxy (http://user:pass@host:port); default "
            "$HTTPS_PROXY / $HTTP_PROXY, minus the hosts in $NO_PROXY",
        )
        connection.add_argument(
            "--no-env-proxy",
            dest="trust_env",
            action="store_false",
            help="ignore $HTTPS_PROXY, $HTTP_PROXY and $NO_PROXY",
        )
    if _REQUEST in groups:
        request = group(_REQUEST)
        request.add_argument(
            "--timeout",
            metavar="SECONDS",
            type=_POSITIVE,
            help=f"seconds one request may take (default {_DEFAULTS['timeout']:g})",
        )
        request.add_argument(
            "--max-attempts",
            metavar="N",
            type=_POSITIVE_INT,
            help=f"requests per id at most, retries included; 1 disables retries "
            f"(default {_DEFAULTS['max_attempts']})",
        )
        request.add_argument(
            "--concurrency",
            metavar="N",
            type=_POSITIVE_INT,
            help=f"requests in flight at most (default {_DEFAULTS['concurrency']})",
        )
    if _REPORTING in groups:
        reporting = group(_REPORTING)
        reporting.add_argument(
            "-q", "--quiet", action="store_true", help="no progress line and no summary on stderr"
        )
        reporting.add_argument(
            "-v",
            "--verbose",
            action="count",
            help="log retries (-v), and every request and answer with its status and duration "
            "(-vv), to stderr; credentials are never logged",
        )
    return options


def _output_options(
    parser: argparse.ArgumentParser, *, default_to: str, resume: bool = False
) -> None:
    parser.add_argument(
        "--format",
        choices=("jsonl", "csv", "table"),
        default="jsonl",
        help="record format (default jsonl); table is for people",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help=f"write the records to FILE (default {default_to})"
    )
    if resume:
        parser.add_argument(
            "--resume",
            action="store_true",
            help="continue the sweep written to -o FILE: fetch only the ids without an ok record",
        )


def _id_options(parser: argparse.ArgumentParser, verb: str, *, all_help: str) -> None:
    """The ids a command works on: arguments, ``--ids-file`` or ``--all``."""
    parser.add_argument("ids", nargs="*", metavar="ID", help=f"ids to {verb} (any form get takes)")
    parser.add_argument(
        "--ids-file", metavar="FILE", help="read ids from FILE, one per line ('-' for stdin)"
    )
    parser.add_argument("--all", action="store_true", help=all_help)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``phala-async``."""
    parser = _Parser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_shared_options((_CONNECTION, _REQUEST, _REPORTING), in_command=False)],
    )
    parser.set_defaults(verbose=0)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(
        name: str,
        summary: str,
        run: Callable[..., int],
        groups: Collection[str] = (),
        notes: str | None = None,
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary if notes is None else f"{summary}\n\n{notes}",
            epilog="exit status: see 'phala-async --help'",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[_shared_options(groups, in_command=True)] if groups else [],
        )
        sub.set_defaults(run=run)
        return sub

    everything = (_CONNECTION, _REQUEST, _REPORTING)
    get = command("get", "Print CVMs; errors go to stderr.", get_command, everything)
    get.add_argument(
        "ids",
        nargs="+",
        metavar="ID",
        help="integer id, name, app_<hex> app id, VM UUID or instance id; '-' reads ids from "
        "stdin, one per line",
    )
    get.add_argument(
        "--format",
        choices=("json", "jsonl", "csv", "table"),
        help="json: indented objects; jsonl: one per line (default: json on a terminal, jsonl "
        "in a pipe)",
    )
    sweep = command(
        "sweep",
        "Fetch many CVMs and write one record per id as each completes.",
        sweep_command,
        everything,
        notes=_SWEEP_NOTES,
    )
    _id_options(sweep, "fetch", all_help="fetch every CVM of the workspace")
    _output_options(sweep, default_to="stdout; none with --store alone", resume=True)
    sweep.add_argument(
        "--store",
        metavar="PATH",
        help="also record the sweep as a snapshot in the SQLite database at PATH (created on "
        "first use), once every id was attempted",
    )
    add_summary_option(sweep)
    diff = command(
        "diff",
        "Compare two sweeps: CVMs added, removed, changed, and ids failed in one of them.",
        diff_command,
    )
    diff.add_argument(
        "old",
        metavar="OLD",
        help="the earlier sweep's output (JSON lines or CSV), or a snapshot of a store: PATH@N "
        "(1 is the first) or PATH@latest",
    )
    diff.add_argument("new", metavar="NEW", help="the later one, in the same format")
    diff.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help="text: a report for people (default); jsonl: one object per id that differs",
    )
    diff.add_argument(
        "--fields",
        metavar="PATHS",
        action="append",
        help="only these fields count, by path, comma-separated (status,teepod.name); a path "
        "covers the fields under it",
    )
    diff.add_argument(
        "--ignore",
        metavar="PATHS",
        action="append",
        help="fields that never count, such as volatile ones (in_progress,public_urls)",
    )
    history = command(
        "history",
        "List the snapshots of a store, or what changed of one CVM from snapshot to snapshot.",
        history_command,
    )
    history.add_argument("store", metavar="PATH", help="the database of 'sweep --store PATH'")
    history.add_argument(
        "cvm",
        nargs="?",
        metavar="CVM_ID",
        help="a CVM (integer id, VM UUID, name, or the id a sweep was given): its changes",
    )
    history.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help="text: for people (default); jsonl: one JSON object per snapshot or change",
    )
    watch = command(
        "watch",
        "Poll CVMs and write a line each time one is added, changed or removed.",
        watch_command,
        everything,
        notes=_WATCH_NOTES,
    )
    _id_options(watch, "watch", all_help="watch every CVM of the workspace, new ones included")
    watch.add_argument(
        "--interval",
        metavar="S",
        type=_POSITIVE,
        default=_WATCH_INTERVAL,
        help=f"seconds from the start of one round to the next, plus up to 10%% jitter "
        f"(default {_WATCH_INTERVAL:g})",
    )
    watch.add_argument(
        "--fields",
        metavar="PATHS",
        action="append",
        help="only changes of these fields count, comma-separated (status,teepod.name); a "
        "top-level name covers the fields under it (default: every field but in_progress)",
    )
    watch.add_argument("--initial", action="store_true", help="first write every CVM as added")
    add_summary_option(watch)
    watch.add_argument(
        "--rounds", metavar="N", type=_POSITIVE_INT, help="stop after N rounds (default: never)"
    )
    watch.add_argument(
        "--format",
        choices=("jsonl", "text"),
        help="jsonl: one JSON object per event; text: a line for people (default: text on a "
        "terminal, jsonl in a pipe)",
    )
    serve = command(
        "serve", "Run the local Phala Cloud simulator on 127.0.0.1 until stopped.", serve_command
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
    serve.add_argument(
        "--instances-per-app",
        metavar="N",
        type=_POSITIVE_INT,
        default=1,
        help="CVMs per app, sharing its app_id (default 1)",
    )
    serve.add_argument(
        "--forbidden",
        metavar="N",
        type=_COUNT,
        default=0,
        help="extra CVMs of another workspace, answered 403 (default 0)",
    )
    serve.add_argument(
        "--latency-ms",
        metavar="MS",
        type=_NON_NEGATIVE,
        default=0.0,
        help="milliseconds added before every answer (default 0)",
    )
    serve.add_argument(
        "--capacity",
        metavar="N",
        type=_POSITIVE_INT,
        help="detail requests served at once; one more is answered 503 (default: no cap)",
    )
    serve.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a throwaway CA; the CA file's path is printed (needs trustme)",
    )
    demo = command(
        "demo",
        "Sweep a simulated workspace with faults and a rate limit, to see it work.",
        demo_command,
        (_REQUEST, _REPORTING),
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
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded, credentials masked
    redact = Redactor((args.api_key, args.token, os.environ.get(API_KEY_ENV)))
    with logging_to_stderr(args.verbose, redact):
        try:
            code: int = args.run(args, redact)
        except (UsageError, ConfigurationError) as exc:
            print_error(redact(str(exc)))
            return EXIT_USAGE
        except StoppedBySignal as exc:
            return exc.exit_status
        except KeyboardInterrupt:  # outside the event loop: reading ids from stdin
            return Stop().exit_status
        except BrokenPipeError:
            # The reader of stdout went away (`| head`): what it read was written; stop quietly,
            # as other tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        return code
