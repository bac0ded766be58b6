"""The ground-truth part-mask oracle (partformer/engine/oracle.py, tools/oracle.py)."""
import json
import os

import pytest
import torch

from partformer.engine.oracle import (best_grouping, identity_groups, part_groups,
                                      part_mask_oracle)


def test_groupings():
    assert part_groups(5, 5) == part_groups(5, 8) == [identity_groups(5)]
    assert identity_groups(3) == ((1,), (2,), (3,))
    # Stirling numbers of the second kind: S(5, 4) = 10, S(5, 2) = 15, S(4, 3) = 6, S(3, 1) = 1
    for C, K, n in ((5, 4, 10), (5, 2, 15), (4, 3, 6), (3, 1, 1)):
        gs = part_groups(C, K)
        assert len(gs) == len(set(gs)) == n
        for g in gs:
            assert len(g) == K and sorted(p for b in g for p in b) == list(range(1, C + 1))
    with pytest.raises(ValueError):
        part_groups(0, 4)


def test_part_mask_oracle_maps():
    m = torch.tensor([[[0, 1, 2], [3, 4, 5], [-1, 5, 1]]])
    maps = part_mask_oracle(4, ((1,), (2,), (3, 4), (5,)))({"part_mask": m})
    assert maps.shape == (1, 5, 3, 3)
    assert torch.equal(maps.sum(1), torch.ones(1, 3, 3))
    assert maps.argmax(1).tolist() == [[[4, 0, 1], [2, 2, 3], [4, 3, 0]]]   # background: K
    wide = part_mask_oracle(8, identity_groups(5))({"part_mask": m}).argmax(1)
    assert wide.tolist() == [[[8, 0, 1], [2, 3, 4], [8, 4, 0]]]
    with pytest.raises(ValueError):
        part_mask_oracle(2, identity_groups(3))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from partformer.data.synthetic import level_config, write_synthetic_cub
    root = str(tmp_path_factory.mktemp("oracle") / "t")
    write_synthetic_cub(root, level_config("clean", num_train=6, num_val=6, num_test=6,
                                           image_size=64))
    return root


def test_best_grouping_and_cli(tree, tmp_path):
    from partformer.data import build_dataset
    from partformer.config import load_config
    from partformer.cli import oracle_main
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    over = [f"data.root={tree}", "data.options.generator.level=clean",
            "data.options.generator.num_train=6", "data.options.generator.num_val=6",
            "data.options.generator.num_test=6", "data.options.generator.image_size=64",
            "eval.batch_size=4", "logging.progress=false"]
    cfg = load_config(os.path.join(repo, "configs", "default.yaml"), over)
    val = build_dataset(cfg.data, "val")
    best, scores = best_grouping(val, 4, 5)
    assert len(scores) == 10 and scores[best] == max(scores.values())
    out = str(tmp_path / "o8")
    assert oracle_main(["--config", os.path.join(repo, "configs", "default.yaml"), *over,
                        "model.num_parts=8", "--out", out]) == 0
    with open(os.path.join(out, "results_test.json")) as f:
        r8 = json.load(f)
    res = r8["results"]["gt_part_masks"]
    for name in ("px_nmi_with_bg", "part_miou_hungarian", "fg_iou"):
        assert res[name]["value"] == pytest.approx(100.0)
    assert r8["groups"] == [[1], [2], [3], [4], [5]]
    out = str(tmp_path / "o4")
    assert oracle_main(["--config", os.path.join(repo, "configs", "default.yaml"), *over,
                        "--out", out]) == 0
    with open(os.path.join(out, "results_test.json")) as f:
        r4 = json.load(f)
    assert r4["groups"] == [list(b) for b in best] and r4["chosen_on"] == "val"
    assert r4["results"]["gt_part_masks"]["fg_iou"]["value"] == pytest.approx(100.0)
    assert r4["results"]["gt_part_masks"]["part_miou_hungarian"]["value"] < 100.0
