"""The ``phala-async`` command line: :func:`main` is the console script's entry point.

One private module per command (``_get``, ``_sweep``, ``_diff``, ``_history``, ``_watch``, ``_sim``
for ``serve`` and ``demo``), beside the code they share: ``_common`` (options, exit statuses,
running a command), ``_output``, ``_files``, ``_progress``, ``_lock``, ``_guard`` and ``_summary``.
``_main`` holds the parser. Nothing in the rest of the package imports this one.
"""

from ._main import build_parser, main

__all__ = ["build_parser", "main"]
