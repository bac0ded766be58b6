#!/usr/bin/env python
"""See `python tools/oracle.py --help`; the logic lives in partformer/cli.py and
partformer/engine/oracle.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.cli import oracle_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(oracle_main())
