"""The synthetic benchmark's vocabularies (families, parts, keypoints, colour schemes, textures) and
the generator settings :class:`SyntheticConfig` (recorded in ``synthetic_meta.json``)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

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

# scene knobs of the difficulty levels (partformer/data/synthetic/levels.py)
BACKGROUNDS = ("textured", "smooth", "flat")
DISTRACTORS = ("parts", "objects")
# settings added after generator 1.0, with the value that reproduces generator 1.0 byte for byte:
# a tree whose synthetic_meta.json lacks one of them was written with that value
ADDED_SETTINGS = {"background": "textured", "distractors": "parts", "keep_in_frame": False}


def class_names(num_schemes: int = 3, families: Tuple[str, ...] = FAMILIES) -> List[str]:
    """Class names in class-id order: family-major, e.g. ``Bird_Crimson``."""
    return [f"{fam.capitalize()}_{SCHEMES[s][0]}" for fam in families for s in range(num_schemes)]


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
        background: ``textured`` (a random texture of random colours, generator 1.0) or
            ``smooth`` (a two-colour gradient whose hue lies opposite the class's hue) or ``flat``
            (one such colour everywhere: what a single background token can reconstruct).
        distractors: what the ``clutter`` shapes (and the occluder) are: ``parts`` (generator 1.0:
            blobs, limb-like capsules, wing-like leaves and polygons, textured with the animal's own
            part textures or in its colour ranges) or ``objects`` (rectangles, triangles, regular
            polygons, stars and crosses: straight edges and corners, which no animal part has, in
            colours drawn independently of the animal's).
        keep_in_frame: shift the animal's centre (drawn as usual) just enough that all of it lies
            at least a pixel inside the frame (without it, with ``out_of_frame=0``, about 0.6 % of
            the animals still touch the border); needs ``out_of_frame=0``.

    The named knob sets of the benchmark's levels (clean, textured, cluttered, ...) are in
    :mod:`partformer.data.synthetic.levels`; the defaults here are the ``cluttered`` level.
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
    background: str = "textured"
    distractors: str = "parts"
    keep_in_frame: bool = False

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
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if self.distractors not in DISTRACTORS:
            raise ValueError(f"distractors must be one of {DISTRACTORS}, "
                             f"got {self.distractors!r}")
        if self.keep_in_frame and float(self.out_of_frame) > 0:
            raise ValueError("keep_in_frame needs out_of_frame=0 (it keeps the whole animal in "
                             "the frame)")
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
        return class_names(int(self.num_schemes), self.families)

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


