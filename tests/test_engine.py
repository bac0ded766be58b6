"""Tests of the training engine (partformer/engine/{trainer,checkpoint,evaluator}.py) on the tiny
CPU config of tests/tiny.py: the loss goes down, an interrupted and resumed run is bit-identical to
an uninterrupted one, checkpoints are atomic and strict, non-finite losses are skipped and then
stop the run without touching the last good checkpoint, gradient accumulation is exact."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml

from partformer import config as cfglib
from partformer.engine.checkpoint import (CheckpointError, all_finite, atomic_torch_save,
                                          load_checkpoint, load_state_dict_strict)
from partformer.engine.evaluator import evaluate
from partformer.engine.optim import lr_factor
from partformer.engine.trainer import NonFiniteLossError, Trainer
from partformer.hub import config_from_checkpoint

from tests.tiny import predictor_of, shared_root, tiny_config


NO_AUG = ["augment.flip_p=0", "augment.rot_std=0", "augment.scale_std=0", "augment.trans_std=0"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_root(tmp_path_factory)


def make(root, run_dir, overrides=(), resume=None) -> Trainer:
    cfg = tiny_config(root, list(overrides))
    return Trainer(cfg, run_dir=str(run_dir), resume=str(resume) if resume else None,
                   verbose=False)


def fit(root, run_dir, overrides=(), resume=None) -> Trainer:
    tr = make(root, run_dir, overrides, resume)
    try:
        tr.fit()
    finally:
        tr.close()
    return tr


def metrics_rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a, b) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def file_state(path):
    with open(path, "rb") as f:
        return f.read(), os.stat(path).st_mtime_ns


# ------------------------------------------------------------------------------ training
def test_loss_decreases(root, tmp_path):
    run = tmp_path / "run"
    tr = fit(root, run, ["train.max_steps=40", "data.val_split=null"])
    assert tr.step == 40 and tr.epoch == 5          # 64 images / batch 8 = 8 steps per epoch
    totals = [r["train/total"] for r in metrics_rows(run) if "train/total" in r]
    assert len(totals) == 40                        # log_every = 1
    assert all(torch.isfinite(torch.tensor(totals)))
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert not os.path.exists(run / "best.pt")      # no validation split: no model selection
    assert os.path.isfile(run / "last.pt")


@pytest.mark.parametrize("accum,n", [(1, 20), (2, 10)])
def test_resume_is_bit_identical(root, tmp_path, accum, n):
    """N steps straight == N/2 steps, then a new Trainer resumed to N (N/2 falls mid-epoch, the
    learning rate drops at the end of epoch 1, and the runs cross epoch boundaries)."""
    base = ["train.scheduler.name=multistep", "train.scheduler.milestones=[1]",
            "train.scheduler.gamma=0.5", f"train.grad_accum={accum}", "train.grad_clip=1.0"]
    straight = fit(root, tmp_path / "a", base + [f"train.max_steps={n}"])
    half = fit(root, tmp_path / "b", base + [f"train.max_steps={n // 2}"])
    assert half.step == n // 2
    assert 0 < half.micro_in_epoch < half.micro_per_epoch   # stopped in the middle of an epoch
    ckpt = load_checkpoint(str(tmp_path / "b" / "last.pt"))
    assert ckpt["step"] == n // 2 and ckpt["micro_in_epoch"] == half.micro_in_epoch
    resumed = fit(root, tmp_path / "b", base + [f"train.max_steps={n}"], resume=tmp_path / "b")
    assert resumed.step == straight.step == n
    assert (resumed.epoch, resumed.micro_in_epoch) == (straight.epoch, straight.micro_in_epoch)
    assert same_weights(straight.model.state_dict(), resumed.model.state_dict())
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k][name], sb[k][name])
    assert straight.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # after the milestone


def test_resume_of_finished_run_does_nothing(root, tmp_path):
    run = tmp_path / "run"
    done = fit(root, run, ["train.max_steps=3", "data.val_split=null"])
    again = fit(root, run, ["train.max_steps=3", "data.val_split=null"], resume=run / "last.pt")
    assert again.step == 3
    assert same_weights(done.model.state_dict(), again.model.state_dict())


def test_incomplete_accumulation_group_is_dropped(root, tmp_path):
    """8 micro-batches per epoch with grad_accum=3: each optimiser step uses exactly 3 micro-batches
    of one epoch (the 2 left over are dropped, not carried into the next epoch's first step)."""
    tr = make(root, tmp_path / "run", ["train.grad_accum=3", "train.max_steps=3",
                                       "data.val_split=null"])
    assert tr.steps_per_epoch == 2 and tr.micro_per_epoch == 6
    seen, groups = [], []
    orig = tr.train_step_losses

    def spy(images, micro_index):
        seen.append(micro_index)
        return orig(images, micro_index)

    tr.train_step_losses = spy
    tr.optimizer.register_step_pre_hook(lambda *a: groups.append(list(seen)) or seen.clear())
    tr.fit()
    tr.close()
    assert groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(ValueError, match="grad_accum"):
        make(root, tmp_path / "run2", ["train.grad_accum=9"])


def test_grad_accumulation_matches_big_batch(root, tmp_path):
    """batch 4 x grad_accum 2 == batch 8 for one step (compress=single: no BatchNorm, whose batch
    statistics would differ between micro-batches; no augmentation, whose draws depend on the
    micro-batch)."""
    def one_step(bs, accum, run):
        tr = make(root, run, ["partformer.compress=single", f"train.batch_size={bs}",
                              f"train.grad_accum={accum}", "train.max_steps=1",
                              "data.val_split=null"] + NO_AUG)
        grads = {}

        def grab(*_):
            for name, p in tr.model.named_parameters():
                if p.grad is not None:
                    grads[name] = p.grad.detach().clone()

        tr.optimizer.register_step_pre_hook(grab)
        before = snapshot(tr.model)
        tr.fit()
        tr.close()
        return before, grads, snapshot(tr.model)

    b1, g1, w1 = one_step(8, 1, tmp_path / "big")
    b2, g2, w2 = one_step(4, 2, tmp_path / "accum")
    assert same_weights(b1, b2)
    assert g1.keys() == g2.keys() and len(g1) > 10
    assert max(g.abs().max().item() for g in g1.values()) > 1e-3   # not trivially zero
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], atol=1e-5, rtol=1e-4, msg=k)
    assert not same_weights(b1, w1)
    # the updates agree too; Adam divides by sqrt(v), so where a gradient is ~0 a rounding-level
    # difference can change that entry's update a lot: compare update directions per tensor
    for k in w1:
        u1, u2 = (w1[k] - b1[k]).flatten().double(), (w2[k] - b2[k]).flatten().double()
        if u1.norm() > 0:
            assert torch.nn.functional.cosine_similarity(u1, u2, dim=0) > 0.99, k


