"""Procedural part-discovery benchmark written in the CUB-200-2011 layout (the default dataset).

Two object families, bird-like and quadruped-like, drawn with OpenCV from a seed. Every image
comes from its own generator ``numpy.random.default_rng([seed, index])``, so generation can be split
across processes and any subset can be re-rendered bit-identically.

Why it is a part-discovery problem and not a colour-segmentation one:

- colours are drawn per image; every part of an object draws its colours from the same ranges
  (around the class's hue), so the colour of a pixel does not tell which part it belongs to;
- parts differ by shape (ellipse body, round or elongated head, feathered wings, fan or curled
  tails, thin jointed legs), texture (solid, stripes, dots, checker, gradient, mottled; per class a
  preferred texture per part, used with probability ``pattern_consistency``) and their place in the
  body layout;
- rotation, scale, translation, horizontal flip, articulation of neck / wings / legs / tail, parts
  occluding each other, foreground occluders, objects leaving the frame, and textured, cluttered
  backgrounds whose distractor shapes (blobs, limb-like capsules, wing-like leaves) reuse the
  object's own part textures (the default ``cluttered`` level; the ``levels`` module names easier
  scenes: ``clean``, ``textured``).

Ground truth: per-pixel semantic part ids (what is visible after all drawing, 0 = background),
foreground masks, keypoints with visibility, tight boxes of the foreground mask, class labels
(class = family x colour scheme).

Keypoint visibility. A keypoint is visible only if it lies in the frame and the pixel containing
it (``floor(y), floor(x)``, docs/ARCHITECTURE.md) belongs, in the final part mask, to the part that
owns the keypoint (so occluded keypoints are invisible). In addition the far-side eye is invisible
when the head is in profile (it is not drawn then). Left / right are the animal's own sides (as in
CUB): an animal facing right shows its right side, so a horizontal flip changes which side is near,
not the names.

Coordinates follow docs/ARCHITECTURE.md: pixel ``(row i, col j)`` covers ``x in [j, j+1)``,
``y in [i, i+1)``; the drawing routines are fed ``(x - 0.5, y - 0.5)`` because OpenCV puts pixel
centres on integer coordinates.

The package, in the order a picture is made: ``config`` (the vocabularies and
:class:`SyntheticConfig`), ``levels`` (the benchmark's named knob sets: :func:`level_config`),
``shapes`` (polygons), ``animals`` (birds and quadrupeds as lists of part polygons with
keypoints), ``textures``, ``rendering`` (one image and its ground truth:
:func:`render_sample`, :func:`render_index`), ``tree`` (the CUB-layout files on disk:
:func:`write_synthetic_cub`, :func:`ensure_synthetic`) and ``dataset`` (``data.name: synthetic``).
"""
from partformer.data.synthetic.config import (FAMILIES, FAMILY_KEYPOINTS, FAMILY_PARTS,
                                              KEYPOINT_NAMES, KEYPOINT_OWNER, PART_NAMES, SCHEMES,
                                              TEXTURES, SyntheticConfig, class_names)
from partformer.data.synthetic.dataset import build_synthetic
from partformer.data.synthetic.levels import (LEVELS, generator_config, level_config, level_names,
                                              level_of)
from partformer.data.synthetic.rendering import render_index, render_sample
from partformer.data.synthetic.tree import (GENERATOR_VERSION, META_FILE, ensure_synthetic,
                                            read_meta, write_synthetic_cub)

__all__ = [
    "GENERATOR_VERSION", "SyntheticConfig", "FAMILIES", "SCHEMES", "PART_NAMES", "KEYPOINT_NAMES",
    "KEYPOINT_OWNER", "FAMILY_KEYPOINTS", "FAMILY_PARTS", "TEXTURES", "class_names",
    "render_sample", "render_index", "write_synthetic_cub", "ensure_synthetic", "read_meta",
    "build_synthetic", "META_FILE", "LEVELS", "level_config", "level_names", "level_of",
    "generator_config",
]
