#!/usr/bin/env python
"""Convert a method's authors' released checkpoint (PartFormer, MPAE, PDiscoFormer, PDiscoNet;
detected from the file) into one of our checkpoints, which every tool takes with --model.

    python tools/convert_official.py --dataset cub --input model_best.pth \
        --output checkpoints/partformer_cub_k4.pt

See `python tools/convert_official.py --help` and docs/official_checkpoints.md; each method's key
mapping lives beside its model (partformer/methods/<name>/convert.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.cli import convert_official_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
