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
  object's own part textures.

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
"""
from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from partformer.data import register_dataset

__all__ = [
    "GENERATOR_VERSION", "SyntheticConfig", "FAMILIES", "SCHEMES", "PART_NAMES", "KEYPOINT_NAMES",
    "KEYPOINT_OWNER", "FAMILY_KEYPOINTS", "FAMILY_PARTS", "class_names", "render_sample",
    "render_index", "write_synthetic_cub", "ensure_synthetic", "read_meta", "build_synthetic",
    "META_FILE",
]

GENERATOR_VERSION = "1.0"
META_FILE = "synthetic_meta.json"

# ----------------------------------------------------------------------------------------------
# vocabularies
# ----------------------------------------------------------------------------------------------

FAMILIES = ("bird", "quadruped")

# semantic parts, ids 1..5 (0 = background) -- one global vocabulary for both families
PART_NAMES = ("head", "body", "wing", "tail", "leg")
HEAD, BODY, WING, TAIL, LEG = 1, 2, 3, 4, 5
FAMILY_PARTS = {
    "bird": ("head", "body", "wing", "tail", "leg"),
    "quadruped": ("head", "body", "tail", "leg"),
}

# keypoints, ids 1..19 -- one global vocabulary; a keypoint a family lacks is an invisible row
KEYPOINT_NAMES = (
    "crown", "left eye", "right eye", "beak", "nose", "left ear", "right ear",
    "breast", "back", "belly", "left wing", "right wing", "tail",
    "left leg", "right leg", "left foreleg", "right foreleg", "left hind leg", "right hind leg",
)
_KP_INDEX = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
# part that owns each keypoint (its pixel must carry this part id for the keypoint to be visible)
KEYPOINT_OWNER = {
    "crown": HEAD, "left eye": HEAD, "right eye": HEAD, "beak": HEAD, "nose": HEAD,
    "left ear": HEAD, "right ear": HEAD, "breast": BODY, "back": BODY, "belly": BODY,
    "left wing": WING, "right wing": WING, "tail": TAIL, "left leg": LEG, "right leg": LEG,
    "left foreleg": LEG, "right foreleg": LEG, "left hind leg": LEG, "right hind leg": LEG,
}
FAMILY_KEYPOINTS = {
    "bird": ("crown", "left eye", "right eye", "beak", "breast", "back", "belly", "left wing",
             "right wing", "tail", "left leg", "right leg"),
    "quadruped": ("crown", "left eye", "right eye", "nose", "left ear", "right ear", "breast",
                  "back", "belly", "tail", "left foreleg", "right foreleg", "left hind leg",
                  "right hind leg"),
}

# colour schemes: (name, hue centre in [0, 1)); class = family x scheme
SCHEMES = (("Crimson", 0.99), ("Teal", 0.50), ("Amber", 0.10), ("Violet", 0.78),
           ("Olive", 0.22), ("Azure", 0.61))

TEXTURES = ("solid", "stripes", "dots", "checker", "gradient", "mottled")


def class_names(num_schemes: int = 3) -> List[str]:
    """Class names in class-id order: family-major, e.g. ``Bird_Crimson``."""
    return [f"{fam.capitalize()}_{SCHEMES[s][0]}" for fam in FAMILIES for s in range(num_schemes)]


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------

@dataclass
class SyntheticConfig:
    """Generator settings. Everything here is recorded in ``synthetic_meta.json``.

    Difficulty knobs:
        clutter: maximum number of background distractor shapes (drawn: ``clutter//2..clutter``).
        max_rotation: in-plane rotation drawn from ``[-max_rotation, max_rotation]`` degrees.
        scale_range: body length as a fraction of the image side (the whole animal is ~1.7x that).
        articulation: multiplier of the joint-angle ranges (0 = rigid canonical pose).
        out_of_frame: probability of placing the object so that it partly leaves the frame.
        occlusion: probability of a foreground occluder shape drawn over the object.
        flip_prob: probability of facing left.
        pattern_consistency: probability that a part uses its class's preferred texture kind.
        noise: amplitude of the uniform pixel noise (0..255 scale).
        blur: sigma of the final Gaussian blur in pixels (0 = none).
        outline_prob: probability that an image draws dark outlines at region borders.
    """
    num_train: int = 2000
    num_val: int = 300
    num_test: int = 600
    image_size: int = 128
    seed: int = 0
    families: Tuple[str, ...] = FAMILIES
    num_schemes: int = 3
    clutter: int = 10
    max_rotation: float = 30.0
    scale_range: Tuple[float, float] = (0.30, 0.42)
    articulation: float = 1.0
    out_of_frame: float = 0.15
    occlusion: float = 0.25
    flip_prob: float = 0.5
    pattern_consistency: float = 0.7
    noise: int = 6
    blur: float = 0.6
    outline_prob: float = 0.5
    image_format: str = "jpg"
    jpeg_quality: int = 95

    def __post_init__(self):
        self.families = tuple(self.families)
        self.scale_range = tuple(float(v) for v in self.scale_range)
        for name in ("num_train", "num_val", "num_test"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.num_images == 0:
            raise ValueError("the synthetic dataset needs at least one image")
        if int(self.image_size) < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families or len(set(self.families)) != len(self.families):
            raise ValueError(f"families must be distinct names from {FAMILIES}, "
                             f"got {self.families}")
        if not 1 <= int(self.num_schemes) <= len(SCHEMES):
            raise ValueError(f"num_schemes must be in 1..{len(SCHEMES)}, got {self.num_schemes}")
        lo, hi = self.scale_range
        if len(self.scale_range) != 2 or not 0.05 <= lo <= hi <= 1.0:
            raise ValueError(f"scale_range must be (lo, hi) with 0.05 <= lo <= hi <= 1, "
                             f"got {self.scale_range}")
        for name in ("out_of_frame", "occlusion", "flip_prob", "pattern_consistency",
                     "outline_prob"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")
        if int(self.clutter) < 0 or float(self.articulation) < 0 or int(self.noise) < 0 \
                or float(self.blur) < 0 or float(self.max_rotation) < 0:
            raise ValueError("clutter, articulation, noise, blur and max_rotation must be >= 0")

    @property
    def num_images(self) -> int:
        return int(self.num_train) + int(self.num_val) + int(self.num_test)

    @property
    def num_classes(self) -> int:
        return len(self.families) * int(self.num_schemes)

    def class_names(self) -> List[str]:
        return [f"{fam.capitalize()}_{SCHEMES[s][0]}" for fam in self.families
                for s in range(int(self.num_schemes))]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-normal form (tuples become lists) used to compare configs."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def split_of(self, index: int) -> str:
        """``train`` / ``val`` / ``test`` of the 0-based image index (ids are index + 1)."""
        if index < self.num_train:
            return "train"
        if index < self.num_train + self.num_val:
            return "val"
        return "test"


# ----------------------------------------------------------------------------------------------
# geometry helpers (small arrays, canonical object frame: x = facing direction, y down)
# ----------------------------------------------------------------------------------------------

def _dir(a: float) -> np.ndarray:
    return np.array([math.cos(a), math.sin(a)])


def _rot(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]])


def _up_of(fwd: np.ndarray) -> np.ndarray:
    """The 'up' perpendicular of a forward direction (forward +x -> up -y)."""
    return np.array([fwd[1], -fwd[0]])


_CIRCLE_CACHE: Dict[int, np.ndarray] = {}


def _unit_circle(n: int) -> np.ndarray:
    if n not in _CIRCLE_CACHE:
        t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        _CIRCLE_CACHE[n] = np.stack([np.cos(t), np.sin(t)], 1)
    return _CIRCLE_CACHE[n]


def _ellipse(c, a, b, ang=0.0, n=20) -> np.ndarray:
    return (_unit_circle(n) * (a, b)) @ _rot(ang).T + c


def _superellipse(c, a, b, ang, p, n=28) -> np.ndarray:
    u = _unit_circle(n)
    e = 2.0 / p
    pts = np.sign(u) * np.abs(u) ** e * (a, b)
    return pts @ _rot(ang).T + c


_HALF = np.linspace(-np.pi / 2, np.pi / 2, 5)
_HALF1 = np.stack([np.cos(_HALF), np.sin(_HALF)], 1)  # semicircle around +x
_HALF0 = -_HALF1                                       # semicircle around -x
_LEAF_T = np.linspace(0.0, 1.0, 9)
_LEAF_W = np.sin(np.pi * _LEAF_T ** 0.65) + 0.03


def _capsule(p0, p1, w0, w1) -> np.ndarray:
    """Tapered segment with round ends (full widths w0 at p0, w1 at p1)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    R = _rot(math.atan2(d[1], d[0])).T
    return np.concatenate([p1 + (0.5 * w1) * (_HALF1 @ R), p0 + (0.5 * w0) * (_HALF0 @ R)], 0)


def _leaf(p0, ang, length, width, serrate=0.0) -> np.ndarray:
    """Wing-like shape from ``p0`` along ``ang``: round leading edge, optionally feathered rear."""
    d, nrm = _dir(ang), _dir(ang - np.pi / 2)
    w = width * _LEAF_W
    axis = p0 + (_LEAF_T * length)[:, None] * d
    top = axis + (0.55 * w)[:, None] * nrm
    wb = 0.45 * w
    if serrate > 0:
        wb[1:-1:2] *= (1.0 - serrate)
    bot = axis - wb[:, None] * nrm
    return np.concatenate([top, bot[::-1]], 0)


def _fan(p0, ang, length, w0, w1, notch) -> np.ndarray:
    d, nrm = _dir(ang), _dir(ang + np.pi / 2)
    end = p0 + length * d
    return np.array([p0 + 0.5 * w0 * nrm, end + 0.5 * w1 * nrm, end - notch * length * d,
                     end - 0.5 * w1 * nrm, p0 - 0.5 * w0 * nrm])


def _tube(p0, ang, curl, length, w0, w1, n=8):
    """Curved tapered tube; returns (polygon, centreline points)."""
    heads = ang + np.linspace(0.0, curl, n)
    step = length / (n - 1)
    c = np.empty((n, 2))
    c[0] = p0
    for i in range(1, n):
        c[i] = c[i - 1] + step * _dir(0.5 * (heads[i - 1] + heads[i]))
    w = np.linspace(w0, w1, n) * 0.5
    nrm = np.stack([np.cos(heads + np.pi / 2), np.sin(heads + np.pi / 2)], 1)
    poly = np.concatenate([c + w[:, None] * nrm, (c - w[:, None] * nrm)[::-1]], 0)
    return poly, c


def _triangle(base_c, half_vec, tip) -> np.ndarray:
    return np.array([base_c + half_vec, tip, base_c - half_vec])


# ----------------------------------------------------------------------------------------------
# object builders: return primitives (polygon, part id, texture key) in draw order and keypoints
# ----------------------------------------------------------------------------------------------

def _art(rng, lo, hi, art, neutral=None):
    """Angle in degrees in ``[lo, hi]`` scaled around ``neutral`` by the articulation knob."""
    if neutral is None:
        neutral = 0.5 * (lo + hi)
    return math.radians(neutral + art * (rng.uniform(lo, hi) - neutral))


def _build_bird(rng, art):
    prims, kps = [], {}
    tilt = _art(rng, -25, 15, art, 0.0)
    Rb = _rot(tilt)
    a, b = 0.5 * rng.uniform(0.9, 1.1), 0.27 * rng.uniform(0.85, 1.15)
    loc = lambda x, y: Rb @ np.array([x, y])  # noqa: E731  body-local -> object frame

    body = _ellipse((0.0, 0.0), a, b, tilt, n=24)

    # head and beak
    anchor = loc(0.8 * a, -0.55 * b)
    neck_ang = _art(rng, -80, -25, art, -50)
    r = 0.16 * rng.uniform(0.9, 1.15)
    hc = anchor + (0.06 + 0.5 * r) * _dir(neck_ang)
    beak_ang = _art(rng, -20, 35, art, 5)
    fwd = _dir(beak_ang)
    up = _up_of(fwd)
    head = _ellipse(hc, r, r * rng.uniform(0.85, 1.0), beak_ang, n=18)
    blen = rng.uniform(0.14, 0.26)
    bw = rng.uniform(0.35, 0.55) * r
    beak = _triangle(hc + 0.7 * r * fwd, bw * up, hc + (r + blen) * fwd)
    kps["beak"] = hc + (r + 0.3 * blen) * fwd
    turned = rng.random() < 0.3
    eye_r = rng.uniform(0.03, 0.038)
    near_eye = hc + r * ((0.12 if turned else 0.38) * fwd + 0.3 * up)
    far_eye = hc + r * (0.62 * fwd + 0.3 * up)
    kps["crown"] = hc + r * (0.72 * up - 0.1 * fwd)

    # wings: mostly folded along the body, sometimes raised
    shoulder = loc(0.2 * a, -0.4 * b)
    if rng.random() < 0.6:
        w_ang = math.radians(170 + art * rng.uniform(-6, 15))
    else:
        w_ang = math.radians(170 + art * rng.uniform(20, 90))
    wl, ww = rng.uniform(0.55, 0.72), rng.uniform(0.17, 0.25)
    serr = rng.uniform(0.0, 0.45)
    near_wing = _leaf(shoulder, w_ang + tilt, wl, ww, serr)
    far_sh = shoulder + loc(0.06, -0.04)
    far_ang = w_ang + math.radians(rng.uniform(-5, 25))
    far_wing = _leaf(far_sh, far_ang + tilt, wl, ww, serr)
    near_wtip = shoulder + 0.8 * wl * _dir(w_ang + tilt)
    far_wtip = far_sh + 0.8 * wl * _dir(far_ang + tilt)

    # tail: a fan behind the body
    troot = loc(-0.82 * a, -0.1 * b)
    t_ang = _art(rng, 145, 205, art, 180) + tilt
    tl = rng.uniform(0.3, 0.45)
    tail = _fan(troot, t_ang, tl, 0.1, rng.uniform(0.18, 0.3), rng.uniform(0.0, 0.2))
    kps["tail"] = troot + 0.72 * tl * _dir(t_ang)

    # legs: thin tarsus + toes, hanging from the body
    legs = {}
    for side, hx, hy in (("near", 0.1, 0.55), ("far", -0.06, 0.5)):
        hip = loc(hx * a / 0.5, hy * b)
        l_ang = _art(rng, 65, 115, art, 90)
        ll = b * (1 - hy) + rng.uniform(0.2, 0.3)
        ankle = hip + ll * _dir(l_ang)
        lw = rng.uniform(0.04, 0.055)
        leg = _capsule(hip, ankle, lw, lw)
        toes = _capsule(ankle - (0.02, 0.0), ankle + (0.11, 0.0), 0.045, 0.03)
        legs[side] = (leg, toes, ankle + (0.03, 0.0))
    kps["breast"] = loc(0.7 * a, 0.3 * b)
    kps["back"] = loc(-0.15 * a, -0.8 * b)
    kps["belly"] = loc(-0.1 * a, 0.72 * b)

    prims += [(far_wing, WING, "wing"), (legs["far"][0], LEG, "leg"),
              (legs["far"][1], LEG, "leg"), (tail, TAIL, "tail"), (body, BODY, "body"),
              (legs["near"][0], LEG, "leg"), (legs["near"][1], LEG, "leg"),
              (near_wing, WING, "wing"), (head, HEAD, "head"), (beak, HEAD, "beak"),
              (_ellipse(near_eye, eye_r, eye_r, 0, 10), HEAD, "eye")]
    if turned:
        prims.append((_ellipse(far_eye, eye_r, eye_r, 0, 10), HEAD, "eye"))
    side_kps = {"near": {"eye": near_eye, "wing": near_wtip, "leg": legs["near"][2]},
                "far": {"eye": far_eye if turned else None, "wing": far_wtip,
                        "leg": legs["far"][2]}}
    return prims, kps, side_kps


def _build_quadruped(rng, art):
    prims, kps = [], {}
    tilt = _art(rng, -10, 10, art, 0.0)
    Rb = _rot(tilt)
    a, b = 0.5 * rng.uniform(0.9, 1.1), 0.19 * rng.uniform(0.85, 1.2)
    loc = lambda x, y: Rb @ np.array([x, y])  # noqa: E731
    torso = _superellipse((0.0, 0.0), a, b, tilt, rng.uniform(2.5, 4.0))

    # neck (labelled body) and head with snout and ears
    anchor = loc(0.8 * a, -0.3 * b)
    neck_ang = _art(rng, -75, 20, art, -45)
    nl = rng.uniform(0.25, 0.35)
    hc = anchor + nl * _dir(neck_ang)
    neck = _capsule(anchor, hc, 0.2, 0.12)
    h_ang = neck_ang + _art(rng, 50, 80, art)
    fwd = _dir(h_ang)
    up = _up_of(fwd)
    hl, hh = 0.13 * rng.uniform(0.9, 1.1), 0.1 * rng.uniform(0.9, 1.1)
    head = _ellipse(hc, hl, hh, h_ang, n=18)
    sl = rng.uniform(0.08, 0.12)
    snout = _ellipse(hc + (0.8 * hl) * fwd, sl, 0.6 * hh, h_ang, n=14)
    kps["nose"] = hc + (0.8 * hl + 0.6 * sl) * fwd
    ear_len = rng.uniform(0.1, 0.16)
    ear_dir = _rot(-math.radians(rng.uniform(-10, 35))) @ up  # up, tilted backwards
    ears = {}
    for side, shift in (("near", 0.0), ("far", 0.05)):
        eb = hc + (shift - 0.05) * fwd + 0.8 * hh * up
        tip = eb + ear_len * ear_dir
        tri = _triangle(eb, 0.05 * fwd, tip)
        ears[side] = (tri, eb + 0.45 * (tip - eb))
    turned = rng.random() < 0.3
    eye_r = rng.uniform(0.028, 0.034)
    near_eye = hc + (0.0 if turned else 0.04) * fwd + 0.45 * hh * up
    far_eye = hc + 0.07 * fwd + 0.45 * hh * up
    kps["crown"] = hc - 0.03 * fwd + 0.8 * hh * up

    # legs: upper + lower segment, gait phase shared
    g = rng.uniform(-30, 30) * art
    legs = {}
    for name, hx, hy, g_sign, bend in (("fore", 0.7, 0.5, 1, (-5, 35)),
                                        ("hind", -0.7, 0.4, -1, (-35, 5))):
        for side in ("near", "far"):
            s = 1 if side == "near" else -1
            hip = loc(hx * a, hy * b) + (np.zeros(2) if side == "near" else loc(-0.06, -0.05))
            alpha = math.radians(90 + s * g_sign * g + art * rng.uniform(-5, 5))
            lu, lo_ = rng.uniform(0.2, 0.26), rng.uniform(0.2, 0.26)
            knee = hip + lu * _dir(alpha)
            beta = alpha + _art(rng, bend[0], bend[1], art, 0.5 * (bend[0] + bend[1]))
            foot = knee + lo_ * _dir(beta)
            upper = _capsule(hip, knee, 0.11, 0.075)
            lower = _capsule(knee, foot, 0.07, 0.06)
            legs[(name, side)] = (upper, lower, foot - 0.025 * _dir(beta))

    # tail: curled tube
    troot = loc(-0.95 * a, -0.5 * b)
    t_ang = _art(rng, 160, 240, art, 200) + tilt
    tl = rng.uniform(0.3, 0.5)
    tail, cl = _tube(troot, t_ang, math.radians(rng.uniform(-70, 70) * art), tl,
                     rng.uniform(0.06, 0.09), rng.uniform(0.035, 0.06))
    kps["tail"] = cl[-2] + 0.3 * (cl[-1] - cl[-2])

    kps["breast"] = loc(0.9 * a, 0.35 * b)
    kps["back"] = loc(-0.2 * a, -0.72 * b)
    kps["belly"] = loc(-0.1 * a, 0.7 * b)

    for key in (("hind", "far"), ("fore", "far")):
        prims += [(legs[key][0], LEG, "leg"), (legs[key][1], LEG, "leg")]
    prims += [(tail, TAIL, "tail"), (torso, BODY, "body")]
    for key in (("hind", "near"), ("fore", "near")):
        prims += [(legs[key][0], LEG, "leg"), (legs[key][1], LEG, "leg")]
    prims += [(ears["far"][0], HEAD, "head"), (neck, BODY, "body"), (head, HEAD, "head"),
              (snout, HEAD, "head"), (ears["near"][0], HEAD, "head"),
              (_ellipse(near_eye, eye_r, eye_r, 0, 10), HEAD, "eye")]
    if turned:
        prims.append((_ellipse(far_eye, eye_r, eye_r, 0, 10), HEAD, "eye"))
    side_kps = {s: {"eye": (near_eye if s == "near" else (far_eye if turned else None)),
                    "ear": ears[s][1], "foreleg": legs[("fore", s)][2],
                    "hind leg": legs[("hind", s)][2]} for s in ("near", "far")}
    return prims, kps, side_kps


_BUILDERS = {"bird": _build_bird, "quadruped": _build_quadruped}


# ----------------------------------------------------------------------------------------------
# textures (vectorised numpy on cached pixel-centre grids)
# ----------------------------------------------------------------------------------------------

_AXIS_CACHE: Dict[int, np.ndarray] = {}


def _axis16(S: int) -> np.ndarray:
    """Twice the pixel-centre coordinates, 1, 3, ..., 2S - 1 (int64)."""
    if S not in _AXIS_CACHE:
        _AXIS_CACHE[S] = np.arange(S, dtype=np.int64) * 2 + 1
    return _AXIS_CACHE[S]


def _fixed(ax2: np.ndarray, step: float) -> np.ndarray:
    """``frac(step * (ax2 / 2))`` in uint16 fixed point (ax2 = twice the pixel-centre coords)."""
    return ((ax2 * int(round(step * 32768.0))) & 0xFFFF).astype(np.uint16)


def _hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _texture(rng, kind: str, c1: np.ndarray, c2: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` (S x S x 3 uint8) with a texture of the given kind and colours (cheap: a few
    vectorised passes over S x S, colouring through a lookup table)."""
    S = out.shape[0]
    if kind == "solid":  # gently shaded flat colour
        corners = np.clip(c1 * rng.uniform(0.85, 1.15, (2, 2, 1)), 0, 255).astype(np.uint8)
        cv2.resize(corners, (S, S), dst=out, interpolation=cv2.INTER_LINEAR)
        return
    if kind == "gradient":  # bilinear blend of c1 / c2 corners
        w = rng.random((2, 2, 1)) < 0.5
        w[0, 0], w[1, 1] = True, False
        corners = np.where(np.rot90(w, int(rng.integers(4))), c1, c2).astype(np.uint8)
        cv2.resize(corners, (S, S), dst=out, interpolation=cv2.INTER_LINEAR)
        return
    if kind == "mottled":
        k = int(rng.integers(6, 14))
        small = np.frombuffer(rng.bytes(k * k), np.uint8).reshape(k, k)
        m = cv2.resize(small, (S, S), interpolation=cv2.INTER_CUBIC) > int(rng.integers(90, 166))
    else:
        # periodic patterns in 16-bit fixed point: u = frac(x cos / p + y sin / p + phase) * 2^16,
        # the wrap-around of uint16 arithmetic is the frac (the rounding of the per-pixel steps
        # perturbs period and angle slightly, which does not matter for random textures)
        ang = rng.uniform(0, np.pi)
        p = rng.uniform(4.5, 10.0) * S / 128.0 * (2.0 if kind == "checker" else 1.0)
        ca, sa = math.cos(ang) / p, math.sin(ang) / p
        ax = _axis16(S)
        u = np.add.outer(_fixed(ax, sa), _fixed(ax, ca))
        u += np.uint16(rng.integers(0, 65536))
        if kind == "stripes":
            m = u < int(rng.uniform(0.3, 0.65) * 65536)
        else:
            v = np.add.outer(_fixed(ax, ca), _fixed(ax, -sa))
            v += np.uint16(rng.integers(0, 65536))
            if kind == "checker":
                m = (u < 32768) ^ (v < 32768)
            elif kind == "dots":  # rotated square spots on a grid
                r = int(rng.uniform(0.3, 0.6) * 65536)
                m = (u < r) & (v < r)
            else:
                raise ValueError(f"unknown texture {kind}")
    lut = np.empty((1, 256, 3), np.uint8)
    lut[0, 0] = c2
    lut[0, 1:] = c1
    m = m.view(np.uint8)
    cv2.LUT(cv2.merge([m, m, m]), lut, dst=out)


_PREFERRED_CACHE: Dict[Tuple[str, int], Dict[str, str]] = {}


def _preferred_textures(family: str, scheme: int) -> Dict[str, str]:
    """The class's preferred texture kind per part (fixed by generator version, not by seed)."""
    key = (family, scheme)
    if key not in _PREFERRED_CACHE:
        r = np.random.default_rng([FAMILIES.index(family), scheme, 20240917])
        kinds = r.permutation(len(TEXTURES))
        _PREFERRED_CACHE[key] = {p: TEXTURES[int(kinds[i])] for i, p in enumerate(PART_NAMES)}
    return _PREFERRED_CACHE[key]


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------

def _to_cv(pts: np.ndarray) -> np.ndarray:
    """Continuous pixel coordinates -> OpenCV fixed point (shift 4), pixel centres on integers."""
    return np.round((pts - 0.5) * 16.0).astype(np.int32)


def _random_distractor(rng, S, cx=None, cy=None, size=None) -> np.ndarray:
    if cx is None:
        cx, cy = rng.uniform(-0.05, 1.05, 2) * S
    size = (size if size is not None else rng.uniform(0.08, 0.36)) * S
    c = np.array([cx, cy])
    kind = rng.integers(0, 4)
    ang = rng.uniform(0, 2 * np.pi)
    if kind == 0:  # blob
        return _ellipse(c, size * 0.5, size * rng.uniform(0.2, 0.5), ang, n=16)
    if kind == 1:  # limb-like capsule
        d = _dir(ang) * size * 0.6
        w = size * rng.uniform(0.08, 0.22)
        return _capsule(c - d, c + d, w, w * rng.uniform(0.6, 1.0))
    if kind == 2:  # wing-like leaf
        return _leaf(c - _dir(ang) * size * 0.5, ang, size, size * rng.uniform(0.2, 0.4),
                     rng.uniform(0, 0.4))
    n = int(rng.integers(3, 8))  # irregular polygon
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = size * 0.5 * rng.uniform(0.4, 1.0, n)
    return c + np.stack([np.cos(t) * rad, np.sin(t) * rad], 1)


def _map_layers(layers: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Per-pixel ``values[layer]`` (uint8) through an OpenCV lookup table."""
    lut = np.zeros(256, np.uint8)
    lut[:len(values)] = values
    return cv2.LUT(layers, lut)


def render_sample(rng: np.random.Generator, cfg: Optional[SyntheticConfig] = None,
                  label: Optional[int] = None) -> Dict[str, Any]:
    """Draw one image and its ground truth.

    Args:
        rng: the image's generator (``np.random.default_rng([seed, index])`` in the written tree).
        cfg: generator settings (only the drawing knobs are used here).
        label: 0-based class id (family-major: ``family_index * num_schemes + scheme``); drawn
            from ``rng`` when ``None``.

    Returns:
        dict with ``image`` (S x S x 3 uint8 RGB), ``part_mask`` (S x S uint8, ids of
        ``PART_NAMES``, 0 = background), ``fg_mask`` (S x S bool), ``keypoints`` (float32
        [P, 2], (x, y), 0 where invisible), ``visible`` (bool [P]), ``bbox`` (float32 [4] tight
        box of the foreground mask, x, y, w, h), ``family`` (name), ``class`` (0-based int),
        ``class_name``, ``facing`` (``right`` / ``left``).
    """
    cfg = cfg or SyntheticConfig()
    S = int(cfg.image_size)
    art = float(cfg.articulation)
    n_schemes = int(cfg.num_schemes)
    if label is None:
        label = int(rng.integers(0, cfg.num_classes))
    if not 0 <= label < cfg.num_classes:
        raise ValueError(f"label {label} outside 0..{cfg.num_classes - 1}")
    family = cfg.families[label // n_schemes]
    scheme = label % n_schemes

    # ---- palette: every part draws its colours from the same ranges around the scheme's hue
    h0 = SCHEMES[scheme][1] + rng.uniform(-0.05, 0.05)
    part_keys = list(FAMILY_PARTS[family])
    preferred = _preferred_textures(family, scheme)
    tex_keys = part_keys + ["eye", "beak", "background", "d0", "d1"]
    T = np.empty((len(tex_keys), S, S, 3), dtype=np.uint8)
    tex_index = {k: i for i, k in enumerate(tex_keys)}

    def part_colours():
        c1 = _hsv(h0 + rng.uniform(-0.08, 0.08), rng.uniform(0.3, 0.95), rng.uniform(0.3, 0.95))
        c2 = _hsv(h0 + rng.uniform(-0.25, 0.25), rng.uniform(0.2, 0.95), rng.uniform(0.15, 0.95))
        return c1, c2

    for key in part_keys:
        kind = preferred[key] if rng.random() < cfg.pattern_consistency \
            else TEXTURES[int(rng.integers(len(TEXTURES)))]
        c1, c2 = part_colours()
        _texture(rng, kind, c1, c2, T[tex_index[key]])
    eye_c = _hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.0, 0.18))
    T[tex_index["eye"]] = eye_c.astype(np.uint8)
    beak_c = _hsv(h0 + rng.uniform(-0.3, 0.3), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.9))
    T[tex_index["beak"]] = beak_c.astype(np.uint8)
    for key in ("background", "d0", "d1"):
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
        if key != "background" and rng.random() < 0.5:
            c1, c2 = part_colours()  # distractors in the object's own colour ranges
        else:
            c1 = _hsv(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95))
            c2 = _hsv(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95))
        _texture(rng, kind, c1, c2, T[tex_index[key]])

    # ---- layers: 0 = background texture; each drawn polygon gets a new layer id
    lut_tex = [tex_index["background"]]
    lut_part = [0]
    layers = np.zeros((S, S), dtype=np.uint8)

    def draw(poly, part, tex):
        k = len(lut_tex)
        cv2.fillPoly(layers, [_to_cv(poly)], k, lineType=cv2.LINE_8, shift=4)
        lut_tex.append(tex)
        lut_part.append(part)

    reuse = [tex_index[k] for k in part_keys] + [tex_index[k] for k in ("d0", "d1")]
    n_clutter = int(rng.integers(int(cfg.clutter) // 2, int(cfg.clutter) + 1))
    for _ in range(n_clutter):
        draw(_random_distractor(rng, S), 0, reuse[int(rng.integers(len(reuse)))])
    n_bg_layers = len(lut_tex)

    # ---- object geometry in the canonical frame
    prims, kps, side_kps = _BUILDERS[family](rng, art)
    facing_left = rng.random() < cfg.flip_prob
    theta = math.radians(rng.uniform(-cfg.max_rotation, cfg.max_rotation))
    scale = rng.uniform(*cfg.scale_range) * S
    A = _rot(theta) * scale
    if facing_left:
        A = A @ np.diag([-1.0, 1.0])
    near, far = ("left", "right") if facing_left else ("right", "left")
    names: Dict[str, Optional[np.ndarray]] = dict(kps)
    for side, lr in (("near", near), ("far", far)):
        for k, v in side_kps[side].items():
            names[f"{lr} {k}"] = v
    tex_of = {k: tex_index[k] for k in part_keys}
    tex_of["eye"], tex_of["beak"] = tex_index["eye"], tex_index["beak"]
    min_fg = 0.012 * S * S
    bg_layers = layers.copy()

    for attempt in range(12):
        if attempt < 11 and rng.random() < cfg.out_of_frame:
            # centre near an edge so that part of the object leaves the frame
            edge = rng.uniform(-0.02, 0.16)
            cx, cy = rng.uniform(0.3, 0.7, 2)
            axis = int(rng.integers(0, 2))
            v = edge if rng.random() < 0.5 else 1.0 - edge
            cx, cy = (v, cy) if axis == 0 else (cx, v)
            centre = np.array([cx, cy]) * S
        elif attempt < 11:
            centre = rng.uniform(0.36, 0.64, 2) * S
        else:
            centre = np.array([0.5, 0.5]) * S
        layers[:] = bg_layers  # undo a previous attempt
        del lut_tex[n_bg_layers:], lut_part[n_bg_layers:]
        for poly, part, tkey in prims:
            draw(poly @ A.T + centre, part, tex_of[tkey])
        if np.count_nonzero(_map_layers(layers, lut_part)) >= min_fg:
            break

    # ---- foreground occluder (background label), kept only if it leaves most of the object
    if rng.random() < cfg.occlusion:
        part_now = _map_layers(layers, lut_part)
        fg_before = np.count_nonzero(part_now)
        ys, xs = np.nonzero(part_now)
        j = int(rng.integers(len(xs)))
        occ = _random_distractor(rng, S, xs[j] + 0.5, ys[j] + 0.5, rng.uniform(0.12, 0.3))
        saved = layers.copy()
        draw(occ, 0, reuse[int(rng.integers(len(reuse)))])
        if np.count_nonzero(_map_layers(layers, lut_part)) < 0.6 * fg_before:
            layers[:] = saved
            lut_tex.pop()
            lut_part.pop()

    # ---- masks and image
    part_mask = _map_layers(layers, lut_part)
    fg = part_mask > 0
    tex_map = _map_layers(layers, lut_tex).astype(np.intp)
    flat = T.reshape(-1, 3)
    img = np.take(flat, tex_map.ravel() * (S * S) + np.arange(S * S), axis=0).reshape(S, S, 3)
    # illumination: a smooth multiplicative field, darker region borders, luminance noise, blur
    light = cv2.resize(rng.uniform(0.8, 1.2, (2, 2)).astype(np.float32), (S, S),
                       interpolation=cv2.INTER_LINEAR)
    if rng.random() < cfg.outline_prob:
        edge = np.zeros((S, S), bool)
        edge[:, :-1] |= layers[:, :-1] != layers[:, 1:]
        edge[:-1, :] |= layers[:-1, :] != layers[1:, :]
        light[edge] *= rng.uniform(0.35, 0.7)
    if cfg.noise > 0:  # +-noise grey levels at mid brightness
        noise = np.frombuffer(rng.bytes(S * S), np.uint8).reshape(S, S).astype(np.float32)
        light = cv2.scaleAdd(noise, 2.0 * float(cfg.noise) / (255.0 * 128.0), light)
        light -= float(cfg.noise) / 128.0
    img = cv2.multiply(img, cv2.merge([light, light, light]), dtype=cv2.CV_32F)
    if cfg.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), float(cfg.blur))
    image = cv2.convertScaleAbs(img)  # round to nearest, saturate to 0..255

    # ---- keypoints: transform, round as written, visible iff on the owning part's pixel
    P = len(KEYPOINT_NAMES)
    keypoints = np.zeros((P, 2), np.float32)
    visible = np.zeros(P, bool)
    for name in FAMILY_KEYPOINTS[family]:
        pt = names.get(name)
        if pt is None:
            continue
        x, y = np.round(A @ pt + centre, 2)
        if not (0.0 <= x < S and 0.0 <= y < S):
            continue
        if part_mask[int(math.floor(y)), int(math.floor(x))] != KEYPOINT_OWNER[name]:
            continue
        i = _KP_INDEX[name]
        keypoints[i] = (x, y)
        visible[i] = True

    cols, rows = np.flatnonzero(fg.any(0)), np.flatnonzero(fg.any(1))
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    bbox = np.array([x0, y0, x1 - x0, y1 - y0], np.float32)  # tight: covers every fg pixel
    return {"image": image, "part_mask": part_mask, "fg_mask": fg, "keypoints": keypoints,
            "visible": visible, "bbox": bbox, "family": family, "class": int(label),
            "class_name": cfg.class_names()[label], "facing": "left" if facing_left else "right"}


def render_index(cfg: SyntheticConfig, index: int) -> Dict[str, Any]:
    """Render image ``index`` (0-based, id = index + 1) of the tree described by ``cfg``."""
    rng = np.random.default_rng([int(cfg.seed), int(index)])
    return render_sample(rng, cfg, label=int(index) % cfg.num_classes)


# ----------------------------------------------------------------------------------------------
# writing the CUB-layout tree
# ----------------------------------------------------------------------------------------------

def _class_dirs(cfg: SyntheticConfig) -> List[str]:
    return [f"{i + 1:03d}.{n}" for i, n in enumerate(cfg.class_names())]


def _rel_path(cfg: SyntheticConfig, index: int, dirs: Sequence[str]) -> str:
    label = index % cfg.num_classes
    name = cfg.class_names()[label]
    return f"{dirs[label]}/{name}_{index + 1:05d}.{cfg.image_format}"


def _write_chunk(args) -> List[Tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Render and write images ``start..stop-1`` into ``tmp``; return their annotations."""
    tmp, cfg_dict, start, stop = args
    cv2.setNumThreads(1)
    cfg = SyntheticConfig(**cfg_dict)
    dirs = _class_dirs(cfg)
    enc = []
    if cfg.image_format == "jpg":  # no chroma subsampling: textures are fine and colourful
        enc = [cv2.IMWRITE_JPEG_QUALITY, int(cfg.jpeg_quality)]
        if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
            enc += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    out = []
    for index in range(start, stop):
        s = render_index(cfg, index)
        rel = _rel_path(cfg, index, dirs)
        stem = os.path.splitext(rel)[0]
        _imwrite(os.path.join(tmp, "images", rel), s["image"][:, :, ::-1], enc)
        _imwrite(os.path.join(tmp, "segmentations", stem + ".png"),
                 s["fg_mask"].astype(np.uint8) * 255, [])
        _imwrite(os.path.join(tmp, "part_masks", stem + ".png"), s["part_mask"], [])
        out.append((index, s["bbox"], s["keypoints"], s["visible"]))
    return out


def _imwrite(path: str, arr: np.ndarray, params) -> None:
    if not cv2.imwrite(path, np.ascontiguousarray(arr), params):
        raise OSError(f"could not write {path}")


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_synthetic_cub(out_dir: str, cfg: Optional[SyntheticConfig] = None, num_workers: int = 1,
                        overwrite: bool = False, verbose: bool = False) -> Dict[str, Any]:
    """Generate the dataset into ``out_dir`` (CUB-200-2011 layout plus the synthetic extras).

    The tree is written into a temporary directory beside ``out_dir`` and renamed into place at the
    end (``synthetic_meta.json`` written last), so an interrupted run never leaves a tree that looks
    complete. If ``out_dir`` exists but holds nothing but a README / hidden files, the finished
    entries are moved into it (metadata last). Returns a summary dict (counts, seconds, images/s).
    """
    cfg = cfg or SyntheticConfig()
    out_dir = os.path.abspath(os.path.expanduser(os.fspath(out_dir)))
    if os.path.exists(out_dir) and not _is_placeholder_dir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} already exists; delete it, pass overwrite=True, or "
                                  f"choose another output directory")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    t0 = time.perf_counter()
    try:
        dirs = _class_dirs(cfg)
        for sub in ("images", "segmentations", "part_masks"):
            for d in dirs:
                os.makedirs(os.path.join(tmp, sub, d))
        os.makedirs(os.path.join(tmp, "parts"))
        N = cfg.num_images
        cfg_dict = cfg.to_dict()
        chunk = 64
        jobs = [(tmp, cfg_dict, s, min(s + chunk, N)) for s in range(0, N, chunk)]
        results: List[Tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        num_workers = max(1, int(num_workers))
        if num_workers == 1 or len(jobs) == 1:
            for j in jobs:
                results += _write_chunk(j)
                if verbose:
                    print(f"  {len(results)}/{N} images", file=sys.stderr, flush=True)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(num_workers, mp_context=mp.get_context(method)) as ex:
                for res in ex.map(_write_chunk, jobs):
                    results += res
                    if verbose:
                        print(f"  {len(results)}/{N} images", file=sys.stderr, flush=True)
        results.sort(key=lambda r: r[0])
        t_render = time.perf_counter() - t0

        names = cfg.class_names()
        _write_lines(os.path.join(tmp, "classes.txt"), [f"{i + 1} {d}" for i, d in enumerate(dirs)])
        _write_lines(os.path.join(tmp, "images.txt"),
                     [f"{i + 1} {_rel_path(cfg, i, dirs)}" for i in range(N)])
        _write_lines(os.path.join(tmp, "image_class_labels.txt"),
                     [f"{i + 1} {i % cfg.num_classes + 1}" for i in range(N)])
        _write_lines(os.path.join(tmp, "train_test_split.txt"),
                     [f"{i + 1} {0 if cfg.split_of(i) == 'test' else 1}" for i in range(N)])
        _write_lines(os.path.join(tmp, "val_split.txt"),
                     [f"{i + 1} {1 if cfg.split_of(i) == 'val' else 0}" for i in range(N)])
        _write_lines(os.path.join(tmp, "bounding_boxes.txt"),
                     [f"{i + 1} {b[0]:.1f} {b[1]:.1f} {b[2]:.1f} {b[3]:.1f}"
                      for i, b, _, _ in results])
        _write_lines(os.path.join(tmp, "parts", "parts.txt"),
                     [f"{k + 1} {n}" for k, n in enumerate(KEYPOINT_NAMES)])
        locs = []
        for i, _, kp, vis in results:
            for k in range(len(KEYPOINT_NAMES)):
                if vis[k]:
                    locs.append(f"{i + 1} {k + 1} {kp[k, 0]:.2f} {kp[k, 1]:.2f} 1")
                else:
                    locs.append(f"{i + 1} {k + 1} 0.0 0.0 0")
        _write_lines(os.path.join(tmp, "parts", "part_locs.txt"), locs)
        _write_lines(os.path.join(tmp, "part_masks", "part_names.txt"),
                     [f"{k + 1} {n}" for k, n in enumerate(PART_NAMES)])
        meta = {
            "generator": "partformer.data.synthetic",
            "generator_version": GENERATOR_VERSION,
            "config": cfg_dict,
            "num_images": N,
            "counts": {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test},
            "classes": names,
            "families": list(cfg.families),
            "keypoints": list(KEYPOINT_NAMES),
            "keypoint_owner": {k: PART_NAMES[v - 1] for k, v in KEYPOINT_OWNER.items()},
            "family_keypoints": {f: list(FAMILY_KEYPOINTS[f]) for f in cfg.families},
            "parts": list(PART_NAMES),
            "family_parts": {f: list(FAMILY_PARTS[f]) for f in cfg.families},
        }
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        _install(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dt = time.perf_counter() - t0
    return {"root": out_dir, "num_images": N, "counts": meta["counts"], "seconds": dt,
            "render_seconds": t_render, "images_per_second": N / max(dt, 1e-9)}


def _is_placeholder_dir(path: str) -> bool:
    """An existing directory with nothing but README files / hidden entries (e.g. the repo's
    ``datasets/synthetic/`` folder) counts as absent."""
    if not os.path.isdir(path):
        return False
    return all(e.startswith(".") or e.lower().startswith("readme") for e in os.listdir(path))


def _install(tmp: str, out_dir: str, overwrite: bool) -> None:
    if os.path.isdir(out_dir) and _is_placeholder_dir(out_dir):
        # keep the README: move the finished entries in, metadata last
        entries = sorted(os.listdir(tmp), key=lambda e: e == META_FILE)
        for e in entries:
            os.replace(os.path.join(tmp, e), os.path.join(out_dir, e))
        os.rmdir(tmp)
        return
    if os.path.exists(out_dir) and overwrite:
        old = out_dir + f".old-{os.getpid()}"
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(tmp, out_dir)  # raises if another process installed a tree meanwhile


def read_meta(root: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(os.fspath(root), META_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _meta_matches(meta: Dict[str, Any], cfg: SyntheticConfig) -> bool:
    return (meta.get("generator_version") == GENERATOR_VERSION
            and meta.get("config") == cfg.to_dict())


def ensure_synthetic(root: str, cfg: Optional[SyntheticConfig] = None, num_workers: int = 1,
                     verbose: bool = True) -> str:
    """Return ``root`` after making sure it holds the synthetic tree of ``cfg``.

    Generates the tree when ``root`` is missing (or holds only a README). Raises ``ValueError`` when
    ``root`` holds a synthetic tree of different settings or generator version, or something that
    is not a complete synthetic tree.
    """
    cfg = cfg or SyntheticConfig()
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    meta = read_meta(root)
    if meta is not None:
        if _meta_matches(meta, cfg):
            return root
        raise ValueError(_mismatch_message(root, meta, cfg))
    if os.path.exists(root) and not _is_placeholder_dir(root):
        raise ValueError(
            f"{root} exists but has no {META_FILE}: it is not a complete synthetic dataset "
            f"(an interrupted copy, or another dataset). Delete it or choose another data.root.")
    if verbose:
        print(f"[synthetic] generating {cfg.num_images} images ({cfg.num_train} train / "
              f"{cfg.num_val} val / {cfg.num_test} test, {cfg.image_size}px) into {root}",
              file=sys.stderr, flush=True)
    try:
        info = write_synthetic_cub(root, cfg, num_workers=num_workers)
    except OSError:
        # another process may have finished the same tree first
        meta = read_meta(root)
        if meta is not None and _meta_matches(meta, cfg):
            return root
        raise
    if verbose:
        print(f"[synthetic] done in {info['seconds']:.1f}s ({info['images_per_second']:.0f} "
              f"images/s)", file=sys.stderr, flush=True)
    return root


def _mismatch_message(root: str, meta: Dict[str, Any], cfg: SyntheticConfig) -> str:
    want = cfg.to_dict()
    have = meta.get("config", {})
    diffs = [f"{k}: on disk {have.get(k)!r}, requested {v!r}" for k, v in want.items()
             if have.get(k) != v]
    diffs += [f"{k}: on disk {have[k]!r}, not a current setting" for k in have if k not in want]
    if meta.get("generator_version") != GENERATOR_VERSION:
        diffs.insert(0, f"generator_version: on disk {meta.get('generator_version')!r}, "
                        f"this code {GENERATOR_VERSION!r}")
    return (f"the synthetic dataset in {root} was generated with different settings:\n  "
            + "\n  ".join(diffs) + f"\nDelete {root} to regenerate it, or choose another data.root "
            f"for these settings.")


# ----------------------------------------------------------------------------------------------
# registry entry
# ----------------------------------------------------------------------------------------------

@register_dataset("synthetic")
def build_synthetic(root, split, image_size, resize="whole", **options):
    """The synthetic benchmark as a ``CUBDataset``; generated on first use.

    ``options["generator"]`` (dict) holds ``SyntheticConfig`` fields plus an optional
    ``num_workers`` for generation; every other option goes to ``CUBDataset``.
    """
    gen = dict(options.pop("generator", None) or {})
    workers = int(gen.pop("num_workers", 1))
    ensure_synthetic(root, SyntheticConfig(**gen), num_workers=workers)
    from partformer.data.cub import CUBDataset
    return CUBDataset(root, split, image_size, resize, **options)
