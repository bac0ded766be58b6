"""The speed harness (partformer/engine/profiling.py, tools/benchmark.py) on the tiny CPU config:
what it reports is consistent with what it measured. Speeds themselves are never asserted."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from partformer.cli import benchmark_main
from partformer.engine.profiling import RandomAnnotatedImages, StageTimer, profile, summary

from tests.tiny import shared_root, tiny_config, tiny_yaml


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_root(tmp_path_factory)


def test_summary_statistics():
    s = summary([4.0, 1.0, 3.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 4.0, 4)
    assert s["iqr"] == pytest.approx(np.percentile([1, 2, 3, 4], 75) - np.percentile([1, 2, 3, 4], 25))
    assert summary([])["n"] == 0


def test_stage_timer_records_each_occurrence():
    t = StageTimer(torch.device("cpu"))
    for _ in range(3):
        with t.stage("a"):
            pass
    with t.stage("b"):
        sum(range(1000))
    assert len(t.times["a"]) == 3 and len(t.times["b"]) == 1
    assert all(v >= 0 for v in t.times["a"])


def test_profile_reports_what_it_measured(root, tmp_path):
    cfg = tiny_config(root, [f"data.cache={tmp_path / 'cache'}"])
    res = profile(cfg, torch.device("cpu"), reps=2, warmup=1, eval_batches=1, data_batches=2)
    t = res["train"]
    steps, floors = t["step_s"]["values"], t["floor_s"]["values"]
    assert len(steps) == len(floors) == 2
    ratios = [s / f for s, f in zip(steps, floors)]
    assert t["step_over_floor"]["median"] == pytest.approx(float(np.median(ratios)))
    assert t["flops"]["step"] > t["flops"]["floor"] > 0
    assert t["flops"]["step_over_floor"] == pytest.approx(t["flops"]["step"] / t["flops"]["floor"])
    assert t["params_trainable"] <= t["params_total"]
    e = res["eval"]
    assert e["source"].startswith("synthetic val split")
    assert {"kp_nmi_with_bg", "kp_ari_fg_only"} <= set(e["protocols"])
    assert e["predict_s"]["n"] == e["metrics_s"]["n"] == e["data_s"]["n"] == 1
    m, p, d = (e[k]["median"] for k in ("metrics_s", "predict_s", "data_s"))
    assert e["metrics_share"] == pytest.approx(m / (m + p + d))
    d = res["data"]
    assert d["decode"]["batch_s"]["n"] == 2 and d["decode"]["images_per_s"] > 0
    assert d["cache"]["build_s"] > 0 and d["cache"]["images_per_s"] > 0
    assert res["environment"]["torch"] == torch.__version__
    assert res["config"]["batch_size"] == cfg.train.batch_size
    # a second profile finds the cache built
    again = profile(cfg, torch.device("cpu"), parts=["data"], data_batches=1)
    assert again["data"]["cache"]["build_s"] is None and "train" not in again


def test_without_the_dataset_evaluation_uses_random_annotated_images(root, tmp_path):
    cfg = tiny_config(root)
    cfg.data = dataclasses.replace(cfg.data, name="cub", root=str(tmp_path / "no_cub"), options={})
    res = profile(cfg, torch.device("cpu"), parts=["eval", "data"], eval_batches=1)
    assert res["eval"]["source"].startswith("random images")
    # every accumulating protocol family runs on them
    assert {"kp_nmi_with_bg", "px_nmi_with_bg", "part_miou_hungarian", "fg_iou"} <= \
        set(res["eval"]["protocols"])
    assert "not on disk" in res["data"]["skipped"]
    sample = RandomAnnotatedImages(3, 16)[1]
    assert torch.equal(sample["image"], RandomAnnotatedImages(3, 16)[1]["image"])  # deterministic
    assert sample["keypoints"].shape == (15, 2) and sample["part_mask"].shape == (16, 16)


def test_benchmark_cli_prints_the_ratio_and_writes_json(root, tmp_path, capsys):
    out = tmp_path / "bench" / "b.json"
    assert benchmark_main(["--config", tiny_yaml(root), "--parts", "train", "--reps", "1",
                           "--warmup", "0", "--batch-size", "4", "--no-flops",
                           "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "step / floor" in printed and "FLOPs" not in printed
    res = json.loads(out.read_text())
    assert res["config"]["batch_size"] == 4 and set(res) >= {"environment", "train"}
    assert "eval" not in res and "flops" not in res["train"]
    with pytest.raises(SystemExit) as exit_info:     # a usage error: argparse's status 2
        benchmark_main(["--config", tiny_yaml(root), "--parts", "speed"])
    assert exit_info.value.code == 2
    assert "unknown parts ['speed']" in capsys.readouterr().err


def test_precisions_side_by_side_report_what_they_measured(root, tmp_path, capsys):
    """tools/benchmark.py --precisions fp32,bf16: per precision the step, the floor, the GEMM
    peak measured in the same run, the evaluation batch and the pretraining step; the derived
    numbers (speed-ups, GFLOP/s, share of the peak) are those of the measured times."""
    from tests.test_pretrain import pretrain_config
    pre = pretrain_config(root, str(tmp_path / "pre"))
    pre_yaml = tmp_path / "pre.yaml"
    from partformer import config as cfglib
    cfglib.save_config(pre, str(pre_yaml), "pretrain")
    out = tmp_path / "bench.json"
    assert benchmark_main(["--config", tiny_yaml(root), "--precisions", "fp32,bf16", "--reps", "2",
                           "--warmup", "0", "--eval-batches", "1", "--parts", "train,eval",
                           "--pretrain-config", str(pre_yaml), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GEMM peak GFLOP/s (same run)" in printed and "speed-up of pretraining" in printed
    res = json.load(open(out))
    assert res["precisions"] == ["fp32", "bf16"] and res["flops"]["step"] > res["flops"]["floor"] > 0
    for p in ("fp32", "bf16"):
        r = res[p]
        assert r["step"]["n"] == r["floor"]["n"] == r["gemm"]["n"] == 2
        assert r["step_gflops"] == pytest.approx(res["flops"]["step"] / r["step"]["median"] / 1e9)
        assert r["gemm_peak_gflops"] == pytest.approx(2 * 2048 ** 3 / r["gemm"]["median"] / 1e9)
        assert r["step_share_of_gemm_peak"] == pytest.approx(r["step_gflops"] / r["gemm_peak_gflops"])
        assert r["pretrain"]["step_s"]["n"] == 2 and r["pretrain"]["images_per_s"] > 0
        assert r["eval_predict_s"]["n"] >= 1
    assert res["fp32"]["speedup_step"] == pytest.approx(1.0)
    assert res["bf16"]["speedup_step"] == pytest.approx(
        res["fp32"]["step"]["median"] / res["bf16"]["step"]["median"])
