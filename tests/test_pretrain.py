"""Self-supervised encoder pretraining: crop geometry, photometric changes, DINO losses, the loop
(exact resume, probe, export) and CNN encoders through timm ``features_only``."""
import json
import os

import pytest
import torch
import yaml
import torch.nn.functional as F

from partformer import config as cfglib
from partformer.engine.checkpoint import load_checkpoint
from partformer.models.encoder import FeatureMapEncoder, fuse_feature_levels
from partformer.pretrain import crops as C
from partformer.engine.optim import cosine as cosine_schedule
from partformer.pretrain.dino import DenseDinoLoss, DinoLoss, ProjectionHead

from .tiny import GENERATOR, shared_root, tiny_dict

TINY_CNN = {"name": "resnet10t", "pretrained": False, "frozen": True, "out_indices": [1, 2],
            "kwargs": {"channels": [8, 16, 16, 16], "stem_width": 8}}


def coordinate_image(size=48):
    """``[1, 2, S, S]``: channel 0 = x, channel 1 = y of each pixel centre (normalised coords),
    so bilinear sampling of it is exact and its value *is* the source position."""
    return C.cell_centres(size, size).permute(2, 0, 1)[None]


# ------------------------------------------------------------------------------------ geometry
def test_crop_values_are_source_positions_of_their_cell_centres():
    g = torch.Generator().manual_seed(0)
    theta = C.sample_boxes(6, C.CropSpec(1, 16, (0.2, 1.0)), g)
    crops = C.crop(coordinate_image().expand(6, -1, -1, -1), theta, 16)
    centres = C.cell_centres(16, 16).reshape(1, -1, 2)
    expect = centres @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]
    got = crops.flatten(2).transpose(1, 2)
    assert torch.allclose(got, expect, atol=1e-5)


def test_boxes_stay_inside_the_source_and_flip_mirrors():
    g = torch.Generator().manual_seed(1)
    spec = C.CropSpec(1, 8, (0.05, 1.0), flip_p=0.5)
    theta = C.sample_boxes(500, spec, g)
    half_w, half_h = theta[:, 0, 0].abs(), theta[:, 1, 1]
    assert ((theta[:, 0, 2].abs() + half_w) <= 1 + 1e-6).all()
    assert ((theta[:, 1, 2].abs() + half_h) <= 1 + 1e-6).all()
    area = half_w * half_h
    assert area.min() >= 0.05 - 1e-6 and area.max() <= 1 + 1e-6
    flipped = theta[:, 0, 0] < 0
    assert 0.4 < flipped.float().mean() < 0.6
    # a mirrored crop of the whole image is the image read right to left
    img = torch.rand(1, 3, 8, 8)
    full = torch.tensor([[[-1.0, 0, 0], [0, 1, 0]]])
    assert torch.allclose(C.crop(img, full, 8), img.flip(-1), atol=1e-5)


def test_corresponding_points_find_the_same_source_point():
    """Sampling crop B at the positions returned for the cells of crop A gives A's own values
    (the coordinate image makes both sides the source position)."""
    g = torch.Generator().manual_seed(2)
    spec = C.CropSpec(1, 12, (0.3, 1.0))
    ta, tb = C.sample_boxes(8, spec, g), C.sample_boxes(8, spec, g)
    src = coordinate_image().expand(8, -1, -1, -1)
    a, b = C.crop(src, ta, 12), C.crop(src, tb, 12)
    grid, valid = C.corresponding_points(ta, tb, 12, 12)
    assert valid.any() and not valid.all()
    b_at = F.grid_sample(b, grid, mode="bilinear", align_corners=False)
    # inside B (away from its last half pixel, where border padding clamps) the values agree
    inner = (grid.abs() <= 1 - 1.0 / 12).all(-1)
    diff = (b_at - a).abs().amax(1)
    assert inner.sum() > 50
    assert diff[inner].max() < 1e-4
    # a point outside B is reported invalid
    pos = a.permute(0, 2, 3, 1)                                     # source positions of A's cells
    inside_b = ((pos - tb[:, None, None, :, 2]).abs()
                <= torch.stack([tb[:, 0, 0].abs(), tb[:, 1, 1]], -1)[:, None, None] + 1e-6).all(-1)
    assert torch.equal(valid, inside_b)


