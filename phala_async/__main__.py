"""``python -m phala_async``: the same command line as the ``phala-async`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