def test_lr_schedules():
    from partformer.config import SchedulerConfig
    ms = lr_factor(SchedulerConfig(name="multistep", milestones=[2, 3], gamma=0.1), 1.0, 10, 50)
    assert [ms(s) for s in (0, 19, 20, 29, 30, 49)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    st = lr_factor(SchedulerConfig(name="step", step_size=2, gamma=0.5), 1.0, 10, 100)
    assert [st(s) for s in (0, 19, 20, 39, 40)] == pytest.approx([1, 1, 0.5, 0.5, 0.25])
    wu = lr_factor(SchedulerConfig(name="constant", warmup_epochs=0.5), 1.0, 10, 50)
    assert [wu(s) for s in (0, 4, 5, 40)] == pytest.approx([0.2, 1.0, 1.0, 1.0])
    # min_lr is an absolute learning rate (DINO, timm): lr 0.5, min_lr 0.05 -> factor 0.1
    cos = lr_factor(SchedulerConfig(name="cosine", min_lr=0.05), 0.5, 10, 50)
    assert cos(0) == pytest.approx(1.0) and cos(25) == pytest.approx(0.55)
    assert cos(50) == pytest.approx(0.1)
    bad = lr_factor(SchedulerConfig(name="linear"), 1.0, 10, 50)
    with pytest.raises(ValueError, match="scheduler.name"):
        bad(0)


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_files(root, tmp_path):
    run = tmp_path / "run"
    tr = fit(root, run, ["train.max_steps=12"])      # validations at step 8 (epoch end) and 12
    files = sorted(os.listdir(run))
    assert "last.pt" in files and "best.pt" in files and "config.yaml" in files
    assert not [f for f in files if ".tmp" in f], files
    assert tr.val_set.split == "val" and len(tr.val_set) == 16   # selection on val, not test

    vals = [(r["step"], r["val/kp_nmi_with_bg"]) for r in metrics_rows(run)
            if "val/kp_nmi_with_bg" in r]
    assert [s for s, _ in vals] == [8, 12]
    best_step, best_value = max(vals, key=lambda sv: (sv[1], -sv[0]))   # first maximum wins
    best = load_checkpoint(str(run / "best.pt"))
    last = load_checkpoint(str(run / "last.pt"))
    assert best["step"] == best_step and best["best_value"] == pytest.approx(best_value)
    assert last["step"] == 12 and last["best_value"] == pytest.approx(best_value)
    assert same_weights(last["model"], tr.model.state_dict())
    # best.pt holds the weights that scored best_value on the validation split
    model = tr.model
    load_state_dict_strict(model, best["model"])
    res = evaluate(predictor_of(tr.cfg, model), tr.val_set, 4,
                   protocols=["kp_nmi_with_bg"], batch_size=16)
    assert res["kp_nmi_with_bg"]["value"] == pytest.approx(best_value, abs=1e-9)
    # the saved configs round-trip to the run's config
    assert cfglib.load_config(str(run / "config.yaml")) == tr.cfg
    assert cfglib.from_dict(yaml.safe_load(best["config"])) == tr.cfg
    assert config_from_checkpoint(str(run / "last.pt")) == tr.cfg
    assert config_from_checkpoint(str(run / "last.pt"), ["train.max_steps=20"]).train.max_steps \
        == 20
    for key in ("optimizer", "scheduler", "scaler", "rng", "epoch", "micro_in_epoch", "format"):
        assert key in last
    # the validation masks are written
    assert os.listdir(run / "masks")


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    atomic_torch_save({"a": torch.ones(3)}, path)
    before = file_state(path)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert file_state(path) == before
    assert os.listdir(tmp_path) == ["last.pt"]          # the temporary file is removed
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(3))