def test_photometric_never_moves_pixels():
    """Two flat regions stay two flat regions (no blur): colour changes are per pixel value."""
    img = torch.zeros(16, 3, 10, 10)
    img[:, :, :, 5:] = torch.tensor([0.9, 0.2, 0.4]).view(1, 3, 1, 1)
    img[:, :, :, :5] = torch.tensor([0.1, 0.6, 0.3]).view(1, 3, 1, 1)
    out = C.photometric(img, torch.Generator().manual_seed(0), blur_p=0.0, jitter_p=1.0,
                        permute_p=0.5, invert_p=0.5, gray_p=0.3, solarize_p=0.3)
    left, right = out[..., :5], out[..., 5:]
    assert torch.allclose(left, left[..., :1, :1].expand_as(left), atol=1e-6)
    assert torch.allclose(right, right[..., :1, :1].expand_as(right), atol=1e-6)
    assert not torch.allclose(out, img)            # something did change
    assert out.min() >= 0 and out.max() <= 1


def test_blur_keeps_mean_and_spreads_a_dot():
    img = torch.zeros(2, 3, 15, 15)
    img[:, :, 7, 7] = 1.0
    g = torch.Generator().manual_seed(0)
    out = C.photometric(img, g, jitter_p=0, permute_p=0, invert_p=0, gray_p=0, blur_p=1.0,
                        blur_sigma=(1.0, 1.0))
    assert torch.allclose(out.sum(dim=(2, 3)), torch.ones(2, 3), atol=1e-5)
    assert out[0, 0, 7, 7] < 0.5 and out[0, 0, 7, 8] > 0
    # sigma 1: the 1-D kernel value at 0 over its sum (radius 2) gives the centre weight squared
    k = torch.exp(-0.5 * torch.arange(-2.0, 3.0) ** 2)
    assert out[0, 0, 7, 7].item() == pytest.approx((k[2] / k.sum()).item() ** 2, rel=1e-5)


# ------------------------------------------------------------------------------------ losses
def test_dino_loss_is_cross_entropy_over_pairs_of_different_crops():
    torch.manual_seed(0)
    B, P = 3, 5
    loss = DinoLoss(P, student_temp=0.1)
    s = torch.randn(4 * B, P)           # 2 global + 2 local crops
    t = torch.randn(2 * B, P)
    got = loss(s, t, n_global=2, teacher_temp=0.04)
    tp = F.softmax(t / 0.04, -1).split(B)          # centre starts at 0
    sl = F.log_softmax(s / 0.1, -1).split(B)
    pairs = [(i, j) for i in range(2) for j in range(4) if i != j]
    expect = sum(-(tp[i] * sl[j]).sum(-1).mean() for i, j in pairs) / len(pairs)
    assert got.item() == pytest.approx(expect.item(), rel=1e-6)
    # the centre moved towards the teacher's mean output by (1 - momentum)
    assert torch.allclose(loss.center, 0.1 * t.mean(0, keepdim=True), atol=1e-6)


