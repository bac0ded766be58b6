"""Tests of the typed config system (partformer/config.py): YAML inheritance, dotted overrides,
error messages, the shipped configs/ files and the YAML round trip."""
from __future__ import annotations

import dataclasses
import glob
import os

import pytest
import yaml

from partformer import config as cfglib
from partformer.config import Config, ConfigError, from_dict, load_config, save_config, to_yaml
from partformer.methods import method_names as cfglib_method_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))


def write(path, data) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        if isinstance(data, str):
            f.write(data)
        else:
            yaml.safe_dump(data, f)
    return str(path)


# ------------------------------------------------------------------------------ inheritance
def test_base_inheritance_child_wins_and_nested_merge(tmp_path):
    write(tmp_path / "base" / "grand.yaml", {
        "experiment": {"name": "grand", "seed": 3},
        "train": {"lr": 0.1, "epochs": 7, "scheduler": {"name": "cosine", "gamma": 0.5}}})
    write(tmp_path / "base" / "parent.yaml", {
        "_base_": "grand.yaml",  # relative to the parent file, not the working directory
        "experiment": {"name": "parent"},
        "model": {"num_parts": 6, "encoder": {"name": "vit_tiny_patch16_224", "frozen": False}},
        "train": {"scheduler": {"milestones": [3, 5]}}})
    child = write(tmp_path / "child.yaml", {
        "_base_": ["base/parent.yaml"],
        "model": {"num_parts": 8, "encoder": {"pretrained": False}},
        "train": {"scheduler": {"gamma": 0.25}}})
    cfg = load_config(child)
    assert cfg.experiment.name == "parent"          # parent over grandparent
    assert cfg.experiment.seed == 3                 # untouched grandparent key survives
    assert cfg.model.num_parts == 8                 # child over parent
    # nested merge: siblings set by different files all survive
    assert cfg.model.encoder.name == "vit_tiny_patch16_224"
    assert cfg.model.encoder.frozen is False
    assert cfg.model.encoder.pretrained is False
    assert cfg.train.scheduler.name == "cosine"
    assert cfg.train.scheduler.milestones == [3, 5]
    assert cfg.train.scheduler.gamma == 0.25
    assert cfg.train.lr == 0.1 and cfg.train.epochs == 7
    # keys no file sets keep the schema default
    assert cfg.train.batch_size == cfglib.TrainConfig().batch_size


def test_multiple_bases_later_base_wins(tmp_path):
    write(tmp_path / "a.yaml", {"train": {"lr": 0.1, "epochs": 3}})
    write(tmp_path / "b.yaml", {"train": {"lr": 0.2}})
    child = write(tmp_path / "c.yaml", {"_base_": ["a.yaml", "b.yaml"]})
    cfg = load_config(child)
    assert cfg.train.lr == 0.2 and cfg.train.epochs == 3