class Small(torch.nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.lin = torch.nn.Linear(n, 2)
        self.bn = torch.nn.BatchNorm1d(2)


def test_strict_loading_errors():
    m = Small()
    state = m.state_dict()
    load_state_dict_strict(Small(), state)          # the happy path

    missing = {k: v for k, v in state.items() if k != "lin.bias"}
    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(Small(), missing, source="ck.pt")
    assert "ck.pt" in str(e.value) and "missing keys (1): lin.bias" in str(e.value)

    extra = dict(state, **{"head.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(Small(), extra)
    assert "unexpected keys (1): head.weight" in str(e.value)

    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(Small(4), state)
    msg = str(e.value)
    assert "shape mismatches (1)" in msg and "lin.weight: checkpoint (2, 3) vs model (2, 4)" in msg
    assert "missing keys" not in msg


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage"])
def test_corrupt_checkpoint_is_a_readable_error(tmp_path, kind):
    good = str(tmp_path / "good.pt")
    torch.save({"model": Small().state_dict(), "step": 3}, good)
    with open(good, "rb") as f:
        data = f.read()
    bad = str(tmp_path / "bad.pt")
    with open(bad, "wb") as f:
        f.write({"truncated": data[: len(data) // 2], "empty": b"",
                 "garbage": b"not a checkpoint" * 10}[kind])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    assert bad in str(e.value) and "truncated, corrupt" in str(e.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    torch.save([1, 2], bad)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(bad)


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file
    state = Small().state_dict()
    path = str(tmp_path / "w.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    got = load_checkpoint(path)
    assert same_weights(got["model"], state)
    with open(path, "wb") as f:
        f.write(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(path)


def test_resume_errors(root, tmp_path):
    run = tmp_path / "run"
    tr = fit(root, run, ["train.max_steps=2", "data.val_split=null"])
    # a weights-only file (converted official checkpoint) is not a training checkpoint
    weights = str(tmp_path / "weights.pt")
    torch.save({"model": tr.model.state_dict()}, weights)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        make(root, tmp_path / "r1", resume=weights)
    # a truncated last.pt
    with open(run / "last.pt", "rb") as f:
        data = f.read()
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    with open(trunc / "last.pt", "wb") as f:
        f.write(data[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        make(root, tmp_path / "r2", resume=trunc)
    # another model size
    with pytest.raises(CheckpointError, match="shape mismatches"):
        make(root, tmp_path / "r3", ["model.num_parts=5"], resume=run)
    with pytest.raises(CheckpointError, match="not found"):
        make(root, tmp_path / "r4", resume=tmp_path / "nowhere")


# ------------------------------------------------------------------------------ non-finite losses
def nan_at(tr, bad_micro, record=None, where="loss"):
    """Make the total loss NaN at the given micro-batch indices (all when None), with NaN
    gradients as well. ``where="input"``: NaN images, so the forward pass itself (and the
    BatchNorm running statistics it updates) turns NaN."""
    orig = tr.train_step_losses

    def patched(batch, micro_index):
        if record is not None:
            record[micro_index] = snapshot(tr.model)
        bad = bad_micro is None or micro_index in bad_micro
        if bad and where == "input":
            batch = dict(batch, image=batch["image"] * float("nan"))
        losses = orig(batch, micro_index)
        if bad and where == "loss":
            losses = dict(losses, total=losses["total"] * float("nan"))
        return losses

    tr.train_step_losses = patched


@pytest.mark.parametrize("accum,where", [(1, "loss"), (2, "loss"), (1, "input"), (2, "input")])
def test_nonfinite_step_is_skipped(root, tmp_path, accum, where):
    """Weights AND buffers (BatchNorm running statistics) are unchanged across a skipped step."""
    tr = make(root, tmp_path / "run", [f"train.grad_accum={accum}", "train.max_steps=4",
                                       "train.max_nonfinite=3"])
    seen = {}
    bad = accum * 2 - 1            # the last micro-batch of step 2: the whole step is skipped
    nan_at(tr, {bad}, seen, where)
    summary = tr.fit()           # also saves last.pt and best.pt: refused if anything is NaN
    tr.close()
    assert tr.step == 4 and tr.nonfinite_total == 1 and summary["nonfinite_skipped"] == 1
    assert len(seen) == 5 * accum                       # one extra step's worth of micro-batches
    start_of = {s: s * accum for s in range(5)}         # micro index at which step s starts
    assert not same_weights(seen[start_of[0]], seen[start_of[1]])   # a good step moves weights
    assert same_weights(seen[start_of[1]], seen[start_of[2]])       # the skipped one does not
    assert not same_weights(seen[start_of[2]], seen[start_of[3]])   # training goes on after it
    assert all_finite(tr.model)
    assert any("train/nonfinite_skipped" in r for r in metrics_rows(tmp_path / "run"))


def test_nonfinite_streak_stops_and_keeps_last_checkpoint(root, tmp_path):
    run = tmp_path / "run"
    fit(root, run, ["train.max_steps=8"])               # one epoch: writes last.pt and best.pt
    last, best = file_state(run / "last.pt"), file_state(run / "best.pt")
    tr = make(root, run, ["train.max_steps=16", "train.max_nonfinite=3"], resume=run)
    seen = {}
    nan_at(tr, None, seen)                              # every loss from now on is NaN
    with pytest.raises(NonFiniteLossError, match="3 in a row") as e:
        tr.fit()
    tr.close()
    assert "last good checkpoint is untouched" in str(e.value)
    assert sorted(seen) == [8, 9, 10]                   # stopped right at the third bad step
    assert same_weights(seen[8], seen[10])
    assert file_state(run / "last.pt") == last
    assert file_state(run / "best.pt") == best
    assert not [f for f in os.listdir(run) if ".tmp" in f]


def test_save_refuses_nonfinite_weights(root, tmp_path):
    run = tmp_path / "run"
    tr = fit(root, run, ["train.max_steps=2", "data.val_split=null"])
    before = file_state(run / "last.pt")
    with torch.no_grad():
        next(tr.model.parameters()).view(-1)[0] = float("inf")
    assert not all_finite(tr.model)
    with pytest.raises(NonFiniteLossError, match="non-finite weights"):
        tr.save("last")
    assert file_state(run / "last.pt") == before


def test_train_set_smaller_than_batch(root, tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        make(root, tmp_path / "run", ["train.batch_size=128"])


def test_select_metric_must_exist(root, tmp_path):
    """A metric validation does not compute is refused before any training, naming the key and
    the metrics that exist (it used to fail at the first validation, after an epoch)."""
    with pytest.raises(cfglib.ConfigError, match=r"train\.select_metric='lm_error_iod' is not "
                                                 r"computed.*choose one of \['kp_nmi_with_bg'"):
        make(root, tmp_path / "run", ["train.max_steps=1", "train.select_metric=lm_error_iod"])
    assert not os.path.exists(tmp_path / "run" / "last.pt")


def test_run_dir_copy_is_independent(root, tmp_path):
    """A run directory moved elsewhere resumes from its own last.pt (no absolute paths needed)."""
    run = tmp_path / "run"
    fit(root, run, ["train.max_steps=3", "data.val_split=null"])
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    tr = fit(root, moved, ["train.max_steps=4", "data.val_split=null"], resume=moved)
    assert tr.step == 4
    assert load_checkpoint(str(run / "last.pt"))["step"] == 3


# ------------------------------------------------------------------------------ visualisation
def test_mask_grid_and_palette(tmp_path):
    from partformer import viz
    pal = viz.part_palette(25)
    assert pal.shape == (26, 3) and pal.dtype.name == "uint8"
    assert (pal[-1] == viz.BACKGROUND).all() and len({tuple(c) for c in pal[:25]}) == 25
    images = torch.rand(3, 3, 16, 12)
    labels = torch.zeros(3, 8, 6, dtype=torch.long)
    labels[:, :, 3:] = 4                                 # right half: background (K = 4)
    maps = torch.nn.functional.one_hot(labels, 5).permute(0, 3, 1, 2).float()
    gt = torch.zeros(3, 16, 12, dtype=torch.long)
    gt[:, :8] = 2
    grid = viz.mask_grid(images, maps, gt, max_items=2)
    assert grid.shape == (4 * 16, 2 * 12 + 2, 3) and grid.dtype.name == "uint8"
    parts = grid[32:48, :12]                             # third block: the argmax mask
    assert (parts[:, 6:] == viz.BACKGROUND).all()        # background drawn neutral grey
    assert (parts[:, :6] == pal[0]).all()
    overlay = grid[16:32, :12]
    img = np.rint(images[0].permute(1, 2, 0).numpy() * 255).astype("uint8")  # exact for uint8 input
    assert (overlay[:, 6:] == img[:, 6:]).all()          # background pixels untouched
    assert (grid[48:56, :12] == viz.PALETTE[1]).all()   # GT class 2 -> colour 1
    assert (grid[56:64, :12] == viz.BACKGROUND).all()    # GT background: grey
    assert viz.mask_grid(images, maps, max_items=8).shape == (3 * 16, 3 * 12 + 4, 3)
    path = str(tmp_path / "g.png")
    viz.save_png(path, grid)
    import cv2
    back = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    assert (back == grid).all()


def test_undecodable_training_image_is_skipped_and_counted(root, tmp_path):
    """data.skip_bad_images (training default): a broken file is dropped from its batch with a
    warning and counted in the summary; resume keeps the count."""
    copy = tmp_path / "tiny"
    shutil.copytree(os.path.join(root, "syn"), copy / "syn")
    shutil.copy(os.path.join(root, "tiny.yaml"), copy / "tiny.yaml")
    over = ["train.max_steps=8", "data.val_split=null", f"data.root={copy / 'syn'}"]
    tr = make(copy, tmp_path / "run", over)
    with open(tr.train_set.image_path(5), "wb") as f:
        f.write(b"this is not a jpeg")
    with pytest.warns(UserWarning, match="undecodable"):
        summary = tr.fit()
    tr.close()
    assert summary["skipped_images"] == 1 and tr.step == 8
    assert load_checkpoint(str(tmp_path / "run" / "last.pt"))["skipped_images"] == 1
