"""The public API (issue 9): ``partformer.load`` -> Predictor on arrays, PIL images, tensors and
paths of odd sizes, single and batched; maps and masks at the input resolution; named weights
(partformer.hub), torch.hub, the authors' files converted on the fly, the README example and a
non-editable install."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import partformer
from partformer.data.transforms import apply_resize, to_tensor_image
from partformer.hub import WeightsError, export_weights

from tests.tiny import tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [(37, 53), (61, 29), (32, 32), (9, 70)]   # odd (H, W), smaller and larger than S = 32


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny randomly initialised model saved as one of our checkpoints: (path, config, model)."""
    return tiny_checkpoint(str(tmp_path_factory.mktemp("api")))


def rand_image(h, w, seed=0):
    g = np.random.default_rng(seed)
    low = g.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3)).astype(np.uint8)
    import cv2
    return cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)


def expected_maps(model, image, S=32):
    """What the predictor must return for the `whole` resize: the model on the image resized as
    the dataset resizes it, maps resized back (bilinear, align_corners=False)."""
    x = to_tensor_image(apply_resize("whole", S, image).image)[None]
    with torch.no_grad():
        m = model.predict(x, output_size=(S, S))
    return F.interpolate(m, size=image.shape[:2], mode="bilinear", align_corners=False)[0]


def test_predictor_on_every_input_kind_and_odd_sizes(ckpt, tmp_path):
    path, cfg, model = ckpt
    predictor = partformer.load(path, device="cpu")
    K = cfg.model.num_parts
    assert predictor.num_parts == K and predictor.resize == "whole" and predictor.image_size == 32
    for i, (h, w) in enumerate(SIZES):
        img = rand_image(h, w, seed=i)
        file = str(tmp_path / f"img{i}.png")
        Image.fromarray(img).save(file)
        kinds = {
            "array": img, "path": file, "pathlib": tmp_path / f"img{i}.png",
            "pil": Image.fromarray(img), "tensor_uint8": torch.from_numpy(img).permute(2, 0, 1),
            "tensor_float": torch.from_numpy(img).permute(2, 0, 1).float() / 255,
            "array_float": img.astype(np.float32) / 255,
        }
        ref = expected_maps(model, img)
        for kind, x in kinds.items():
            out = predictor(x)
            assert isinstance(out, partformer.Prediction), kind
            assert out.maps.shape == (K + 1, h, w) and out.labels.shape == (h, w), kind
            assert torch.allclose(out.maps, ref, atol=1e-5), (kind, (out.maps - ref).abs().max())
            assert torch.allclose(out.maps.sum(0), torch.ones(h, w), atol=1e-5)
            assert torch.equal(out.labels, out.maps.argmax(0)) and out.valid.all()
            assert out.centroids.shape == (K, 2) and out.presence.shape == (K,)
            assert (out.centroids[:, 0] >= 0).all() and (out.centroids[:, 0] <= w).all()
            assert (out.centroids[:, 1] >= 0).all() and (out.centroids[:, 1] <= h).all()
    # the maps are not trivial: a random model's maps still vary over the image
    assert out.maps.std(dim=(1, 2)).max() > 1e-3


def test_grey_and_rgba_inputs(ckpt):
    path, _, _ = ckpt
    predictor = partformer.load(path, device="cpu")
    rgb = rand_image(23, 41, seed=5)
    grey = rgb[..., 0]
    rgba = np.concatenate([rgb, np.full((23, 41, 1), 7, np.uint8)], axis=2)
    assert torch.equal(predictor(rgba).maps, predictor(rgb).maps)
    assert torch.equal(predictor(grey).maps, predictor(np.repeat(grey[..., None], 3, 2)).maps)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        predictor(torch.zeros(5, 8, 8))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        predictor(np.full((8, 8, 3), 3.0, np.float32))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        predictor("missing.png")


