#!/usr/bin/env python
"""Check the DeepFashion In-shop segmentation subset (nothing needs converting).

    python tools/prepare_deepfashion.py \
        --root "datasets/deepfashion/In-shop Clothes Retrieval Benchmark" [--check-masks]

Counts the images of the train / query / gallery lists, checks that every listed image and its
``*_segment.png`` exist (and, with --check-masks, that every mask uses only the 16 palette
colours), and compares query + gallery with the protocol's 6,922 test images.
See datasets/deepfashion/README.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.datatools import prepare_deepfashion_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
