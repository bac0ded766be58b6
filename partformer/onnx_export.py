"""ONNX export of a model's test-time path (``tools/export_onnx.py``).

The graph is the method's :meth:`~partformer.methods.base.Method.predict` on images: input
``images`` float32 ``[B, 3, S, S]`` in [0, 1], output ``maps`` float32 ``[B, K+1, h, w]`` (a softmax
over the K parts and the background, background last), exactly what ``predict`` returns for the
same batch; ``S`` is the model's ``data.image_size`` unless ``image_size`` says otherwise.
Preprocessing to ``S`` (the model's ``data.resize``) and resizing the maps back to an image are the
caller's, as with :meth:`partformer.Predictor.predict_network`.

Position embeddings of ViT encoders are resampled once for ``S`` before tracing
(:meth:`~partformer.models.encoder.FeatureMapEncoder.freeze_grid`), because ONNX has no
antialiased bicubic resize; the check against the PyTorch predictor covers that step too.

Needs the optional extra: ``pip install -e ".[onnx]"`` (``onnx``, ``onnxruntime``).
"""
from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from partformer import config as cfglib

ONNX_EXTRA = 'pip install -e ".[onnx]"  (or: pip install onnx onnxruntime)'
DEFAULT_OPSET = 17


class OnnxError(cfglib.ConfigError):
    """The export or its check cannot be done; the message says why and what to do."""


class PredictGraph(nn.Module):
    """``images [B, 3, S, S]`` in [0, 1] -> ``method.predict(model, {"image": images})``."""

    def __init__(self, method, model: nn.Module):
        super().__init__()
        self.method = method
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.predict(self.model, {"image": images}).float()


def _require(module: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise OnnxError(f"{module} is not installed; install the ONNX extra: {ONNX_EXTRA}") \
            from None


def export_predictor(predictor, out: str, image_size: Optional[int] = None,
                     dynamic_batch: bool = False, opset: int = DEFAULT_OPSET,
                     batch: int = 1, overwrite: bool = False) -> Dict[str, Any]:
    """Write the ONNX graph of ``predictor``'s method and model (see the module docstring) to
    ``out`` (atomically; an existing file needs ``overwrite``). Returns what was exported."""
    if os.path.exists(out) and not overwrite:
        raise OnnxError(f"{out} exists; pass --overwrite to replace it")
    if os.path.isdir(out):
        raise OnnxError(f"{out} is a folder; the ONNX output is a FILE (e.g. model.onnx)")
    S = int(image_size or predictor.image_size)
    if S < 1:
        raise OnnxError(f"--image-size must be >= 1, got {S}")
    from partformer.models.encoder import FeatureMapEncoder
    model = copy.deepcopy(predictor.model).cpu().float().eval()
    for m in model.modules():
        if isinstance(m, FeatureMapEncoder):
            m.freeze_grid((S, S))
    graph = PredictGraph(predictor.method, model).eval()
    example = torch.rand(batch, 3, S, S, generator=torch.Generator().manual_seed(0))
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(out)}")
    axes = {"images": {0: "batch"}, "maps": {0: "batch"}} if dynamic_batch else None
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer warns about every shape read as a Python number; S is fixed by design
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (example,), tmp, dynamo=False, input_names=["images"],
                              output_names=["maps"], dynamic_axes=axes, opset_version=int(opset),
                              do_constant_folding=True)
        os.replace(tmp, out)
    except Exception as e:  # noqa: BLE001 - one message naming the model and the operator
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OnnxError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxError(f"the {predictor.cfg.method.name} model {predictor.source} could not be "
                        f"exported to ONNX (opset {opset}, image size {S}): {first}") from None
    with torch.no_grad():
        maps = graph(example)
    return {"file": out, "image_size": S, "dynamic_batch": bool(dynamic_batch),
            "opset": int(opset), "num_parts": predictor.num_parts,
            "output_shape": [("B" if dynamic_batch else batch)] + list(maps.shape[1:])}


def check_onnx(path: str, predictor, image_size: Optional[int] = None,
               batch_sizes: Sequence[int] = (2,), seed: int = 0) -> float:
    """The max absolute difference between the ONNX graph at ``path`` (run by onnxruntime on
    the CPU) and the PyTorch predictor's ``method.predict`` (fp32) on the same random images, over
    ``batch_sizes``."""
    ort = _require("onnxruntime")
    S = int(image_size or predictor.image_size)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batch_sizes:
        x = torch.rand(b, 3, S, S, generator=g)
        with torch.no_grad():
            ref = predictor.method.predict(predictor.model, {"image": x.to(predictor.device)})
        ref = ref.float().cpu()
        (got,) = session.run(["maps"], {"images": x.numpy()})
        if tuple(got.shape) != tuple(ref.shape):
            raise OnnxError(f"{path} returned maps of shape {tuple(got.shape)} for a batch of "
                            f"{b}, the PyTorch predictor {tuple(ref.shape)}")
        worst = max(worst, float((torch.from_numpy(got) - ref).abs().max()))
    return worst
