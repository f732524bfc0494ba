"""Train one method on one benchmark, then test it on fixed tasks.

    python -m shared_amortized_vi.train --config shared_amortized_vi/configs/smoke/samovar_1shot.yaml

A run lives in runs/shared_amortized_vi/<scale>/<name>/seed<k>/:

- checkpoint.pt: model, optimiser, step and random states, written every
  `train.checkpoint_every` steps; a rerun resumes from it.
- history.json: training loss, accuracy and the conditional prior's mean
  predicted variance, every `train.log_every` steps.
- result.json: mean test accuracy over `test_tasks` tasks with its 95%
  confidence interval, throughput and wall times. A run with a result is
  skipped on a rerun.

Test tasks are drawn from a fixed seed that does not depend on the training
seed, so every method is tested on the same tasks.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from common.checkpoint import CheckpointReadError, load_checkpoint, save_checkpoint
from common.config import ConfigError, parse_set_pairs
from common.device import autocast, choose_device, describe_device, seed_everything
from common.download import DownloadError
from common.results import atomic_write_json, read_json, run_metadata
from shared_amortized_vi.config import ExperimentConfig, load_config
from shared_amortized_vi.data import ImageClasses, TaskSampler, TaskSpec, check_task, load_omniglot, with_rotations
from shared_amortized_vi.model import SamovarModel, predict, task_loss

log = logging.getLogger(__name__)
TEST_TASK_SEED = 2020
IMAGE_SIZES = {"omniglot": (1, 28), "mini-imagenet": (3, 84), "cifarfs": (3, 32), "fc100": (3, 32)}


def run_dir(config: ExperimentConfig, runs_root: Path) -> Path:
    return Path(runs_root) / "shared_amortized_vi" / config.scale / config.name / f"seed{config.seed}"


def build_splits(config: ExperimentConfig, root: Path | None = None) -> dict[str, torch.utils.data.Dataset]:
    """Meta-training and meta-test datasets of the config's benchmark."""
    if config.dataset == "omniglot":
        arrays = load_omniglot(root)
        return {"train": ImageClasses(with_rotations(arrays["background"])), "test": ImageClasses(arrays["evaluation"])}
    from shared_amortized_vi.paper_data import build_paper_splits

    digest = config.data_sha256
    if digest and "=" in digest:
        digest = dict(part.split("=", 1) for part in digest.split(","))
    try:
        splits = build_paper_splits(config.dataset, root=root, sha256=digest)
    except (ValueError, FileNotFoundError, DownloadError) as error:
        # The loader's messages name its Python arguments, so add their command-line names.
        raise type(error)(f"{error}\nOn the command line, sha256= is the config key data_sha256 (--set data_sha256=...) "
                          "and root= is --data-root.") from error
    return {"train": splits["train"], "test": splits["test"]}


def build_model(config: ExperimentConfig) -> SamovarModel:
    channels, size = IMAGE_SIZES[config.dataset]
    options = config.model
    return SamovarModel(method=config.method, backbone=config.backbone, in_channels=channels, image_size=size,
                        conv4_hidden=options.conv4_hidden, inference_hidden=options.inference_hidden,
                        logvar_clamp=options.logvar_clamp, residual_mean=options.residual_mean,
                        initial_logvar=options.initial_logvar, likelihood=options.likelihood, scale=options.scale,
                        learn_scale=options.learn_scale)


