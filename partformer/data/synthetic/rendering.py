"""Drawing one image of the synthetic benchmark and its ground truth (:func:`render_sample`) from
the image's own random generator (:func:`render_index`)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import cv2
import numpy as np

from partformer.data.synthetic.animals import BUILDERS
from partformer.data.synthetic.config import (_KP_INDEX, FAMILY_KEYPOINTS, FAMILY_PARTS,
                                              KEYPOINT_NAMES, KEYPOINT_OWNER, SCHEMES, TEXTURES,
                                              SyntheticConfig)
from partformer.data.synthetic.shapes import _capsule, _dir, _ellipse, _leaf, _rot
from partformer.data.synthetic.textures import _hsv, _preferred_textures, _texture

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


def _random_object(rng, S, cx=None, cy=None, size=None) -> np.ndarray:
    """A distractor that is no animal primitive: a rectangle, triangle, regular polygon, star or
    cross (straight edges and sharp corners; the animals are made of smooth ellipses, leaves,
    capsules, fans and tubes). Same placement and size ranges as :func:`_random_distractor`."""
    if cx is None:
        cx, cy = rng.uniform(-0.05, 1.05, 2) * S
    size = (size if size is not None else rng.uniform(0.08, 0.36)) * S
    c = np.array([cx, cy])
    R = _rot(rng.uniform(0, 2 * np.pi))
    kind = rng.integers(0, 5)
    if kind == 0:  # rectangle / bar
        hw, hh = 0.5 * size, 0.5 * size * rng.uniform(0.25, 1.0)
        pts = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    elif kind == 1:  # triangle with corners spread around the circle
        t = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.0, 4.0]) * np.pi / 3 \
            + rng.uniform(-0.35, 0.35, 3)
        pts = 0.55 * size * np.stack([np.cos(t), np.sin(t)], 1)
    elif kind == 2:  # regular polygon, 5-8 sides
        n = int(rng.integers(5, 9))
        t = np.arange(n) * 2 * np.pi / n
        pts = 0.5 * size * np.stack([np.cos(t), np.sin(t)], 1)
    elif kind == 3:  # star, 4-7 points
        n = int(rng.integers(4, 8))
        t = np.arange(2 * n) * np.pi / n
        rad = np.where(np.arange(2 * n) % 2 == 0, 0.55, 0.55 * rng.uniform(0.35, 0.55)) * size
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], 1)
    else:  # cross / plus of two bars
        a, w = 0.5 * size, 0.5 * size * rng.uniform(0.2, 0.4)
        pts = np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a],
                        [-w, w], [-a, w], [-a, -w], [-w, -w]])
    return pts @ R.T + c


# distractor shape of each value of SyntheticConfig.distractors
_DISTRACTOR_SHAPES = {"parts": _random_distractor, "objects": _random_object}


def _smooth_background(rng, h0: float, out: np.ndarray, flat: bool = False) -> None:
    """``background="smooth"``: a gradient between two muted colours whose hue lies on the other
    side of the hue circle from the class's hue ``h0`` (the animal's parts draw theirs within
    +-0.25 of it), so the animal stands out from a background with no structure.
    ``background="flat"`` (``flat=True``): the same draws, the first colour everywhere."""
    hb = h0 + 0.5 + rng.uniform(-0.2, 0.2)
    c1 = _hsv(hb, rng.uniform(0.1, 0.6), rng.uniform(0.35, 0.95))
    c2 = _hsv(hb + rng.uniform(-0.08, 0.08), rng.uniform(0.1, 0.6), rng.uniform(0.35, 0.95))
    _texture(rng, "gradient", c1, c1 if flat else c2, out)


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

    The steps below draw from ``rng`` in a fixed order; reordering them changes every image.
    """
    cfg = cfg or SyntheticConfig()
    S = int(cfg.image_size)
    label, family, scheme = _class_of(rng, cfg, label)
    palette = _Palette(rng, cfg, family, scheme)
    canvas = _Canvas(S, palette.index["background"])
    reuse = palette.reusable(cfg.distractors)
    _draw_clutter(rng, cfg, canvas, reuse)
    prims, kps, side_kps = BUILDERS[family](rng, float(cfg.articulation))
    A, facing_left = _pose(rng, cfg)
    centre = _place_object(rng, cfg, canvas, prims, A, palette.of_part)
    _maybe_occlude(rng, cfg, canvas, reuse)
    part_mask = canvas.part_mask()
    image = _shade(rng, cfg, canvas, palette.textures)
    keypoints, visible = _visible_keypoints(family, _named_keypoints(kps, side_kps, facing_left),
                                            A, centre, part_mask, S)
    fg = part_mask > 0
    return {"image": image, "part_mask": part_mask, "fg_mask": fg, "keypoints": keypoints,
            "visible": visible, "bbox": _tight_box(fg), "family": family, "class": int(label),
            "class_name": cfg.class_names()[label], "facing": "left" if facing_left else "right"}


