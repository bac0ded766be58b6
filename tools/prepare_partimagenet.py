#!/usr/bin/env python
"""Prepare PartImageNet: re-split the OOD release's train split, and/or check the Seg release.

    # our seeded re-split (10 % test and then 10 % val per class)
    python tools/prepare_partimagenet.py --root datasets/partimagenet
    # or PDiscoFormer's published re-split (their data_sets/train_test_split_pimagenet_ood.txt)
    python tools/prepare_partimagenet.py --root datasets/partimagenet \
        --split-file train_test_split_pimagenet_ood.txt
    # check the Seg release layout (official test: 2,405 images); --check-masks reads every PNG
    python tools/prepare_partimagenet.py --root datasets/partimagenet --release seg

Writes ``<ood release folder>/splits/{train,val,test}.txt`` (file names as in train.json, sorted)
and ``splits/prepare_info.json``. See datasets/partimagenet/README.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.datatools import prepare_partimagenet_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
