#!/usr/bin/env python
"""Convert the authors' PartFormer checkpoints (CUB / CelebA) for tools/eval.py.

    python tools/convert_official.py --dataset cub --input model_best.pth \
        --output checkpoints/partformer_cub_k4.pt

See `python tools/convert_official.py --help` and docs/official_checkpoints.md; the logic lives in
partformer/convert.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.cli import convert_official_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