def _class_of(rng, cfg: SyntheticConfig, label: Optional[int]):
    """``(label, family, scheme)``; the label is drawn when not given."""
    if label is None:
        label = int(rng.integers(0, cfg.num_classes))
    if not 0 <= label < cfg.num_classes:
        raise ValueError(f"label {label} outside 0..{cfg.num_classes - 1}")
    n_schemes = int(cfg.num_schemes)
    return label, cfg.families[label // n_schemes], label % n_schemes


class _Palette:
    """The image's textures ``[T, S, S, 3]``: one per part of the family, the eye and beak colours,
    the background and two distractor textures. Every part draws its colours from the same ranges
    around the class's hue, so a pixel's colour does not say which part it belongs to."""

    def __init__(self, rng, cfg: SyntheticConfig, family: str, scheme: int):
        S = int(cfg.image_size)
        self.rng = rng
        self.h0 = SCHEMES[scheme][1] + rng.uniform(-0.05, 0.05)
        self.part_keys = list(FAMILY_PARTS[family])
        keys = self.part_keys + ["eye", "beak", "background", "d0", "d1"]
        self.index = {k: i for i, k in enumerate(keys)}
        self.textures = np.empty((len(keys), S, S, 3), dtype=np.uint8)
        preferred = _preferred_textures(family, scheme)
        for key in self.part_keys:
            kind = preferred[key] if rng.random() < cfg.pattern_consistency \
                else TEXTURES[int(rng.integers(len(TEXTURES)))]
            c1, c2 = self.part_colours()
            _texture(rng, kind, c1, c2, self.textures[self.index[key]])
        eye_c = _hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.0, 0.18))
        self.textures[self.index["eye"]] = eye_c.astype(np.uint8)
        beak_c = _hsv(self.h0 + rng.uniform(-0.3, 0.3), rng.uniform(0.2, 0.9),
                      rng.uniform(0.2, 0.9))
        self.textures[self.index["beak"]] = beak_c.astype(np.uint8)
        for key in ("background", "d0", "d1"):
            if key == "background" and cfg.background in ("smooth", "flat"):
                _smooth_background(rng, self.h0, self.textures[self.index[key]],
                                   flat=cfg.background == "flat")
                continue
            kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
            # (the draw order of generator 1.0 is kept for distractors="parts")
            if key != "background" and cfg.distractors == "parts" and rng.random() < 0.5:
                c1, c2 = self.part_colours()  # distractors in the object's own colour ranges
            else:
                c1 = _hsv(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95))
                c2 = _hsv(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95))
            _texture(rng, kind, c1, c2, self.textures[self.index[key]])
        self.of_part = {k: self.index[k] for k in self.part_keys}   # texture key -> texture
        self.of_part["eye"], self.of_part["beak"] = self.index["eye"], self.index["beak"]

    def part_colours(self):
        rng, h0 = self.rng, self.h0
        c1 = _hsv(h0 + rng.uniform(-0.08, 0.08), rng.uniform(0.3, 0.95), rng.uniform(0.3, 0.95))
        c2 = _hsv(h0 + rng.uniform(-0.25, 0.25), rng.uniform(0.2, 0.95), rng.uniform(0.15, 0.95))
        return c1, c2

    def reusable(self, distractors: str = "parts"):
        """Textures of the background distractors and the occluder: the parts' and d0 / d1
        (``parts``), or d0 / d1 only, whose colours are not the animal's (``objects``)."""
        own = [self.index[k] for k in ("d0", "d1")]
        if distractors == "objects":
            return own
        return [self.index[k] for k in self.part_keys] + own


