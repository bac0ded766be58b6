"""Part maps for folders, globs and videos (``tools/infer.py``).

For every input image (or video frame) ``<key>`` (its path relative to the input folder / the
glob's folder without extension; ``<video stem>/frame_<n>`` for frames) the output folder gets:

- ``labels/<key>.png``: single-channel label PNG, value ``k`` = part k (0..K-1), ``K`` = background
  (8 bit; 16 bit above 255 parts). Read it with ``partformer.viz.read_labels`` or any PNG reader.
- ``overlays/<key>.png``: the image with part colours (partformer.viz palette), part boundaries and
  a legend-free layout (``--alpha`` sets the opacity; ``--no-overlays`` skips them).
- ``parts/<key>.json``: per part its centroid ``(x, y)`` in input pixels (x = column, pixel
  centres at +0.5), presence (the part map's maximum) and area (fraction of pixels labelled k).

and, over all inputs, ``parts.json`` (``{key: record}``) and ``summary.json`` (counts, failures,
the label convention, the model). Every file is written atomically; the per-image JSON is written
last, so an image counts as done when it exists: a re-run skips done images unless ``overwrite``.
Unreadable files are reported (named, with the reason) and skipped.

The output folder belongs to one model: ``infer_run.json`` (written first) names it and the
fingerprint of its weights and preprocessing. A re-run continues only with the same fingerprint;
another model's re-run is refused (``overwrite`` removes the earlier outputs first), and a
non-empty folder that infer did not write is never used. An output folder inside an input folder
is not read as input. Photos are processed upright: their EXIF orientation is applied (and
recorded per image); the datasets keep ignoring it.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from partformer import viz
from partformer.data.image_folder import IMAGE_EXTENSIONS, list_images
from partformer.data.io import BadImageError, apply_exif_orientation, exif_orientation, load_image
from partformer.engine.evaluator import write_json
from partformer.fileio import atomic_open

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class InputError(FileNotFoundError):
    """An input that names no image, folder, glob match or video; the message says which."""


@dataclass(frozen=True)
class Source:
    """One input: an image file, or a video (whose frames become items)."""
    key: str            # output name without extension ('/'-separated)
    path: str
    video: bool = False


def collect_sources(inputs: Sequence[str], exclude: Optional[str] = None) -> List[Source]:
    """Images and videos named by ``inputs``: folders (searched recursively for images and
    videos), globs (``photos/*.jpg``; quote them) and files. Keys are unique. Files below
    ``exclude`` (the output folder, when it lies inside an input folder) are left out, so that a
    re-run never reads its own outputs as inputs."""
    sources: List[Source] = []
    exts = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    skip = os.path.realpath(exclude) + os.sep if exclude else None

    def kept(path: str) -> bool:
        return skip is None or not os.path.realpath(path).startswith(skip)

    for item in inputs:
        if os.path.isdir(item):
            rels = [r for r in list_images(item, exts) if kept(os.path.join(item, r))]
            if not rels:
                raise InputError(f"no image or video under {item} (extensions "
                                 f"{', '.join(exts)})")
            sources += [_source(os.path.join(item, r), r) for r in rels]
        elif os.path.isfile(item):
            sources.append(_source(item, os.path.basename(item)))
        elif glob.has_magic(item):
            paths = sorted(p for p in glob.glob(item, recursive=True)
                           if os.path.isfile(p) and kept(p))
            if not paths:
                raise InputError(f"the pattern {item!r} matches no file")
            root = _glob_root(item)
            sources += [_source(p, os.path.relpath(p, root)) for p in paths]
        else:
            raise InputError(f"input {item!r}: no such file or folder (a folder, a file, a "
                             "video or a quoted glob pattern such as 'photos/*.jpg')")
    seen: Dict[str, str] = {}
    for s in sources:
        if s.key in seen:
            raise InputError(f"{seen[s.key]} and {s.path} would both be written as {s.key}.*; "
                             "pass their common parent folder instead")
        seen[s.key] = s.path
    return sources


def _glob_root(pattern: str) -> str:
    parts = pattern.replace(os.sep, "/").split("/")
    fixed = []
    for p in parts:
        if glob.has_magic(p):
            break
        fixed.append(p)
    return "/".join(fixed) or "."


def _source(path: str, rel: str) -> Source:
    key = os.path.splitext(rel.replace(os.sep, "/"))[0]
    return Source(key, path, path.lower().endswith(VIDEO_EXTENSIONS))


def _frames(source: Source, every: int) -> Iterator[Tuple[str, Optional[np.ndarray], str]]:
    """``(key, rgb uint8 or None, error)`` for the frames of a video (every ``every``-th)."""
    import cv2
    cap = cv2.VideoCapture(source.path)
    if not cap.isOpened():
        yield source.key, None, f"cannot open video {source.path} (not a video OpenCV can read)"
        return
    try:
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if n % every == 0:
                yield f"{source.key}/frame_{n:06d}", np.ascontiguousarray(frame[:, :, ::-1]), ""
            n += 1
        if n == 0:
            yield source.key, None, f"video {source.path} has no readable frame"
    finally:
        cap.release()


def _count(sources: Sequence[Source], every: int) -> int:
    import cv2
    total = 0
    for s in sources:
        if s.video:
            cap = cv2.VideoCapture(s.path)
            frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            cap.release()
            total += max(1, -(-frames // every))
        else:
            total += 1
    return total


RUN_FILE = "infer_run.json"          # written first: the folder is infer's, and whose model
OUTPUTS = ("labels", "overlays", "parts", "parts.json", "summary.json", RUN_FILE)


class OutputFolderError(FileExistsError):
    """``--out`` cannot be used: not infer's folder, or another model's outputs."""


def prepare_output(out_dir: str, fingerprint: Dict[str, Any], source: str,
                   overwrite: bool) -> None:
    """Make ``out_dir`` this model's output folder, or refuse.

    - new or empty: it becomes one (``infer_run.json`` names the model and its fingerprint);
    - an earlier output of the same model (same fingerprint): continued, done images skipped
      (``overwrite`` redoes them);
    - an output of another model (or of an unknown one): refused unless ``overwrite``, which
      removes the earlier outputs first, so that labels of two models never share a folder;
    - anything else (a non-empty folder that infer did not write): refused, whatever
      ``overwrite`` says, so that no file of the user's is replaced.
    """
    run_path = os.path.join(out_dir, RUN_FILE)
    record = {"tool": "partformer infer", "model": source, **fingerprint}
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        previous = _read_run_file(run_path)
        if previous is None:
            raise OutputFolderError(
                f"--out {out_dir} is not empty and holds no output of tools/infer.py (no "
                f"{RUN_FILE}); nothing was written. Choose a new or empty folder, so that no file "
                "in it is replaced")
        same = {k: previous.get(k) for k in fingerprint} == fingerprint
        if not same and not overwrite:
            raise OutputFolderError(
                f"--out {out_dir} holds the outputs of another model ({previous.get('model')!r}, "
                f"weights sha256 {str(previous.get('weights_sha256'))[:12]}..., resize "
                f"{previous.get('resize')!r}, image size {previous.get('image_size')}); this "
                f"model is {source!r} (sha256 {fingerprint['weights_sha256'][:12]}...). Pass "
                "--overwrite to replace them, or choose another --out")
        if not same:
            clear_outputs(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    write_json(run_path, record)


def _read_run_file(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("tool") == "partformer infer" else None


def clear_outputs(out_dir: str) -> None:
    """Remove what infer wrote into ``out_dir`` (nothing else)."""
    import shutil
    for name in OUTPUTS:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.isfile(path):
            os.remove(path)


class Writer:
    """Where the outputs of one item go; ``done(key)``: all of them exist."""

    def __init__(self, out_dir: str, overlays: bool):
        self.out_dir, self.overlays = out_dir, overlays

    def paths(self, key: str) -> Dict[str, str]:
        p = {"labels": os.path.join(self.out_dir, "labels", key + ".png"),
             "parts": os.path.join(self.out_dir, "parts", key + ".json")}
        if self.overlays:
            p["overlay"] = os.path.join(self.out_dir, "overlays", key + ".png")
        return p

    def done(self, key: str) -> bool:
        return all(os.path.isfile(p) for p in self.paths(key).values())


def part_record(pred, source: str, frame: Optional[int] = None) -> Dict[str, Any]:
    """The JSON record of one :class:`partformer.predictor.Prediction`."""
    K = pred.num_parts
    labels = pred.labels.numpy()
    areas = np.bincount(labels.ravel(), minlength=K + 1) / labels.size
    return {
        "source": source, "frame": frame, "height": int(labels.shape[0]),
        "width": int(labels.shape[1]), "num_parts": K,
        "labels": f"k = part k (0..{K - 1}), {K} = background",
        "parts": [{"part": k, "centroid_xy": [round(float(v), 3) for v in pred.centroids[k]],
                   "presence": round(float(pred.presence[k]), 6),
                   "area": round(float(areas[k]), 6)} for k in range(K)],
        "background_area": round(float(areas[K]), 6),
    }


def run_inference(predictor, inputs: Sequence[str], out_dir: str, overwrite: bool = False,
                  alpha: float = 0.55, overlays: bool = True, every: int = 1,
                  progress: bool = False) -> Dict[str, Any]:
    """Predict every image / frame of ``inputs`` into ``out_dir`` (see the module docstring);
    returns (and writes as ``summary.json``) the counts and the failures."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    sources = collect_sources(inputs, exclude=out_dir)
    prepare_output(out_dir, predictor.fingerprint(), str(predictor.source), overwrite)
    writer = Writer(out_dir, overlays)
    K = predictor.num_parts
    done, written, failed = [], [], []
    from partformer.engine.progress import make_progress
    bar = make_progress(_count(sources, every), "infer", enabled=progress, unit="image",
                        images=1, main=True)
    batch: List[Tuple[str, np.ndarray, str, Optional[int]]] = []
    orientation_of: Dict[str, Dict[str, Any]] = {}

    def flush():
        preds = predictor([b[1] for b in batch])
        for (key, image, src, frame), pred in zip(batch, preds):
            paths = writer.paths(key)
            labels = pred.labels.numpy()
            viz.save_labels(paths["labels"], labels, K)
            if overlays:
                viz.save_png(paths["overlay"], viz.overlay(image, labels, K, alpha))
            with atomic_open(paths["parts"], "w") as f:  # last: marks the item done
                json.dump({**part_record(pred, src, frame), **orientation_of.get(key, {})}, f,
                          indent=1)
            written.append(key)
            if bar is not None:
                bar.update(1)
        batch.clear()

    def tick():
        if bar is not None:
            bar.update(1)

    def fail(src: str, error: str):
        failed.append({"file": src, "error": error})
        say(f"skipped {src}: {error}")
        tick()

    def say(line: str):
        # one plain line; through tqdm while a bar is drawn, so it does not cut into the bar
        if bar is not None:
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    for src in sources:
        if src.video:
            frames = _frames(src, every)
        elif writer.done(src.key) and not overwrite:
            frames = iter([(src.key, None, "done")])
        else:
            image, error, orientation = decode(src.path)
            if image is not None:
                orientation_of[src.key] = {"exif_orientation": orientation,
                                           "exif_orientation_applied": orientation != 1}
            frames = iter([(src.key, image, error)])
        for key, image, error in frames:
            if error == "done" or (image is not None and writer.done(key) and not overwrite):
                done.append(key)
                tick()
                continue
            if image is None:
                fail(src.path, error)
                continue
            frame = int(key.rsplit("_", 1)[1]) if src.video else None
            batch.append((key, image, src.path, frame))
            if len(batch) >= predictor.batch_size:
                flush()
    if batch:
        flush()
    if bar is not None:
        bar.close()
    records = {}
    for key in sorted(set(done + written)):
        with open(writer.paths(key)["parts"]) as f:
            records[key] = json.load(f)
    write_json(os.path.join(out_dir, "parts.json"), records)
    summary = {"written": len(written), "already_done": len(done), "failed": failed,
               "num_parts": K, "label_values": f"k = part k (0..{K - 1}), {K} = background",
               "model": predictor.source, "resize": predictor.resize,
               "image_size": predictor.image_size, "out_dir": os.path.abspath(out_dir)}
    write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary


def decode(path: str) -> Tuple[Optional[np.ndarray], str, int]:
    """``(rgb, "", orientation)`` or ``(None, reason, 1)`` for a missing / undecodable file
    (handled alike). Your photos are shown upright by every viewer: their EXIF orientation is
    applied (``orientation``, 1 = none; the datasets ignore it, as their annotations are on the
    stored grid), and the label PNG and overlay are on that upright grid."""
    try:
        image = load_image(path)
    except (BadImageError, FileNotFoundError) as e:
        return None, str(e), 1
    orientation = exif_orientation(path)
    return apply_exif_orientation(image, orientation), "", orientation


def print_summary(summary: Dict[str, Any], file=None) -> None:
    file = file or sys.stdout
    print(f"wrote {summary['written']} image(s) to {summary['out_dir']} "
          f"({summary['already_done']} already done; label values: {summary['label_values']})",
          file=file)
    if summary["failed"]:
        print(f"{len(summary['failed'])} file(s) could not be read and were skipped:", file=file)
        for f_ in summary["failed"]:
            print(f"  {f_['file']}: {f_['error']}", file=file)
