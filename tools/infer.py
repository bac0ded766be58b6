#!/usr/bin/env python
"""Part masks for your own images, folders, globs and videos:

    python tools/infer.py photos/ --model runs/<run>/best.pt --out parts_out
    python tools/infer.py 'photos/**/*.jpg' clip.mp4 --model synthetic_k4 --out parts_out --every 5

See `python tools/infer.py --help`; the logic lives in partformer/infer.py and partformer/cli.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.cli import infer_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(infer_main())
