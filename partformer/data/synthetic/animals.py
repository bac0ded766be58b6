"""The two object families of the synthetic benchmark, built from ``shapes`` in the canonical frame:
a builder returns the primitives ``(polygon, part id, texture key)`` in drawing order (back to
front), the named keypoints, and the side-dependent keypoints (``near`` / ``far``) that the
renderer names left / right once it knows which way the animal faces."""
from __future__ import annotations

import math

import numpy as np

from partformer.data.synthetic.config import BODY, HEAD, LEG, TAIL, WING
from partformer.data.synthetic.shapes import (_capsule, _dir, _ellipse, _fan, _leaf, _rot,
                                              _superellipse, _triangle, _tube, _up_of)

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


BUILDERS = {"bird": _build_bird, "quadruped": _build_quadruped}