def confidence_interval(accuracies: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t confidence interval, both in %."""
    values = 100.0 * np.asarray(accuracies, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan")
    return mean, float(stats.sem(values) * stats.t.ppf(0.975, len(values) - 1))


def load_model_checkpoint(path: Path, model: SamovarModel) -> dict:
    """Read a checkpoint and check that it was written for `model`'s architecture."""
    state = load_checkpoint(path)
    saved = state.get("model_config")
    if saved != model.config_dict():
        differing = sorted(key for key in set(saved or {}) | set(model.config_dict())
                           if (saved or {}).get(key) != model.config_dict().get(key))
        details = ", ".join(f"{key}: checkpoint {(saved or {}).get(key)!r}, config {model.config_dict().get(key)!r}" for key in differing)
        raise CheckpointReadError(f"{path} was written for another model ({details}); use the config it was trained with, "
                                  f"or move the run folder away to train this config from scratch")
    model.load_state_dict(state["model"])
    return state


def train(config: ExperimentConfig, splits: dict, directory: Path, device: torch.device) -> SamovarModel:
    seed_everything(config.seed)
    random.seed(config.seed)
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    decay = config.train.lr_decay_steps
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=decay if decay > 0 else config.train.steps + 1, gamma=0.5)
    sampler = TaskSampler(splits["train"], TaskSpec(config.ways, config.shots, config.queries), "meta-training")
    checkpoint_path, history_path = directory / "checkpoint.pt", directory / "history.json"
    step, history, train_seconds, state = 0, [], 0.0, None
    if checkpoint_path.exists():
        state = load_model_checkpoint(checkpoint_path, model)
        if state.get("config_hash") != config.hash():
            raise ConfigError(f"{checkpoint_path} was written by another version of {config.path} (config hash "
                              f"{state.get('config_hash')}, now {config.hash()}); move {directory} away to start again")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, history, train_seconds = state["step"], state["history"], state["train_seconds"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_tuple_state(state["python_rng"]))
        log.info("resuming %s at step %d", config.name, step)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    if state is not None:
        generator.set_state(state["generator"])
    model.train()
    window: dict[str, list[float]] = {}
    progress = tqdm(total=config.train.steps, initial=step, desc=config.name, unit="step", dynamic_ncols=True,
                    disable=not sys.stderr.isatty())
    started = time.perf_counter()
    while step < config.train.steps:
        optimizer.zero_grad(set_to_none=True)
        for _ in range(config.train.tasks_per_step):
            support_x, support_y, query_x, query_y = (t.to(device) for t in sampler.sample())
            with autocast(device, config.precision):
                out = task_loss(model, support_x, support_y, query_x, query_y, config.ways, config.beta, config.samples, generator)
            (out["loss"] / config.train.tasks_per_step).backward()
            for key, value in out.items():
                window.setdefault(key, []).append(float(value.detach()))
        optimizer.step()
        scheduler.step()
        step += 1
        progress.update(1)
        if not all(math.isfinite(v) for v in window["loss"][-config.train.tasks_per_step:]):
            raise FloatingPointError(f"{config.name}: the loss is not finite at step {step}; lower train.lr "
                                     f"(now {config.train.lr}) or raise model.logvar_clamp's lower bound")
        if step % config.train.log_every == 0 or step == config.train.steps:
            entry = {"step": step, **{key: float(np.nanmean(values)) if not all(map(math.isnan, values)) else None
                                      for key, values in window.items()}}
            history.append(entry)
            window = {}
            progress.set_postfix(loss=f"{entry['loss']:.3f}", acc=f"{entry['accuracy']:.3f}")
            atomic_write_json(history_path, history)
        if step % config.train.checkpoint_every == 0 or step == config.train.steps:
            save_checkpoint(checkpoint_path, {
                "model": model.state_dict(), "model_config": model.config_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "history": history, "config_hash": config.hash(),
                "train_seconds": train_seconds + time.perf_counter() - started, "torch_rng": torch.get_rng_state(),
                "python_rng": _list_state(random.getstate()), "generator": generator.get_state()})
    progress.close()
    model.train_seconds = train_seconds + time.perf_counter() - started
    return model


def _list_state(state):
    """random.getstate() as nested lists, which a weights-only checkpoint can hold."""
    return [state[0], list(state[1]), state[2]]


def _tuple_state(state):
    return (state[0], tuple(state[1]), state[2])


