"""Tests of the distributed code path (partformer/engine/distributed.py and its use by the trainer
and the evaluator): samplers as pure units, then 2 CPU processes (gloo, launched with
``torch.distributed.run`` on 127.0.0.1) that train the tiny config for a few steps and evaluate.

Checked: parameters stay identical on both ranks; evaluation under 2 processes merges its tables so
that every metric equals the single-process value on the same weights and data.

This file is also the worker script: ``python -m torch.distributed.run ... test_distributed.py
--worker ROOT OUT``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from partformer.engine.distributed import EvalSampler, TrainSampler  # noqa: E402

# the worker's training and evaluation settings (also used by the single-process reference).
# Evaluation runs image by image on one thread in both, so that every prediction is bit-identical
# whatever the split over ranks (batch composition and thread count change float rounding, which
# could flip an argmax); what is compared is then only how the metrics merge.
TRAIN = ["train.max_steps=3", "train.grad_accum=2", "train.grad_clip=1.0", "eval.batch_size=1"]
EVAL_BATCH = 1
EVAL_MAX_IMAGES = 15    # odd: the two ranks get 8 and 7 images


# ------------------------------------------------------------------------------ samplers
@pytest.mark.parametrize("n", [1, 2, 7, 15, 16, 33])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_eval_sampler_sees_every_index_once(n, world):
    shares = [list(EvalSampler(n, num_replicas=world, rank=r)) for r in range(world)]
    for r, share in enumerate(shares):
        assert len(share) == len(EvalSampler(n, num_replicas=world, rank=r))
    flat = sorted(i for s in shares for i in s)
    assert flat == list(range(n))                       # no padding, no dropping, no repeats
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_train_sampler_shares_and_epochs():
    n, world = 21, 2
    shares = [TrainSampler(n, num_replicas=world, rank=r, seed=5) for r in range(world)]
    for s in shares:
        s.set_epoch(0)
    a, b = (list(s) for s in shares)
    assert len(a) == len(b) == len(shares[0]) == 10      # trimmed to a multiple of the world size
    assert not set(a) & set(b)
    assert len(set(a) | set(b)) == 20
    again = TrainSampler(n, num_replicas=world, rank=0, seed=5)
    again.set_epoch(0)
    assert list(again) == a                              # reproducible from the seed
    again.set_epoch(1)
    assert list(again) != a and sorted(list(again)) != []  # reseeded per epoch
    other = TrainSampler(n, num_replicas=world, rank=0, seed=6)
    assert list(other) != a


@pytest.mark.parametrize("world,rank", [(1, 0), (2, 0), (2, 1), (3, 2)])
@pytest.mark.parametrize("skip", [0, 1, 4, 6])
def test_train_sampler_skip_resumes_mid_epoch(world, rank, skip):
    full = TrainSampler(20, num_replicas=world, rank=rank, seed=3)
    full.set_epoch(2)
    order = list(full)
    resumed = TrainSampler(20, num_replicas=world, rank=rank, seed=3)
    resumed.set_epoch(2, skip=skip)
    assert list(resumed) == order[skip:]
    assert len(resumed) == len(order) - skip
    resumed.set_epoch(3)                                 # the next epoch starts from the top
    full.set_epoch(3)
    assert list(resumed) == list(full)


def test_single_process_helpers_are_noops():
    from partformer.engine import distributed as D
    assert not D.is_distributed() and D.get_rank() == 0 and D.get_world_size() == 1
    assert D.is_main_process()
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert D.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert D.broadcast_object("x") == "x"
    assert D.init_distributed("cpu") == torch.device("cpu")
    D.barrier()
    D.cleanup()


# ------------------------------------------------------------------------------ 2 processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluate(model, root):
    """Every protocol of the tiny test split (regressors fitted on the train split)."""
    from partformer.data import build_dataset
    from partformer.engine.evaluator import evaluate
    from tests.tiny import predictor_of
    from tests.tiny import tiny_config
    cfg = tiny_config(root)
    test = build_dataset(cfg.data, "test")
    train = build_dataset(cfg.data, "train")
    res = evaluate(predictor_of(cfg, model), test, cfg.model.num_parts,
                   regressor_dataset=train, batch_size=EVAL_BATCH, max_images=EVAL_MAX_IMAGES)
    return {k: {"value": v["value"], "count": v["count"]} for k, v in res.items()}


def _worker(root: str, out: str) -> None:
    """Run under torch.distributed.run with 2 processes."""
    import torch.distributed as dist
    from partformer.engine import distributed as D
    from partformer.engine.trainer import Trainer
    from tests.tiny import tiny_config

    torch.set_num_threads(1)
    cfg = tiny_config(root, TRAIN)
    tr = Trainer(cfg, run_dir=os.path.join(out, "run"), verbose=False)
    assert dist.is_initialized() and dist.get_backend() == "gloo"
    assert tr.world == 2 and len(tr.sampler) == 32       # each rank trains on half the images
    tr.fit()
    tr.close()
    state = {k: v.detach().cpu() for k, v in tr.model.state_dict().items()}
    states = D.all_gather_objects(state)
    identical = all(torch.equal(states[0][k], states[1][k]) for k in state)
    # the sampler shares of one epoch are disjoint across ranks
    tr.sampler.set_epoch(0)
    shares = D.all_gather_objects(list(tr.sampler))
    res = _evaluate(tr.model, root)
    if D.is_main_process():
        with open(os.path.join(out, "dist.json"), "w") as f:
            json.dump({"world": dist.get_world_size(), "identical": identical,
                       "differ": [k for k in state if not torch.equal(states[0][k], states[1][k])],
                       "disjoint": not set(shares[0]) & set(shares[1]),
                       "step": tr.step, "results": res}, f)
    D.cleanup()


def _torchrun_two_workers(flag: str, root: str, out: str) -> None:
    """Run this file's ``flag`` worker (``--worker``, ``--pretrain-worker``) as 2 processes under
    torchrun on this machine (CPU, gloo) and require both to succeed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", WANDB_MODE="disabled",
               HF_HUB_OFFLINE="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           os.path.abspath(__file__), flag, root, out]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_two_processes_train_and_evaluate(tmp_path_factory):
    from tests.tiny import shared_root
    root = shared_root(tmp_path_factory)
    out = str(tmp_path_factory.mktemp("dist"))
    _torchrun_two_workers("--worker", root, out)
    with open(os.path.join(out, "dist.json")) as f:
        got = json.load(f)
    assert got["world"] == 2 and got["step"] == 3
    assert got["identical"], f"differ between ranks after DDP training: {got['differ']}"
    assert got["disjoint"]
    run = os.path.join(out, "run")
    assert os.path.isfile(os.path.join(run, "last.pt")) and os.path.isfile(
        os.path.join(run, "best.pt"))

    # single-process reference on the same weights (rank 0 wrote them to last.pt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_against_single_process(root, run, got)
    finally:
        torch.set_num_threads(threads)