def test_inheritance_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", {"_base_": "b.yaml", "train": {"lr": 0.1}})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle") as e:
        load_config(str(tmp_path / "a.yaml"))
    assert "a.yaml" in str(e.value) and "b.yaml" in str(e.value)
    write(tmp_path / "self.yaml", {"_base_": "self.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "self.yaml"))


def test_missing_base_and_bad_yaml(tmp_path):
    child = write(tmp_path / "c.yaml", {"_base_": "nope.yaml"})
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(child)
    bad = write(tmp_path / "bad.yaml", "train: {lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


# ------------------------------------------------------------------------------ overrides
def test_dotted_overrides_types(tmp_path):
    path = write(tmp_path / "c.yaml", {"train": {"lr": 0.5}})
    cfg = load_config(path, [
        "train.lr=1e-3",                        # YAML 1.1 reads this as a string
        "train.weight_decay=5.0e-2",
        "train.scheduler.milestones=[10, 13]",
        "train.betas=[0.9,0.99]",
        "model.num_parts=8",
        "data.val_split=null",
        "logging.progress=false",
        "model.encoder.kwargs={depth: 2, embed_dim: 48}",
        "partformer.loss.weights.arcface=1e-2",  # one entry of a Dict[str, float]
        "experiment.name=a=b",                   # only the first `=` splits
    ])
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == pytest.approx(0.05)
    assert cfg.train.scheduler.milestones == [10, 13]
    assert cfg.train.betas == [0.9, 0.99]
    assert cfg.model.num_parts == 8
    assert cfg.data.val_split is None
    assert cfg.logging.progress is False
    assert cfg.model.encoder.kwargs == {"depth": 2, "embed_dim": 48}
    assert cfg.partformer.loss.weights["arcface"] == pytest.approx(0.01)
    assert cfg.partformer.loss.weights["recon"] == 1.0   # the other entries of the dict are kept
    assert cfg.experiment.name == "a=b"


def test_override_wins_over_file_and_bases(tmp_path):
    write(tmp_path / "p.yaml", {"model": {"num_parts": 4}, "partformer": {"feature_dim": 32}})
    child = write(tmp_path / "c.yaml", {"_base_": "p.yaml", "model": {"num_parts": 6}})
    cfg = load_config(child, ["model.num_parts=16"])
    assert cfg.model.num_parts == 16 and cfg.partformer.feature_dim == 32


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config(None, ["train.lr"])


# ------------------------------------------------------------------------------ errors
def test_unknown_key_names_key_file_and_close_matches(tmp_path):
    path = write(tmp_path / "typo.yaml", {"model": {"num_part": 8}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "`model.num_part`" in msg
    assert str(tmp_path / "typo.yaml") in msg
    assert "model.num_parts" in msg           # the close match
    # through a base file: the message names the base, not the child
    write(tmp_path / "base.yaml", {"train": {"learning_rate": 0.1}})
    child = write(tmp_path / "child.yaml", {"_base_": "base.yaml", "train": {"lr": 0.1}})
    with pytest.raises(ConfigError) as e:
        load_config(child)
    assert "`train.learning_rate`" in str(e.value)
    assert str(tmp_path / "base.yaml") in str(e.value)
    assert "child.yaml" not in str(e.value)


def test_unknown_override_key_names_command_line():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.bach_size=4"])
    assert "`train.bach_size`" in str(e.value)
    assert "command line" in str(e.value)
    assert "train.batch_size" in str(e.value)
    with pytest.raises(ConfigError, match="`trian`"):
        load_config(None, ["trian.lr=0.1"])


@pytest.mark.parametrize("override,key,expected", [
    ("train.batch_size=abc", "train.batch_size", "int"),
    ("train.batch_size=2.5", "train.batch_size", "int"),
    ("train.batch_size=true", "train.batch_size", "int"),     # bool is not an int here
    ("train.lr=fast", "train.lr", "float"),
    ("logging.progress=3", "logging.progress", "bool"),
    ("experiment.name=[1, 2]", "experiment.name", "str"),
    ("train.max_steps=ten", "train.max_steps", "int"),        # Optional[int]
    ("train.scheduler.milestones=5", "train.scheduler.milestones", "List"),
    ("train.scheduler.milestones=[1, x]", "train.scheduler.milestones[1]", "int"),
    ("partformer.loss.weights=3", "partformer.loss.weights", "Dict"),
    ("kmeans.fit_images=many", "kmeans.fit_images", "int"),
])
def test_wrong_type_names_expected_type(override, key, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert f"`{key}`" in msg
    assert f"expects {expected}" in msg
    assert "command line" in msg


def test_section_must_be_mapping(tmp_path):
    path = write(tmp_path / "c.yaml", {"train": 5})
    with pytest.raises(ConfigError, match="`train` must be a mapping"):
        load_config(path)


# ------------------------------------------------------------------------------ shipped configs
def test_config_dir_has_files():
    names = {os.path.basename(p) for p in CONFIG_FILES}
    assert {"default.yaml", "cub_k4.yaml", "cub_k8.yaml", "cub_k16.yaml",
            "celeba_k4.yaml", "celeba_k8.yaml"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_shipped_config_loads_and_round_trips(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    again = from_dict(yaml.safe_load(to_yaml(cfg, job=None)))   # every section
    assert again == cfg
    # a run's config.yaml keeps the shared sections and the active method's own, exactly
    run = from_dict(yaml.safe_load(to_yaml(cfg)))
    assert run.section(cfg.method.name) == cfg.section(cfg.method.name)
    assert (run.model, run.data, run.train) == (cfg.model, cfg.data, cfg.train)
    # values the engine checks at run time are valid names
    assert cfg.method.name in cfglib_method_names()
    assert cfg.train.scheduler.name in ("multistep", "step", "cosine", "constant")
    assert cfg.train.precision in ("auto", "fp32", "bf16", "fp16")
    if cfg.method.name == "partformer":
        assert cfg.partformer.compress in ("cub", "celeba", "single")
        assert cfg.partformer.loss.recon in ("perceptual", "l1", "mse")
    assert cfg.data.val_split != cfg.data.test_split   # model selection never on test


@pytest.mark.parametrize("name,k,dataset,test_split", [
    ("cub_k4", 4, "cub", "test"), ("cub_k8", 8, "cub", "test"), ("cub_k16", 16, "cub", "test"),
    ("celeba_k4", 4, "celeba_wild", "mafl_test"), ("celeba_k8", 8, "celeba_wild", "mafl_test"),
])
def test_paper_configs(name, k, dataset, test_split):
    """The resolved paper configs carry the authors' settings, whichever file (schema default,
    _base_/paper.yaml, dataset file) sets them. Jiahao-UTS/UnsupervisedPart: ``Config/default.py``
    (IMG_SIZE 256, OUT_DIM 64, LR 5e-4, LR_FACTOR 0.2, BATCH_SIZE_PER_GPU 32),
    ``tools/train_function.py`` ``train`` (loss = 1.0 Highlevel + 0.3 Concentration + 0.5 Area +
    0.01 Semantic), ``train.py`` (``MultiStepLR``; the DINO ``backbone1`` frozen)."""
    cfg = load_config(os.path.join(REPO, "configs", f"{name}.yaml"))
    assert cfg.model.num_parts == k
    assert cfg.data.name == dataset
    assert cfg.data.test_split == test_split
    assert cfg.experiment.name == name
    assert cfg.data.image_size == 256 and cfg.data.resize == "whole"
    assert cfg.model.encoder.name == "vit_small_patch8_224.dino"
    assert cfg.method.name == "partformer"
    assert cfg.model.encoder.frozen is True and cfg.partformer.feature_dim == 64
    assert cfg.train.lr == pytest.approx(5e-4) and cfg.train.batch_size == 32
    assert cfg.train.betas == [0.9, 0.95]
    assert cfg.train.scheduler.name == "multistep" and cfg.train.scheduler.gamma == 0.2
    assert cfg.train.optimizer == "adamw" and cfg.train.weight_decay == 0.01
    loss = cfg.partformer.loss
    assert loss.recon == "perceptual"
    assert loss.weights == {"recon": 1.0, "concentration": 0.3, "area": 0.5, "arcface": 0.01}
    if dataset == "cub":
        assert cfg.train.epochs == 100 and cfg.train.scheduler.milestones == [90, 95]
        assert loss.area_eps == 0.5 and cfg.partformer.compress == "cub"
    else:
        assert cfg.train.epochs == 15 and cfg.train.scheduler.milestones == [10, 13]
        assert loss.area_eps == 2.0 and cfg.partformer.compress == "celeba"
        assert cfg.data.regressor_split == "mafl_train"


def test_default_config_is_used_without_path():
    default = os.path.join(REPO, "configs", "default.yaml")
    assert load_config(None) == load_config(default)


# ------------------------------------------------------------------------------ output
def test_save_config_round_trip(tmp_path):
    cfg = load_config(None, ["train.lr=1e-5", "train.betas=[0.5, 0.999]", "model.num_parts=6",
                             "data.options={generator: {num_train: 10}}", "train.max_steps=7",
                             "partformer.loss.vgg_weights=null", "logging.wandb.tags=[a, b]"])
    path = str(tmp_path / "config.yaml")
    save_config(cfg, path)
    assert not os.path.exists(path + ".tmp")
    with open(path) as f:
        text = f.read()
    assert text == to_yaml(cfg)
    again = load_config(path)           # through the file loader as well
    assert again == cfg
    assert from_dict(yaml.safe_load(text)) == cfg
    assert again.train.lr == pytest.approx(1e-5) and again.data.options == {
        "generator": {"num_train": 10}}
    # every section a training run uses is written, in full (a saved config documents the whole
    # run), and only those: the run's method section, not the other methods' or pretraining's
    tree = yaml.safe_load(text)
    assert set(tree) == set(cfglib.JOB_SECTIONS["train"]) | {cfg.method.name}
    assert tree["partformer"]["loss"]["vgg_weights"] is None


def test_from_dict_defaults_equal_schema():
    assert from_dict({}) == Config()


# ------------------------------------------------------------------------------ methods
def test_each_method_has_its_own_section_and_method_name_picks_one(tmp_path):
    """Settings of several methods can sit in one file; ``method.name`` says which one a run
    uses, and only that section is written with the run."""
    path = write(tmp_path / "both.yaml", {"partformer": {"feature_dim": 32},
                                          "kmeans": {"fit_images": 50}})
    cfg = load_config(path)
    assert cfg.method.name == "partformer" and cfg.partformer.feature_dim == 32
    assert cfg.kmeans.fit_images == 50 and cfg.section("kmeans") is cfg.kmeans
    assert cfg.section() is cfg.partformer
    km = load_config(path, ["method.name=kmeans"])
    tree = yaml.safe_load(to_yaml(km))
    assert tree["method"] == {"name": "kmeans"} and tree["kmeans"]["fit_images"] == 50
    assert "partformer" not in tree and "pretrain" not in tree
    pre = yaml.safe_load(to_yaml(cfg, "pretrain"))
    assert "pretrain" in pre and "partformer" not in pre and "method" not in pre


def test_unknown_method_and_method_section_typos_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"`method.name`.*partformr.*did you mean 'partformer'"):
        load_config(None, ["method.name=partformr"])
    with pytest.raises(ConfigError) as e:
        load_config(None, ["partformer.feature_dims=8"])
    assert "`partformer.feature_dims`" in str(e.value) and "partformer.feature_dim" in str(e.value)
    with pytest.raises(ConfigError, match="`partfromer`"):
        load_config(None, ["partfromer.feature_dim=8"])
    with pytest.raises(ConfigError, match=r"`partformer.vit.heads`.*divide.*width=128"):
        load_config(None, ["partformer.vit.heads=3"])        # issue 16.19: at config time
    with pytest.raises(ConfigError, match=r"`partformer.augment.flip_p`.*\[0, 1\]"):
        load_config(None, ["partformer.augment.flip_p=2.0"])
    with pytest.raises(ConfigError, match="`methods` is not a config section"):
        from_dict({"methods": {}})


def test_the_layout_before_methods_had_sections_still_loads(tmp_path):
    """Version 0.1.0 kept PartFormer's settings in ``model.*`` (``model.partformer`` for the part
    ViT), ``loss`` and ``augment``. Files, stored checkpoint configs and command lines in that
    layout load into today's sections, with the same values."""
    from tests.tiny import legacy_tree
    cfg = load_config(os.path.join(REPO, "configs", "cub_k4.yaml"),
                      ["partformer.loss.area_eps=0.7", "partformer.vit.depth=3"])
    old = legacy_tree(cfg)
    assert "partformer" not in old and old["model"]["partformer"]["depth"] == 3
    assert old["loss"]["area_eps"] == 0.7 and "feature_dim" in old["model"]
    assert from_dict(old) == cfg
    path = write(tmp_path / "old.yaml", old)
    assert load_config(path) == cfg
    # old-style overrides still work, and a stored old key is overridden by today's key
    assert load_config(None, ["loss.recon=l1"]).partformer.loss.recon == "l1"
    assert load_config(None, ["model.feature_dim=8"]).partformer.feature_dim == 8
    # the same key set in both layouts by files is ambiguous
    both = write(tmp_path / "both.yaml", {"model": {"feature_dim": 8},
                                          "partformer": {"feature_dim": 16}})
    with pytest.raises(ConfigError, match="both set"):
        load_config(both)
