"""Run one experiment config end to end and write its metrics.json.

Runs live in runs/bise/<scale>/<experiment>/seed<seed>/. A BISE config names
the vanilla config it prunes. That run is reused when its metrics.json exists
and is trained first otherwise, so one command builds a whole table row.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from bise.config import ExperimentConfig, dependency_overrides, load_config
from bise.engine import build_data, build_model, evaluate_accuracy
from bise.extract import BiseRun
from bise.prune import export_pruned, magnitude_masks, random_masks, save_pruned, sparsity_report
from bise.vanilla import train_vanilla
from common.checkpoint import load_checkpoint, load_safetensors, save_safetensors
from common.config import ConfigError, to_dict
from common.data.biased_mnist import BiasedMNISTSplits
from common.data.mnist import load_digits
from common.device import choose_device, describe_device, enable_tf32, set_deterministic
from common.distributed import DistContext, barrier
from common.results import atomic_write_json, read_json, run_metadata

log = logging.getLogger(__name__)
DEFAULT_RUNS_ROOT = Path("runs")


def run_dir_for(config: ExperimentConfig, runs_root: Path) -> Path:
    return Path(runs_root) / "bise" / config.scale / config.name / f"seed{config.seed}"


def _finished_metrics(config: ExperimentConfig, run_dir: Path) -> dict | None:
    """metrics.json of a finished run of this exact config, or None; a mismatch is an error."""
    path = run_dir / "metrics.json"
    if not path.exists():
        return None
    metrics = read_json(path)
    if metrics.get("config_hash") != config.hash():
        raise ConfigError(
            f"{path} was written by another version of config {config.name!r} (hash {metrics.get('config_hash')}, "
            f"now {config.hash()}); move or delete {run_dir} to run the current config"
        )
    return metrics


def _attach_log_file(run_dir: Path, ctx: DistContext) -> logging.Handler | None:
    if not ctx.is_main:
        return None
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def run_experiment(
    config: ExperimentConfig,
    *,
    runs_root: Path = DEFAULT_RUNS_ROOT,
    overrides: dict | None = None,
    ctx: DistContext = DistContext(),
    data_cache: dict | None = None,
) -> dict:
    """Train and evaluate `config` (and the runs it depends on); return its metrics."""
    run_dir = run_dir_for(config, runs_root)
    finished = _finished_metrics(config, run_dir)
    if finished is not None:
        log.info("%s: reusing finished run %s", config.name, run_dir)
        return finished
    data_cache = {} if data_cache is None else data_cache

    dependency = None
    if config.method == "bise":
        dependency_kind, dependency_file = "vanilla", config.vanilla_config
    elif config.method in ("random", "magnitude"):
        dependency_kind, dependency_file = "bise", config.match_config
    if config.method != "vanilla":
        dependency_args = dependency_overrides(overrides, dependency_kind)
        dependency = load_config(config.resolve(dependency_file), dependency_args)
        if dependency.data != config.data or dependency.model != config.model:
            raise ConfigError(
                f"{config.path}: data or model section differs from its dependency {dependency.path}; "
                "a pruned network must come from a vanilla model trained on the same data"
            )
        dependency = _with_seed(dependency, config.seed, dependency_args)
        run_experiment(dependency, runs_root=runs_root, overrides=dependency_args, ctx=ctx, data_cache=data_cache)

    if (run_dir / "checkpoint.pt").exists():
        load_checkpoint(run_dir / "checkpoint.pt", config.hash())  # reject another config's run before touching it
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _attach_log_file(run_dir, ctx)
    try:
        started = time.perf_counter()
        device = choose_device(config.device, ctx.local_rank)
        enable_tf32(True)
        set_deterministic(device.type == "cpu")
        if ctx.is_main:
            atomic_write_json(run_dir / "config.json", {**to_dict(config), "config_hash": config.hash()})
        key = (config.data.source, config.data.rho, config.data.val_size, config.data.train_size, config.data.seed)
        if key not in data_cache:
            if ctx.enabled and config.data.source != "embedded":
                # Only rank 0 downloads; the others wait and then read the verified files.
                if ctx.is_main:
                    load_digits(config.data.source)
                barrier(ctx)
            data_cache[key] = build_data(config)
        splits = data_cache[key]
        log.info("%s (%s, seed %d) on %s: %d training, %d validation, %d test digits", config.name, config.method, config.seed,
                 device, len(splits.train), 0 if splits.val is None else len(splits.val), len(splits.test))

        if config.method == "vanilla":
            results = _run_vanilla(config, splits, run_dir, device, ctx)
        elif config.method == "bise":
            results = _run_bise(config, dependency, splits, run_dir, runs_root, device, ctx)
        else:
            results = _run_baseline(config, dependency, splits, runs_root, device, dependency_args)

        metrics = {
            "experiment": config.name,
            "method": config.method,
            "rho": config.data.rho,
            "data_source": config.data.source,
            "precision": config.precision,
            "config": to_dict(config),
            "overrides": config.overrides,
            "results": results,
            **run_metadata(
                config_hash=config.hash(), seed=config.seed, scale=config.scale,
                hardware=describe_device(device), wall_time_s=time.perf_counter() - started,
            ),
        }
        if ctx.is_main:
            atomic_write_json(run_dir / "metrics.json", metrics)
        barrier(ctx)
        return metrics
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def _with_seed(config: ExperimentConfig, seed: int, overrides: dict | None) -> ExperimentConfig:
    if config.seed == seed:
        return config
    return load_config(config.path, {**(overrides or {}), "seed": seed})


def _evaluate(model, splits: BiasedMNISTSplits, config: ExperimentConfig, device) -> dict:
    result = {"test": evaluate_accuracy(model, splits.test, device, config.precision, config.eval_batch_size)}
    if splits.val is not None:
        result["val"] = evaluate_accuracy(model, splits.val, device, config.precision, config.eval_batch_size)
    return result


def _run_vanilla(config, splits, run_dir, device, ctx) -> dict:
    model = train_vanilla(config, splits.train, run_dir, device, ctx, val_set=splits.val)
    if ctx.is_main:
        save_safetensors(run_dir / "model.safetensors", model.state_dict())
    masks = [torch.ones(width, dtype=torch.bool) for width in model.widths]
    return {"vanilla": {**_evaluate(model, splits, config, device), **sparsity_report(model.cpu(), masks)}}


def load_vanilla(config: ExperimentConfig, runs_root: Path, device) -> torch.nn.Module:
    path = run_dir_for(config, runs_root) / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"vanilla model {path} not found; run `python -m bise.train --config {config.path}` first")
    model = build_model(config)
    model.load_state_dict(load_safetensors(path), strict=True)
    return model.to(device).eval()


def _run_bise(config, vanilla_config, splits, run_dir, runs_root, device, ctx) -> dict:
    vanilla = load_vanilla(vanilla_config, runs_root, device)
    run = BiseRun(config, vanilla, splits, run_dir, device, ctx)
    run.run()
    gated = run.selected_gated_model()
    masks = run.selected_masks()
    results = {
        "bise": {
            **_evaluate(gated, splits, config, device),
            **sparsity_report(gated.cpu(), masks),
            "selected_epoch": run.best["gates"]["epoch"],
        },
        "history": run.history,
    }
    gated.to(device)
    if ctx.is_main:
        save_safetensors(run_dir / "masks.safetensors", {f"layer{index}": mask for index, mask in enumerate(masks)})
        save_pruned(export_pruned(gated.cpu(), masks), run_dir / "pruned.safetensors", _evaluation_metadata(config))
    finetuned = run.selected_finetuned_model()
    if finetuned is not None:
        finetuned.to(device)
        results["bise_ft"] = {
            **_evaluate(finetuned, splits, config, device),
            **sparsity_report(finetuned.cpu(), masks),
            "selected_epoch": run.best["finetune"]["epoch"],
        }
        if ctx.is_main:
            save_pruned(export_pruned(finetuned.cpu(), masks), run_dir / "pruned_ft.safetensors", _evaluation_metadata(config))
    return results


def _evaluation_metadata(config: ExperimentConfig) -> dict[str, str]:
    """Return the metadata that bise.evaluate needs to rebuild this run's test set and precision."""
    return {"data_source": config.data.source, "data_seed": str(config.data.seed), "precision": config.precision}


def _run_baseline(config, match_config, splits, runs_root, device, overrides) -> dict:
    """Random or weight-magnitude pruning with BISE's per-layer channel counts, no training."""
    vanilla_args = dependency_overrides(overrides, "vanilla")
    vanilla_config = _with_seed(load_config(match_config.resolve(match_config.vanilla_config), vanilla_args), config.seed, vanilla_args)
    vanilla = load_vanilla(vanilla_config, runs_root, device)
    kept = read_json(run_dir_for(match_config, runs_root) / "metrics.json")["results"]["bise"]["kept_per_layer"]
    if config.method == "random":
        masks = random_masks(vanilla.widths, kept, seed=config.seed)
    else:
        masks = magnitude_masks(vanilla, kept)
    vanilla.set_keep_masks(masks)
    return {config.method: {**_evaluate(vanilla, splits, config, device), **sparsity_report(vanilla.cpu(), masks)}}
