#!/usr/bin/env python
"""Export a training run's checkpoint as named weights for `partformer.load(NAME)`:

    python tools/export_weights.py --model runs/<run>/best.pt --name my_k4 --out weights
    PARTFORMER_WEIGHTS_PATH=weights python -c "import partformer; partformer.load('my_k4')"
    python tools/export_weights.py --model runs/<run>/best.pt --name synthetic_k4 --out partformer/weights --overwrite   # ship it
    python tools/export_weights.py --list

See `python tools/export_weights.py --help`; the logic lives in partformer/hub.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.cli import export_weights_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_weights_main())
