"""The Hugging Face Hub (issue 16.11), offline end to end: save_pretrained folders (model-only
safetensors, config, a model card with the measured results), hf:// names read from a pre-filled
cache with HF_HUB_OFFLINE=1, from_pretrained, push_to_hub with the upload replaced by a local
copy. No test touches the network."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import partformer
from partformer.cli import eval_main, export_weights_main
from partformer.weights import WeightsError

from tests.hf_cache import fill_cache, use_cache
from tests.tiny import shared_root, tiny_checkpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_root(tmp_path_factory)


@pytest.fixture
def run(root, tmp_path):
    """A tiny run directory: best.pt (data.root = the shared tree) and a results_test.json."""
    shutil.copy(os.path.join(root, "tiny.yaml"), tmp_path / "tiny.yaml")
    os.symlink(os.path.join(root, "syn"), tmp_path / "syn")
    path, cfg, model = tiny_checkpoint(str(tmp_path))
    results = {"dataset": "synthetic", "split": "test", "num_images": 16, "protocol_version": 1,
               "results": {"partformer": {"kp_nmi_with_bg": {"value": 12.345, "count": 300},
                                          "fg_iou": {"value": 67.891, "count": 16384}}}}
    with open(os.path.join(os.path.dirname(path), "results_test.json"), "w") as f:
        json.dump(results, f)
    return path, cfg, model


def image():
    return np.random.default_rng(0).integers(0, 256, (37, 45, 3)).astype(np.uint8)


def test_save_pretrained_writes_model_config_and_card(run, tmp_path):
    path, cfg, model = run
    folder = tmp_path / "tiny-parts"
    assert partformer.save_pretrained(path, str(folder)) == str(folder)
    assert sorted(os.listdir(folder)) == ["README.md", "config.yaml", "model.safetensors"]
    state = load_file(str(folder / "model.safetensors"))
    assert set(state) == set(model.state_dict())            # the model only: no optimiser
    card = (folder / "README.md").read_text()
    for part in ("library_name: partformer", "`partformer` (unsupervised)", "K = 4",
                 "`synthetic`, split `train`", "| `kp_nmi_with_bg` | 12.35 |",
                 "| `fg_iou` | 67.89 |", "partformer.load(\"hf://tiny-parts\")", "```yaml\n"):
        assert part in card, part
    # the folder is a model name everywhere
    ref = partformer.load(path, device="cpu")(image()).maps
    assert torch.equal(partformer.load(str(folder), device="cpu")(image()).maps, ref)
    assert torch.equal(partformer.from_pretrained(str(folder), device="cpu")(image()).maps, ref)
    # nothing is replaced: an existing pretrained folder needs overwrite, a user's folder is refused
    with pytest.raises(WeightsError, match="overwrite=True"):
        partformer.save_pretrained(path, str(folder))
    partformer.save_pretrained(path, str(folder), overwrite=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(WeightsError, match="not a pretrained folder"):
        partformer.save_pretrained(path, str(mine), overwrite=True)
    assert os.listdir(mine) == ["notes.txt"]


def test_hf_name_from_a_prefilled_cache_offline(run, tmp_path, monkeypatch, capsys):
    path, cfg, _ = run
    folder = tmp_path / "export"
    assert export_weights_main(["--model", path, "--save-pretrained", str(folder)]) == 0
    cache = str(tmp_path / "hf")
    fill_cache(cache, "someone/tiny-parts",
               {f: str(folder / f) for f in ("model.safetensors", "config.yaml", "README.md")})
    use_cache(monkeypatch, cache)
    ref = partformer.load(path, device="cpu")(image()).maps
    p = partformer.load("hf://someone/tiny-parts", device="cpu")
    assert torch.equal(p(image()).maps, ref) and p.num_parts == cfg.model.num_parts
    assert torch.equal(partformer.from_pretrained("someone/tiny-parts", device="cpu")(
        image()).maps, ref)
    # a tool takes it with --model
    out = tmp_path / "eval"
    capsys.readouterr()
    assert eval_main(["--model", "hf://someone/tiny-parts", "--out", str(out), "--device", "cpu",
                      f"data.root={cfg.data.root}"]) == 0
    assert json.load(open(out / "results_test.json"))["model"].endswith("model.safetensors")
    # not in the cache, offline: one message naming the repository and the fix
    with pytest.raises(WeightsError, match=r"someone/other .*HF_HUB_OFFLINE=1.*save_pretrained"):
        partformer.load("hf://someone/other")
    capsys.readouterr()
    assert eval_main(["--model", "hf://someone/other", "--out", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the Hugging Face Hub model someone/other") and \
        "Traceback" not in err
    with pytest.raises(WeightsError, match="hf://<user>/<repo>"):
        partformer.load("hf://no-slash")


def test_push_to_hub_uploads_the_pretrained_folder(run, tmp_path, monkeypatch, capsys):
    """The upload is replaced by a copy into a local folder (what the Hub would hold); then
    that folder, put in the cache, loads by its hf:// name."""
    import huggingface_hub
    path, _, _ = run
    calls, hub_side = [], tmp_path / "hub_side"

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None, **kw):
        calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None,
                      revision=None, allow_patterns=None, **kw):
        calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path)), commit_message))
        shutil.copytree(folder_path, hub_side / repo_id)
        return "https://huggingface.co/someone/pushed/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = partformer.push_to_hub(path, "someone/pushed", private=True)
    assert url.endswith("/commit/0")
    assert calls[0] == ("create_repo", "someone/pushed", True, True)
    assert calls[1][:3] == ("upload_folder", "someone/pushed",
                            ["README.md", "config.yaml", "model.safetensors"])
    pushed = hub_side / "someone" / "pushed"
    assert "partformer.load(\"hf://someone/pushed\")" in (pushed / "README.md").read_text()
    assert export_weights_main(["--model", path, "--push-to-hub", "someone/pushed2"]) == 0
    assert "load with partformer.load('hf://someone/pushed2')" in capsys.readouterr().out
    cache = str(tmp_path / "hf")
    fill_cache(cache, "someone/pushed", {f: str(pushed / f) for f in os.listdir(pushed)})
    use_cache(monkeypatch, cache)
    assert torch.equal(partformer.load("hf://someone/pushed", device="cpu")(image()).maps,
                       partformer.load(path, device="cpu")(image()).maps)
