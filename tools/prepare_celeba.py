#!/usr/bin/env python
"""Build the filtered CelebA-in-the-wild / MAFL splits (face box >= 30 % of the image area).

    python tools/prepare_celeba.py --root datasets/celeba --mafl datasets/celeba/MAFL

Writes ``<root>/splits/{train,val,trainval,mafl_train,mafl_test}.txt`` (sorted image names) and
``<root>/splits/prepare_info.json``; prints the counts next to the published ones (45,609 trainval,
5,379 MAFL-train, 283 MAFL-test) and warns when they differ. See datasets/celeba/README.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.datatools import prepare_celeba_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