def test_batches_equal_single_images(ckpt):
    path, _, _ = ckpt
    predictor = partformer.load(path, device="cpu", batch_size=3)
    imgs = [rand_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]
    singles = [predictor(im) for im in imgs]
    mixed = [imgs[0], Image.fromarray(imgs[1]), torch.from_numpy(imgs[2]).permute(2, 0, 1),
             imgs[3]]
    for bs in (1, 2, 8):
        outs = predictor(mixed, batch_size=bs)
        assert isinstance(outs, list) and len(outs) == 4
        for a, b in zip(outs, singles):
            assert torch.allclose(a.maps, b.maps, atol=1e-5) and a.maps.shape == b.maps.shape
    # a [B, H, W, 3] array and a [B, 3, H, W] tensor are batches too
    same = np.stack([imgs[2], imgs[2][::-1]])
    outs = predictor(same)
    assert len(outs) == 2 and torch.allclose(outs[0].maps, singles[2].maps, atol=1e-5)
    outs_t = predictor(torch.from_numpy(same).permute(0, 3, 1, 2).float() / 255)
    assert torch.allclose(outs_t[1].maps, outs[1].maps, atol=1e-6)


def test_aspect_keeping_and_crop_modes_map_back_to_the_input(ckpt):
    """`shorter`: the whole image at shorter side S, maps back by plain interpolation.
    `shorter_center_crop`: the network sees the centre crop; outside it, background, valid=False
    (torchvision CenterCrop offsets, transforms.plan_resize)."""
    path, cfg, model = ckpt
    K = cfg.model.num_parts
    img = rand_image(32, 64, seed=7)                       # H = S: the resize is the identity
    shorter = partformer.load(path, device="cpu", resize="shorter")
    with torch.no_grad():
        full = model.predict(to_tensor_image(img)[None], output_size=(32, 64))[0]
    assert torch.allclose(shorter(img).maps, full, atol=1e-5)

    crop = partformer.load(path, device="cpu", resize="shorter_center_crop")
    out = crop(img)
    with torch.no_grad():
        inner = model.predict(to_tensor_image(img[:, 16:48])[None], output_size=(32, 32))[0]
    assert out.maps.shape == (K + 1, 32, 64)
    assert out.valid[:, 16:48].all() and not out.valid[:, :16].any() and not out.valid[:, 48:].any()
    assert torch.allclose(out.maps[:, :, 16:48], inner, atol=1e-5)
    assert (out.labels[:, :16] == K).all() and (out.maps[K, :, 48:] == 1).all()
    # a bigger image: the odd scale still maps the crop's pixel centres back (shape only)
    big = crop(rand_image(45, 100, seed=8))
    cols = big.valid.any(0).nonzero().flatten()
    assert big.maps.shape == (K + 1, 45, 100) and 30 <= len(cols) <= 48
    with pytest.warns(UserWarning, match="bbox_crop"):
        p = partformer.load(path, device="cpu", overrides=["data.resize=bbox_crop"])
    assert p.resize == "shorter"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predictor_on_gpu_matches_cpu(ckpt):
    path, _, _ = ckpt
    img = rand_image(37, 53)
    cpu = partformer.load(path, device="cpu")(img)
    gpu = partformer.load(path, device="cuda", precision="fp32")(img)
    assert gpu.maps.device.type == "cpu" and torch.allclose(cpu.maps, gpu.maps, atol=1e-4)