def test_dense_loss_compares_only_corresponding_cells():
    torch.manual_seed(0)
    B, P, h = 2, 6, 4
    loss = DenseDinoLoss(P, student_temp=0.1)
    teacher = torch.randn(B, P, h, h)
    student = torch.randn(B, P, h, h)
    # identity correspondence at cell centres, with the right half of the cells invalid
    grid = C.cell_centres(h, h)[None].expand(B, -1, -1, -1)
    valid = torch.zeros(B, h, h, dtype=torch.bool)
    valid[..., :2] = True
    got = loss([student, student], [teacher, teacher], {(0, 1): grid}, {(0, 1): valid}, 0.04)
    tp = F.softmax(teacher / 0.04, 1)
    ce = -(tp * F.log_softmax(student / 0.1, 1)).sum(1)
    assert got.item() == pytest.approx(ce[valid].mean().item(), rel=1e-5)
    # changing the student on invalid cells changes nothing
    student2 = student.clone()
    student2[..., 2:] = torch.randn_like(student2[..., 2:])
    loss2 = DenseDinoLoss(P, student_temp=0.1)
    got2 = loss2([student2, student2], [teacher, teacher], {(0, 1): grid}, {(0, 1): valid}, 0.04)
    assert got2.item() == pytest.approx(got.item(), rel=1e-6)


def test_image_centred_dense_targets_ignore_what_a_whole_image_shares():
    torch.manual_seed(0)
    B, P, h = 2, 6, 4
    teacher = torch.randn(B, P, h, h)
    student = torch.randn(B, P, h, h)
    grid = C.cell_centres(h, h)[None].expand(B, -1, -1, -1)
    valid = torch.ones(B, h, h, dtype=torch.bool)

    def run(t):
        loss = DenseDinoLoss(P, student_temp=0.1, targets="image_center")
        return loss([student, student], [t, t], {(0, 1): grid}, {(0, 1): valid}, 0.04), loss

    got, loss = run(teacher)
    # targets: softmax of the teacher's logits minus each image's mean logits over its cells
    centred = teacher - teacher.mean(dim=(2, 3), keepdim=True)
    ce = -(F.softmax(centred / 0.04, 1) * F.log_softmax(student / 0.1, 1)).sum(1)
    assert got.item() == pytest.approx(ce.mean().item(), rel=1e-5)
    # the batch centre is updated from the image-centred logits (whose mean is zero)
    assert torch.allclose(loss.center, torch.zeros(1, P), atol=1e-6)
    # a per-image offset of the logits (one vector per image, the same on every cell) changes
    # nothing; with DINO's "center" targets it does
    shifted = teacher + torch.randn(B, P, 1, 1) * 3
    assert run(shifted)[0].item() == pytest.approx(got.item(), rel=1e-5)
    plain = DenseDinoLoss(P, student_temp=0.1, targets="center")
    a = plain([student, student], [teacher, teacher], {(0, 1): grid}, {(0, 1): valid}, 0.04)
    plain = DenseDinoLoss(P, student_temp=0.1, targets="center")
    b = plain([student, student], [shifted, shifted], {(0, 1): grid}, {(0, 1): valid}, 0.04)
    assert abs(a.item() - b.item()) > 0.1


def test_sinkhorn_balances_prototypes_and_ignores_per_sample_shifts():
    from partformer.pretrain.dino import sinkhorn
    torch.manual_seed(0)
    logits = torch.rand(600, 6) * 2 - 1                      # cosine-similarity range
    q = sinkhorn(logits, eps=0.05, iters=50)
    assert torch.allclose(q.sum(1), torch.ones(600), atol=1e-5)       # rows: distributions
    assert torch.allclose(q.sum(0), torch.full((6,), 100.0), rtol=1e-3)  # columns: N / P each
    shifted = sinkhorn(logits + torch.randn(600, 1) * 5, eps=0.05, iters=50)
    assert torch.allclose(q, shifted, atol=1e-5)
    # a prototype every sample prefers still gets only its share
    skewed = logits.clone()
    skewed[:, 0] += 0.5
    assert sinkhorn(skewed, eps=0.05, iters=50).sum(0)[0] == pytest.approx(100.0, rel=1e-3)


def test_projection_head_prototypes_have_unit_norm_and_maps_match_vectors():
    head = ProjectionHead(7, 11, hidden_dim=9, bottleneck_dim=5, num_layers=2)
    w = head.prototypes.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(11), atol=1e-6)
    x = torch.randn(2, 7, 3, 4)
    y = head(x)
    assert y.shape == (2, 11, 3, 4)
    assert torch.allclose(y[1, :, 2, 3], head(x[1, :, 2, 3][None])[0], atol=1e-6)