def _check_against_single_process(root, run, got):
    from partformer.engine.checkpoint import load_checkpoint, load_state_dict_strict
    from partformer.methods import build_model
    from tests.tiny import tiny_config
    cfg = tiny_config(root, TRAIN)
    model = build_model(cfg)
    load_state_dict_strict(model, load_checkpoint(os.path.join(run, "last.pt"))["model"])
    ref = _evaluate(model, root)
    assert set(ref) == set(got["results"]) and "kp_error_huang" in ref and "fg_iou" in ref
    for name, r in ref.items():
        assert got["results"][name]["count"] == r["count"], name
        assert got["results"][name]["value"] == pytest.approx(r["value"], abs=1e-9,
                                                              nan_ok=True), name

    # the validation done by 2 processes during training selected best.pt with the value that
    # best.pt's weights score in a single process
    from partformer.data import build_dataset
    from partformer.engine.evaluator import evaluate
    from tests.tiny import predictor_of
    best = load_checkpoint(os.path.join(run, "best.pt"))
    load_state_dict_strict(model, best["model"])
    val = evaluate(predictor_of(cfg, model), build_dataset(cfg.data, "val"),
                   cfg.model.num_parts, protocols=[cfg.train.select_metric],
                   batch_size=cfg.eval.batch_size)
    assert val[cfg.train.select_metric]["value"] == pytest.approx(best["best_value"], abs=1e-9)


def _pretrain_worker(root: str, out: str) -> None:
    """tools/pretrain.py's loop under torch.distributed.run with 2 processes."""
    from partformer.engine import distributed as D
    from partformer.pretrain.trainer import Pretrainer
    from tests.test_pretrain import pretrain_config

    torch.set_num_threads(1)
    run = os.path.join(out, "run")
    cfg = pretrain_config(root, run, ["train.max_steps=2", "pretrain.probe_every=2"])
    tr = Pretrainer(cfg, run_dir=run, verbose=False)
    tr.fit()
    tr.close()
    gathered = D.all_gather_objects({
        "student": {k: v.detach().cpu() for k, v in tr.student.state_dict().items()},
        "teacher": {k: v.detach().cpu() for k, v in tr.teacher.state_dict().items()},
        "indices": tr.batch_indices(0).tolist(), "history": tr.history})
    if D.is_main_process():
        a, b = gathered
        same = {net: [k for k in a[net] if not torch.equal(a[net][k], b[net][k])]
                for net in ("student", "teacher")}
        with open(os.path.join(out, "pretrain.json"), "w") as f:
            json.dump({"differ": same, "indices": [a["indices"], b["indices"]],
                       "full": torch.randint(len(tr.bank), (cfg.train.batch_size,),
                                     generator=tr._generators(0)[0]).tolist(),
                       "histories_equal": a["history"] == b["history"], "step": tr.step}, f)
    D.cleanup()


def test_two_processes_pretrain(tmp_path_factory):
    """Pretraining under torchrun: the ranks split each global batch, and student, teacher (EMA,
    SyncBatchNorm statistics) and the probe's results stay identical on both ranks."""
    from tests.tiny import shared_root
    root = shared_root(tmp_path_factory)
    out = str(tmp_path_factory.mktemp("dist_pretrain"))
    _torchrun_two_workers("--pretrain-worker", root, out)
    with open(os.path.join(out, "pretrain.json")) as f:
        got = json.load(f)
    assert got["step"] == 2
    assert got["differ"] == {"student": [], "teacher": []}
    assert got["histories_equal"]
    r0, r1 = got["indices"]
    assert r0 == got["full"][0::2] and r1 == got["full"][1::2]
    assert os.path.isfile(os.path.join(out, "run", "last.pt"))


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], sys.argv[3])
if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--pretrain-worker":
    _pretrain_worker(sys.argv[2], sys.argv[3])