# ------------------------------------------------------------------------------ finding weights
def test_load_run_dir_safetensors_and_registered_names(ckpt, tmp_path, monkeypatch):
    path, cfg, _ = ckpt
    img = rand_image(37, 53)
    ref = partformer.load(path, device="cpu")(img).maps
    # a run directory: its best.pt
    assert torch.equal(partformer.load(os.path.dirname(path), device="cpu")(img).maps, ref)
    # named weights: exported (safetensors + config + index.yaml with sha256), found offline
    folder = tmp_path / "weights"
    entry = export_weights(path, str(folder), "tiny_k4", description="test model")
    assert entry.file.endswith("tiny_k4.safetensors") and len(entry.sha256) == 64
    monkeypatch.setenv("PARTFORMER_WEIGHTS_PATH", str(folder))
    assert "tiny_k4" in partformer.available_weights()
    p = partformer.load("tiny_k4", device="cpu")
    assert torch.equal(p(img).maps, ref) and p.cfg.model.num_parts == cfg.model.num_parts
    # the safetensors file itself, with its config
    p = partformer.load(entry.file, device="cpu", config=str(folder / "tiny_k4.yaml"))
    assert torch.equal(p(img).maps, ref)
    with pytest.raises(partformer.hub.CheckpointError, match="no config; pass config="):
        partformer.load(entry.file, device="cpu")
    # errors name the fix
    with pytest.raises(WeightsError, match=r"called 'tiny_k5'.*tiny_k4.*did you mean 'tiny_k4'"):
        partformer.load("tiny_k5")
    with pytest.raises(WeightsError, match="already lists 'tiny_k4'"):
        export_weights(path, str(folder), "tiny_k4")
    # overwriting keeps the index's comment block on top (the shipped index documents its format)
    index = folder / "index.yaml"
    index.write_text("# shipped weights\n#   <name>: ...\n" + index.read_text())
    export_weights(path, str(folder), "tiny_k4", overwrite=True)
    assert index.read_text().startswith("# shipped weights\n#   <name>: ...\ntiny_k4:")
    with open(entry.file, "ab") as f:
        f.write(b"x")
    with pytest.raises(WeightsError, match="does not match the sha256"):
        partformer.load("tiny_k4")
    os.remove(entry.file)
    with pytest.raises(WeightsError, match="tiny_k4.safetensors .* is missing"):
        partformer.load("tiny_k4")


def test_torch_hub_local_directory(ckpt):
    path, _, _ = ckpt
    img = rand_image(19, 27)
    ref = partformer.load(path, device="cpu")(img).maps
    predictor = torch.hub.load(REPO, "partformer", checkpoint=path, device="cpu", source="local")
    assert torch.equal(predictor(img).maps, ref)
    model = torch.hub.load(REPO, "partformer_model", checkpoint=path, device="cpu",
                           source="local")
    assert isinstance(model, torch.nn.Module) and not model.training


