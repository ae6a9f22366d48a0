"""phala-async's benchmarks against its peers; not shipped in the wheel.

``make bench`` builds ``benchmarks/.venv-bench`` (phala-async[speed] and every peer) and runs
``python -m benchmarks``; ``--write-results`` updates ``benchmarks/RESULTS.md``. The pieces:

- ``server.py``: the one server process every client runs against;
- ``peers/``: each client as its users would write it, run by ``run_client.py`` in a process of
  its own;
- ``harness.py``: starting and timing those processes;
- ``decode.py`` and ``pydantic_model.py``: the in-process decode benchmark;
- ``report.py``: summaries, targets, the printed tables and ``RESULTS.md``;
- ``profile.py``: where phala-async's CPU per request goes, against the bare aiohttp loop.
"""
