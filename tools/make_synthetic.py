#!/usr/bin/env python
"""Generate the synthetic part-discovery benchmark in the CUB-200-2011 layout.

    python tools/make_synthetic.py --out datasets/synthetic    # default tree (cluttered), README kept
    python tools/make_synthetic.py --level clean --out datasets/synthetic_clean
    python tools/make_synthetic.py --out /tmp/syn --num-train 200 --num-val 20 --num-test 50 \
        --clutter 12 --occlusion 0.5 --workers 2

Prints the counts and the generation speed (images/second, file writing included). See
datasets/synthetic/README.md for the layout and the difficulty knobs.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.datatools import make_synthetic_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
