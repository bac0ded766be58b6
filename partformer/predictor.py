"""Part maps for your own images: ``partformer.load(...)`` returns a :class:`Predictor`.

::

    predictor = partformer.load("runs/<run>/best.pt")       # or a run dir, a name, the authors' file
    out = predictor("photo.jpg")                           # path, HxWx3 uint8, PIL image or tensor
    out.maps      # float32 [K+1, H, W]: softmax over the K parts and the background (last)
    out.labels    # int64 [H, W]: argmax; k = part k (0..K-1), K = background
    outs = predictor([img1, img2, "c.png"], batch_size=16)  # a list -> a list of Predictions

Each image is preprocessed exactly as the model's training data: decoded to uint8 RGB and resized
with the stored config's ``data.resize`` / ``data.image_size`` (partformer.data.transforms, OpenCV
bilinear); the maps are then mapped back onto the input's own pixel grid (bilinear; pixel centres,
docs/ARCHITECTURE.md), so every output has the input's height and width. In the crop modes
(``shorter_center_crop``), input pixels outside the crop the network saw are background (``valid``
is False there). ``bbox_crop`` needs a GT box, which your images do not have: the predictor uses
``shorter`` (the same scale, the whole image) instead.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from partformer.data.transforms import RESIZE_MODES, ResizePlan, apply_resize, plan_resize
from partformer.engine.precision import autocast_context, resolve_precision

ImageLike = Union[str, "os.PathLike[str]", np.ndarray, torch.Tensor, Any]


@dataclasses.dataclass
class Prediction:
    """Part maps of one image at its own resolution (CPU tensors).

    ``maps``: float32 ``[K+1, H, W]``, softmax over channels, background last.
    ``labels``: int64 ``[H, W]``, ``maps.argmax(0)``: ``k`` = part k, ``K`` = background (the same
    values ``tools/infer.py`` writes into its label PNGs).
    ``valid``: bool ``[H, W]``, the pixels the network saw (all but the outside of a crop).
    ``centroids``: float32 ``[K, 2]`` soft centroid ``(x, y)`` of each part in input pixels
    (x = column, pixel centres at +0.5); ``presence``: float32 ``[K]``, each part map's maximum
    (the ``pdisco`` protocol calls a part absent at <= 0.5). See metrics.keypoints.part_centroids.
    """
    maps: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor
    centroids: torch.Tensor
    presence: torch.Tensor

    @property
    def num_parts(self) -> int:
        return self.maps.shape[0] - 1


def to_rgb_uint8(image: ImageLike) -> np.ndarray:
    """One image -> uint8 ``[H, W, 3]`` RGB.

    Accepts a file path (decoded like the datasets: partformer.data.io.load_image), a PIL image,
    a numpy ``[H, W, 3]`` / ``[H, W, 4]`` (alpha dropped) / ``[H, W]`` (grey) array (uint8, or
    float in [0, 1]), or a torch tensor ``[3, H, W]`` (uint8, or float in [0, 1]). Float inputs are
    rounded to 8 bit, the precision the model was trained on.
    """
    from partformer.data.io import load_image
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if torch.is_tensor(image):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"a tensor image must be [3, H, W] (or [1, H, W]), got "
                             f"{list(image.shape)}; batches are [B, 3, H, W]")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    elif not isinstance(image, np.ndarray) and hasattr(image, "convert"):  # PIL
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image must be [H, W, 3] (or grey [H, W], RGBA [H, W, 4]), got "
                         f"shape {list(arr.shape)}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"empty image: shape {list(arr.shape)}")
    arr = arr[..., :3] if arr.shape[2] == 4 else arr
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"image arrays must be uint8 or float in [0, 1], got {arr.dtype}")
        if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
            raise ValueError("float images must lie in [0, 1] (divide uint8 values by 255)")
        arr = np.rint(np.nan_to_num(arr) * 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _as_list(images) -> Tuple[List[Any], bool]:
    """``(images, single)``: a list/tuple, a ``[B, H, W, 3]`` array or a ``[B, 3, H, W]`` tensor
    is a batch; anything else one image."""
    if isinstance(images, (list, tuple)):
        return list(images), False
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images), False
    if torch.is_tensor(images) and images.ndim == 4:
        return list(images), False
    return [images], True


def input_grid(plan: ResizePlan, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where each input pixel centre lands in the network image of ``plan``: a ``grid_sample``
    grid ``[1, H, W, 2]`` (normalised, ``align_corners=False``) and a bool ``[H, W]`` mask of the
    centres inside it. The inverse of the forward map ``x -> (x - left0) * rw / w0 - left1``."""
    (t0, l0, h0, w0), (rh, rw), (t1, l1, h1, w1) = plan
    xs = (torch.arange(width, dtype=torch.float64) + 0.5 - l0) * (rw / w0) - l1
    ys = (torch.arange(height, dtype=torch.float64) + 0.5 - t0) * (rh / h0) - t1
    inside = ((ys >= 0) & (ys < h1))[:, None] & ((xs >= 0) & (xs < w1))[None, :]
    gx = (2 * xs / w1 - 1)[None, :].expand(height, width)
    gy = (2 * ys / h1 - 1)[:, None].expand(height, width)
    return torch.stack([gx, gy], dim=-1)[None].float(), inside


