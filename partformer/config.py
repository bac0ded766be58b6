"""Typed configuration: dataclass schema, YAML files with inheritance, dotted command-line overrides.

A YAML file may name parent files under ``_base_`` (a path or a list of paths, relative to the file);
parents are merged first, the file's own keys last. Command-line overrides are ``a.b.c=value`` with
the value parsed as YAML (``train.lr=1e-3``, ``train.scheduler.milestones=[10,13]``).

Every key is checked against the schema below: an unknown key names the key, the file that set it and
the closest valid keys; a wrong type names the expected type.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import yaml

BASE_KEY = "_base_"


def _config_dir() -> str:
    """The shipped configs: ``configs/`` of a source checkout (editable install), else the copy that
    ``setup.py`` packs into the wheel as ``partformer/configs`` (``pip install .``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.join(os.path.dirname(here), "configs")
    if os.path.isfile(os.path.join(checkout, "default.yaml")):
        return checkout
    return os.path.join(here, "configs")


CONFIG_DIR = _config_dir()

# vocabularies of config values; the modules that act on them use these tuples
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULERS = ("multistep", "cosine", "constant")
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says where and how to fix it."""


# --------------------------------------------------------------------------------------- schema
# The defaults of the model, loss and train sections are the authors' CUB settings
# (docs/METHOD.md §1.2-§1.7); configs/_base_/paper.yaml adds only what a paper run needs beyond
# them, the dataset files set what differs per dataset.

# total = recon + 0.3 concentration + 0.5 area + 0.01 ArcFace (docs/METHOD.md §1.6); the one
# definition: LossConfig's default and PartFormerCriterion's
LOSS_WEIGHTS: Dict[str, float] = {"recon": 1.0, "concentration": 0.3, "area": 0.5, "arcface": 0.01}


@dataclass
class ExperimentConfig:
    name: str = "partformer"
    output_dir: str = "runs"          # run directories are created below this
    run_dir: Optional[str] = None     # explicit run directory (default: output_dir/name)
    seed: int = 0


@dataclass
class DataConfig:
    name: str = "synthetic"           # a registered dataset (partformer.data.DATASETS)
    root: str = "datasets/synthetic"
    image_size: int = 256             # S: network input is S x S
    resize: str = "whole"             # whole | shorter | shorter_center_crop | bbox_crop | ...
    train_split: str = "train"
    val_split: Optional[str] = "val"  # model selection; never the test split
    test_split: str = "test"
    regressor_split: Optional[str] = None  # split used to fit keypoint/landmark regressors
    num_workers: int = 2
    skip_bad_images: bool = True      # training only; evaluation uses eval.skip_bad_images
    # directory of the pre-resized uint8 training-image cache (one memory-mapped file per dataset,
    # split, size and resize mode, built on first use; later epochs and runs decode no image);
    # null: decode every image every epoch. Fixed-size resize modes only (README "Performance").
    cache: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)  # dataset-specific keyword options


@dataclass
class EncoderConfig:
    name: str = "vit_small_patch8_224.dino"   # any timm ViT
    pretrained: bool = True                   # hub weights (needs network or a warm cache)
    weights: Optional[str] = None             # local state dict; overrides `pretrained`
    frozen: bool = True
    layer: Optional[int] = None               # None: final norm output; int: that block's output
    # non-ViT timm models (CNNs): feature levels (timm features_only) fused at the finest one
    out_indices: Optional[List[int]] = None
    center: bool = False                      # subtract each image's mean feature (not in the paper)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments


@dataclass
class PartTokenConfig:
    in_scale: float = 0.5
    patch_size: int = 16
    width: int = 256
    depth: int = 6
    heads: int = 8
    mlp_ratio: float = 4.0


@dataclass
class DecoderConfig:
    channels: int = 64
    num_blocks: int = 5
    upsample_after: List[int] = field(default_factory=lambda: [2, 4])


@dataclass
class ModelConfig:
    num_parts: int = 4                # K foreground parts; background is the extra last channel
    feature_dim: int = 64             # D
    compress: str = "cub"             # cub | celeba | single
    compress_hidden: List[int] = field(default_factory=lambda: [256, 128])
    alignment: str = "dot"            # dot (x align_scale) | cosine (x learnable scale)
    align_scale: float = 0.8
    predict_upsample: int = 4
    # How the two x0.5 paths are downsampled: the view fed to the part-token ViT (by
    # partformer.in_scale) and the reconstruction target (to the decoder's output size).
    # nearest: the authors' F.interpolate(x, scale_factor=0.5) (PyTorch's default mode; output pixel
    # (i, j) = input pixel (2i, 2j)) | bilinear (half-pixel centres, no antialiasing). See
    # docs/differences.md.
    half_resample: str = "nearest"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    partformer: PartTokenConfig = field(default_factory=PartTokenConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@dataclass
class LossConfig:
    recon: str = "perceptual"         # perceptual | l1 | mse
    vgg_weights: Optional[str] = "imagenet"   # imagenet | path to a local vgg19 state dict
    vgg_channels_last: bool = True    # VGG19 convolutions in the channels-last layout (faster)
    weights: Dict[str, float] = field(default_factory=lambda: dict(LOSS_WEIGHTS))
    area_eps: float = 0.5
    area_all_maps: bool = False
    area_normalise: bool = False
    arcface_s: float = 20.0
    arcface_m: float = 0.5


@dataclass
class AugmentConfig:
    flip_p: float = 0.5
    rot_std: float = 15.0
    rot_max: float = 30.0
    scale_std: float = 0.05
    scale_min: float = 0.95
    scale_max: float = 1.05
    trans_std: float = 0.05
    trans_max: float = 0.05


@dataclass
class SchedulerConfig:
    name: str = "multistep"           # multistep | cosine | constant
    milestones: List[int] = field(default_factory=lambda: [90, 95])  # epochs
    gamma: float = 0.2
    warmup_epochs: float = 0.0
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 100
    max_steps: Optional[int] = None   # stop after this many optimiser steps (overrides epochs)
    batch_size: int = 32              # per process
    lr: float = 5e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.01
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_accum: int = 1
    grad_clip: float = 0.0            # max grad norm; 0 disables
    precision: str = "auto"           # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    max_nonfinite: int = 10           # consecutive non-finite losses before stopping
    log_every: int = 20               # steps between logged loss components
    val_every: int = 1                # epochs between validations (and `best` checkpoints)
    select_metric: str = "kp_nmi_with_bg"  # validation metric for the `best` checkpoint
    threads: int = 0                  # torch CPU threads; 0 keeps torch's default
    # torch.compile the model and the loss (nn.Module.compile: state-dict keys unchanged). Off:
    # not yet measured faster on the hardware this was tuned on (README "Performance")
    compile: bool = False


@dataclass
class EvalConfig:
    batch_size: int = 32
    num_workers: int = 2
    protocols: List[str] = field(default_factory=list)  # empty: every protocol that applies
    skip_bad_images: bool = False
    max_images: Optional[int] = None  # debugging only; reported in the JSON
    # position of map cell (i, j) in the regression protocols' part centroids, x (j + o) W / w:
    # index (o = 0; PDiscoFormer, the published protocol) | one_based (o = 1; Huang & Li's code) |
    # centre (o = 0.5). docs/PROTOCOLS.md §4.
    centroid_convention: str = "index"
    # how keypoint NMI / ARI read the maps at a keypoint: pixel (maps upsampled bilinearly to the
    # image, the pixel containing the keypoint; PDiscoFormer) | map_nearest (nearest cell of the
    # maps at their own resolution; the PartFormer authors' validate_CUB). docs/PROTOCOLS.md §2.
    keypoint_lookup: str = "pixel"


@dataclass
class WandbConfig:
    mode: str = "offline"             # offline | online | disabled
    project: str = "partformer"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    num_images: int = 8               # fixed validation images whose part masks are logged


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress: bool = True             # tqdm bars (rank 0 and a terminal only)


PRETRAIN_OBJECTIVES = ("dino", "dino_dense")


@dataclass
class PretrainConfig:
    """Self-supervised encoder pretraining (tools/pretrain.py; docs/PRETRAINING.md). The encoder
    is ``model.encoder`` (trained, whatever its ``frozen`` says); optimisation uses ``train.*``."""
    objective: str = "dino_dense"     # dino (global only) | dino_dense (global + dense cells)
    source_size: int = 128            # images are held at this size; crops are cut from them
    global_crops: int = 2
    global_size: int = 64             # the downstream input size
    global_scale: List[float] = field(default_factory=lambda: [0.35, 1.0])
    local_crops: int = 4
    local_size: int = 32
    local_scale: List[float] = field(default_factory=lambda: [0.08, 0.35])
    # every crop after the first is centred inside the first: with part-sized crops the views of
    # one image then share content (DINO's crops of a whole image always do)
    nested_crops: bool = False
    out_dim: int = 1024               # global prototypes
    dense_out_dim: int = 256          # dense (per-cell) prototypes
    dense_targets: str = "center"     # center (DINO) | image_center | sinkhorn (SwAV / Leopart)
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 3
    hidden_dim: int = 512             # global head: 3 layers
    dense_hidden_dim: int = 256       # dense head: 2 layers (it runs on every cell)
    bottleneck_dim: int = 128
    global_weight: float = 1.0
    dense_weight: float = 1.0
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    ema_momentum: float = 0.99        # teacher EMA, cosine to ema_momentum_end
    ema_momentum_end: float = 1.0
    weight_decay_end: float = 0.2     # train.weight_decay -> this (cosine), DINO's schedule
    photometric: Dict[str, Any] = field(default_factory=dict)  # crops.photometric overrides
    extra_synthetic: int = 0          # extra unlabeled generator images (synthetic data only)
    extra_seed: int = 1000            # their seed; must differ from the benchmark's
    cache_dir: Optional[str] = "datasets/.cache"
    checkpoint_every: int = 250       # steps between last.pt writes
    probe_every: int = 500            # steps between k-means probes on the validation split
    probe_parts: int = 4              # K of the probe (K + 1 clusters)
    probe_fit_images: int = 200
    probe_linear: bool = True         # also a linear probe of the cells' GT labels (validation split)
    # probe metric that picks best.pt: pixel NMI pools ~1.2 M validation pixels and moves steadily
    # while keypoint NMI (~4 k keypoints) stays within its noise for the first thousand steps
    select_metric: str = "px_nmi_with_bg"


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


# --------------------------------------------------------------------------------------- loading
def shipped_configs() -> List[str]:
    """Names of the shipped config files (``cub_k4.yaml``, ...), relative to :data:`CONFIG_DIR`."""
    if not os.path.isdir(CONFIG_DIR):
        return []
    return sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))


def resolve_config_path(path: str) -> str:
    """``path`` if it is a file; else a shipped config of that name (``cub_k4``, ``cub_k4.yaml``,
    ``configs/cub_k4.yaml``), so that an installed package finds its configs from any directory."""
    if os.path.isfile(path) or os.path.isabs(path):
        return path
    name = path[len("configs/"):] if path.startswith("configs/") else path
    for cand in (name, name + ".yaml"):
        if os.path.isfile(os.path.join(CONFIG_DIR, cand)):
            return os.path.join(CONFIG_DIR, cand)
    return path


def _read_yaml(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        close = difflib.get_close_matches(os.path.basename(path), shipped_configs(), n=3,
                                          cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"config file not found: {path}{hint} Pass a YAML file or the name of "
                          f"a shipped config ({CONFIG_DIR}: {', '.join(shipped_configs())})")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(dst: Dict[str, Any], src: Dict[str, Any], origin: str, origins: Dict[str, str],
           prefix: str = "") -> None:
    """Recursively merge ``src`` into ``dst``, recording which file set each dotted key."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origin, origins, dotted + ".")
        else:
            dst[key] = value
            origins[dotted] = origin
            if isinstance(value, dict):
                for sub in _dotted_keys(value, dotted + "."):
                    origins[sub] = origin


def _dotted_keys(d: Dict[str, Any], prefix: str = "") -> List[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out.extend(_dotted_keys(v, prefix + k + "."))
    return out


def _load_tree(path: str, origins: Dict[str, str], stack: Tuple[str, ...] = ()) -> Dict[str, Any]:
    path = os.path.abspath(path)
    if path in stack:
        raise ConfigError(f"{path}: `{BASE_KEY}` inheritance cycle: {' -> '.join(stack + (path,))}")
    raw = _read_yaml(path)
    bases = raw.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    merged: Dict[str, Any] = {}
    for base in bases:
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        _merge(merged, _load_tree(base_path, origins, stack + (path,)), "", {})
    # origins of base keys were recorded by the recursive call; the file's own keys win
    _merge(merged, raw, path, origins)
    return merged


def parse_override(item: str) -> Tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.subkey=value "
                          "(e.g. model.num_parts=8)")
    key, value = item.split("=", 1)
    key = key.strip()
    try:
        parsed = yaml.safe_load(value) if value.strip() != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def _nest(key: str, value: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value
    return out


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None,
                sections: Optional[Dict[str, Any]] = None, sections_origin: str = "") -> Config:
    """Load ``path`` (default: configs/default.yaml when it exists, else the schema defaults),
    replace whole top-level ``sections`` (e.g. the ``model`` section stored in a checkpoint), apply
    dotted ``overrides`` and validate everything against the schema."""
    origins: Dict[str, str] = {}
    tree: Dict[str, Any] = {}
    if path is None:
        default = os.path.join(CONFIG_DIR, "default.yaml")
        path = default if os.path.isfile(default) else None
    if path is not None:
        tree = _load_tree(resolve_config_path(os.fspath(path)), origins)
    for name, section in (sections or {}).items():
        tree[name] = section
        for sub in _dotted_keys({name: section}):
            origins[sub] = sections_origin
    apply_overrides(tree, overrides, origins)
    return from_dict(tree, origins)


def apply_overrides(tree: Dict[str, Any], overrides: Optional[List[str]],
                    origins: Dict[str, str]) -> Dict[str, Any]:
    """Merge dotted ``key=value`` overrides into a raw config tree, recording "command line" as
    their origin (for error messages)."""
    for item in overrides or []:
        key, value = parse_override(item)
        _merge(tree, _nest(key, value), "command line", origins)
    return tree


def from_dict(tree: Dict[str, Any], origins: Optional[Dict[str, str]] = None) -> Config:
    """Build and validate a :class:`Config` from a raw tree: types (:func:`_build`) and values
    that cannot work (:data:`CHECKS`), each error naming the key and where it was set."""
    origins = origins or {}
    cfg = _build(Config, tree, "", origins)
    check_values(cfg, origins)
    return cfg


# ------------------------------------------------------------------------------- value checks
def _dataset_names() -> List[str]:
    from partformer.data import dataset_names  # the registry (imports the dataset modules)
    return dataset_names()


def _at_least(n: float, what: str = ""):
    return (lambda v: v >= n), f"a number >= {n:g}{what}"


def _optional_at_least(n: float):
    return (lambda v: v is None or v >= n), f"null or a number >= {n:g}"


def _one_of(choices):
    if callable(choices):
        return (lambda v: v in choices()), lambda: f"one of {list(choices())}"
    return (lambda v: v in choices), f"one of {list(choices)}"


# values that pass the type check but cannot work; rejected when the config is read (not after the
# data has loaded): dotted key -> (test, what is expected)
CHECKS: Dict[str, Tuple[Callable[[Any], bool], Any]] = {
    "data.name": _one_of(_dataset_names),
    "data.image_size": _at_least(1),
    "data.num_workers": _at_least(0),
    "model.num_parts": _at_least(1, " (K foreground parts; the background map is added)"),
    "model.feature_dim": _at_least(1),
    "model.align_scale": ((lambda v: v > 0), "a number > 0"),
    "model.predict_upsample": _at_least(1),
    "train.epochs": _at_least(0),
    "train.max_steps": _optional_at_least(1),
    "train.batch_size": _at_least(1),
    "train.lr": ((lambda v: v > 0), "a number > 0"),
    "train.weight_decay": _at_least(0),
    "train.grad_accum": _at_least(1),
    "train.grad_clip": _at_least(0, " (0 disables clipping)"),
    "train.precision": _one_of(PRECISIONS),
    "train.max_nonfinite": _at_least(1),
    "train.log_every": _at_least(1),
    "train.val_every": _at_least(1),
    "train.threads": _at_least(0, " (0 keeps torch's default)"),
    "train.scheduler.name": _one_of(SCHEDULERS),
    "train.scheduler.gamma": ((lambda v: v > 0), "a number > 0"),
    "train.scheduler.warmup_epochs": _at_least(0),
    "eval.batch_size": _at_least(1),
    "eval.num_workers": _at_least(0),
    "eval.max_images": _optional_at_least(1),
    "logging.wandb.mode": _one_of(WANDB_MODES),
    "logging.wandb.num_images": _at_least(0),
    "pretrain.objective": _one_of(PRETRAIN_OBJECTIVES),
    "pretrain.source_size": _at_least(1),
    "pretrain.global_crops": _at_least(2, " (DINO compares each global crop with another)"),
    "pretrain.global_size": _at_least(1),
    "pretrain.local_crops": _at_least(0),
    "pretrain.local_size": _at_least(1),
    "pretrain.student_temp": ((lambda v: v > 0), "a number > 0"),
    "pretrain.teacher_temp": ((lambda v: v > 0), "a number > 0"),
    "pretrain.extra_synthetic": _at_least(0),
    "pretrain.checkpoint_every": _at_least(1),
    "pretrain.probe_every": _at_least(0, " (0 disables the probe)"),
    "pretrain.probe_parts": _at_least(1),
    "pretrain.dense_targets": _one_of(("center", "image_center", "sinkhorn")),
}


def check_values(cfg: Config, origins: Optional[Dict[str, str]] = None) -> None:
    """Raise :class:`ConfigError` for the first value of :data:`CHECKS` that cannot work."""
    origins = origins or {}
    for dotted, (test, expected) in CHECKS.items():
        obj = cfg
        for part in dotted.split("."):
            obj = getattr(obj, part)
        if not test(obj):
            expected = expected() if callable(expected) else expected
            raise ConfigError(f"config key `{dotted}`{_where(dotted, origins)} must be {expected}, "
                              f"got {obj!r}. Fix it in the config file or on the command line "
                              f"({dotted}=...)")


def _where(dotted: str, origins: Dict[str, str]) -> str:
    src = origins.get(dotted) or origins.get(dotted.split("[", 1)[0])  # list items: the list
    return f" (set in {src})" if src else ""


def _build(cls, data: Dict[str, Any], prefix: str, origins: Dict[str, str]):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    if not isinstance(data, dict):
        raise ConfigError(f"`{prefix.rstrip('.') or 'config'}` must be a mapping, "
                          f"got {data!r}{_where(prefix.rstrip('.'), origins)}")
    kwargs = {}
    for key, value in data.items():
        dotted = prefix + key
        if key not in names:
            valid = [prefix + n for n in names]
            close = difflib.get_close_matches(dotted, valid, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key `{dotted}`{_where(dotted, origins)}{hint} "
                              f"Valid keys here: {', '.join(valid)}")
        default = fields[key].default_factory
        if (isinstance(value, dict) and typing.get_origin(hints[key]) in (dict, Dict)
                and default is not dataclasses.MISSING):
            # a mapping with default entries (loss.weights): setting one entry keeps the others,
            # so the resolved (saved) config shows every value the run uses
            value = {**default(), **value}
        kwargs[key] = _coerce(hints[key], value, dotted, origins)
    return cls(**kwargs)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp, value, dotted: str, origins: Dict[str, str]):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"config key `{dotted}`{_where(dotted, origins)} expects "
                      f"{_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, dotted + ".", origins)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, dotted, origins)
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad
        return [_coerce(args[0], v, f"{dotted}[{i}]", origins) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise bad
        return {k: (_coerce(args[1], v, f"{dotted}.{k}", origins) if args[1] is not Any else v)
                for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    return value


# --------------------------------------------------------------------------------------- output
def to_dict(cfg) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg, path: str) -> None:
    """Write the resolved config as YAML, atomically."""
    from partformer.fileio import atomic_open
    with atomic_open(path, "w") as f:
        f.write(to_yaml(cfg))


def add_config_args(parser) -> None:
    """Standard ``--config FILE`` plus trailing ``key=value`` overrides for the CLIs."""
    parser.add_argument("--config", default=None,
                        help="YAML config (default: configs/default.yaml, the synthetic benchmark)")
    parser.add_argument("overrides", nargs="*", default=[],
                        help="dotted overrides, e.g. model.num_parts=8 train.batch_size=16")


def section_kwargs(section: Any, target, prefix: str,
                   exclude: Union[Tuple[str, ...], Mapping[str, str]] = ()) -> Dict[str, Any]:
    """Keyword arguments for ``target`` (a class or function) from one config section: a dataclass,
    a mapping with the same keys, or None (all defaults). The one way from a config section to a
    constructor: a key that ``target`` does not take is an error naming ``<prefix>.<key>`` and the
    valid keys (a ``target`` with ``**kwargs`` takes any key). ``exclude``: arguments the caller
    sets itself (a mapping: argument -> the config key that sets it); a section that sets one is an
    error naming where it belongs."""
    import inspect

    if section is None:
        kwargs: Dict[str, Any] = {}
    elif dataclasses.is_dataclass(section) and not isinstance(section, type):
        kwargs = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    elif isinstance(section, Mapping):
        kwargs = dict(section)
    else:
        raise TypeError(f"{prefix} config must be a dataclass, a mapping or None, "
                        f"got {type(section).__name__}")
    fn = target.__init__ if isinstance(target, type) else target
    params = inspect.signature(fn).parameters
    named = [n for n, p in params.items()
             if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    taken = sorted(set(kwargs) & set(exclude))
    if taken:
        where = {k: (exclude.get(k) if isinstance(exclude, Mapping) else None) for k in taken}
        raise ValueError("; ".join(f"{prefix}.{k} is not a setting of this section"
                                   + (f" (it comes from {w})" if w else "")
                                   for k, w in where.items()) + ": remove it")
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
    known = [n for n in named if n not in exclude]
    unknown = sorted(set(kwargs) - set(known))
    if unknown and not open_ended:
        raise ValueError(f"unknown {prefix} config key(s) {[prefix + '.' + k for k in unknown]}; "
                         f"known: {[prefix + '.' + k for k in known]}")
    return kwargs
