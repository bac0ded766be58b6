#!/usr/bin/env python3
"""Generate the synthetic part-discovery benchmark in the CUB-200-2011 layout.

    python tools/make_synthetic.py --out datasets/synthetic    # default tree (cluttered), README kept
    python tools/make_synthetic.py --level clean --out datasets/synthetic_clean
    python tools/make_synthetic.py --out /tmp/syn --num-train 200 --num-val 20 --num-test 50 \
        --clutter 12 --occlusion 0.5 --workers 2

A level (--level, default cluttered) is a named set of settings with its own seed
(partformer/data/synthetic/levels.py); any other flag is applied on top of it.

Prints the counts and the generation speed (images/second, file writing included). See
datasets/synthetic/README.md for the layout and the difficulty knobs.
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    import partformer  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.data.synthetic import (FAMILIES, level_config, level_names,  # noqa: E402
                                       level_of, write_synthetic_cub)
from partformer.data.synthetic.config import BACKGROUNDS, DISTRACTORS  # noqa: E402

# flag dest -> SyntheticConfig field, for the settings a flag can set on top of the level
_FIELDS = ("num_train", "num_val", "num_test", "image_size", "seed", "families", "num_schemes",
           "clutter", "max_rotation", "scale_range", "articulation", "out_of_frame", "occlusion",
           "flip_prob", "pattern_consistency", "noise", "blur", "outline_prob", "background",
           "distractors", "keep_in_frame", "image_format", "jpeg_quality")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
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
                   help="textured, or smooth (a gradient opposite the animal's hue)")
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
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    given = {f: getattr(a, f) for f in _FIELDS if getattr(a, f) is not None}
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


if __name__ == "__main__":
    from partformer.cli import cli_entry  # errors: one message, exit status 2 (--debug: traceback)

    sys.exit(cli_entry(main)())