def test_authors_file_is_converted_on_the_fly(tmp_path):
    """partformer.load reads the authors' model_best.pth directly; the maps match the independent
    functional re-implementation of their forward pass (tests/test_convert.py reference_forward,
    following Jiahao-UTS/UnsupervisedPart) upsampled to the input size."""
    from tests.test_convert import (IMAGENET_MEAN, IMAGENET_STD, random_official_state_dict,
                                    reference_forward, sample_images)
    sd = random_official_state_dict("cub", seed=1)
    src = tmp_path / "model_best.pth"
    torch.save(sd, src)
    predictor = partformer.load(str(src), device="cpu", precision="fp32")   # fidelity: in fp32
    assert predictor.num_parts == 4 and predictor.image_size == 256
    img = np.rint(sample_images(seed=3)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    out = predictor(img)
    x = to_tensor_image(img)[None]
    with torch.no_grad():
        ref = reference_forward(sd, (x - IMAGENET_MEAN) / IMAGENET_STD, "cub")
    ref = F.interpolate(ref, size=(256, 256), mode="bilinear", align_corners=False)[0]
    assert (out.maps - ref).abs().max() < 1e-4


# ------------------------------------------------------------------------------ package surface
def test_import_is_light_and_version_matches_setup():
    code = ("import sys, partformer; assert 'torch' not in sys.modules, 'torch imported'; "
            "print(partformer.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=60)
    assert out.returncode == 0, out.stderr
    version = re.search(r'^__version__ = "([^"]+)"',
                        open(os.path.join(REPO, "partformer", "__init__.py")).read(), re.M)
    assert out.stdout.strip() == version.group(1) == partformer.__version__
    for name in ("load", "build_model", "load_config", "Predictor"):
        assert callable(getattr(partformer, name))


def readme_example() -> str:
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    m = re.search(r"<!-- example:start -->\s*```python\n(.*?)```\s*<!-- example:end -->", text,
                  re.S)
    assert m, "README.md has no marked example block"
    return m.group(1)


def test_readme_example_runs_as_written(tmp_path):
    """The README's ten-line example, verbatim, in a fresh interpreter from a copy of the
    repository's docs/, with the weights it names as shipped in partformer/weights/ (no
    $PARTFORMER_WEIGHTS_PATH, no network)."""
    code = readme_example()
    assert len(code.strip().splitlines()) <= 10
    name = re.search(r'partformer\.load\("([^"]+)"\)', code).group(1)
    from partformer import hub
    assert name in {n for n, e in hub.available_weights().items() if e.kind == "model"}, \
        f"the README example loads {name!r}, which partformer/weights/index.yaml does not ship"
    work = tmp_path / "work"
    shutil.copytree(os.path.join(REPO, "docs"), work / "docs")
    env = {k: v for k, v in os.environ.items() if k != "PARTFORMER_WEIGHTS_PATH"}
    env["PYTHONPATH"] = REPO
    tmp = tmp_path / "tmp"   # the example writes to the temporary folder, not where it runs
    tmp.mkdir()
    env["TMPDIR"] = str(tmp)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(work), env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(work)) == ["docs"], "the README example wrote into the checkout"
    written = [f for f in os.listdir(tmp) if f.endswith(".png")]
    assert written == ["example_parts.png"], os.listdir(tmp)
    assert np.asarray(Image.open(tmp / written[0])).shape[:2] == (128, 128)


def _can_build_wheels() -> bool:
    import importlib.util
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        import setuptools.command.bdist_wheel  # noqa: F401  (setuptools >= 70.1)
        return True
    except ImportError:
        return False


def test_non_editable_install_finds_configs_and_runs_tools(tmp_path):
    """`pip install .` (a wheel) ships the configs inside the package and the console scripts
    run from any directory. Cheap: a wheel without dependencies, installed with --target."""
    src = tmp_path / "src"   # a copy: building must not write build/ into the checkout
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "README.md", "LICENSE"):
        shutil.copy(os.path.join(REPO, name), src / name)
    shutil.copytree(os.path.join(REPO, "partformer"), src / "partformer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(REPO, "configs"), src / "configs")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # build with this environment's setuptools when it can make wheels (no download), else in
    # pip's isolated build environment (fetches setuptools from PyPI)
    isolation = ["--no-build-isolation"] if _can_build_wheels() else []
    subprocess.run(pip + ["wheel", "--no-deps", *isolation, "-w", str(tmp_path / "w"), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "w").glob("partformer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {os.path.basename(p) for p in os.listdir(os.path.join(REPO, "configs"))
               if p.endswith(".yaml")}
    assert shipped <= {os.path.basename(n) for n in names if n.startswith("partformer/configs/")}
    assert "partformer/configs/_base_/paper.yaml" in names
    assert "partformer/weights/index.yaml" in names
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=120)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    code = ("import partformer, partformer.config as c; cfg = partformer.load_config('cub_k4'); "
            "print(partformer.__file__); print(c.CONFIG_DIR); print(cfg.model.num_parts, "
            "cfg.data.name, partformer.load_config().data.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(elsewhere), env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0].startswith(str(site)) and lines[1] == str(site / "partformer" / "configs")
    assert lines[2] == "4 cub synthetic"
    # a console script from another directory: the shipped config by name, a readable error
    tool = site / "bin" / "partformer-eval"
    assert tool.is_file()
    out = subprocess.run([sys.executable, str(tool), "--config", "cub_k4", "--method", "grid",
                          "data.root=/nonexistent/CUB_200_2011"], capture_output=True, text=True,
                         cwd=str(elsewhere), env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "error: dataset data.name=cub" in out.stderr and "/nonexistent" in out.stderr
    assert "Traceback" not in out.stderr and not os.listdir(elsewhere)
