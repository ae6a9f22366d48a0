"""phala-async's benchmarks against its peers and hostile servers; not shipped in the wheel.

``make bench`` builds ``benchmarks/.venv-bench`` (phala-async[speed] and every peer) and runs
``python -m benchmarks``, which prints one Markdown report; ``--write-results`` also puts it into
``benchmarks/RESULTS.md``, where the method notes are. The pieces:

- ``sections.py``: what each section runs (throughput, the command line end to end, goodput under
  faults, rate limits, memory), in interleaved rounds; ``contention.py``: the request engine
  against a capacity cap, a 503 storm, one token bucket shared by K processes, a silent server, a
  closed port and a dead API;
- ``server.py``: the server processes (a minimal pool server, with an optional token bucket, and
  the simulator with its faults);
- ``peers/``: each client as its users would write it, run by ``run_client.py`` in a process of
  its own; ``scenario_client.py`` times a phala-async sweep id by id; ``bare_sweep.py`` is the
  bare aiohttp script the command line is compared with;
- ``harness.py``: starting and timing those processes;
- ``decode.py`` and ``pydantic_model.py``: the in-process decode benchmark;
- ``summaries.py``: medians and spreads of each section's runs; ``targets.py``: every target as a
  row of data (measure, threshold, direction, unit) and the one function that evaluates them;
  ``environment.py``: the machine and the libraries; ``report.py``: the Markdown report, made
  from the results JSON alone;
- ``profiling.py``: where phala-async's CPU per request goes, against the bare aiohttp loop;
  ``overhead.py``: the library's own CPU per request with the network taken out.
"""
