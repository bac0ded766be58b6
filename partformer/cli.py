"""Command-line entry points (``tools/*.py`` and the ``partformer-*`` console scripts).

Thin composition roots: parse the config, hand data, model and predictors to the engine. Every
entry point is wrapped by :func:`cli_entry`: an expected error (config, dataset layout, unreadable
data, checkpoint, missing weights) prints one ``error: ...`` message that names the key / file /
line and the fix, and exits with status 2; ``--debug`` shows the traceback instead. Ctrl-C during
training saves ``last.pt`` and exits with status 130 and one line saying how to resume.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable, Dict, List, Optional

from partformer import config as cfglib
from partformer.engine import distributed as D
from partformer.engine.precision import precision_name
from partformer.engine.signals import interrupts_stop_training

EXIT_ERROR = 2          # expected errors (argparse uses 2 for usage errors too)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


def expected_errors() -> tuple:
    """Exception types that are the user's to fix (one message, no traceback)."""
    from partformer.data.io import BadImageError, DatasetError
    from partformer.engine.checkpoint import CheckpointError
    from partformer.engine.trainer import NonFiniteLossError
    from partformer.infer import OutputFolderError
    from partformer.losses.perceptual import VGGWeightsError
    from partformer.methods.foreign import ConversionError
    return (cfglib.ConfigError, DatasetError, BadImageError, FileNotFoundError, CheckpointError,
            ConversionError, NonFiniteLossError, NotADirectoryError, PermissionError,
            VGGWeightsError, OutputFolderError)


def one_line(e: BaseException) -> str:
    """The message of ``e``; for an error re-raised from a DataLoader worker, the original
    message (torch puts the worker's whole traceback into it)."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if "Original Traceback" in msg:
        last = [ln for ln in msg.strip().splitlines() if ln.strip()][-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    return msg


def cli_entry(main: Callable[[List[str]], int]) -> Callable[[Optional[List[str]]], int]:
    """Wrap ``main(argv) -> exit status`` with the package's error contract (module docstring)."""
    @functools.wraps(main)
    def wrapped(argv: Optional[List[str]] = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in argv or os.environ.get("PARTFORMER_DEBUG") == "1"
        from partformer.engine.allocator import tune_allocator
        tune_allocator()      # large CPU tensors reuse heap memory (engine/allocator.py)
        try:
            return main(argv)
        except expected_errors() as e:
            if debug:
                raise
            print(f"error: {one_line(e)}\n(run with --debug for the traceback)", file=sys.stderr)
            return EXIT_ERROR
    return wrapped


def _add_common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        cfglib.add_config_args(p)
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error (also PARTFORMER_DEBUG=1)")
    _add_version(p)


def _add_version(p: argparse.ArgumentParser) -> None:
    from partformer import __version__
    p.add_argument("--version", action="version", version=f"partformer {__version__}")


MODEL_HELP = ("the model: a checkpoint (runs/<run>/best.pt), a run directory, a .safetensors file "
              "(with --config), a method's authors' released checkpoint, the name of shipped "
              "weights (e.g. synthetic_k4), a pretrained folder (partformer.save_pretrained) or "
              "a Hugging Face Hub model hf://<user>/<repo>[@revision] (offline: its cache)")


def _add_model_arg(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", "--checkpoint", dest="model", required=required, default=None,
                   help=MODEL_HELP)


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1 (default: the config's train.device, auto = CUDA when "
                        "available)")


def _load(args) -> cfglib.Config:
    from partformer.engine.checkpoint import resume_file
    from partformer.hub import config_from_checkpoint
    if args.config is None and getattr(args, "resume", None):
        return config_from_checkpoint(resume_file(args.resume), args.overrides,
                                      resolve_data_root=True)
    return cfglib.load_config(args.config, _device_overrides(args))


def _device_overrides(args) -> List[str]:
    extra = [f"train.device={args.device}"] if getattr(args, "device", None) else []
    return list(args.overrides or []) + extra


def _load_model(args):
    """``(config, state, source)`` for ``--model``: the model's own config (its relative
    data.root resolved where it was trained) plus the overrides; with ``--config``, the
    architecture (``model``, ``method`` and the method's section) from the model and everything
    else (data, evaluation) from ``--config``."""
    from partformer.hub import locate, read_model_file
    path, entry_config = locate(args.model)
    overrides = _device_overrides(args)
    if args.config is None:
        return read_model_file(path, entry_config, overrides=overrides, resolve_data_root=True)
    stored, state, source = read_model_file(path, entry_config)
    tree = cfglib.to_dict(stored, "train")
    arch = {k: tree[k] for k in ("model", "method", stored.method.name) if k in tree}
    cfg = cfglib.load_config(args.config, overrides, sections=arch,
                             sections_origin=f"the model {args.model}")
    return cfg, state, source


def _run_of(model: Optional[str]) -> Optional[str]:
    """The training run directory ``model`` belongs to (a run's checkpoint or the run directory
    itself), or None (shipped or registered weights, files elsewhere in the package)."""
    from partformer.weights import weights_dirs
    if not model or not os.path.exists(model):
        return None
    folder = os.path.abspath(model if os.path.isdir(model) else os.path.dirname(model))
    for d in weights_dirs():
        d = os.path.abspath(d)
        if os.path.commonpath([folder, d]) == d:
            return None
    return folder


def _output_dir(args, cfg, what: str) -> str:
    """Where a tool writes by default: into the model's run (``<run>/<what>``), else
    ``<experiment.output_dir>/<what>-<model name>`` below the current directory; never into the
    installed package (shipped weights)."""
    run = _run_of(args.model)
    if run is not None:
        return os.path.join(run, what)
    stem = os.path.splitext(os.path.basename(args.model.rstrip("/")))[0] if args.model \
        else cfg.data.name
    return os.path.join(cfg.experiment.output_dir, f"{what}-{stem}")


def _add_run_dir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default=None,
                   help="run directory (default: a new runs/<name>-<time>); one that already "
                        "holds a run needs --resume or --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a --run-dir that holds one, removing its checkpoints, "
                        "metrics.jsonl, summaries and mask images first")