def test_cosine_schedule_ends():
    assert cosine_schedule(0.99, 1.0, 0, 100) == pytest.approx(0.99)
    assert cosine_schedule(0.99, 1.0, 100, 100) == pytest.approx(1.0)
    assert cosine_schedule(0.0, 1.0, 50, 100) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------ encoders
def test_cnn_encoder_fuses_levels_at_the_finest_grid():
    enc = FeatureMapEncoder(**{k: v for k, v in TINY_CNN.items() if k != "kwargs"},
                            **TINY_CNN["kwargs"])
    x = torch.randn(2, 3, 32, 32)
    f = enc(x)
    assert enc.patch_size == 4 and enc.embed_dim == 8 + 16
    assert f.shape == (2, 24, 8, 8)
    assert enc.feature_size((32, 32)) == (8, 8) and enc.feature_size((30, 27)) == (8, 7)
    assert enc(torch.randn(1, 3, 30, 27)).shape[-2:] == (8, 7)
    levels = enc.model(x)
    assert torch.allclose(f[:, :8], levels[0])
    assert torch.allclose(f[:, 8:], F.interpolate(levels[1], size=(8, 8), mode="bilinear",
                                                  align_corners=False), atol=1e-6)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training                 # frozen: BN stays in eval mode


def test_center_subtracts_each_images_mean_feature_and_is_off_by_default():
    """model.encoder.center: every cell minus its image's mean over the map (per image, per
    channel), frozen or trainable; without it the output is the encoder's own."""
    args = {k: v for k, v in TINY_CNN.items() if k != "kwargs"}
    torch.manual_seed(0)
    plain = FeatureMapEncoder(**args, **TINY_CNN["kwargs"]).eval()
    centred = FeatureMapEncoder(**args, center=True, **TINY_CNN["kwargs"]).eval()
    centred.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 32, 32)
    f, g = plain(x), centred(x)
    assert f.mean(dim=(2, 3)).abs().max() > 1e-2           # ReLU features: far from centred
    torch.testing.assert_close(g, f - f.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(g[1:2], centred(x[1:2]))     # per image, not per batch
    trainable = FeatureMapEncoder(**{**args, "frozen": False}, center=True, **TINY_CNN["kwargs"])
    trainable.load_state_dict(plain.state_dict())
    out = trainable.eval()(x)
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), g)
    assert cfglib.EncoderConfig().center is False


def test_fuse_feature_levels_keeps_order_and_size():
    a, b = torch.randn(1, 2, 6, 6), torch.randn(1, 3, 3, 3)
    out = fuse_feature_levels([b, a])
    assert out.shape == (1, 5, 6, 6)
    assert torch.equal(out[:, 3:], a)


def test_cnn_encoder_errors_name_the_problem():
    with pytest.raises(ValueError, match="layer"):
        FeatureMapEncoder("resnet10t", out_indices=[1], layer=0)
    with pytest.raises(ValueError, match="feature levels"):
        FeatureMapEncoder("resnet10t", out_indices=[9])


