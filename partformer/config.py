"""Typed configuration: dataclass schema, YAML files with inheritance, dotted command-line overrides.

A YAML file may name parent files under ``_base_`` (a path or a list of paths, relative to the file);
parents are merged first, the file's own keys last. Command-line overrides are ``a.b.c=value`` with
the value parsed as YAML (``train.lr=1e-3``, ``train.scheduler.milestones=[10,13]``).

Every key is checked against the schema below: an unknown key names the key, the file that set it and
the closest valid keys; a wrong type names the expected type.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

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
SCHEDULERS = ("multistep", "step", "cosine", "constant")
OPTIMIZERS = ("adamw", "adam", "sgd")
WANDB_MODES = ("offline", "online", "disabled")
# the sections a run of each job uses (to_dict writes only these, plus the run's method section)
JOB_SECTIONS = {
    "train": ("experiment", "data", "model", "method", "train", "eval", "logging"),
    "pretrain": ("experiment", "data", "model", "train", "logging", "pretrain"),
}


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says where and how to fix it."""


# --------------------------------------------------------------------------------------- schema
# The shared sections: every method reads them. A method's own settings are a top-level section
# named after it (``partformer:``, ``mpae:``, ...), typed by the config class the method registers
# (partformer/methods/); ``method.name`` says which one a run uses.


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
class ModelConfig:
    """What every method shares: K and the feature-map encoder (frozen or not, the method's
    section says what it trains)."""
    num_parts: int = 4                # K foreground parts; background is the extra last channel
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


def _default_method() -> str:
    from partformer.methods import DEFAULT_METHOD
    return DEFAULT_METHOD


@dataclass
class MethodConfig:
    name: str = field(default_factory=_default_method)  # a registered method (partformer.methods)


@dataclass
class SchedulerConfig:
    name: str = "multistep"           # multistep | step | cosine | constant
    milestones: List[int] = field(default_factory=lambda: [90, 95])  # epochs (multistep)
    step_size: int = 1                # epochs between decays (step)
    gamma: float = 0.2                # decay factor (multistep, step)
    warmup_epochs: float = 0.0
    # cosine: the learning rate it ends at, absolute (as DINO and timm); the base group's; every
    # parameter group is scaled by the same factor, so a group with lr_mult m ends at m * min_lr
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 100
    max_steps: Optional[int] = None   # stop after this many optimiser steps (overrides epochs)
    batch_size: int = 32              # per process
    optimizer: str = "adamw"          # adamw | adam | sgd (methods set their own in their configs)
    lr: float = 5e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    momentum: float = 0.9             # sgd only
    weight_decay: float = 0.01
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_accum: int = 1
    grad_clip: float = 0.0            # max grad norm; 0 disables
    precision: str = "auto"           # auto (bf16 on GPU and native-bf16 CPUs, else fp32) | fp32 | bf16 | fp16
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
    progress: bool = True             # rank 0: tqdm bars on a terminal, plain lines off one
    progress_every: float = 30.0      # seconds between plain progress lines off a terminal


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
    # levels of the synthetic benchmark (partformer/data/synthetic/levels.py) that draw the extra
    # images: extra_synthetic images of each, level i under seed extra_seed + i; empty: the
    # settings of data.options.generator under extra_seed
    extra_levels: List[str] = field(default_factory=list)
    # more unlabeled training splits (e.g. the other levels' trees): each a partial `data`
    # section (root, name, options, train_split) on top of `data`; only their images are read
    extra_data: List[Dict[str, Any]] = field(default_factory=list)
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
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    # one section per registered method, by name (the YAML has them at the top level:
    # ``partformer:``, ``mpae:``); filled by from_dict, written back flat by to_dict
    methods: Dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        # every registered method has a section (its defaults unless the tree sets it)
        from partformer.methods import get_method, method_names
        for name in method_names():
            cls = get_method(name).config_class
            if cls is not None and name not in self.methods:
                self.methods[name] = cls()

    def section(self, name: Optional[str] = None) -> Any:
        """The config section of method ``name`` (default: the run's ``method.name``)."""
        name = name or self.method.name
        if name not in self.methods:
            from partformer.methods import get_method
            cls = get_method(name).config_class
            if cls is None:
                return None
            self.methods[name] = cls()
        return self.methods[name]

    def __getattr__(self, name: str) -> Any:
        # ``cfg.partformer``, ``cfg.mpae``: a method's section as an attribute
        if name.startswith("_") or name == "methods" or "methods" not in self.__dict__:
            raise AttributeError(name)
        from partformer.methods import method_names
        if name in method_names():
            return self.section(name)
        raise AttributeError(f"{type(self).__name__} has no section {name!r}")


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
    """Build and validate a :class:`Config` from a raw tree: keys of older layouts moved where
    they live now (each method's ``upgrade_config``), types (:func:`_build`), every method's
    section, and values that cannot work (:data:`CHECKS` and the methods' own checks), each error
    naming the key and where it was set."""
    from partformer.methods import get_method, method_names
    origins = origins or {}
    tree = copy.deepcopy(tree)
    names = method_names()
    for name in names:
        get_method(name).upgrade_config(tree, origins)
    sections = {k: tree.pop(k) for k in list(tree) if k in names}
    if "methods" in tree:
        raise ConfigError("`methods` is not a config section: a method's settings go into a "
                          f"top-level section named after it ({', '.join(names)})")
    cfg = _build(Config, tree, "", origins, extra_keys=names)
    _check_method_name(cfg, names, origins)
    for name in names:
        cls = get_method(name).config_class
        if cls is not None:
            cfg.methods[name] = _build(cls, sections.get(name) or {}, name + ".", origins)
        elif sections.get(name):
            raise ConfigError(f"method {name!r} has no settings; remove the `{name}:` section"
                              f"{_where(name, origins)}")
    check_values(cfg, origins)
    return cfg


