#!/usr/bin/env python
"""See `python tools/benchmark.py --help`; the logic lives in partformer/cli.py and
partformer/engine/profiling.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.cli import benchmark_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(benchmark_main())
