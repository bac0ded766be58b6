"""Difficulty levels of the synthetic benchmark: named knob sets of :class:`SyntheticConfig`.

Every level draws the same animals, parts, keypoints and split sizes; a level changes only the
scene around the animal (background, distractors, occluders, animals leaving the frame), and has
its own seed, so no two levels share an image. ``cluttered`` is the benchmark as generator 1.0 made
it (``SyntheticConfig()``'s defaults, seed 0), byte for byte. Why each level is what it is, and
what was measured on each: datasets/synthetic/README.md ("Levels").

    cfg = level_config("clean")                     # a SyntheticConfig
    cfg = level_config("clean", num_train=500)      # other settings on top of the level's
    level_of(cfg)                                    # "clean" (split sizes do not matter)

In a training config: ``data.options.generator: {level: clean}`` (with a ``data.root`` of its own),
on the command line ``tools/make_synthetic.py --level clean --out DIR``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

from partformer.data.synthetic.config import SyntheticConfig

# Each level: the SyntheticConfig fields it sets (everything else is SyntheticConfig's default).
# Seeds are the levels' own; tools/pretrain.py's extra generator images use seeds >= 1000.
LEVELS: Dict[str, Dict[str, Any]] = {
    # clean, and the animal in its canonical pose: no in-plane rotation, no articulation (wings
    # folded, neck, legs and tail at their neutral angles); flips, scales and head turns remain
    "rigid": dict(seed=100, background="smooth", clutter=0, occlusion=0.0, out_of_frame=0.0,
                  keep_in_frame=True, max_rotation=0.0, articulation=0.0),
    # the animal on a smooth two-colour gradient, nothing else in the image
    "clean": dict(seed=101, background="smooth", clutter=0, occlusion=0.0, out_of_frame=0.0,
                  keep_in_frame=True),
    # the textured backgrounds of generator 1.0, nothing else in the image (no distractor: ones
    # that are no animal primitive, distractors="objects", cost the shipped encoder's linear probe
    # as much as the animal-shaped ones; datasets/synthetic/README.md, "Levels")
    "textured": dict(seed=102, background="textured", clutter=0, occlusion=0.0, out_of_frame=0.0,
                     keep_in_frame=True),
    # generator 1.0's default benchmark: distractors made of the animals' own primitives and
    # textures, occluders, animals partly out of the frame
    "cluttered": dict(),
}
DEFAULT_LEVEL = "cluttered"

# settings that do not define a level: a tree of other split sizes is still the same level
_NOT_LEVEL = ("num_train", "num_val", "num_test")


def level_names() -> Tuple[str, ...]:
    return tuple(LEVELS)


def level_settings(name: str) -> Dict[str, Any]:
    """Every setting of level ``name`` (the level's knobs on top of the defaults), JSON-normal."""
    if name not in LEVELS:
        raise ValueError(f"unknown synthetic level {name!r}; known: {', '.join(LEVELS)}")
    return SyntheticConfig(**LEVELS[name]).to_dict()


def level_config(name: Optional[str] = None, **overrides) -> SyntheticConfig:
    """The :class:`SyntheticConfig` of level ``name`` (default ``cluttered``) with ``overrides``
    (any ``SyntheticConfig`` field) applied on top."""
    name = DEFAULT_LEVEL if name is None else name
    if name not in LEVELS:
        raise ValueError(f"unknown synthetic level {name!r}; known: {', '.join(LEVELS)}")
    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown synthetic generator setting(s) {bad}; known: {sorted(fields)}")
    return SyntheticConfig(**{**LEVELS[name], **overrides})


def level_of(cfg: SyntheticConfig) -> Optional[str]:
    """The level whose settings ``cfg`` has (split sizes aside), or ``None``."""
    have = cfg.to_dict()
    for name in LEVELS:
        want = level_settings(name)
        if all(have[k] == v for k, v in want.items() if k not in _NOT_LEVEL):
            return name
    return None


def generator_config(options: Optional[Mapping[str, Any]]) -> Tuple[SyntheticConfig, int]:
    """``data.options.generator`` -> ``(SyntheticConfig, generation workers)``: an optional
    ``level`` name, any ``SyntheticConfig`` field on top of it, and ``num_workers``."""
    opts = dict(options or {})
    workers = int(opts.pop("num_workers", 1))
    level = opts.pop("level", None)
    return level_config(level, **opts), workers
