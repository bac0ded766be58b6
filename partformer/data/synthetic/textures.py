"""Textures of the synthetic benchmark: solid, stripes, dots, checker, gradient, mottled, each
filled into an S x S x 3 uint8 array with a few vectorised passes (cached pixel-centre grids, colouring
through a lookup table), and the per-class preferred texture of each part."""
from __future__ import annotations

import colorsys
import math
from typing import Dict, Tuple

import cv2
import numpy as np

from partformer.data.synthetic.config import FAMILIES, PART_NAMES, TEXTURES

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


