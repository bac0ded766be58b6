"""tools/infer.py (partformer/infer.py): folders, globs and videos -> label PNGs (exact round trip
with the predictor's labels), overlays in the palette colours, a JSON of centroids and presence;
unreadable files named and skipped; atomic, resumable outputs."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

import partformer
from partformer import viz
from partformer.cli import infer_main

from tests.tiny import tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(str(tmp_path_factory.mktemp("infer")))[0]


def write_images(folder, sizes):
    """Images of odd sizes in a folder tree (one in a sub-folder); returns {key: rgb}."""
    g = np.random.default_rng(0)
    out = {}
    for i, (h, w) in enumerate(sizes):
        key = f"sub/img{i}" if i == 1 else f"img{i}"
        low = g.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        rgb = cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)
        path = os.path.join(folder, key + ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, rgb[:, :, ::-1])
        out[key] = rgb
    return out


def test_folder_outputs_round_trip_and_rerun(ckpt, tmp_path, capsys):
    folder = tmp_path / "photos"
    images = write_images(str(folder), [(37, 53), (20, 64), (45, 45)])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="broken.jpg"):
        rc = infer_main([str(folder), "--model", ckpt, "--out", str(out), "--alpha", "1",
                         "--batch-size", "2", "--no-progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "wrote 3 image(s)" in stdout and "broken.jpg" in stdout and "cannot decode" in stdout
    predictor = partformer.load(ckpt, device="cpu")
    K = predictor.num_parts
    records = json.load(open(out / "parts.json"))
    assert set(records) == set(images)
    for key, rgb in images.items():
        pred = predictor(rgb)
        labels = viz.read_labels(str(out / "labels" / f"{key}.png"))
        assert labels.shape == rgb.shape[:2] and np.array_equal(labels, pred.labels.numpy())
        assert labels.max() <= K
        # --alpha 1: part pixels are exactly their palette colour, background the image
        ov = cv2.imread(str(out / "overlays" / f"{key}.png"))[:, :, ::-1]
        fg = labels < K
        assert (ov[fg] == viz.part_palette(K)[labels[fg]]).all()
        assert (ov[~fg] == rgb[~fg]).all()
        rec = json.load(open(out / "parts" / f"{key}.json"))
        assert rec == records[key]
        assert (rec["height"], rec["width"], rec["num_parts"]) == (*rgb.shape[:2], K)
        for k, part in enumerate(rec["parts"]):
            assert part["centroid_xy"] == pytest.approx(pred.centroids[k].tolist(), abs=1e-3)
            assert part["presence"] == pytest.approx(float(pred.presence[k]), abs=1e-5)
            assert part["area"] == pytest.approx(float((labels == k).mean()), abs=1e-5)
    summary = json.load(open(out / "summary.json"))
    assert summary["written"] == 3 and summary["already_done"] == 0
    assert [f["file"] for f in summary["failed"]] == [str(folder / "broken.jpg")]
    assert summary["label_values"] == f"k = part k (0..{K - 1}), {K} = background"
    assert not [f for f in os.listdir(out / "labels") if f.startswith(".tmp")]

    # a re-run skips what is done (nothing rewritten); --overwrite redoes it
    stamp = os.stat(out / "labels" / "img0.png").st_mtime_ns
    os.remove(out / "parts" / "img2.json")          # as if interrupted before img2 finished
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert infer_main([str(folder), "--model", ckpt, "--out", str(out), "--no-progress"]) == 0
    summary = json.load(open(out / "summary.json"))
    assert summary["written"] == 1 and summary["already_done"] == 2
    assert os.stat(out / "labels" / "img0.png").st_mtime_ns == stamp
    assert set(json.load(open(out / "parts.json"))) == set(images)
    with pytest.warns(UserWarning):
        assert infer_main([str(folder), "--model", ckpt, "--out", str(out), "--overwrite",
                           "--no-progress"]) == 0
    assert json.load(open(out / "summary.json"))["written"] == 3


def test_glob_video_and_errors(ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    write_images(str(folder), [(30, 40), (22, 22), (50, 31)])
    video = str(tmp_path / "clip.avi")
    vw = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 36))
    frames = []
    for i in range(5):
        f = np.zeros((36, 48, 3), np.uint8)
        f[:, : 8 * (i + 1)] = (40 * i, 200, 90)
        vw.write(f)
        frames.append(f)
    vw.release()
    out = tmp_path / "out"
    assert infer_main([str(folder / "img*.png"), video, "--model", ckpt, "--out", str(out),
                       "--every", "2", "--no-progress", "--no-overlays"]) == 0
    records = json.load(open(out / "parts.json"))
    assert set(records) == {"img0", "img2", "clip/frame_000000", "clip/frame_000002",
                            "clip/frame_000004"}
    assert records["clip/frame_000002"]["frame"] == 2
    assert records["clip/frame_000002"]["source"] == video
    assert not os.path.exists(out / "overlays")
    labels = viz.read_labels(str(out / "labels" / "clip" / "frame_000004.png"))
    assert labels.shape == (36, 48)
    # expected errors: one message, exit status 2
    assert infer_main([str(tmp_path / "nothing*.png"), "--model", ckpt, "--out", str(out)]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert infer_main([str(folder), "--model", "no_such_weights", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no file, run directory or shipped weights called "
                          "'no_such_weights'") and "Traceback" not in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"junk")
    with pytest.warns(UserWarning):
        assert infer_main([str(bad), "--model", ckpt, "--out", str(tmp_path / "o2"),
                           "--no-progress"]) == 2
    assert "no input could be read" in capsys.readouterr().err
