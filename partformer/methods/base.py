"""The ``Method`` interface: everything the engine, the tools and the weights loading need from a
part-discovery method, and nothing they know about it.

A method is one package under ``partformer/methods/<name>/`` that defines a :class:`Method`
subclass and registers it with :func:`register_method` (timm's ``@register_model`` at the
definition site). It owns:

- its config section (``config_class``, a dataclass; the YAML section named after the method, with
  typo suggestions, type checks and the class's ``CHECKS``), and the upgrade of older config
  layouts and checkpoints (:meth:`Method.upgrade_config`, :meth:`Method.upgrade_state`);
- its model (:meth:`Method.build_model`, an ``nn.Module`` whose ``state_dict`` is what checkpoints
  hold) and its training objective (:meth:`Method.build_objective`, an ``nn.Module`` whose
  ``forward(model, batch, generator)`` returns the loss dict: DINOv2's meta-architecture / detectron2's
  loss dict; the trainer sums nothing itself and knows nothing else);
- its parameter groups with learning-rate and weight-decay multipliers (:meth:`Method.param_groups`)
  and its per-step hook (:meth:`Method.after_step`, e.g. an EMA teacher);
- its test-time path (:meth:`Method.predict`: part maps ``[B, K+1, h, w]``, a softmax over the K
  parts and the background, background LAST);
- for training-free methods (``trainable = False``: the grid and k-means references), a
  :meth:`Method.fit` on training images instead of training;
- the converter of its authors' released checkpoints (:meth:`Method.detect_official`,
  :meth:`Method.convert_official`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from partformer.registry import Registry

METHODS: Registry = Registry("method")


def register_method(cls):
    """Class decorator: register a :class:`Method` subclass under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`")
    METHODS.register(cls.name)(cls)
    return cls


@dataclasses.dataclass
class ParamGroup:
    """Parameters optimised with the same multipliers of the base learning rate and weight decay
    (``train.lr``, ``train.weight_decay``), like PDiscoFormer's layer-name groups and DINOv2's
    per-group schedules: the schedule scales every group by the same factor."""
    name: str
    params: List[nn.Parameter]
    lr_mult: float = 1.0
    wd_mult: float = 1.0


class Method:
    """One part-discovery method; see the module docstring. Instances are cheap: built from the
    resolved config, they hold it and the method's section (``self.config``)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[Optional[type]] = None
    trainable: ClassVar[bool] = True
    # shown next to the name wherever results are reported ("class-supervised" methods use
    # image-level class labels: PDiscoNet, PDiscoFormer)
    supervision: ClassVar[str] = "unsupervised"
    # sample keys a training step reads besides "image" (e.g. "label"); the trainer moves them to
    # the device and fails early when the dataset does not provide them
    batch_keys: ClassVar[Tuple[str, ...]] = ()
    # the method's authors' released checkpoints: the value of --dataset / official_dataset
    official_datasets: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, cfg):
        self.cfg = cfg
        self.config = cfg.section(self.name) if self.config_class is not None else None
        self.num_parts = int(cfg.model.num_parts)
        self.image_size = int(cfg.data.image_size)

    # ------------------------------------------------------------------ building
    def build_model(self, pretrained: bool = True) -> nn.Module:
        """The part model (its ``state_dict`` is what checkpoints hold). ``pretrained=False``: the
        weights will come from a checkpoint, so nothing is fetched (no pretrained encoder)."""
        raise NotImplementedError

    def build_objective(self) -> nn.Module:
        """The training objective: ``forward(model, batch, generator) -> {name: scalar, "total"}``
        (float32; ``batch["image"]`` ``[B, 3, S, S]`` float in [0, 1] on the device, plus
        :attr:`batch_keys`; random draws from ``generator``, a CPU ``torch.Generator``). Holds
        what the loss needs besides the model (e.g. a frozen VGG19); not saved in checkpoints."""
        raise NotImplementedError(f"method {self.name!r} is not trained")

    def param_groups(self, model: nn.Module) -> List[ParamGroup]:
        """Default: every trainable parameter in one group, multipliers 1 (decay on everything,
        as ``torch.optim.AdamW(model.parameters())`` does)."""
        return [ParamGroup("all", [p for p in model.parameters() if p.requires_grad])]

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called after every optimiser step (``step`` = steps done), e.g. an EMA update."""

    def check_data(self, dataset) -> None:
        """Called by the trainer with the training split before anything is built: raise a
        ``ConfigError`` when the method cannot train on it (e.g. more image classes than its
        classifier has)."""

    def fit(self, model: nn.Module, dataset, device: torch.device) -> None:
        """Training-free methods: fit on images of ``dataset`` (the training split)."""

    # ------------------------------------------------------------------ test time
    def predict(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        """Part maps ``[B, K+1, h, w]`` of ``batch["image"]`` (on the model's device, float in
        [0, 1]), background last. Default: ``model.predict(images)``."""
        return model.predict(batch["image"])

    def floor(self, model: nn.Module, images: torch.Tensor) -> Any:
        """The part of a training step on ``images`` that no change to the method's trainable
        parts can remove (the frozen encoder's forward over what a step feeds it); the speed
        harness times it next to the step. Default: one encoder pass over ``images``."""
        return model.encoder(model.normalize(images))

    # ------------------------------------------------------------------ files
    @classmethod
    def upgrade_config(cls, tree: Dict[str, Any], origins: Dict[str, str]) -> None:
        """Move keys of an older config layout (an old checkpoint's or YAML file's) to where they
        live now, in place. Called for every registered method on every config tree."""

    @classmethod
    def upgrade_checkpoint_config(cls, tree: Dict[str, Any], ckpt: Mapping[str, Any],
                                  path: str) -> None:
        """Like :meth:`upgrade_config`, for a config read from the checkpoint ``ckpt`` (``path``),
        before it: what only the checkpoint can tell (when and how it was written)."""

    @classmethod
    def upgrade_state(cls, state: Dict[str, torch.Tensor], cfg) -> Dict[str, torch.Tensor]:
        """An older checkpoint's model state dict in today's parameter names."""
        return state

    @classmethod
    def detect_official(cls, ckpt: Mapping[str, Any]) -> bool:
        """Whether ``ckpt`` (a loaded file) is one of this method's authors' released files."""
        return False

    @classmethod
    def convert_official(cls, path: str, dataset: Optional[str] = None,
                         base_config: Optional[str] = None, overrides: Sequence[str] = (),
                         unsafe_load: bool = False) -> Dict[str, Any]:
        """The authors' file at ``path`` as one of our checkpoints ``{"model", "config",
        "source"}`` (``config``: YAML of the resolved config that rebuilds the model)."""
        raise NotImplementedError(f"method {cls.name!r} has no converter for its authors' files")
