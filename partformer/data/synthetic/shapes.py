"""Polygons of the synthetic generator: small numpy arrays of ``(x, y)`` points in the canonical
object frame (x = the facing direction, y down), placed into the image by the renderer."""
from __future__ import annotations

import math
from typing import Dict

import numpy as np

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

