"""``serve`` and ``demo``: the bundled simulator on 127.0.0.1, served until stopped, or swept with
the same machinery as ``sweep --all`` to show it work without an account."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from phala_async._client import PhalaClient
from phala_async._config import API_KEY_ENV

from ._common import EXIT_OK, PROG, Stop, UsageError, client_options, run_command
from ._files import OutputFile
from ._output import NullWriter, RecordWriter, Redactor, record_writer
from ._progress import Tally
from ._sweep import (
    SweepReport,
    finish,
    run_sweep,
    shows_progress,
    uncancel,
    workspace_ids,
)

if TYPE_CHECKING:
    from phala_async.testing import PhalaSimulator

__all__ = [
    "DEMO_FAULT_RATE",
    "DEMO_RATE_LIMIT",
    "SIMULATED_FAULTS",
    "demo_command",
    "serve_command",
]

# What `serve --fault-rate` and the demo inject: failures a client must retry. No random 429s:
# a real one comes from a limit (`--rate`), and random ones teach the client's adaptive pacing a
# limit that is not there, so it crawls.
SIMULATED_FAULTS = ("500", "502", "503", "504", "reset")
# The demo: 5% of requests fail, and 429s with `Retry-After: 1` above a request budget per
# second, so that retries, the shared pause and the adaptive pacing all show.
DEMO_FAULT_RATE = 0.05
DEMO_RATE_LIMIT = 200.0


def _simulator(**options: Any) -> PhalaSimulator:
    from phala_async.testing import (
        PhalaSimulator,  # aiohttp.web is loaded only for these two commands
    )

    return PhalaSimulator(host="127.0.0.1", **options)


def serve_command(args: argparse.Namespace, redact: Redactor) -> int:
    """Run ``phala-async serve`` until Ctrl-C or SIGTERM; 0 then."""
    simulator = _simulator(
        cvms=args.cvms,
        fault_rate=args.fault_rate,
        faults=SIMULATED_FAULTS,
        rate_limit=args.rate,
        seed=args.seed,
        port=args.port,
        instances_per_app=args.instances_per_app,
        forbidden=args.forbidden,
        latency=args.latency_ms / 1000,
        capacity=args.capacity,
        tls=args.tls,
        control=True,
    )
    try:
        return run_command(_serve(simulator))
    except OSError as exc:
        raise UsageError(
            f"cannot listen on 127.0.0.1:{args.port} ({exc.strerror}): pick another --port, "
            f"or --port 0 for any free one"
        ) from exc


async def _serve(simulator: PhalaSimulator) -> int:
    from phala_async.testing._control import CONTROL_PREFIX

    async with simulator:
        url, key = simulator.base_url, simulator.api_key
        trust = ""
        if url.startswith("https:"):
            trust = f"CA file:  {simulator.ca_file}  (trust it: --ca-file)\n"
        ca_option = f" --ca-file {simulator.ca_file}" if trust else ""
        control = url.removesuffix("/api/v1") + CONTROL_PREFIX
        print(
            f"Phala Cloud API simulator: {len(simulator.cvm_ids)} CVMs, running until Ctrl-C\n"
            f"base URL: {url}\n"
            f"API key:  {key}  (a fixed test value, not a secret)\n"
            f"{trust}"
            f"control:  {control}/cvms (add, change, remove CVMs; see the README)\n"
            f"try:      {PROG} --base-url {url} --api-key {key}{ca_option} sweep --all",
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # Ctrl-C or SIGTERM: the normal ways to stop a server
            uncancel()
    print("simulator stopped", file=sys.stderr)
    return EXIT_OK


def demo_command(args: argparse.Namespace, redact: Redactor) -> int:
    """Run ``phala-async demo`` and return its exit status (as ``sweep``'s)."""
    simulator = _simulator(
        cvms=args.cvms,
        fault_rate=DEMO_FAULT_RATE,
        faults=SIMULATED_FAULTS,
        rate_limit=DEMO_RATE_LIMIT,
        rate_limit_retry_after=1,
    )
    output = OutputFile(args.output) if args.output not in (None, "-") else None
    writer: RecordWriter = NullWriter()
    if args.output is not None:
        stream = sys.stdout if output is None else output.begin()
        writer = record_writer(args.format, stream, redact=redact)
    stop = Stop()
    try:
        report = run_command(_demo(simulator, writer, args), stop)
    except BaseException:
        if output is not None:
            output.keep()
        raise
    code = finish(report, stop, args, redact, output)
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
        # The demo's simulator is on this machine: no proxy from the environment applies.
        client = PhalaClient(
            api_key=simulator.api_key,
            base_url=simulator.base_url,
            trust_env=False,
            **client_options(args),
        )
        listing = client.list_cvms()
        return await run_sweep(
            client,
            workspace_ids(listing),
            tally=Tally(),
            total=lambda: listing.total,
            writer=writer,
            show_progress=shows_progress(args, records_on_stdout=args.output == "-"),
        )
