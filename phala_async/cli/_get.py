"""``get``: a few CVMs, printed for people (indented JSON or a table) or for pipes (JSON lines,
CSV), the ids from arguments or stdin; failures on stderr."""

from __future__ import annotations

import argparse
import sys

from phala_async._bulk import SweepResult
from phala_async._client import PhalaClient
from phala_async._models_v2026 import AnyCvm

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    UsageError,
    make_client,
    refused_message,
    run_command,
)
from ._files import parse_ids
from ._output import Redactor, print_cvms, print_error
from ._progress import Tally, refusal

__all__ = ["get_command"]


def get_command(args: argparse.Namespace, redact: Redactor) -> int:
    """Run ``phala-async get`` and return its exit status."""
    ids: list[str] = []
    for given in args.ids:
        ids.extend(parse_ids(sys.stdin.read()) if given == "-" else [given])
    if not ids:
        raise UsageError("no ids on stdin: give ids, one per line, or as arguments")
    client = make_client(args)
    # On a terminal, for people; in a pipe, one object per line for the next program.
    output_format = args.format or ("json" if sys.stdout.isatty() else "jsonl")
    results = run_command(_get_all(client, ids))
    print_cvms(results, output_format, sys.stdout)
    tally = Tally()
    for result in results:
        tally.add(result)
    why = refusal(tally)
    if why is not None:
        print_error(refused_message(args, why))
        return EXIT_REFUSED
    for result in results:
        if result.error is not None:
            print_error(redact(str(result.error)))
    return EXIT_FAILED if tally.failed else EXIT_OK


async def _get_all(client: PhalaClient[AnyCvm], ids: list[str]) -> list[SweepResult]:
    async with client:
        return await client.get_cvms(ids)
