"""The dataset tools (``tools/make_synthetic.py``, ``tools/prepare_*.py`` and the
``partformer-make-synthetic`` / ``partformer-prepare-*`` console scripts): generate the synthetic
benchmark, build or check the splits of the real ones. Errors follow the package's contract
(:func:`partformer.cli.cli_entry`: one line, exit status 2)."""
from __future__ import annotations

import argparse
import os
from typing import List

from partformer.cli import _add_version, cli_entry

# ------------------------------------------------------------------------------ make_synthetic
MAKE_SYNTHETIC_DOC = """Generate the synthetic part-discovery benchmark in the CUB-200-2011 layout.

    python tools/make_synthetic.py --out datasets/synthetic    # default tree (cluttered), README kept
    python tools/make_synthetic.py --level clean --out datasets/synthetic_clean
    python tools/make_synthetic.py --out /tmp/syn --num-train 200 --num-val 20 --num-test 50 \\
        --clutter 12 --occlusion 0.5 --workers 2

A level (--level, default cluttered) is a named set of settings with its own seed
(partformer/data/synthetic/levels.py); any other flag is applied on top of it.

Prints the counts and the generation speed (images/second, file writing included). See
datasets/synthetic/README.md for the layout and the difficulty knobs.
"""

# flag dest -> SyntheticConfig field, for the settings a flag can set on top of the level
_SYNTHETIC_FIELDS = ("num_train", "num_val", "num_test", "image_size", "seed", "families",
                     "num_schemes", "clutter", "max_rotation", "scale_range", "articulation",
                     "out_of_frame", "occlusion", "flip_prob", "pattern_consistency", "noise",
                     "blur", "outline_prob", "background", "distractors", "keep_in_frame",
                     "image_format", "jpeg_quality")


