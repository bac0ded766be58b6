"""Issue 16, the conventions and the rest of the probe: sizes that cannot fit are config errors
before a run directory exists (every method), exports stay inside the folder asked for, the
keypoint regressor's skipped images are listed, every tool takes --model / --device / --version."""
from __future__ import annotations

import os

import pytest

from partformer.cli import pretrain_main, train_main

from tests.tiny import shared_root, tiny_method_yaml, tiny_yaml


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_root(tmp_path_factory)


def fails(main, argv, capsys) -> str:
    """``main(argv)`` exits with status 2 and one ``error:`` line, no traceback; returns it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 2, err   # the message + "(run with --debug ...)"
    return err


# ------------------------------------------------------------------ 16.19: grids that do not fit
@pytest.mark.parametrize("method,overrides,expect", [
    ("partformer", ["data.image_size=36"], "multiple of the encoder's patch size 8"),
    ("partformer", ["model.encoder.kwargs.patch_size=5"], "patch size 5"),
    ("mpae", ["data.image_size=36"], "patch size 8"),
    ("mpae", ["mpae.part_vit.patch_size=4"], "set mpae.part_vit.patch_size=8"),
    ("mpae", ["mpae.decoder.patch_size=4"], "set mpae.decoder.patch_size=8"),
    ("pdiscoformer", ["data.image_size=36"], "use data.image_size=32 or 40"),
])
def test_patch_that_does_not_divide_the_image_is_a_config_error(root, tmp_path, capsys, method,
                                                                overrides, expect):
    config = tiny_yaml(root) if method == "partformer" else tiny_method_yaml(root, method)
    run = tmp_path / "run"
    err = fails(train_main, ["--config", config, "--run-dir", str(run), "train.max_steps=1",
                             "--no-test", *overrides], capsys)
    assert expect in err and not run.exists()


def test_pretraining_crops_must_fit_a_vit_patch(root, tmp_path, capsys):
    run = tmp_path / "run"
    err = fails(pretrain_main, ["--config", tiny_yaml(root), "--run-dir", str(run),
                                "pretrain.global_size=30", "pretrain.extra_synthetic=0"], capsys)
    assert "`pretrain.global_size` must be a multiple of the encoder's patch size 8" in err
    assert not run.exists()
