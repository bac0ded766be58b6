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
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.data.partimagenet import (DEFAULT_SEED, DEFAULT_TEST_FRACTION,  # noqa: E402
                                          DEFAULT_VAL_FRACTION, PUBLISHED, check_partimagenet_seg,
                                          prepare_partimagenet_ood)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", required=True,
                   help="folder holding ood/ and/or seg/ (or a release folder itself)")
    p.add_argument("--release", choices=("ood", "seg", "both"), default="ood")
    p.add_argument("--split-file", default=None,
                   help="PDiscoFormer's train_test_split_pimagenet_ood.txt (else our seeded split)")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION)
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--annotation-file", default=None, help="OOD train.json (default: auto-detect)")
    p.add_argument("--image-dir", default=None, help="OOD train image folder (default: auto)")
    p.add_argument("--check-masks", action="store_true",
                   help="Seg: read every label PNG and check its values are 0..40")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)

    if args.release in ("ood", "both"):
        info = prepare_partimagenet_ood(args.root, split_file=args.split_file,
                                        test_fraction=args.test_fraction,
                                        val_fraction=args.val_fraction, seed=args.seed,
                                        annotation_file=args.annotation_file,
                                        image_dir=args.image_dir)
        print(f"OOD train.json: {info['images_in_json']:,} images of {info['classes']} classes "
              f"(published {PUBLISHED['ood_train_images']:,} / {PUBLISHED['ood_train_classes']});"
              f" {info['dropped_without_usable_annotation']} without a usable annotation dropped")
        print(f"test split: {info['test_split']}")
        print(f"wrote {info['split_dir']}/<split>.txt:")
        for name, n in info["counts"].items():
            print(f"  {name:<6s}{n:>8,d}")
    if args.release in ("seg", "both"):
        counts = check_partimagenet_seg(args.root, check_masks=args.check_masks)
        print("Seg release:")
        for name, n in counts.items():
            ref = (f"  (official {PUBLISHED['seg_test_images']:,}"
                   f"{'' if n == PUBLISHED['seg_test_images'] else ': MISMATCH'})"
                   if name == "test" else "")
            print(f"  {name:<6s}{n:>8,d}{ref}")
    return 0


if __name__ == "__main__":
    from partformer.cli import cli_entry  # errors: one message, exit status 2 (--debug: traceback)

    sys.exit(cli_entry(main)())