def maps_to_input(maps: torch.Tensor, plan: ResizePlan, height: int, width: int
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Network-image part maps ``[K+1, h, w]`` -> ``([K+1, H, W], valid [H, W])`` on the input
    grid (bilinear; for the plain resize modes this equals ``F.interpolate(align_corners=False)``).
    Outside the network's crop the maps are pure background."""
    grid, inside = input_grid(plan, height, width)
    out = F.grid_sample(maps[None].float(), grid.to(maps.device), mode="bilinear",
                        padding_mode="border", align_corners=False)[0]
    inside = inside.to(maps.device)
    if not bool(inside.all()):
        bg = torch.zeros_like(out)
        bg[-1] = 1.0
        out = torch.where(inside[None], out, bg)
    return out, inside


class Predictor:
    """A model plus the preprocessing it was trained with; call it on images (see the module
    docstring). Build with :func:`partformer.load`, or directly from a model and its config.

    Args:
        model: the model of the config's method (its ``predict`` gives the part maps).
        cfg: its :class:`partformer.config.Config` (``data.resize``, ``data.image_size``,
            ``model.num_parts``, ``train.precision``).
        device: where the model runs (default: CUDA when available, else CPU).
        batch_size: images per forward pass (default 8).
        resize: override ``data.resize`` (e.g. ``shorter`` to see the whole image of a model
            trained with ``shorter_center_crop``).
        precision: ``auto`` (bf16 on GPU and on CPUs with native bf16, else fp32), ``fp32``, ``bf16``, ``fp16``
            (default: the config's ``train.precision``).
        source: where the weights came from (shown by ``repr``).
    """

    def __init__(self, model: torch.nn.Module, cfg, device: Union[None, str, torch.device] = None,
                 batch_size: int = 8, resize: Optional[str] = None,
                 precision: Optional[str] = None, source: str = ""):
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        from partformer.methods import build_method
        self.method = build_method(cfg)
        self.cfg = cfg
        self.num_parts = int(cfg.model.num_parts)
        self.image_size = int(cfg.data.image_size)
        mode = resize or cfg.data.resize
        if mode == "bbox_crop":
            warnings.warn("the model was trained on ground-truth box crops (data.resize="
                          "bbox_crop); your images have no box, so the predictor resizes the "
                          "shorter side to data.image_size (resize='shorter') instead",
                          stacklevel=2)
            mode = "shorter"
        if mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {mode!r}; expected one of "
                             f"{list(RESIZE_MODES)}")
        self.resize = mode
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.amp_dtype = resolve_precision(precision or cfg.train.precision, self.device)
        self.source = source

    def __repr__(self) -> str:
        return (f"Predictor(K={self.num_parts}, resize={self.resize!r}, "
                f"image_size={self.image_size}, device={self.device}, source={self.source!r})")

    def fingerprint(self) -> dict:
        """What decides this predictor's outputs: a SHA-256 of the model's weights (names, dtypes,
        shapes, values) and the preprocessing and precision settings. ``tools/infer.py`` records it
        in its output folder and continues a folder only with the same fingerprint."""
        import hashlib
        h = hashlib.sha256()
        for name, t in sorted(self.model.state_dict().items()):
            t = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return {"weights_sha256": h.hexdigest(), "num_parts": self.num_parts,
                "resize": self.resize, "image_size": self.image_size,
                "precision": str(self.amp_dtype or "fp32")}

    @property
    def part_names(self) -> List[str]:
        """``part 0`` .. ``part K-1``, then ``background`` (label / channel order)."""
        from partformer.viz import part_names
        return part_names(self.num_parts)

    @torch.no_grad()
    def predict_network(self, images: torch.Tensor) -> torch.Tensor:
        """Network-size images ``[B, 3, S, S]`` in [0, 1] -> part maps ``[B, K+1, S, S]`` (float32,
        on the predictor's device)."""
        x = images.to(self.device, non_blocking=True)
        with autocast_context(self.device, self.amp_dtype):
            maps = self.method.predict(self.model, {"image": x})
        if tuple(maps.shape[-2:]) != tuple(x.shape[-2:]):
            maps = F.interpolate(maps.float(), size=tuple(x.shape[-2:]), mode="bilinear",
                                 align_corners=False)
        return maps.float()

    def __call__(self, images, batch_size: Optional[int] = None
                 ) -> Union[Prediction, List[Prediction]]:
        """Predict one image (-> :class:`Prediction`) or a batch (a list, a ``[B, H, W, 3]``
        array or a ``[B, 3, H, W]`` tensor -> a list). Images may differ in size."""
        from partformer.data.transforms import to_tensor_image
        from partformer.metrics.keypoints import part_centroids

        items, single = _as_list(images)
        bs = int(batch_size or self.batch_size)
        arrays = [to_rgb_uint8(im) for im in items]
        out: List[Optional[Prediction]] = [None] * len(arrays)
        # same-size network inputs share a forward pass (all of them with a square resize mode)
        pending: dict = {}

        def flush(key):
            idx, tensors, plans = zip(*pending.pop(key))
            maps = self.predict_network(torch.stack(tensors))
            for i, m, plan in zip(idx, maps, plans):
                h, w = arrays[i].shape[:2]
                full, valid = maps_to_input(m, plan, h, w)
                cen, pres = part_centroids(full[None], (h, w))
                out[i] = Prediction(full.cpu(), full.argmax(0).cpu(), valid.cpu(), cen[0].cpu(),
                                    pres[0].cpu())

        for i, arr in enumerate(arrays):
            plan = plan_resize(self.resize, self.image_size, *arr.shape[:2])
            net = to_tensor_image(apply_resize(self.resize, self.image_size, arr).image)
            key = tuple(net.shape)
            pending.setdefault(key, []).append((i, net, plan))
            if len(pending[key]) >= bs:
                flush(key)
        for key in list(pending):
            flush(key)
        return out[0] if single else out