def _run_dir(args) -> Optional[str]:
    """``--run-dir``, else the directory of ``--resume`` (a run directory or its last.pt)."""
    if args.run_dir is None and args.resume:
        return args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume)
    return args.run_dir


def _fit_or_interrupt(trainer, tool: str, main: bool):
    """``trainer.fit()`` with Ctrl-C / SIGTERM stopping it between steps: ``(summary, None)``,
    or ``(None, EXIT_INTERRUPTED)`` after printing, on the main process, the one line that says
    what was saved and how to resume with ``tool``."""
    from partformer.engine.trainer import TrainingInterrupted
    try:
        with interrupts_stop_training():
            return trainer.fit(), None
    except TrainingInterrupted as e:
        if main:
            saved = (f"saved {e.path}" if e.path else "last.pt not written (non-finite weights; "
                     "the previous one is kept)")
            print(f"interrupted at step {e.step} ({saved}); resume with: python {tool} --resume "
                  f"{trainer.run_dir}", file=sys.stderr)
        return None, EXIT_INTERRUPTED


def _progress(cfg) -> bool:
    """Whether to show progress (a bar on a terminal, plain lines every
    ``logging.progress_every`` seconds off one: partformer/engine/progress.py)."""
    from partformer.engine import progress
    progress.configure(cfg.logging.progress_every)
    return bool(cfg.logging.progress)


# ------------------------------------------------------------------------------------ train
@cli_entry
def train_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(
        description="Train PartFormer. Without arguments: the embedded synthetic benchmark "
                    "(generated on first use), then test-split evaluation next to the grid and "
                    "k-means baselines.")
    _add_common(p)
    p.add_argument("--resume", default=None,
                   help="run directory or its last.pt: continue that run exactly where it stopped")
    p.add_argument("--model", default=None,
                   help="start from this model's weights (a fresh optimiser and schedule; loaded "
                        "strictly: the architecture must be the same): " + MODEL_HELP + ". "
                        "Without --config its stored config is the run's (plus overrides)")
    _add_run_dir_args(p)
    _add_device_arg(p)
    p.add_argument("--no-test", action="store_true", help="skip the final test-split evaluation")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the grid and k-means baselines in the final table")
    args = p.parse_intermixed_args(argv)
    init = None
    if args.model:
        if args.resume:
            p.error("--model starts a new run from a model's weights; --resume continues a run: "
                    "give one of them")
        cfg, init = _init_model(args)
    else:
        cfg = _load(args)

    from partformer.engine.evaluator import write_json
    from partformer.engine.logger import EXIT_FAILED
    from partformer.engine.trainer import Trainer

    trainer = Trainer(cfg, run_dir=_run_dir(args), resume=args.resume,
                      overwrite=args.overwrite, init=init)
    main = D.is_main_process()
    if main:
        print(cfglib.to_yaml(cfg))
        print(f"run directory: {trainer.run_dir}")
        print(f"device: {trainer.device}, world size: {trainer.world}, precision: "
              f"{precision_name(trainer.amp_dtype)}, train images: {len(trainer.train_set)}, "
              f"steps: {trainer.total_steps} ({trainer.steps_per_epoch}/epoch)")
    exit_code = EXIT_FAILED
    try:
        summary, exit_code = _fit_or_interrupt(trainer, "tools/train.py", main)
        if exit_code is not None:
            return exit_code
        if main:
            write_json(os.path.join(trainer.run_dir, "train_summary.json"), summary)
            print(f"training done: {summary}")
        exit_code = 0 if args.no_test else _final_test(args, cfg, trainer, summary)
        return exit_code
    finally:
        trainer.close(exit_code)
        D.cleanup()


def _init_model(args):
    """``(config, (state, source))`` of ``train --model``: the model's own config (plus the
    overrides) without ``--config``; with it, the file's config, whose method must be the
    model's (the architecture is checked when the weights are loaded)."""
    from partformer.hub import locate, read_model_file
    path, entry_config = locate(args.model)
    stored, state, source = read_model_file(path, entry_config,
                                            overrides=_device_overrides(args) if args.config
                                            is None else (), resolve_data_root=args.config is None)
    if args.config is None:
        return stored, (state, source)
    cfg = cfglib.load_config(args.config, _device_overrides(args))
    if cfg.method.name != stored.method.name:
        raise cfglib.ConfigError(
            f"--model {args.model} is a {stored.method.name} model and --config {args.config} "
            f"trains method.name={cfg.method.name}; start from a model of the same method, or "
            f"pass method.name={stored.method.name} and its settings")
    return cfg, (state, source)


