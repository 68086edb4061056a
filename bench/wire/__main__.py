"""``python -m bench.wire``: the over-the-wire benchmark (see ``bench.wire.cli``)."""

from __future__ import annotations

import sys

from bench.wire.cli import main

if __name__ == "__main__":
    sys.exit(main())
