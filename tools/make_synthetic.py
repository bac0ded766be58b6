#!/usr/bin/env python3
"""Generate the synthetic part-discovery benchmark in the CUB-200-2011 layout.

    python tools/make_synthetic.py --out datasets/synthetic    # default tree, README kept
    python tools/make_synthetic.py --out /tmp/syn --num-train 200 --num-val 20 --num-test 50 \
        --clutter 12 --occlusion 0.5 --workers 2

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

from partformer.data.synthetic import (FAMILIES, SyntheticConfig,  # noqa: E402
                                       write_synthetic_cub)


def parse_args(argv=None):
    d = SyntheticConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--num-train", type=int, default=d.num_train)
    p.add_argument("--num-val", type=int, default=d.num_val)
    p.add_argument("--num-test", type=int, default=d.num_test)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--families", nargs="+", default=list(d.families), choices=FAMILIES)
    p.add_argument("--num-schemes", type=int, default=d.num_schemes,
                   help="colour schemes per family (classes = families x schemes)")
    g = p.add_argument_group("difficulty")
    g.add_argument("--clutter", type=int, default=d.clutter, help="max background distractors")
    g.add_argument("--max-rotation", type=float, default=d.max_rotation, help="degrees")
    g.add_argument("--scale-range", type=float, nargs=2, default=list(d.scale_range),
                   metavar=("LO", "HI"), help="body length / image side")
    g.add_argument("--articulation", type=float, default=d.articulation,
                   help="multiplier of joint-angle ranges (0 = rigid)")
    g.add_argument("--out-of-frame", type=float, default=d.out_of_frame,
                   help="probability that the object partly leaves the frame")
    g.add_argument("--occlusion", type=float, default=d.occlusion,
                   help="probability of a foreground occluder")
    g.add_argument("--flip-prob", type=float, default=d.flip_prob)
    g.add_argument("--pattern-consistency", type=float, default=d.pattern_consistency,
                   help="probability that a part uses its class's preferred texture")
    g.add_argument("--noise", type=int, default=d.noise, help="pixel noise amplitude (0-255)")
    g.add_argument("--blur", type=float, default=d.blur, help="Gaussian blur sigma (pixels)")
    g.add_argument("--outline-prob", type=float, default=d.outline_prob)
    p.add_argument("--image-format", choices=("jpg", "png"), default=d.image_format)
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)
    p.add_argument("--workers", type=int, default=1, help="processes (output is identical)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    cfg = SyntheticConfig(
        num_train=a.num_train, num_val=a.num_val, num_test=a.num_test, image_size=a.image_size,
        seed=a.seed, families=tuple(a.families), num_schemes=a.num_schemes, clutter=a.clutter,
        max_rotation=a.max_rotation, scale_range=tuple(a.scale_range),
        articulation=a.articulation, out_of_frame=a.out_of_frame, occlusion=a.occlusion,
        flip_prob=a.flip_prob, pattern_consistency=a.pattern_consistency, noise=a.noise,
        blur=a.blur, outline_prob=a.outline_prob, image_format=a.image_format,
        jpeg_quality=a.jpeg_quality)
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