def _check_method_name(cfg: Config, names: List[str], origins: Dict[str, str]) -> None:
    if cfg.method.name not in names:
        close = difflib.get_close_matches(cfg.method.name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"config key `method.name`{_where('method.name', origins)} must be one "
                          f"of the registered methods {names}, got {cfg.method.name!r}{hint}")


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


DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"


def check_device_name(device: str) -> bool:
    """Whether ``device`` is a device name this package runs on (:data:`DEVICE_HELP`)."""
    if device in ("auto", "cpu", "cuda"):
        return True
    return device.startswith("cuda:") and device[5:].isdigit()


# the same helpers for the CHECKS tables of the methods' config classes
at_least, optional_at_least, one_of = _at_least, _optional_at_least, _one_of


def in_range(lo: float, hi: float):
    return (lambda v: lo <= v <= hi), f"a number in [{lo:g}, {hi:g}]"


# values that pass the type check but cannot work; rejected when the config is read (not after the
# data has loaded): dotted key -> (test, what is expected)
CHECKS: Dict[str, Tuple[Callable[[Any], bool], Any]] = {
    "data.name": _one_of(_dataset_names),
    "data.image_size": _at_least(1),
    "data.num_workers": _at_least(0),
    "model.num_parts": _at_least(1, " (K foreground parts; the background map is added)"),
    "train.epochs": _at_least(0),
    "train.max_steps": _optional_at_least(1),
    "train.batch_size": _at_least(1),
    "train.lr": ((lambda v: v > 0), "a number > 0"),
    "train.weight_decay": _at_least(0),
    "train.grad_accum": _at_least(1),
    "train.grad_clip": _at_least(0, " (0 disables clipping)"),
    "train.precision": _one_of(PRECISIONS),
    "train.device": (check_device_name, DEVICE_HELP),
    "train.max_nonfinite": _at_least(1),
    "train.log_every": _at_least(1),
    "train.val_every": _at_least(1),
    "train.threads": _at_least(0, " (0 keeps torch's default)"),
    "train.scheduler.name": _one_of(SCHEDULERS),
    "train.scheduler.step_size": _at_least(1),
    "train.scheduler.min_lr": _at_least(0),
    "train.optimizer": _one_of(OPTIMIZERS),
    "train.scheduler.gamma": ((lambda v: v > 0), "a number > 0"),
    "train.scheduler.warmup_epochs": _at_least(0),
    "eval.batch_size": _at_least(1),
    "eval.num_workers": _at_least(0),
    "eval.max_images": _optional_at_least(1),
    "logging.wandb.mode": _one_of(WANDB_MODES),
    "logging.wandb.num_images": _at_least(0),
    "logging.progress_every": _at_least(0, " (seconds between progress lines off a terminal)"),
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
    """Raise :class:`ConfigError` for the first value that cannot work: :data:`CHECKS` of the
    shared sections, then the ``CHECKS`` of each method's config class (keys relative to its
    section), then the ``check(cfg)`` hook of the run's method (conditions between several keys
    and with the shared sections)."""
    origins = origins or {}
    tables = [("", cfg, CHECKS)]
    tables += [(name + ".", sec, getattr(type(sec), "CHECKS", {}))
               for name, sec in cfg.methods.items()]
    for prefix, root, table in tables:
        for key, (test, expected) in table.items():
            obj = root
            for part in key.split("."):
                obj = getattr(obj, part)
            if not test(obj):
                dotted = prefix + key
                expected = expected() if callable(expected) else expected
                raise ConfigError(f"config key `{dotted}`{_where(dotted, origins)} must be "
                                  f"{expected}, got {obj!r}. Fix it in the config file or on the "
                                  f"command line ({dotted}=...)")
    _check_encoder_grid(cfg, origins)
    # conditions between keys, and with the shared sections: the run's own method only
    sec = cfg.section()
    problem = getattr(sec, "check", None) and sec.check(cfg)
    if problem:
        key, message = problem
        dotted = f"{cfg.method.name}.{key}"
        raise ConfigError(f"config key `{dotted}`{_where(dotted, origins)}: {message}")


def encoder_patch_size(encoder: "EncoderConfig") -> Optional[int]:
    """The patch size of a ViT ``model.encoder`` as the config gives it (``kwargs.patch_size``,
    else the ``patch<N>`` of the timm name, e.g. ``vit_small_patch8_224.dino``), or None: a model
    with feature levels (``out_indices``, any input size) or a name that does not say."""
    if encoder.out_indices is not None:
        return None
    p = (encoder.kwargs or {}).get("patch_size")
    if p is None:
        m = re.search(r"patch(\d+)", encoder.name)
        p = int(m.group(1)) if m else None
    if isinstance(p, (list, tuple)) and p:
        p = p[0]
    return int(p) if isinstance(p, (int, float)) and p > 0 else None


def encoder_patch_key(encoder: "EncoderConfig") -> str:
    """The config key that sets the patch size :func:`encoder_patch_size` reads, with its value."""
    if "patch_size" in (encoder.kwargs or {}):
        return f"model.encoder.kwargs.patch_size={encoder.kwargs['patch_size']}"
    return f"model.encoder.name={encoder.name}"


def _check_encoder_grid(cfg: "Config", origins: Dict[str, str]) -> None:
    """A ViT encoder cuts the image into patches: its patch must divide ``data.image_size`` (else
    the first forward fails, after the run directory exists)."""
    p = encoder_patch_size(cfg.model.encoder)
    S = cfg.data.image_size
    if p is None or S % p == 0:
        return
    key = encoder_patch_key(cfg.model.encoder)
    lo, hi = S - S % p, S - S % p + p
    raise ConfigError(
        f"config key `data.image_size`{_where('data.image_size', origins)} must be a multiple of "
        f"the encoder's patch size {p} ({key}"
        f"{_where(key.split('=')[0], origins).replace(' (', ', ').rstrip(')')}), got {S}; use data.image_size={lo or hi} or {hi}, or an "
        "encoder whose patch divides it")


def _where(dotted: str, origins: Dict[str, str]) -> str:
    src = origins.get(dotted) or origins.get(dotted.split("[", 1)[0])  # list items: the list
    return f" (set in {src})" if src else ""


def _build(cls, data: Dict[str, Any], prefix: str, origins: Dict[str, str],
           extra_keys: Sequence[str] = ()):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "methods"}
    names = list(fields) + list(extra_keys)
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
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:          # Tuple[float, ...]
            types = [args[0]] * len(value)
        else:                                                # Tuple[float, float]
            types = list(args)
            if len(value) != len(types):
                raise ConfigError(f"config key `{dotted}`{_where(dotted, origins)} expects "
                                  f"{len(types)} values, got {len(value)}: {list(value)!r}")
        return tuple(_coerce(t, v, f"{dotted}[{i}]", origins)
                     for i, (t, v) in enumerate(zip(types, value)))
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
def to_dict(cfg, job: Optional[str] = "train") -> Dict[str, Any]:
    """The config as a plain tree. For a :class:`Config`, ``job`` (``train`` | ``pretrain``)
    keeps only the sections that job uses (:data:`JOB_SECTIONS`), a training run's own method
    section included (``partformer:``, ``mpae:``); ``None`` keeps every section."""
    if not isinstance(cfg, Config):
        return dataclasses.asdict(cfg)
    out = {f.name: dataclasses.asdict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
           if f.name != "methods"}
    if job is not None:
        out = {k: v for k, v in out.items() if k in JOB_SECTIONS[job]}
    used = [cfg.method.name] if job == "train" else [] if job else sorted(cfg.methods)
    for name in used:
        sec = cfg.section(name)
        if sec is not None:
            out[name] = dataclasses.asdict(sec)
    return out


def to_yaml(cfg, job: Optional[str] = "train") -> str:
    return yaml.safe_dump(to_dict(cfg, job), sort_keys=False, default_flow_style=None)


def save_config(cfg, path: str, job: Optional[str] = "train") -> None:
    """Write the resolved config (the sections ``job`` uses) as YAML, atomically."""
    from partformer.fileio import atomic_open
    with atomic_open(path, "w") as f:
        f.write(to_yaml(cfg, job))


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
