"""``get``: a few CVMs printed as JSON lines, in the order given; failures on stderr."""

from __future__ import annotations

import argparse
import sys

import msgspec

from ._bulk import CvmResult
from ._cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    make_client,
    refused_message,
    run_command,
)
from ._cli_output import Redactor, print_error
from ._cli_progress import Tally, refusal
from ._client import PhalaClient

__all__ = ["get_command"]


def get_command(args: argparse.Namespace, redact: Redactor) -> int:
    """Run ``phala-async get`` and return its exit status."""
    client = make_client(args)
    results = run_command(_get_all(client, args.ids))
    for result in results:
        if result.cvm is not None:
            sys.stdout.write(msgspec.json.encode(result.cvm).decode() + "\n")
    sys.stdout.flush()
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


async def _get_all(client: PhalaClient, ids: list[str]) -> list[CvmResult]:
    async with client:
        return await client.get_cvms(ids)
