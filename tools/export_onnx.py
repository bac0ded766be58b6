#!/usr/bin/env python
"""Export a model's test-time path as ONNX, checked against the PyTorch predictor:

    python tools/export_onnx.py synthetic_k4 m.onnx
    python tools/export_onnx.py runs/<run>/best.pt model.onnx --dynamic-batch --image-size 256

See `python tools/export_onnx.py --help`; the logic lives in partformer/onnx_export.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partformer.cli import export_onnx_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_onnx_main())