# ------------------------------------------------------------------------------------ the loop
def pretrain_config(root, run_dir, extra=()):
    """The tiny test config with a tiny CNN encoder and tiny pretraining settings."""
    d = tiny_dict(os.path.join(root, "syn"))
    d["model"]["encoder"] = dict(TINY_CNN)
    d["pretrain"] = {"source_size": 32, "global_size": 32, "local_size": 16, "local_crops": 2,
                     "out_dim": 32, "dense_out_dim": 16, "hidden_dim": 16,
                     "dense_hidden_dim": 16, "bottleneck_dim": 8, "cache_dir": None,
                     "probe_fit_images": 16, "checkpoint_every": 2, "probe_every": 2}
    d["train"].update({"batch_size": 8, "max_steps": 4, "grad_clip": 3.0,
                       "scheduler": {"name": "cosine", "warmup_epochs": 0.25}})
    d["experiment"]["run_dir"] = run_dir
    path = os.path.join(os.path.dirname(run_dir), "pretrain_tiny.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(d, f)
    return cfglib.load_config(path, list(extra))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_root(tmp_path_factory)


def test_pretraining_resume_is_exact_and_probe_selects_best(root, tmp_path):
    from partformer.pretrain.trainer import Pretrainer
    straight = Pretrainer(pretrain_config(root, str(tmp_path / "a")), str(tmp_path / "a"),
                          verbose=False)
    initial = {k: v.clone() for k, v in straight.teacher.state_dict().items()}
    straight.fit()
    straight.close()
    half = Pretrainer(pretrain_config(root, str(tmp_path / "b")), str(tmp_path / "b"),
                      verbose=False)
    half.fit(until=2)                       # as if killed after the step-2 checkpoint
    half.close()
    resumed = Pretrainer(pretrain_config(root, str(tmp_path / "b")), str(tmp_path / "b"),
                         resume=str(tmp_path / "b"), verbose=False)
    assert resumed.step == 2
    resumed.fit()
    resumed.close()
    for x, y in zip(straight.teacher.state_dict().values(), resumed.teacher.state_dict().values()):
        assert torch.equal(x, y)
    for x, y in zip(straight.student.state_dict().values(), resumed.student.state_dict().values()):
        assert torch.equal(x, y)
    # the teacher moved away from its initial weights (the loop did something)
    key = next(k for k in initial if k.endswith("weight") and initial[k].dim() == 4)
    assert not torch.equal(straight.teacher.state_dict()[key], initial[key])
    steps = [h["step"] for h in straight.history]
    assert steps == [0, 2, 4]
    assert 0 <= straight.history[0]["linear_bal_acc"] <= 100      # the linear probe ran too
    best = max(straight.history, key=lambda h: h["px_nmi_with_bg"])   # pretrain.select_metric
    assert straight.best_step == best["step"]
    assert os.path.isfile(tmp_path / "a" / "best.pt") and os.path.isfile(tmp_path / "a" / "last.pt")
    assert resumed.history == straight.history


def test_export_loads_as_a_frozen_encoder_with_the_teachers_features(root, tmp_path):
    from safetensors import safe_open
    from partformer.pretrain.trainer import Pretrainer, export_encoder
    tr = Pretrainer(pretrain_config(root, str(tmp_path / "r"), ["train.max_steps=2",
                                                                 "pretrain.probe_every=0"]),
                    str(tmp_path / "r"), verbose=False)
    tr.fit()
    tr.close()
    out = str(tmp_path / "enc.safetensors")
    meta = export_encoder(str(tmp_path / "r" / "last.pt"), out)
    assert meta["step"] == "2" and meta["objective"] == "dino_dense"
    with safe_open(out, "pt") as f:
        assert f.metadata()["format"] == "partformer-encoder-1"
    enc = FeatureMapEncoder("resnet10t", weights=out, out_indices=[1, 2],
                            **TINY_CNN["kwargs"])
    teacher = tr.teacher.backbone.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(enc(x), teacher(x), atol=1e-6)


def test_pretraining_rejects_bad_settings(root, tmp_path):
    from partformer.config import ConfigError
    from partformer.pretrain.trainer import Pretrainer
    with pytest.raises(ConfigError, match="pretrain.objective"):
        pretrain_config(root, str(tmp_path / "x"), ["pretrain.objective=simclr"])
    with pytest.raises(ConfigError, match="pretrain.global_crops"):
        pretrain_config(root, str(tmp_path / "x"), ["pretrain.global_crops=1"])
    with pytest.raises(ConfigError, match="photometric"):
        Pretrainer(pretrain_config(root, str(tmp_path / "y"), ["pretrain.photometric={hue: 1}"]),
                   verbose=False)
    with pytest.raises(ValueError, match="benchmark's own seed"):
        Pretrainer(pretrain_config(root, str(tmp_path / "z"), ["pretrain.extra_synthetic=4",
                                                               "pretrain.extra_seed=0"]),
                   verbose=False)


def test_encoder_weights_load_by_registered_name(root, tmp_path, monkeypatch):
    """``model.encoder.weights: <name>`` finds ``kind: encoder`` entries of a weights index (the
    shipped encoder is found this way); a model entry of that name is not an encoder, and a
    changed file fails its sha256 check."""
    from partformer.fileio import sha256_file
    from partformer.hub import ENV_PATH
    src = FeatureMapEncoder("resnet10t", out_indices=[1, 2], **TINY_CNN["kwargs"])
    from safetensors.torch import save_file
    save_file(src.model.state_dict(), str(tmp_path / "enc.safetensors"))
    digest = sha256_file(str(tmp_path / "enc.safetensors"))
    (tmp_path / "index.yaml").write_text(
        f"tiny_enc:\n  kind: encoder\n  file: enc.safetensors\n  sha256: {digest}\n"
        f"tiny_model:\n  file: enc.safetensors\n")
    monkeypatch.setenv(ENV_PATH, str(tmp_path))
    enc = FeatureMapEncoder("resnet10t", weights="tiny_enc", out_indices=[1, 2],
                            **TINY_CNN["kwargs"])
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(enc(x), src.eval()(x))
    with pytest.raises(FileNotFoundError, match="encoder weights 'tiny_model'"):
        FeatureMapEncoder("resnet10t", weights="tiny_model", out_indices=[1, 2],
                          **TINY_CNN["kwargs"])
    with open(tmp_path / "enc.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(FileNotFoundError, match="sha256"):
        FeatureMapEncoder("resnet10t", weights="tiny_enc", out_indices=[1, 2],
                          **TINY_CNN["kwargs"])


def test_sigterm_stops_between_steps_and_resume_continues_exactly(root, tmp_path):
    """tools/pretrain.py in its own process, stopped with SIGTERM (what schedulers send): it
    finishes the step it is in, saves last.pt there, exits with 130 and one line; resuming from
    it gives the weights of an uninterrupted run."""
    import signal
    from partformer.pretrain.trainer import Pretrainer
    from tests.tiny import interrupt_tool
    run = str(tmp_path / "run")
    cfg_path = os.path.join(os.path.dirname(run), "pretrain_tiny.yaml")
    overrides = ["train.max_steps=1000", "pretrain.probe_every=0", "train.log_every=1",
                 "train.threads=1"]           # one thread everywhere: the same float rounding
    pretrain_config(root, run, overrides)                                # writes cfg_path
    step = interrupt_tool("pretrain.py", ["--config", cfg_path, *overrides], run,
                          signal.SIGTERM, env={"OMP_NUM_THREADS": "1"})
    metrics = tmp_path / "run" / "metrics.jsonl"
    ckpt = load_checkpoint(os.path.join(run, "last.pt"))
    assert step >= 2 and ckpt["step"] == step
    # each logged step once, up to the checkpoint
    rows = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert rows == list(range(1, step + 1))

    threads = torch.get_num_threads()
    try:
        resumed = Pretrainer(pretrain_config(root, run, overrides), run, resume=run,
                             verbose=False)
        resumed.fit(until=step + 2)
        resumed.close()
        straight = Pretrainer(pretrain_config(root, str(tmp_path / "s"), overrides),
                              str(tmp_path / "s"), verbose=False)
        straight.fit(until=step + 2)
        straight.close()
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(straight.teacher.state_dict().values(), resumed.teacher.state_dict().values()):
        assert torch.equal(x, y)
    rows = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert rows == list(range(1, step + 3))


def test_nested_crops_are_centred_inside_the_first_and_stay_in_the_source():
    g = torch.Generator().manual_seed(3)
    first = C.sample_boxes(400, C.CropSpec(1, 16, (0.05, 0.2)), g)
    inner = C.sample_boxes(400, C.CropSpec(1, 8, (0.01, 0.05)), g, within=first)
    w, h = inner[:, 0, 0].abs(), inner[:, 1, 1]
    assert ((inner[:, 0, 2].abs() + w) <= 1 + 1e-6).all()
    assert ((inner[:, 1, 2].abs() + h) <= 1 + 1e-6).all()
    # the centre lies inside the first box (up to the shift that keeps the box in the source)
    dx = (inner[:, 0, 2] - first[:, 0, 2]).abs()
    dy = (inner[:, 1, 2] - first[:, 1, 2]).abs()
    assert (dx <= first[:, 0, 0].abs() + 1e-6).all() and (dy <= first[:, 1, 1] + 1e-6).all()
    # unconstrained centres of boxes this small spread over the whole source instead
    free = C.sample_boxes(400, C.CropSpec(1, 8, (0.01, 0.05)), g)
    assert ((free[:, 0, 2] - first[:, 0, 2]).abs() > first[:, 0, 0].abs()).float().mean() > 0.5


def test_logged_means_after_a_resume_divide_by_the_steps_actually_run(root, tmp_path):
    """Resumed at step 3 with log_every 4, the row logged at step 4 averages one step, not four
    (it used to divide by log_every: the EMA momentum read ~0.25 instead of ~0.99)."""
    import json
    from partformer.pretrain.trainer import Pretrainer
    extra = ["train.log_every=4", "pretrain.checkpoint_every=1", "pretrain.probe_every=0"]
    run = str(tmp_path / "r")
    first = Pretrainer(pretrain_config(root, run, extra), run, verbose=False)
    first.fit(until=3)
    first.close()
    resumed = Pretrainer(pretrain_config(root, run, extra), run, resume=run, verbose=False)
    resumed.fit()
    resumed.close()
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"pretrain/ema"' in line]
    assert [r["step"] for r in rows] == [4]
    assert 0.99 <= rows[0]["pretrain/ema"] <= 1.0


def test_cell_labels_take_the_majority_and_ignore_padding():
    from partformer.pretrain.probe import cell_labels
    m = torch.zeros(4, 4, dtype=torch.long)
    m[:2, :2] = 3                       # top-left cell all part 3
    m[:2, 2:] = torch.tensor([[1, 1], [1, 2]])   # top-right: 3 of 4 pixels part 1
    m[2:, 2:] = -1                      # bottom-right: padding
    m[2, 0] = 2                         # bottom-left: 3 background, 1 part 2
    assert cell_labels(m, (2, 2), 3).tolist() == [[3, 1], [0, -1]]


def test_linear_probe_separates_features_that_carry_the_labels_from_random_ones():
    from partformer.pretrain.probe import cell_labels, linear_probe
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(12):
        mask = torch.randint(0, 4, (4, 4), generator=g).repeat_interleave(4, 0).repeat_interleave(4, 1)
        samples.append({"image": (mask.float() / 10).expand(3, -1, -1).clone(), "part_mask": mask})

    def informative(images):                      # one-hot of the label + a per-image offset
        ids = (images[:, 0] * 10).round().long()
        f = F.one_hot(ids, 4).permute(0, 3, 1, 2).float()
        f = F.avg_pool2d(f, 4)
        return F.normalize(f + 0.3 * torch.randn(f.shape[0], 4, 1, 1, generator=g), dim=1)

    def uninformative(images):
        return F.normalize(torch.randn(images.shape[0], 4, 4, 4, generator=g), dim=1)

    good = linear_probe(informative, samples, num_classes=3)
    bad = linear_probe(uninformative, samples, num_classes=3)
    assert good["linear_bal_acc"] > 95 and good["linear_fg_bal_acc"] > 95
    assert bad["linear_bal_acc"] < 50                 # chance: 25
    # no part masks -> no linear probe
    assert linear_probe(informative, [{"image": samples[0]["image"]}] * 3, 3) == {}
    assert cell_labels(samples[0]["part_mask"], (4, 4), 3).shape == (4, 4)


def test_image_bank_of_several_levels(root, tmp_path):
    """pretrain.extra_data adds other trees' training splits (e.g. other levels), and
    pretrain.extra_levels renders extra_synthetic images of each level, level i under seed
    extra_seed + i; no extra seed may be a level's or a tree's seed."""
    import numpy as np

    from partformer.data.synthetic import level_config, render_index
    from partformer.pretrain.data import build_image_bank
    gen = {"num_train": 5, "num_val": 2, "num_test": 2, "image_size": 32}
    other = {"root": str(tmp_path / "clean"),
             "options": {"generator": {"level": "clean", **gen}}}
    cfg = pretrain_config(root, str(tmp_path / "run"), [
        f"pretrain.extra_data=[{json.dumps(other)}]", "pretrain.extra_synthetic=3",
        "pretrain.extra_levels=[clean, cluttered]", "pretrain.extra_seed=2000"])
    bank = build_image_bank(cfg)
    n_main = GENERATOR["num_train"]
    assert bank.shape == (n_main + 5 + 2 * 3, 32, 32, 3) and bank.dtype == torch.uint8
    clean0 = render_index(level_config("clean", **gen), 0)["image"]          # the extra tree
    assert np.abs(bank[n_main].numpy().astype(int) - clean0).mean() < 6     # (via its JPEG)
    for i, (name, seed) in enumerate((("clean", 2000), ("cluttered", 2001))):
        want = render_index(level_config(name, seed=seed, image_size=32), 1)["image"]
        assert np.array_equal(bank[n_main + 5 + 3 * i + 1].numpy(), want)
    for bad in (["pretrain.extra_seed=100"], ["pretrain.extra_seed=99",
                                               "pretrain.extra_levels=[clean, rigid]"]):
        with pytest.raises(ValueError, match="benchmark's own seed of level 'clean'|level 'rigid'"):
            build_image_bank(pretrain_config(root, str(tmp_path / "x"), [
                "pretrain.extra_synthetic=2", "pretrain.extra_levels=[clean]", *bad]))
    with pytest.raises(ValueError, match="unknown synthetic level"):
        build_image_bank(pretrain_config(root, str(tmp_path / "y"), [
            "pretrain.extra_synthetic=2", "pretrain.extra_levels=[hard]"]))
    from partformer.config import ConfigError
    with pytest.raises(ConfigError, match="rot"):
        build_image_bank(pretrain_config(root, str(tmp_path / "z"), [
            'pretrain.extra_data=[{"rot": "x"}]']))


def test_levels_pretraining_config_resolves():
    """configs/pretrain/synthetic_levels.yaml: every level's training split once, extra images of
    every level under seeds that no level uses, 128 px throughout."""
    from partformer.data.synthetic import generator_config, level_config, level_names
    from partformer.pretrain.data import _synthetic_seeds, extra_data_config
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs", "pretrain", "synthetic_levels.yaml")
    cfg = cfglib.load_config(path, [])
    p = cfg.pretrain
    sources = [cfg.data] + [extra_data_config(cfg.data, e, i) for i, e in enumerate(p.extra_data)]
    levels = [generator_config(d.options["generator"])[0] for d in sources]
    assert sorted(c.seed for c in levels) == sorted(level_config(n).seed for n in level_names())
    assert len({d.root for d in sources}) == len(sources)
    assert list(p.extra_levels) == list(level_names()) and p.extra_synthetic > 0
    seeds = {p.extra_seed + i for i in range(len(p.extra_levels))}
    assert not seeds & set(_synthetic_seeds(sources))
    assert p.source_size == p.global_size == cfg.data.image_size == 128