def _final_test(args, cfg, trainer, summary) -> int:
    """Evaluate the selected checkpoint on the test split. A failure (or Ctrl-C) here never
    loses the finished training: the checkpoints and ``train_summary.json`` are written, and the
    message says how to rerun the evaluation."""
    from partformer.engine.checkpoint import load_checkpoint, load_state_dict_strict
    from partformer.engine.evaluator import evaluate_methods, fitted_predictor, method_predictor
    from partformer.methods import method_names

    best = os.path.join(trainer.run_dir, "best.pt")
    D.barrier()
    chosen = best if os.path.isfile(best) else os.path.join(trainer.run_dir, "last.pt")
    rerun = f"python tools/eval.py --model {chosen} [key=value overrides]"
    try:
        load_state_dict_strict(trainer.model, load_checkpoint(chosen)["model"], source=chosen)
        predictors = {cfg.method.name: method_predictor(trainer.method, trainer.model,
                                                        trainer.device, trainer.amp_dtype)}
        if not args.no_baselines:   # the training-free references, in the same table
            for name in method_names(trainable=False):
                predictors[name] = fitted_predictor(cfg, name, trainer.device, trainer.train_set)
        results = evaluate_methods(cfg, predictors, out_dir=trainer.run_dir,
                                   progress=_progress(cfg),
                                   extra={"checkpoint": os.path.basename(chosen),
                                          "train": summary})
    except KeyboardInterrupt:
        if D.is_main_process():
            print(f"interrupted during the final evaluation; training finished ({chosen}, "
                  f"train_summary.json). Evaluate with: {rerun}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - whatever broke, the training is kept
        if args.debug or not isinstance(e, expected_errors()):
            import traceback
            traceback.print_exc()
        if D.is_main_process():
            print(f"error: the final evaluation failed: {one_line(e)}\nTraining finished and is "
                  f"saved ({chosen}, {os.path.join(trainer.run_dir, 'train_summary.json')}). "
                  f"Fix the cause (e.g. eval.skip_bad_images=true for unreadable test images) "
                  f"and evaluate with: {rerun}", file=sys.stderr)
        return EXIT_ERROR
    trainer.logger.log_results(results, cfg.data.test_split)
    return 0


# ------------------------------------------------------------------------------------ eval
@cli_entry
def eval_main(argv: List[str]) -> int:
    from partformer.methods import method_names
    p = argparse.ArgumentParser(
        description="Evaluate a model (of any method) or a training-free reference under every "
                    "protocol that applies to the dataset; prints a table and writes JSON.")
    _add_common(p)
    _add_model_arg(p, required=False)
    p.add_argument("--method", default=None, choices=method_names(),
                   help="a training-free reference to evaluate (fitted on the training split: "
                        f"{', '.join(method_names(trainable=False))}); default: the --model, "
                        "else every reference. A trained method needs --model")
    p.add_argument("--split", default=None, help="dataset split (default: data.test_split)")
    p.add_argument("--out", default=None,
                   help="output FOLDER for results_<split>.json and config.yaml (default: "
                        "<run dir>/eval for a run's checkpoint, else runs/eval-<name>)")
    _add_device_arg(p)
    p.add_argument("--wandb", action="store_true",
                   help="log an evaluation run to W&B (logging.wandb): results as summary and "
                        "table, part masks of logging.wandb.num_images images with per-image "
                        "metrics")
    args = p.parse_intermixed_args(argv)
    from partformer.methods import get_method
    reference = args.method is not None and not get_method(args.method).trainable
    if args.method is not None and not reference and not args.model:
        raise cfglib.ConfigError(f"--method {args.method} is trained: evaluate a model of it "
                                 "with --model FILE (a run's best.pt, a run directory or a name)")
    state = source = None
    if args.model:
        cfg, state, source = _load_model(args)
    else:
        cfg = _load(args)
    device = D.init_distributed(cfg.train.device)
    from partformer.data import build_dataset
    from partformer.engine.evaluator import evaluate_methods, fitted_predictor, method_predictor
    from partformer.engine.logger import EXIT_FAILED, ExperimentLogger
    from partformer.engine.precision import resolve_precision
    from partformer.hub import model_from_state
    from partformer.methods import build_method
    logger = None
    exit_code = EXIT_FAILED
    try:
        predictors = {}
        if args.model and not reference:
            if args.method and args.method != cfg.method.name:
                raise cfglib.ConfigError(f"--method {args.method}: {args.model} is a "
                                         f"{cfg.method.name} model")
            model = model_from_state(cfg, state, source, device)
            predictors[cfg.method.name] = method_predictor(
                build_method(cfg), model, device, resolve_precision(cfg.train.precision, device))
        else:
            names = [args.method] if args.method else method_names(trainable=False)
            fit_set = build_dataset(cfg.data, cfg.data.train_split)
            for name in names:
                predictors[name] = fitted_predictor(cfg, name, device, fit_set)
        # beside a run's checkpoint, in eval/, so the training run's own results_test.json is kept
        out = args.out or _output_dir(args, cfg, "eval")
        if D.is_main_process():
            print(cfglib.to_yaml(cfg))
        if args.wandb:
            logger = ExperimentLogger(out, cfg.logging.wandb, cfglib.to_dict(cfg),
                                      f"eval-{cfg.experiment.name}", job_type="eval")
            if args.model and not reference:
                _record_model_artifact(logger, args.model, source)
        split = args.split or cfg.data.test_split
        results = evaluate_methods(cfg, predictors, split=split, out_dir=out,
                                   progress=_progress(cfg),
                                   extra={"checkpoint": args.model, "model": source})
        if D.is_main_process():  # beside the results: what produced them
            cfglib.save_config(cfg, os.path.join(out, "config.yaml"))
        if logger is not None:
            logger.log_results(results, split, step=0)
            _log_eval_masks(logger, cfg, predictors, split)
        exit_code = 0
        return 0
    finally:
        if logger is not None:
            logger.close(exit_code)
        D.cleanup()


def _record_model_artifact(logger, model: str, source: str) -> None:
    """``eval --wandb`` of one of our checkpoints: the evaluation run uses (online; offline:
    records) the model artifact version its training run logged (same files, same digest)."""
    import yaml

    from partformer.engine.checkpoint import load_checkpoint
    from partformer.engine.trainer import model_collection
    from partformer.hub import locate
    path = locate(model)[0]
    if not path.endswith(".pt"):
        return
    ckpt = load_checkpoint(path)
    if "model" not in ckpt or "config" not in ckpt:
        return
    stored = cfglib.from_dict(yaml.safe_load(ckpt["config"]))
    record = logger.record_model(path, model_collection(stored), {"source": source})
    if record is not None and D.is_main_process():
        print(f"W&B: model artifact {record['name']} (digest {record['digest'][:12]}) "
              + ("used by this run" if record["linked"] else
                 "recorded in the run's config as model_artifact (an offline run cannot use "
                 "artifacts; the digest names the version the training run logged)"),
              file=sys.stderr)


def _log_eval_masks(logger, cfg, predictors, split: str) -> None:
    """Part masks of the first ``logging.wandb.num_images`` readable images of ``split``, per
    method, with per-image metrics (the same view as during training)."""
    import torch

    from partformer import viz
    from partformer.data import build_dataset
    from partformer.data.collate import collate
    from partformer.engine.evaluator import num_part_classes, per_image_metrics
    from partformer.engine.evaluator import readable_samples

    dataset = build_dataset(cfg.data, split, skip_bad_images=True)
    samples = readable_samples(dataset, cfg.logging.wandb.num_images)
    if not samples:
        return
    ncls = num_part_classes(dataset) if "part_mask" in samples[0] else None
    K = cfg.model.num_parts
    for method, predict in predictors.items():
        images, labels, gts, rows, ids = [], [], [], [], []
        for s in samples:
            b = collate([s])
            with torch.no_grad():
                maps = viz.maps_to_size(predict(b).float().cpu(), tuple(b["image"].shape[-2:]))
            img = viz.to_uint8_images(b["image"])[0]
            if "keypoints" in s:
                img = viz.draw_keypoints(img, s["keypoints"].numpy(),
                                         s["keypoints_visible"].numpy())
            images.append(img)
            labels.append(maps.argmax(1)[0].numpy())
            if "part_mask" in s:
                gts.append(s["part_mask"].numpy())
            rows += per_image_metrics(maps, b, K, ncls)
            ids.append(int(s["index"]))
        logger.log_masks(f"{split}/{method}/masks", images, labels, K, step=0,
                         ground_truth=gts or None,
                         gt_names=getattr(dataset, "part_names", None), rows=rows, ids=ids)


# ------------------------------------------------------------------------------------ oracle
@cli_entry
def oracle_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(
        description="The ground-truth part-mask oracle (a ceiling, not a method): the dataset's "
                    "own part masks as K part maps, scored under every protocol that applies; "
                    "for K below the number of GT parts, the merge of parts into K groups is "
                    "the one with the best --select-metric on the validation split.")
    _add_common(p)
    p.add_argument("--split", default=None, help="split to score (default: data.test_split)")
    p.add_argument("--select-metric", default="kp_nmi_with_bg",
                   help="protocol that picks the merge of GT parts when K < their number")
    p.add_argument("--out", default=None,
                   help="output FOLDER for results_<split>.json (default: runs/oracle-<dataset>)")
    args = p.parse_intermixed_args(argv)
    cfg = _load(args)
    device = D.init_distributed(cfg.train.device)
    from partformer.data import build_dataset
    from partformer.engine.evaluator import evaluate_methods, num_part_classes
    from partformer.engine.oracle import best_grouping, part_groups, part_mask_oracle
    try:
        split = args.split or cfg.data.test_split
        K = int(cfg.model.num_parts)
        C = num_part_classes(build_dataset(cfg.data, split))
        extra: Dict[str, Any] = {"oracle": "ground-truth part masks", "num_gt_parts": C}
        groups = part_groups(C, K)
        if len(groups) > 1:
            if not cfg.data.val_split or cfg.data.val_split == split:
                raise cfglib.ConfigError(f"K = {K} < {C} GT parts: the merge of parts is chosen "
                                         "on the validation split (data.val_split), which must "
                                         f"differ from the scored split {split!r}")
            choose = build_dataset(cfg.data, cfg.data.val_split)
            best, scores = best_grouping(choose, K, C, args.select_metric,
                                         batch_size=cfg.eval.batch_size, resize=cfg.data.resize)
            if D.is_main_process():
                for g in sorted(scores, key=scores.get, reverse=True):
                    print(f"{cfg.data.val_split} {args.select_metric} {scores[g]:6.2f}  "
                          f"groups {[list(b) for b in g]}" + ("  <- chosen" if g == best else ""))
            extra.update(chosen_on=cfg.data.val_split, select_metric=args.select_metric,
                         choice_scores={str([list(b) for b in g]): v for g, v in scores.items()})
        else:
            best = groups[0]
        extra["groups"] = [list(b) for b in best]
        out = args.out or os.path.join(cfg.experiment.output_dir, f"oracle-{cfg.data.name}")
        predict = part_mask_oracle(K, best)
        evaluate_methods(cfg, {"gt_part_masks": lambda b: predict(b).to(device)}, split=split,
                         out_dir=out, progress=_progress(cfg), extra=extra)
        return 0
    finally:
        D.cleanup()


# ------------------------------------------------------------------------------------ visualize
@cli_entry
def visualize_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(
        description="Look at the part masks of a checkpoint on a dataset split (your own images: "
                    "data.name=image_folder data.root=DIR). --view grid: image | overlay | parts "
                    "| GT parts per image; contact: rows of images, columns input (GT keypoints) "
                    "| overlay | one heat map per part, with a legend; parts: for each part, the "
                    "crops of the split where it is most confident.")
    _add_common(p)
    _add_model_arg(p, required=True)
    _add_device_arg(p)
    p.add_argument("--view", choices=("grid", "contact", "parts"), default="grid")
    p.add_argument("--split", default=None, help="dataset split (default: data.val_split or test)")
    p.add_argument("--num", type=int, default=8,
                   help="images (grid, contact) or crops per part (parts)")
    p.add_argument("--max-images", type=int, default=None,
                   help="parts view: search only the first N images of the split")
    p.add_argument("--alpha", type=float, default=0.55, help="overlay opacity in [0, 1]")
    p.add_argument("--out", default=None,
                   help="output PNG FILE (default: <run dir>/<view>_<split>.png for a run's "
                        "checkpoint, else runs/visualize-<name>/<view>_<split>.png)")
    p.add_argument("--colors", type=int, default=None,
                   help="write an 8-bit palette PNG of at most this many colours (2-256): several "
                        "times smaller, for figures committed to a repository")
    p.add_argument("--wandb", action="store_true", help="also log the image with logging.wandb")
    args = p.parse_intermixed_args(argv)
    cfg, state, source = _load_model(args)
    import numpy as np
    import torch

    from partformer import viz
    from partformer.data import build_dataset
    from partformer.data.collate import collate
    from partformer.engine import inspect
    from partformer.engine.evaluator import method_predictor, readable_samples
    from partformer.engine.precision import resolve_precision
    from partformer.hub import model_from_state
    from partformer.methods import build_method
    device = D.init_distributed(cfg.train.device)
    folder = cfg.data.name == "image_folder"
    split = args.split or cfg.data.val_split or cfg.data.test_split
    dataset = build_dataset(cfg.data, split, skip_bad_images=True)
    model = model_from_state(cfg, state, source, device)
    predict = method_predictor(build_method(cfg), model, device,
                               resolve_precision(cfg.train.precision, device))
    if args.view == "parts":
        crops, scores = inspect.top_part_crops(
            predict, dataset, cfg.model.num_parts, top=args.num,
            batch_size=cfg.eval.batch_size, num_workers=cfg.eval.num_workers,
            max_images=args.max_images, resize=cfg.data.resize, alpha=args.alpha,
            progress=_progress(cfg))
        image = viz.part_view(crops, scores=scores)
        caption = f"per part: the {args.num} most confident crops of the {split} split"
    else:
        samples = readable_samples(dataset, args.num)
        if not samples:
            raise FileNotFoundError(f"no readable image in split {split!r} of "
                                    f"data.root={cfg.data.root}")
        if args.view == "contact":
            image = inspect.contact_sheet_for(predict, samples, args.alpha)
            caption = "input | parts | heat map per part"
        else:
            grids = []
            with torch.no_grad():
                for s in samples:  # one at a time: images may differ in size
                    b = collate([s])
                    grids.append(viz.mask_grid(b["image"], predict(b).float().cpu(),
                                               b.get("part_mask")))
            height = max(g.shape[0] for g in grids)
            image = np.concatenate([np.pad(g, ((0, height - g.shape[0]), (0, 2), (0, 0)),
                                           constant_values=255) for g in grids], axis=1)
            caption = "image | parts overlay | parts | GT parts"
    name = "masks" if args.view == "grid" else args.view
    # your own images (data.name=image_folder) are named after their folder, not a split
    where = os.path.basename(os.path.abspath(cfg.data.root)) if folder else split
    out = args.out or os.path.join(_run_of(args.model) or _output_dir(args, cfg, "visualize"),
                                   f"{name}_{'images_' if folder else ''}{where}.png")
    viz.save_png(out, image, colors=args.colors)
    print(f"wrote {out} ({args.view} view, {'images of ' + cfg.data.root if folder else 'split ' + split})")
    if args.wandb:
        from partformer.engine.logger import ExperimentLogger
        logger = ExperimentLogger(os.path.dirname(os.path.abspath(out)), cfg.logging.wandb,
                                  cfglib.to_dict(cfg), f"visualize-{cfg.experiment.name}",
                                  job_type="visualize")
        logger.log_image(f"{split}/{args.view}", image, step=0, caption=caption)
        logger.close()
    return 0


# ------------------------------------------------------------------------------------ infer
@cli_entry
def infer_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(
        description="Part masks for your own images: folders, quoted globs ('photos/*.jpg'), "
                    "image files and videos (frame by frame). Writes labels/<name>.png (value k "
                    "= part k, K = background), overlays/<name>.png, parts/<name>.json "
                    "(centroids, presence, area per part), parts.json and summary.json. A re-run "
                    "skips images already done unless --overwrite.")
    _add_common(p, config=False)
    p.add_argument("inputs", nargs="+", help="folders, image / video files or quoted globs")
    _add_model_arg(p, required=True)
    p.add_argument("--out", required=True, help="output FOLDER")
    p.add_argument("--config", default=None, help="config of a .safetensors file")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--resize", default=None,
                   help="override the model's data.resize (e.g. shorter for a crop-trained model)")
    p.add_argument("--alpha", type=float, default=0.55, help="overlay opacity in [0, 1]")
    p.add_argument("--no-overlays", action="store_true", help="write labels and JSON only")
    p.add_argument("--every", type=int, default=1, help="videos: every N-th frame")
    p.add_argument("--overwrite", action="store_true", help="redo images already done")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress (a bar on a terminal, else a plain line every "
                        "--progress-every seconds)")
    p.add_argument("--progress-every", type=float, default=None, metavar="SECONDS",
                   help="seconds between progress lines off a terminal (default 30)")
    args = p.parse_intermixed_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        p.error(f"--alpha must be in [0, 1], got {args.alpha}")
    for flag in ("every", "batch_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    from partformer.engine import progress as progress_lines
    from partformer.infer import print_summary, run_inference
    progress_lines.configure(args.progress_every)
    from partformer.predictor import load
    predictor = load(args.model, args.device, config=args.config, batch_size=args.batch_size,
                     resize=args.resize)
    print(f"{predictor}", file=sys.stderr)
    try:
        # Ctrl-C / SIGTERM (SIGINT re-armed for jobs started in the background) end the run
        # between files with one line; what was written stays done
        with interrupts_stop_training():
            summary = run_inference(predictor, args.inputs, args.out, overwrite=args.overwrite,
                                    alpha=args.alpha, overlays=not args.no_overlays,
                                    every=args.every,
                                    progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted; the images written to {args.out} are kept. Run the same command "
              "again to continue (done images are skipped)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_summary(summary)
    if summary["failed"] and not (summary["written"] or summary["already_done"]):
        print("error: no input could be read", file=sys.stderr)
        return EXIT_ERROR
    return 0


# ------------------------------------------------------------------------------------ others
DEFAULT_WEIGHTS_OUT = "weights"


@cli_entry
def export_weights_main(argv: List[str]) -> int:
    from partformer import hub
    p = argparse.ArgumentParser(
        description="Export a model as named weights (model-only safetensors + config + an "
                    "index.yaml entry with its sha256) so that partformer.load(NAME) finds it "
                    "offline (with PARTFORMER_WEIGHTS_PATH=<--out>). --list prints the known "
                    "names. Writes nothing outside --out.")
    _add_common(p, config=False)
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="the model (same as --model; kept for older commands)")
    _add_model_arg(p, required=False)
    p.add_argument("--config", default=None, help="the config of a .safetensors --model")
    p.add_argument("--name", help="the name partformer.load() will take: letters, digits, '.', "
                                  "'_', '-'")
    p.add_argument("--out", default=DEFAULT_WEIGHTS_OUT,
                   help="FOLDER with the index.yaml to add to (default: ./weights in the current "
                        "directory; never the installed package unless you name its "
                        "partformer/weights folder)")
    p.add_argument("--description", default="")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--list", action="store_true", help="print the registered names and exit")
    p.add_argument("--save-pretrained", default=None, metavar="FOLDER",
                   help="instead: write a Hugging Face pretrained FOLDER (model.safetensors, "
                        "config.yaml, README.md model card with the run's results_test.json)")
    p.add_argument("--push-to-hub", default=None, metavar="USER/REPO",
                   help="instead: upload that folder to the Hugging Face Hub (needs a token: "
                        "huggingface-cli login); load it with --model hf://USER/REPO")
    p.add_argument("--private", action="store_true", help="--push-to-hub: a private repository")
    p.add_argument("--results", default=None,
                   help="the results_<split>.json for the model card (default: the run's "
                        "results_test.json)")
    args = p.parse_intermixed_args(argv)
    if args.list:
        for name, e in sorted(hub.available_weights().items()):
            print(f"{name:<24} {e.file}  {e.description}")
        return 0
    if args.checkpoint and args.model and args.checkpoint != args.model:
        p.error("give the model once: positional CHECKPOINT or --model")
    model = args.model or args.checkpoint
    if model and (args.save_pretrained or args.push_to_hub):
        if args.save_pretrained:
            folder = hub.save_pretrained(model, args.save_pretrained, args.config, args.results,
                                         overwrite=args.overwrite)
            print(f"wrote {folder}/ (model.safetensors, config.yaml, README.md); load with "
                  f"partformer.load({folder!r})")
        if args.push_to_hub:
            url = hub.push_to_hub(model, args.push_to_hub, args.config, args.results,
                                  private=args.private)
            print(f"uploaded to {url}; load with partformer.load('hf://{args.push_to_hub}')")
        return 0
    if not model or not args.name:
        p.error("--model (or a positional checkpoint) and --name are required (or --list, "
                "--save-pretrained, --push-to-hub)")
    hub.check_weights_name(args.name)
    e = hub.export_weights(model, args.out, args.name, args.description, args.overwrite,
                           config=args.config)
    extra = ("" if os.path.abspath(args.out) == hub.WEIGHTS_DIR
             else f" with {hub.ENV_PATH}={os.path.abspath(args.out)}")
    print(f"wrote {e.file} (sha256 {e.sha256[:16]}...) and its entry in {e.index}\n"
          f"load with partformer.load({args.name!r}){extra}")
    return 0


@cli_entry
def export_onnx_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(
        prog="export_onnx.py",
        description="Export a model's test-time path (its method's predict) as an ONNX graph: "
                    "input `images` float32 [B, 3, S, S] in [0, 1], output `maps` float32 "
                    "[B, K+1, h, w] (softmax over the K parts and the background, background "
                    "last). Checked with onnxruntime against the PyTorch predictor on the same "
                    "images (the max absolute difference is printed). Needs the extra: "
                    'pip install -e ".[onnx]".')
    _add_common(p, config=False)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("out", help="the ONNX FILE to write (e.g. model.onnx)")
    p.add_argument("--config", default=None, help="the config of a .safetensors MODEL")
    p.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="the graph's input size (default: the model's data.image_size)")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="any batch size (default: the graph is fixed to --batch)")
    p.add_argument("--batch", type=int, default=1, help="the batch size of a fixed graph")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest max-abs difference to the PyTorch predictor that passes "
                        "(default 1e-4); above it the export fails with status 2")
    p.add_argument("--no-check", action="store_true",
                   help="export only (no onnxruntime needed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    _add_device_arg(p)
    args = p.parse_intermixed_args(argv)
    for flag in ("batch", "opset"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.image_size is not None and args.image_size < 1:
        p.error(f"--image-size must be >= 1, got {args.image_size}")
    from partformer.onnx_export import OnnxError, check_onnx, export_predictor
    from partformer.predictor import load
    predictor = load(args.model, args.device or "cpu", config=args.config, precision="fp32")
    info = export_predictor(predictor, args.out, args.image_size, args.dynamic_batch,
                            args.opset, args.batch, args.overwrite)
    shape = "x".join(str(v) for v in info["output_shape"])
    print(f"wrote {args.out}: {predictor.cfg.method.name}, images "
          f"{'B' if args.dynamic_batch else args.batch}x3x{info['image_size']}x"
          f"{info['image_size']} -> maps {shape} (opset {info['opset']})")
    if args.no_check:
        return 0
    sizes = (1, 3) if args.dynamic_batch else (args.batch,)
    diff = check_onnx(args.out, predictor, info["image_size"], sizes)
    print(f"onnxruntime vs PyTorch predictor: max abs difference {diff:.3g} "
          f"(batch {', '.join(map(str, sizes))}; tolerance {args.tolerance:g})")
    if not diff <= args.tolerance:
        raise OnnxError(f"{args.out} differs from the PyTorch predictor by {diff:.3g} > "
                        f"--tolerance {args.tolerance:g}; the graph is kept for inspection")
    return 0


@cli_entry
def convert_official_main(argv: List[str]) -> int:
    from partformer.methods import get_method, method_names
    p = argparse.ArgumentParser(
        prog="convert_official.py",
        description="Convert a method's authors' released checkpoint into a partformer checkpoint "
                    "that every tool takes with --model. The method and the sizes are read from "
                    "the file.")
    _add_common(p, config=False)
    p.add_argument("--method", default=None, choices=method_names(trainable=True),
                   help="whose released file it is (default: detected from the file)")
    p.add_argument("--dataset", default=None,
                   help="which of the authors' models (e.g. cub, celeba): picks dataset-specific "
                        "architecture variants and the benchmark config stored in the output "
                        "(default: detected, checked against the file)")
    p.add_argument("--input", "--model", dest="input", required=True,
                   help="the authors' file (e.g. model_best.pth); --model is the same flag")
    p.add_argument("--output", required=True, help="converted checkpoint FILE to write (.pt)")
    p.add_argument("--config", default=None,
                   help="benchmark config for data / eval settings (default: the shipped config "
                        "of the dataset)")
    p.add_argument("overrides", nargs="*", default=[],
                   help="dotted overrides of the stored config, e.g. data.root=/data/CUB_200_2011 "
                        "(the architecture is fixed by the file)")
    p.add_argument("--unsafe-load", action="store_true",
                   help="read the input with torch.load(weights_only=False); only for trusted "
                        "files that hold non-tensor Python objects")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = p.parse_intermixed_args(argv)
    if args.dataset and args.method and args.dataset not in get_method(args.method).official_datasets:
        p.error(f"--dataset for {args.method} must be one of "
                f"{list(get_method(args.method).official_datasets)}")
    from partformer.hub import convert_official_file
    src = convert_official_file(args.input, args.output, args.method, args.dataset, args.config,
                                args.overrides, args.unsafe_load, args.overwrite)
    extra = "".join(f", {k} {src[k]}" for k in ("epoch", "perf") if k in src)
    details = ", ".join(f"{k} {src[k]}" for k in ("method", "dataset", "num_parts", "image_size")
                        if k in src)
    print(f"converted {args.input} ({src.get('format', '?')}{extra}; sha256 "
          f"{src['sha256'][:16]}...)\n  {details}\n  wrote {args.output}\n"
          f"evaluate with: python tools/eval.py --model {args.output}")
    return 0


@cli_entry
def benchmark_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(
        description="Speed of a config (partformer/engine/profiling.py): the training step and "
                    "its floor (the frozen encoder's forward over both views) measured "
                    "alternately, with their ratio; evaluation split into data / predict / "
                    "metrics; the training data loader (and the image cache). Random weights "
                    "and images where no dataset is on disk. Prints a summary, writes JSON.")
    _add_common(p)
    p.add_argument("--parts", default="train,eval,data",
                   help="comma-separated subset of train,eval,data (default: all)")
    p.add_argument("--reps", type=int, default=5, help="timed step / floor pairs (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed pairs (and evaluation batches) first (default 1)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step and per evaluation batch (default: train.batch_size)")
    p.add_argument("--eval-batches", type=int, default=3, help="timed evaluation batches")
    p.add_argument("--data-batches", type=int, default=20, help="timed data-loader batches")
    p.add_argument("--no-flops", action="store_true",
                   help="skip counting the FLOPs of one step and one floor")
    p.add_argument("--out", default=None, help="JSON FILE to write (default: print only)")
    p.add_argument("--precisions", default=None,
                   help="compare precisions side by side, interleaved, e.g. fp32,bf16: the step, "
                        "its floor, an evaluation batch and the pretraining step of each, their "
                        "speed-ups and the achieved GFLOP/s next to the GEMM peak of the same "
                        "precision measured in the same run")
    p.add_argument("--pretrain-config", default="pretrain/synthetic",
                   help="with --precisions: the pretraining config whose step is timed "
                        "(default: configs/pretrain/synthetic.yaml, the shipped encoder's; "
                        "'none' skips it)")
    p.add_argument("--model", default=None,
                   help="profile this model's architecture and settings (its stored config, "
                        "plus overrides; the weights do not change the speed): " + MODEL_HELP)
    _add_device_arg(p)
    args = p.parse_intermixed_args(argv)
    if args.batch_size is not None:
        args.overrides = list(args.overrides or []) + [f"train.batch_size={args.batch_size}"]
    cfg = _load_model(args)[0] if args.model else _load(args)
    import torch

    from partformer.engine.evaluator import write_json
    from partformer.engine.profiling import PARTS, format_report, profile
    from partformer.engine.trainer import resolve_precision
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = D.init_distributed(cfg.train.device)
    if args.precisions:
        from partformer.engine.profiling import compare_precisions, format_precisions
        pre = None
        if args.pretrain_config.lower() != "none":
            pre = cfglib.load_config(args.pretrain_config, [f"train.device={cfg.train.device}"])
        wanted = [x.strip() for x in args.parts.split(",") if x.strip()]
        res = compare_precisions(cfg, device, [x.strip() for x in args.precisions.split(",")],
                                 reps=args.reps, warmup=args.warmup,
                                 parts=[x for x in ("train", "eval", "pretrain")
                                        if x in wanted or (x == "pretrain" and pre is not None)],
                                 pretrain_cfg=pre, eval_batches=args.eval_batches)
        print(format_precisions(res))
        if args.out:
            write_json(args.out, res)
        return 0
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--parts: unknown parts {unknown}; choose from {', '.join(PARTS)}")
    res = profile(cfg, device, parts, amp_dtype=resolve_precision(cfg.train.precision, device),
                  reps=args.reps, warmup=args.warmup, eval_batches=args.eval_batches,
                  data_batches=args.data_batches, flops=not args.no_flops)
    print(format_report(res))
    if args.out:
        write_json(args.out, res)
    return 0


# ------------------------------------------------------------------------------------ pretrain
@cli_entry
def pretrain_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(
        description="Self-supervised pretraining of a feature-map encoder (multi-crop DINO with a "
                    "dense term) on unlabeled images, with a k-means probe on the validation "
                    "split; or --export a checkpoint's teacher encoder as .safetensors. Without "
                    "--config: configs/pretrain/synthetic.yaml.")
    _add_common(p)
    p.add_argument("--resume", default=None,
                   help="run directory or its last.pt: continue that run exactly where it stopped")
    _add_run_dir_args(p)
    p.add_argument("--export", default=None, metavar="CHECKPOINT",
                   help="write the teacher encoder of this pretraining checkpoint (best.pt) to "
                        "--out and exit")
    p.add_argument("--out", default=None, help="output .safetensors FILE of --export")
    _add_device_arg(p)
    args = p.parse_intermixed_args(argv)
    if args.export:
        if not args.out:
            p.error("--export needs --out FILE.safetensors")
        from partformer.fileio import sha256_file
        from partformer.pretrain.trainer import export_encoder
        meta = export_encoder(args.export, args.out)
        print(f"wrote {args.out} (step {meta['step']}, sha256 {sha256_file(args.out)})\n"
              f"probe: {meta['probe']}")
        return 0
    if args.config is None and not args.resume:
        args.config = os.path.join(cfglib.CONFIG_DIR, "pretrain", "synthetic.yaml")
    cfg = _load(args)
    from partformer.pretrain.trainer import Pretrainer
    trainer = Pretrainer(cfg, run_dir=_run_dir(args), resume=args.resume,
                         overwrite=args.overwrite)
    main = D.is_main_process()
    if main:
        print(cfglib.to_yaml(cfg))
        print(f"run directory: {trainer.run_dir}\ndevice: {trainer.device}, world size: "
              f"{trainer.world}, precision: {precision_name(trainer.amp_dtype)}, images: "
              f"{len(trainer.bank)}, steps: {trainer.total_steps}")
    from partformer.engine.logger import EXIT_FAILED
    exit_code = EXIT_FAILED
    try:
        summary, exit_code = _fit_or_interrupt(trainer, "tools/pretrain.py", main)
        if exit_code is not None:
            return exit_code
        exit_code = 0
    finally:
        trainer.close(exit_code)
        D.cleanup()
    if main:
        print(f"pretraining done: {summary}\nexport the selected encoder with: python "
              f"tools/pretrain.py --export {os.path.join(trainer.run_dir, 'best.pt')} "
              "--out encoder.safetensors")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