def load(path_or_name: str, device: Union[None, str, torch.device] = None, *,
         config: Optional[str] = None, batch_size: int = 8, resize: Optional[str] = None,
         precision: Optional[str] = None, official_dataset: Optional[str] = None,
         overrides: Sequence[str] = ()) -> Predictor:
    """A :class:`Predictor` for a model file, a training run or shipped weights, of any method.

    ``path_or_name``: one of our checkpoints (``runs/<run>/best.pt``; its config is inside), a run
    directory (its ``best.pt``, else ``last.pt``), a ``.safetensors`` file (with ``config=``), a
    method's authors' released checkpoint (converted on the fly; ``official_dataset`` if it
    cannot be detected), or the name of shipped / registered weights (partformer.weights; no
    network needed). ``device``: default CUDA when available. ``overrides``: dotted config
    overrides (e.g. ``data.image_size=320``).
    """
    from partformer.hub import load_model
    dev = _device(device)
    cfg, model, _ = load_model(path_or_name, dev, config=config, overrides=overrides,
                               official_dataset=official_dataset)
    return Predictor(model, cfg, dev, batch_size=batch_size, resize=resize, precision=precision,
                     source=str(path_or_name))


def from_pretrained(repo_or_folder: str, device: Union[None, str, torch.device] = None, *,
                    revision: Optional[str] = None, **kwargs) -> Predictor:
    """A :class:`Predictor` of a Hugging Face Hub model (``"<user>/<repo>"`` or
    ``"hf://<user>/<repo>"``; ``revision`` a branch, tag or commit) or of a local pretrained
    folder (``partformer.save_pretrained``). The same as ``load("hf://<user>/<repo>")``;
    ``kwargs`` as :func:`load`."""
    from partformer import hf
    name = os.fspath(repo_or_folder)
    if not os.path.isdir(name) and not hf.is_hub_name(name):
        name = hf.HF_PREFIX + name
    if revision and hf.is_hub_name(name):
        name = f"{name.split('@', 1)[0]}@{revision}"
    return load(name, device, **kwargs)


def _device(device: Union[None, str, torch.device]) -> torch.device:
    """``device`` as a torch device (default: CUDA when available); a CUDA device on a machine
    without CUDA is a :class:`~partformer.config.ConfigError` (one line, exit 2 in the tools)."""
    from partformer.engine.distributed import resolve_device
    return resolve_device(device)
