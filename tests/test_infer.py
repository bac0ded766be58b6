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
    rc = infer_main([str(folder), "--model", ckpt, "--out", str(out), "--alpha", "1",
                     "--batch-size", "2", "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    stdout = captured.out
    # a skipped file is one plain line on stderr (no warnings.warn source line)
    assert f"skipped {folder / 'broken.jpg'}: cannot decode" in captured.err
    assert "warn" not in captured.err
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
    assert infer_main([str(folder), "--model", ckpt, "--out", str(out), "--no-progress"]) == 0
    summary = json.load(open(out / "summary.json"))
    assert summary["written"] == 1 and summary["already_done"] == 2
    assert os.stat(out / "labels" / "img0.png").st_mtime_ns == stamp
    assert set(json.load(open(out / "parts.json"))) == set(images)
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
    assert infer_main([str(bad), "--model", ckpt, "--out", str(tmp_path / "o2"),
                       "--no-progress"]) == 2
    assert "no input could be read" in capsys.readouterr().err


# ----------------------------------------------- issue 16: one model per folder, no clobbering
@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    return tiny_checkpoint(str(tmp_path_factory.mktemp("infer_other")), seed=1)[0]


def _labels(out):
    return {f: open(os.path.join(dp, f), "rb").read()
            for dp, _, fs in os.walk(out / "labels") for f in fs}


def test_a_second_model_never_mixes_its_outputs_with_the_first(ckpt, other_ckpt, tmp_path,
                                                               capsys):
    """Re-running into the same --out with another --model skipped every image as done and wrote
    a summary naming the new model over the old model's labels (issue 16.2)."""
    folder = tmp_path / "photos"
    images = write_images(str(folder), [(30, 40), (20, 24)])
    out = tmp_path / "out"
    assert infer_main([str(folder), "--model", ckpt, "--out", str(out), "--no-progress"]) == 0
    first = _labels(out)
    capsys.readouterr()
    assert infer_main([str(folder), "--model", other_ckpt, "--out", str(out),
                       "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds the outputs of another model" in err and "--overwrite" in err
    assert _labels(out) == first
    assert json.load(open(out / "infer_run.json"))["model"] == ckpt
    # the same model continues; --overwrite with the other model replaces everything
    assert infer_main([str(folder), "--model", ckpt, "--out", str(out), "--no-progress"]) == 0
    assert json.load(open(out / "summary.json"))["already_done"] == 2
    assert infer_main([str(folder), "--model", other_ckpt, "--out", str(out), "--overwrite",
                       "--no-progress"]) == 0
    run = json.load(open(out / "infer_run.json"))
    other = partformer.load(other_ckpt, device="cpu")
    assert run["model"] == other_ckpt and run["weights_sha256"] == \
        other.fingerprint()["weights_sha256"]
    assert json.load(open(out / "summary.json"))["written"] == 2
    for key, rgb in images.items():
        labels = viz.read_labels(str(out / "labels" / f"{key}.png"))
        assert np.array_equal(labels, other(rgb).labels.numpy())
    # a different preprocessing of the same weights is another model too
    assert infer_main([str(folder), "--model", other_ckpt, "--out", str(out), "--resize",
                       "shorter", "--no-progress"]) == 2


def test_a_folder_infer_did_not_write_is_never_used(ckpt, tmp_path, capsys):
    folder = tmp_path / "photos"
    write_images(str(folder), [(30, 40)])
    out = tmp_path / "mine"
    (out / "labels").mkdir(parents=True)
    (out / "summary.json").write_text("my notes")
    (out / "labels" / "img0.png").write_bytes(b"my picture")
    for extra in ([], ["--overwrite"]):
        assert infer_main([str(folder), "--model", ckpt, "--out", str(out), "--no-progress",
                           *extra]) == 2
        assert "holds no output of tools/infer.py" in capsys.readouterr().err
        assert (out / "summary.json").read_text() == "my notes"
        assert (out / "labels" / "img0.png").read_bytes() == b"my picture"


def test_output_folder_inside_the_input_folder_is_not_read_back(ckpt, tmp_path):
    folder = tmp_path / "photos"
    images = write_images(str(folder), [(30, 40), (20, 24)])
    out = folder / "parts_out"
    for _ in range(2):
        assert infer_main([str(folder), "--model", ckpt, "--out", str(out), "--no-progress"]) == 0
    assert set(json.load(open(out / "parts.json"))) == set(images)
    summary = json.load(open(out / "summary.json"))
    assert summary["written"] == 0 and summary["already_done"] == 2


def test_exif_orientation_of_photos_is_applied_and_recorded(ckpt, tmp_path):
    """A phone photo tagged 'rotate 90' (EXIF orientation 6) is shown upright by every viewer;
    infer processed it sideways (issue 16.7). PIL's exif_transpose gives the upright grid."""
    from PIL import Image, ImageOps
    folder = tmp_path / "photos"
    folder.mkdir()
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[:, :20] = (250, 30, 30)                 # left half red, as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(folder / "phone.jpg", exif=exif, quality=95)
    plain = folder / "plain.png"
    Image.fromarray(stored).save(plain)
    out = tmp_path / "out"
    assert infer_main([str(folder), "--model", ckpt, "--out", str(out), "--no-progress",
                       "--alpha", "0"]) == 0
    upright = np.asarray(ImageOps.exif_transpose(Image.open(folder / "phone.jpg")))
    assert upright.shape[:2] == (40, 24)
    assert viz.read_labels(str(out / "labels" / "phone.png")).shape == (40, 24)
    ov = cv2.imread(str(out / "overlays" / "phone.png"))[:, :, ::-1].astype(int)
    assert np.abs(ov - upright.astype(int)).max() <= 3        # alpha 0: the upright photo
    rec = json.load(open(out / "parts" / "phone.json"))
    assert rec["exif_orientation"] == 6 and rec["exif_orientation_applied"] is True
    assert (rec["height"], rec["width"]) == (40, 24)
    rec = json.load(open(out / "parts" / "plain.json"))
    assert rec["exif_orientation"] == 1 and rec["exif_orientation_applied"] is False


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_geometry_equals_pil(tmp_path, orientation):
    from PIL import Image, ImageOps

    from partformer.data.io import apply_exif_orientation
    a = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    ref = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(apply_exif_orientation(a, orientation), ref)


def test_ctrl_c_ends_infer_with_one_line_also_when_started_in_the_background(ckpt, tmp_path,
                                                                            monkeypatch, capsys):
    """A job started with '&' in a non-interactive shell inherits SIGINT as ignored, and Ctrl-C
    printed a traceback (issue 16.20)."""
    import signal
    folder = tmp_path / "photos"
    write_images(str(folder), [(30, 40), (20, 24), (25, 25)])
    out = tmp_path / "out"
    real = viz.save_labels
    calls = {"n": 0}

    def save_then_sigint(*a, **k):
        real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(viz, "save_labels", save_then_sigint)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)      # as '&' leaves it
    try:
        rc = infer_main([str(folder), "--model", ckpt, "--out", str(out), "--no-progress",
                         "--batch-size", "1"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert rc == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted;")
    monkeypatch.setattr(viz, "save_labels", real)
    assert infer_main([str(folder), "--model", ckpt, "--out", str(out), "--no-progress"]) == 0
    summary = json.load(open(out / "summary.json"))
    assert summary["written"] + summary["already_done"] == 3 and summary["written"] >= 2


@pytest.mark.parametrize("flag", ["--every", "--batch-size"])
def test_zero_every_and_batch_size_are_usage_errors(ckpt, tmp_path, flag, capsys):
    with pytest.raises(SystemExit) as e:
        infer_main([str(tmp_path), "--model", ckpt, "--out", str(tmp_path / "o"), flag, "0"])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err
