#!/usr/bin/env python
"""Check the DeepFashion In-shop segmentation subset (nothing needs converting).

    python tools/prepare_deepfashion.py \
        --root "datasets/deepfashion/In-shop Clothes Retrieval Benchmark" [--check-masks]

Counts the images of the train / query / gallery lists, checks that every listed image and its
``*_segment.png`` exist (and, with --check-masks, that every mask uses only the 16 palette
colours), and compares query + gallery with the protocol's 6,922 test images.
See datasets/deepfashion/README.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.data.deepfashion import (PUBLISHED_TEST_IMAGES,  # noqa: E402
                                         check_deepfashion_layout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", required=True,
                   help='the "In-shop Clothes Retrieval Benchmark" folder '
                        '(or its Anno/segmentation)')
    p.add_argument("--check-masks", action="store_true", help="decode every mask (slow)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    counts = check_deepfashion_layout(args.root, check_masks=args.check_masks)
    print("DeepFashion segmentation subset: layout OK")
    for name, n in counts.items():
        ref = (f"  (protocol {PUBLISHED_TEST_IMAGES:,}"
               f"{'' if n == PUBLISHED_TEST_IMAGES else ': MISMATCH'})" if name == "test" else "")
        print(f"  {name:<8s}{n:>8,d}{ref}")
    return 0


if __name__ == "__main__":
    from partformer.cli import cli_entry  # errors: one message, exit status 2 (--debug: traceback)

    sys.exit(cli_entry(main)())