def _make_synthetic_args(argv=None):
    from partformer.data.synthetic import FAMILIES, level_names
    from partformer.data.synthetic.config import BACKGROUNDS, DISTRACTORS
    p = argparse.ArgumentParser(
        description=MAKE_SYNTHETIC_DOC.split("\n\n")[0],
        epilog="Every setting flag defaults to the level's value (see "
               "datasets/synthetic/README.md, 'Levels' and 'Knobs').")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--level", default="cluttered", choices=level_names(),
                   help="named set of settings, with its own seed (default: cluttered, the "
                        "benchmark as generator 1.0 made it)")
    p.add_argument("--num-train", type=int)
    p.add_argument("--num-val", type=int)
    p.add_argument("--num-test", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--families", nargs="+", choices=FAMILIES)
    p.add_argument("--num-schemes", type=int,
                   help="colour schemes per family (classes = families x schemes)")
    g = p.add_argument_group("difficulty")
    g.add_argument("--clutter", type=int, help="max background distractors")
    g.add_argument("--distractors", choices=DISTRACTORS,
                   help="parts: animal-like shapes in the animal's textures; objects: shapes no "
                        "animal part has, in their own colours")
    g.add_argument("--background", choices=BACKGROUNDS,
                   help="textured, smooth (a gradient opposite the animal's hue) or flat (one "
                        "such colour)")
    g.add_argument("--max-rotation", type=float, help="degrees")
    g.add_argument("--scale-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="body length / image side")
    g.add_argument("--articulation", type=float,
                   help="multiplier of joint-angle ranges (0 = rigid)")
    g.add_argument("--out-of-frame", type=float,
                   help="probability that the object partly leaves the frame")
    g.add_argument("--keep-in-frame", action=argparse.BooleanOptionalAction,
                   help="shift the animal so that all of it is inside the frame (needs "
                        "--out-of-frame 0)")
    g.add_argument("--occlusion", type=float, help="probability of a foreground occluder")
    g.add_argument("--flip-prob", type=float)
    g.add_argument("--pattern-consistency", type=float,
                   help="probability that a part uses its class's preferred texture")
    g.add_argument("--noise", type=int, help="pixel noise amplitude (0-255)")
    g.add_argument("--blur", type=float, help="Gaussian blur sigma (pixels)")
    g.add_argument("--outline-prob", type=float)
    p.add_argument("--image-format", choices=("jpg", "png"))
    p.add_argument("--jpeg-quality", type=int)
    p.add_argument("--workers", type=int, default=1, help="processes (output is identical)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    _add_version(p)
    return p.parse_args(argv)



@cli_entry
def make_synthetic_main(argv: List[str]) -> int:
    from partformer.data.synthetic import level_config, level_of, write_synthetic_cub
    a = _make_synthetic_args(argv)
    given = {f: getattr(a, f) for f in _SYNTHETIC_FIELDS if getattr(a, f) is not None}
    for f in ("families", "scale_range"):
        if f in given:
            given[f] = tuple(given[f])
    cfg = level_config(a.level, **given)
    level = level_of(cfg)
    print(f"level {a.level}" + ("" if level == a.level else
                                " with other settings (recorded as level null)"), flush=True)
    print(f"generating {cfg.num_images} images ({cfg.num_train} train / {cfg.num_val} val / "
          f"{cfg.num_test} test), {cfg.image_size}x{cfg.image_size}, {cfg.num_classes} classes, "
          f"seed {cfg.seed}, {a.workers} worker(s) -> {a.out}", flush=True)
    info = write_synthetic_cub(a.out, cfg, num_workers=a.workers, overwrite=a.overwrite)
    c = info["counts"]
    print(f"wrote {info['num_images']} images: train {c['train']}, val {c['val']}, "
          f"test {c['test']} -> {info['root']}")
    print(f"{info['seconds']:.2f} s, {info['images_per_second']:.1f} images/second "
          f"({a.workers} worker(s), files included)")
    return 0


# ------------------------------------------------------------------------------ prepare_celeba
PREPARE_CELEBA_DOC = """Build the filtered CelebA-in-the-wild / MAFL splits (face box >= 30 % of the image area).

    python tools/prepare_celeba.py --root datasets/celeba --mafl datasets/celeba/MAFL

Writes ``<root>/splits/{train,val,trainval,mafl_train,mafl_test}.txt`` (sorted image names) and
``<root>/splits/prepare_info.json``; prints the counts next to the published ones (45,609 trainval,
5,379 MAFL-train, 283 MAFL-test) and warns when they differ. See datasets/celeba/README.md.
"""


@cli_entry
def prepare_celeba_main(argv: List[str]) -> int:
    from partformer.data.celeba import (DEFAULT_NUM_VAL, PUBLISHED_COUNTS, SPLIT_NAMES,
                                        VAL_SEED, prepare_celeba_splits)
    p = argparse.ArgumentParser(description=PREPARE_CELEBA_DOC,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", required=True, help="CelebA folder with Img/, Anno/, Eval/")
    p.add_argument("--mafl", required=True, help="folder with MAFL training.txt and testing.txt")
    p.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL,
                   help="images of trainval held out as the val split (default %(default)s)")
    p.add_argument("--seed", type=int, default=VAL_SEED, help="seed of the val draw (default 0)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    _add_version(p)
    args = p.parse_args(argv)
    splits = prepare_celeba_splits(args.root, args.mafl, num_val=args.num_val, seed=args.seed)
    print(f"wrote {os.path.join(args.root, 'splits')}/<split>.txt")
    for name in SPLIT_NAMES:
        ref = PUBLISHED_COUNTS.get(name)
        note = "" if ref is None else (f"  (published {ref:,})" if len(splits[name]) == ref
                                       else f"  (published {ref:,}: MISMATCH)")
        print(f"  {name:<11s}{len(splits[name]):>8,d}{note}")
    return 0


# ------------------------------------------------------------------------- prepare_deepfashion
PREPARE_DEEPFASHION_DOC = """Check the DeepFashion In-shop segmentation subset (nothing needs converting).

    python tools/prepare_deepfashion.py \\
        --root "datasets/deepfashion/In-shop Clothes Retrieval Benchmark" [--check-masks]

Counts the images of the train / query / gallery lists, checks that every listed image and its
``*_segment.png`` exist (and, with --check-masks, that every mask uses only the 16 palette
colours), and compares query + gallery with the protocol's 6,922 test images.
See datasets/deepfashion/README.md.
"""


@cli_entry
def prepare_deepfashion_main(argv: List[str]) -> int:
    from partformer.data.deepfashion import (PUBLISHED_TEST_IMAGES,
                                             check_deepfashion_layout)
    p = argparse.ArgumentParser(description=PREPARE_DEEPFASHION_DOC,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", required=True,
                   help='the "In-shop Clothes Retrieval Benchmark" folder '
                        '(or its Anno/segmentation)')
    p.add_argument("--check-masks", action="store_true", help="decode every mask (slow)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    _add_version(p)
    args = p.parse_args(argv)
    counts = check_deepfashion_layout(args.root, check_masks=args.check_masks)
    print("DeepFashion segmentation subset: layout OK")
    for name, n in counts.items():
        ref = (f"  (protocol {PUBLISHED_TEST_IMAGES:,}"
               f"{'' if n == PUBLISHED_TEST_IMAGES else ': MISMATCH'})" if name == "test" else "")
        print(f"  {name:<8s}{n:>8,d}{ref}")
    return 0


# ------------------------------------------------------------------------ prepare_partimagenet
PREPARE_PARTIMAGENET_DOC = """Prepare PartImageNet: re-split the OOD release's train split, and/or check the Seg release.

    # our seeded re-split (10 % test and then 10 % val per class)
    python tools/prepare_partimagenet.py --root datasets/partimagenet
    # or PDiscoFormer's published re-split (their data_sets/train_test_split_pimagenet_ood.txt)
    python tools/prepare_partimagenet.py --root datasets/partimagenet \\
        --split-file train_test_split_pimagenet_ood.txt
    # check the Seg release layout (official test: 2,405 images); --check-masks reads every PNG
    python tools/prepare_partimagenet.py --root datasets/partimagenet --release seg

Writes ``<ood release folder>/splits/{train,val,test}.txt`` (file names as in train.json, sorted)
and ``splits/prepare_info.json``. See datasets/partimagenet/README.md.
"""


@cli_entry
def prepare_partimagenet_main(argv: List[str]) -> int:
    from partformer.data.partimagenet import (DEFAULT_SEED, DEFAULT_TEST_FRACTION,
                                              DEFAULT_VAL_FRACTION, PUBLISHED,
                                              check_partimagenet_seg, prepare_partimagenet_ood)
    p = argparse.ArgumentParser(description=PREPARE_PARTIMAGENET_DOC,
                                formatter_class=argparse.RawTextHelpFormatter)
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
    _add_version(p)
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