@torch.no_grad()
def evaluate(model: SamovarModel, config: ExperimentConfig, dataset, device: torch.device,
             tasks: int | None = None) -> tuple[list[float], float]:
    """Accuracy on each fixed test task and the evaluation wall time."""
    tasks = config.test_tasks if tasks is None else tasks
    sampler = TaskSampler(dataset, TaskSpec(config.ways, config.shots, config.test_queries), "meta-test", num_tasks=tasks,
                          seed=TEST_TASK_SEED)
    generator = torch.Generator(device=device)
    generator.manual_seed(TEST_TASK_SEED)
    model.eval()
    accuracies = []
    started = time.perf_counter()
    for index in tqdm(range(tasks), desc=f"test {config.name}", unit="task", dynamic_ncols=True, disable=not sys.stderr.isatty()):
        support_x, support_y, query_x, query_y = (t.to(device) for t in sampler[index])
        with autocast(device, config.precision):
            probabilities = predict(model, support_x, support_y, query_x, config.ways, config.test_samples, generator)
        accuracies.append(float((probabilities.argmax(-1) == query_y).float().mean()))
    return accuracies, time.perf_counter() - started


def run(config: ExperimentConfig, runs_root: Path = Path("runs"), data_root: Path | None = None, device_name: str = "auto") -> dict:
    directory = run_dir(config, runs_root)
    result_path = directory / "result.json"
    if result_path.exists():
        result = read_json(result_path)
        if result.get("config_hash") == config.hash():
            log.info("%s: finished earlier, %.2f +- %.2f%%", config.name, result["accuracy"], result["ci95"])
            return result
        raise ConfigError(f"{result_path} was written with other settings than {config.path} and its --set values now give "
                          f"(config hash {result.get('config_hash')}, now {config.hash()}); use the same settings, another "
                          f"--set name=..., or move {directory} away to run again")
    device = choose_device(device_name)
    splits = build_splits(config, data_root)
    for split, queries in (("train", config.queries), ("test", config.test_queries)):
        labels = splits[split].labels
        per_class = getattr(splits[split], "per_class", None) or int(np.bincount(np.asarray(labels)).min())
        check_task(TaskSpec(config.ways, config.shots, queries), len(set(labels)), per_class,
                   "meta-training" if split == "train" else "meta-test")
    directory.mkdir(parents=True, exist_ok=True)
    model = train(config, splits, directory, device)
    accuracies, eval_seconds = evaluate(model, config, splits["test"], device)
    mean, half_width = confidence_interval(accuracies)
    history = read_json(directory / "history.json")
    result = {
        "name": config.name, "dataset": config.dataset, "method": config.method, "backbone": config.backbone,
        "ways": config.ways, "shots": config.shots, "accuracy": mean, "ci95": half_width, "test_tasks": len(accuracies),
        "test_samples": config.test_samples, "final_prior_variance": history[-1].get("prior_variance"),
        "final_prior_relative_variance": _relative_variance(history[-1]),
        "train_steps": config.train.steps, "train_tasks_per_s": config.train.steps * config.train.tasks_per_step / model.train_seconds,
        "eval_tasks_per_s": len(accuracies) / eval_seconds,
        **run_metadata(config_hash=config.hash(), seed=config.seed, scale=config.scale, hardware=describe_device(device),
                       wall_time_s=model.train_seconds + eval_seconds),
    }
    atomic_write_json(directory / "test_accuracies.json", accuracies)
    atomic_write_json(result_path, result)
    log.info("%s: %.2f +- %.2f%% over %d tasks", config.name, mean, half_width, len(accuracies))
    return result


def _relative_variance(entry: dict) -> float | None:
    """Return the prior's mean variance divided by its mean squared mean, or None when either is missing.

    This is the width of the prior at the scale of its means.
    """
    variance, square = entry.get("prior_variance"), entry.get("prior_mean_square")
    return None if variance is None or not square else variance / square


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared_amortized_vi.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the config's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys, e.g. train.steps=100")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"))
    parser.add_argument("--data-root", type=Path, default=None, help="omniglot: the folder that contains omniglot/ (default: $REPRO_DATA or ~/.cache/repro-papers); "
                        "paper datasets: a local copy of the dataset (default: download into $REPRO_DATA)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_set_pairs(args.set)
        if args.seed is not None:
            overrides["seed"] = args.seed
        result = run(load_config(args.config, overrides), args.runs_root, args.data_root, args.device)
    except (ConfigError, ValueError, FileNotFoundError, pickle.UnpicklingError, DownloadError, CheckpointReadError,
            FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({key: result[key] for key in ("name", "accuracy", "ci95", "test_tasks")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