class _Canvas:
    """Drawing layers: ``layers [S, S]`` uint8, 0 = the background texture, each drawn polygon a
    new layer id with its texture and part id (``lut_tex``, ``lut_part``)."""

    def __init__(self, S: int, background_texture: int):
        self.layers = np.zeros((S, S), dtype=np.uint8)
        self.lut_tex = [background_texture]
        self.lut_part = [0]

    def draw(self, poly: np.ndarray, part: int, tex: int) -> None:
        k = len(self.lut_tex)
        cv2.fillPoly(self.layers, [_to_cv(poly)], k, lineType=cv2.LINE_8, shift=4)
        self.lut_tex.append(tex)
        self.lut_part.append(part)

    def save(self):
        return self.layers.copy(), len(self.lut_tex)

    def restore(self, saved) -> None:
        layers, n = saved
        self.layers[:] = layers
        del self.lut_tex[n:], self.lut_part[n:]

    def part_mask(self) -> np.ndarray:
        return _map_layers(self.layers, self.lut_part)

    def foreground_pixels(self) -> int:
        return int(np.count_nonzero(self.part_mask()))


def _draw_clutter(rng, cfg: SyntheticConfig, canvas: _Canvas, reuse) -> None:
    """``clutter // 2 .. clutter`` background distractors (``cfg.distractors``: animal-like shapes
    in reused part textures, or non-animal objects in their own textures)."""
    S = canvas.layers.shape[0]
    shape = _DISTRACTOR_SHAPES[cfg.distractors]
    n_clutter = int(rng.integers(int(cfg.clutter) // 2, int(cfg.clutter) + 1))
    for _ in range(n_clutter):
        canvas.draw(shape(rng, S), 0, reuse[int(rng.integers(len(reuse)))])


def _pose(rng, cfg: SyntheticConfig):
    """The object's 2 x 2 map from the canonical frame to pixels (rotation, scale, flip) and
    whether it faces left."""
    S = int(cfg.image_size)
    facing_left = rng.random() < cfg.flip_prob
    theta = math.radians(rng.uniform(-cfg.max_rotation, cfg.max_rotation))
    scale = rng.uniform(*cfg.scale_range) * S
    A = _rot(theta) * scale
    if facing_left:
        A = A @ np.diag([-1.0, 1.0])
    return A, facing_left


def _place_object(rng, cfg: SyntheticConfig, canvas: _Canvas, prims, A: np.ndarray,
                  tex_of) -> np.ndarray:
    """Draw the object's primitives around a random centre (near an edge with probability
    ``out_of_frame``); up to 11 tries for one that leaves at least 1.2% of the image visible,
    then the image centre. Returns the centre (pixels)."""
    S = int(cfg.image_size)
    min_fg = 0.012 * S * S
    background = canvas.save()
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
        placed = [poly @ A.T for poly, _, _ in prims]
        if cfg.keep_in_frame:
            centre = _inside_frame(centre, placed, S)
        canvas.restore(background)  # undo a previous attempt
        for poly, (_, part, tkey) in zip(placed, prims):
            canvas.draw(poly + centre, part, tex_of[tkey])
        if canvas.foreground_pixels() >= min_fg:
            break
    return centre


def _inside_frame(centre: np.ndarray, placed, S: int, margin: float = 1.5) -> np.ndarray:
    """The centre nearest to ``centre`` at which every polygon of ``placed`` (relative to the
    centre) lies ``margin`` pixels inside the ``S x S`` frame; per axis, the middle of the frame if
    the animal is wider than that."""
    pts = np.concatenate(placed, 0)
    lo = margin - pts.min(0)
    hi = S - margin - pts.max(0)
    return np.where(lo <= hi, np.clip(centre, lo, hi), 0.5 * (lo + hi))


def _maybe_occlude(rng, cfg: SyntheticConfig, canvas: _Canvas, reuse) -> None:
    """With probability ``occlusion``, a foreground occluder (background label) over a random
    object pixel, kept only if it leaves at least 60% of the object visible."""
    if rng.random() >= cfg.occlusion:
        return
    S = canvas.layers.shape[0]
    part_now = canvas.part_mask()
    fg_before = np.count_nonzero(part_now)
    ys, xs = np.nonzero(part_now)
    j = int(rng.integers(len(xs)))
    occ = _DISTRACTOR_SHAPES[cfg.distractors](rng, S, xs[j] + 0.5, ys[j] + 0.5,
                                              rng.uniform(0.12, 0.3))
    saved = canvas.save()
    canvas.draw(occ, 0, reuse[int(rng.integers(len(reuse)))])
    if canvas.foreground_pixels() < 0.6 * fg_before:
        canvas.restore(saved)


def _shade(rng, cfg: SyntheticConfig, canvas: _Canvas, textures: np.ndarray) -> np.ndarray:
    """The uint8 image: each pixel from its layer's texture, then a smooth multiplicative light
    field, darker region borders (probability ``outline_prob``), luminance noise and blur."""
    S = canvas.layers.shape[0]
    tex_map = _map_layers(canvas.layers, canvas.lut_tex).astype(np.intp)
    flat = textures.reshape(-1, 3)
    img = np.take(flat, tex_map.ravel() * (S * S) + np.arange(S * S), axis=0).reshape(S, S, 3)
    light = cv2.resize(rng.uniform(0.8, 1.2, (2, 2)).astype(np.float32), (S, S),
                       interpolation=cv2.INTER_LINEAR)
    if rng.random() < cfg.outline_prob:
        layers = canvas.layers
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
    return cv2.convertScaleAbs(img)  # round to nearest, saturate to 0..255


def _named_keypoints(kps, side_kps, facing_left: bool) -> Dict[str, Optional[np.ndarray]]:
    """The builder's keypoints with near / far sides named left / right: an animal facing right
    shows its right side (the animal's own sides, as in CUB)."""
    near, far = ("left", "right") if facing_left else ("right", "left")
    names: Dict[str, Optional[np.ndarray]] = dict(kps)
    for side, lr in (("near", near), ("far", far)):
        for k, v in side_kps[side].items():
            names[f"{lr} {k}"] = v
    return names


def _visible_keypoints(family: str, names, A: np.ndarray, centre: np.ndarray,
                       part_mask: np.ndarray, S: int):
    """Keypoints in pixels, rounded as written; visible iff in the frame and on a pixel of the
    part that owns it. Returns ``(keypoints float32 [P, 2], visible bool [P])``."""
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
    return keypoints, visible


def _tight_box(fg: np.ndarray) -> np.ndarray:
    """(x, y, w, h) float32 covering every foreground pixel."""
    cols, rows = np.flatnonzero(fg.any(0)), np.flatnonzero(fg.any(1))
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    return np.array([x0, y0, x1 - x0, y1 - y0], np.float32)


def render_index(cfg: SyntheticConfig, index: int) -> Dict[str, Any]:
    """Render image ``index`` (0-based, id = index + 1) of the tree described by ``cfg``."""
    rng = np.random.default_rng([int(cfg.seed), int(index)])
    return render_sample(rng, cfg, label=int(index) % cfg.num_classes)

