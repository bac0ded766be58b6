#!/usr/bin/env python
"""Build the filtered CelebA-in-the-wild / MAFL splits (face box >= 30 % of the image area).

    python tools/prepare_celeba.py --root datasets/celeba --mafl datasets/celeba/MAFL

Writes ``<root>/splits/{train,val,trainval,mafl_train,mafl_test}.txt`` (sorted image names) and
``<root>/splits/prepare_info.json``; prints the counts next to the published ones (45,609 trainval,
5,379 MAFL-train, 283 MAFL-test) and warns when they differ. See datasets/celeba/README.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.data.celeba import (DEFAULT_NUM_VAL, PUBLISHED_COUNTS, SPLIT_NAMES,  # noqa: E402
                                    VAL_SEED, prepare_celeba_splits)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", required=True, help="CelebA folder with Img/, Anno/, Eval/")
    p.add_argument("--mafl", required=True, help="folder with MAFL training.txt and testing.txt")
    p.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL,
                   help="images of trainval held out as the val split (default %(default)s)")
    p.add_argument("--seed", type=int, default=VAL_SEED, help="seed of the val draw (default 0)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    splits = prepare_celeba_splits(args.root, args.mafl, num_val=args.num_val, seed=args.seed)
    print(f"wrote {os.path.join(args.root, 'splits')}/<split>.txt")
    for name in SPLIT_NAMES:
        ref = PUBLISHED_COUNTS.get(name)
        note = "" if ref is None else (f"  (published {ref:,})" if len(splits[name]) == ref
                                       else f"  (published {ref:,}: MISMATCH)")
        print(f"  {name:<11s}{len(splits[name]):>8,d}{note}")
    return 0


if __name__ == "__main__":
    from partformer.cli import cli_entry  # errors: one message, exit status 2 (--debug: traceback)

    sys.exit(cli_entry(main)())
