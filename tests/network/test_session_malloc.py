"""A sweep does not map and unmap memory for every response it reads (glibc's mmap threshold)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from cli_support import simulator_thread

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc, Linux's counts")

# A fresh process, as a user's is: its minor page faults over a 2,000-id sweep, after a warm-up.
_SWEEP = textwrap.dedent(
    """
    import asyncio, resource, sys
    from phala_async import PhalaClient

    async def main() -> None:
        client = PhalaClient(api_key=sys.argv[2], base_url=sys.argv[1], concurrency=16)
        async with client:
            await client.get_cvms([str(n) for n in range(1, 101)])
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            ok = 0
            async with client.stream_cvms(str(n) for n in range(101, 2101)) as results:
                async for result in results:  # kept by nobody: memory does not grow
                    ok += result.ok
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            print(ok, faults)

    asyncio.run(main())
    """
)


@linux_only
def test_a_sweep_in_a_fresh_process_faults_far_fewer_pages_than_it_reads_answers() -> None:
    """In a fresh process, 2,000 answers cost far fewer than the two page faults each that a
    fresh mapping per 256 KiB read buffer would (about 4,000)."""
    with simulator_thread(cvms=2100) as simulator:
        done = subprocess.run(  # noqa: S603 - our own interpreter on our own script
            [sys.executable, "-c", _SWEEP, simulator.base_url, simulator.api_key],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    ok, faults = (int(word) for word in done.stdout.split())
    assert ok == 2000
    assert faults < 1000
