"""One experiment end to end: train the diffusion model, train the judges, run the sweep.

Runs live in runs/how_i_met_your_bias/<scale>/<experiment>/seed<seed>/:

    config.yaml        the resolved config
    checkpoint.pt      training state (resume point)
    ema.safetensors    EMA weights the sampler uses
    train.json         training record
    sweep/<key>.json   one record per sampler setting
    grids/<key>.png    samples of each setting, one row per class

Judges (the digit classifier, the BFFHQ gender classifier) are shared by all
experiments of a scale and live in runs/how_i_met_your_bias/<scale>/judges/.
Every stage is skipped when its output exists for the same config, so
rerunning the command resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml

from common.config import ConfigError, config_hash, to_dict
from common.device import choose_device, enable_tf32, seed_everything
from common.distributed import DistContext, barrier
from common.results import atomic_write_text, read_json
from how_i_met_your_bias import classifiers
from how_i_met_your_bias.config import ExperimentConfig
from how_i_met_your_bias.data import bffhq_root, build_training_set
from how_i_met_your_bias.model import load_weights
from how_i_met_your_bias.sweep import Judges, palette_judges, run_sweep
from how_i_met_your_bias.training import TRAIN_RECORD, WEIGHTS, train_diffusion

log = logging.getLogger(__name__)
DEFAULT_RUNS_ROOT = Path("runs")
PAPER = "how_i_met_your_bias"


def run_dir_for(config: ExperimentConfig, runs_root: Path) -> Path:
    return Path(runs_root) / PAPER / config.scale / config.name / f"seed{config.seed}"


def rho_dataset_of(dataset, config: ExperimentConfig) -> dict[str, float]:
    """Return the measured fraction of bias-aligned training images, per bias attribute."""
    if config.data.name == "multicolor_mnist":
        left, right = dataset.aligned_fraction()
        return {"left": float(left), "right": float(right)}
    return {"colour" if config.data.name != "bffhq" else "gender": float(dataset.aligned_fraction())}


def trained_model_ready(config: ExperimentConfig, run_dir: Path) -> bool:
    record = run_dir / TRAIN_RECORD
    if not record.exists() or not (run_dir / WEIGHTS).exists():
        return False
    found = read_json(record).get("config_hash")
    if found != config.hash():
        raise ConfigError(
            f"{run_dir} contains a model trained with config hash {found}, but {config.name!r} now hashes to {config.hash()}; "
            f"move or delete {run_dir} to train the current config"
        )
    return True


def digit_judge(config: ExperimentConfig, runs_root: Path, device: torch.device, ctx: DistContext) -> tuple:
    """Return the digit classifier for this image size and digit source, trained once and cached."""
    settings = dict(to_dict(config.classifier), source=config.data.source, image_size=config.data.image_size, seed=config.seed)
    folder = Path(runs_root) / PAPER / config.scale / "judges"
    path = folder / f"digits-{config.data.source}-{config.data.image_size}px-{config_hash(settings)[:8]}.safetensors"
    if ctx.is_main and not path.exists():
        from common.data.mnist import load_digits

        model, meta = classifiers.train_digit_classifier(
            load_digits(config.data.source), val_size=config.classifier.val_size, image_size=config.data.image_size,
            epochs=config.classifier.epochs, batch_size=config.classifier.batch_size, lr=config.classifier.lr,
            device=device, precision=config.precision, seed=config.seed,
        )
        save_classifier_checked(path, model, meta)
    barrier(ctx)
    return classifiers.load_classifier(path, image_size=config.data.image_size, num_classes=10, device=device)


def save_classifier_checked(path: Path, model, meta: dict) -> None:
    if meta["val_accuracy"] < 0.9:
        log.warning("digit classifier reaches only %.1f%% validation accuracy; fidelity numbers will be noisy",
                    100 * meta["val_accuracy"])
    classifiers.save_classifier(path, model, meta)


def build_judges(config: ExperimentConfig, dataset, runs_root: Path, device: torch.device, ctx: DistContext) -> tuple[Judges, dict]:
    if config.data.name == "bffhq":
        return bffhq_judges(config, runs_root, device, ctx)
    model, meta = digit_judge(config, runs_root, device, ctx)

    def predict_digits(images):
        return classifiers.predict(model, images, batch_size=1024, device=device, precision=config.precision)

    return palette_judges(config, dataset, predict_digits), meta


def bffhq_judges(config: ExperimentConfig, runs_root: Path, device: torch.device, ctx: DistContext) -> tuple[Judges, dict]:
    """Return gender (bias) and age (class) judges: ResNet-18s trained on the BFFHQ training split."""
    from common.data.bffhq import BFFHQ

    root = bffhq_root(config)
    folder = Path(runs_root) / PAPER / config.scale / "judges"
    loaded = {}
    for label, name in (("bias", "gender"), ("target", "age")):
        path = folder / f"bffhq-{name}-{config.data.image_size}px-seed{config.seed}.safetensors"
        if ctx.is_main and not path.exists():
            train_set = BFFHQ(root, "train", image_size=config.data.image_size)
            val_set = BFFHQ(root, "valid", image_size=config.data.image_size)
            model = classifiers.build_classifier("resnet18", 2)
            accuracy = classifiers.train_classifier(
                model, train_set, val_set, label=label, epochs=config.classifier.epochs, batch_size=config.classifier.batch_size,
                lr=config.classifier.lr, device=device, precision=config.precision, seed=config.seed,
            )
            classifiers.save_classifier(path, model, {
                "arch": "resnet18", "image_size": config.data.image_size, "num_classes": 2, "val_accuracy": accuracy,
                "trained_on": f"BFFHQ training split, label {name}; accuracy on the validation split",
            })
        barrier(ctx)
        loaded[name] = classifiers.load_classifier(path, image_size=config.data.image_size, num_classes=2, device=device)

    def classify(name):
        model, _ = loaded[name]
        return lambda images: classifiers.predict(model, images, batch_size=512, device=device, precision=config.precision)

    gender, age = classify("gender"), classify("age")
    judges = Judges(lambda images: gender(images).unsqueeze(1), ("gender",), age,
                    "ResNet-18 age classifier trained on the BFFHQ training split")
    return judges, {name: meta for name, (_, meta) in loaded.items()}


def run_experiment(config: ExperimentConfig, *, runs_root: Path = DEFAULT_RUNS_ROOT, ctx: DistContext = DistContext(),
                   sweep: bool = True) -> dict:
    """Train (or reuse) the model of `config`, then run its sweep; return the run summary."""
    run_dir = run_dir_for(config, runs_root)
    device = choose_device(config.device, ctx.local_rank)
    enable_tf32(True)
    seed_everything(config.seed)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    barrier(ctx)
    dataset = build_training_set(config)
    rho_dataset = rho_dataset_of(dataset, config)
    log.info("%s: %d training images, measured rho_dataset %s (config %.3f)", config.name, len(dataset), rho_dataset, config.data.rho)
    if trained_model_ready(config, run_dir):
        log.info("%s: reusing the trained model in %s", config.name, run_dir)
    else:
        train_diffusion(config, dataset, run_dir, device, ctx)
    summary = {"run_dir": str(run_dir), "rho_dataset": rho_dataset, "train": read_json(run_dir / TRAIN_RECORD), "sweep": []}
    if not sweep or not config.sweep.groups:
        return summary
    judges, judge_meta = build_judges(config, dataset, runs_root, device, ctx)
    unet = load_weights(run_dir / WEIGHTS, config).to(device)
    records = run_sweep(unet, config, judges, rho_dataset, run_dir, device, ctx)
    for record in records:
        record["rho_dataset_config"] = config.data.rho
    summary.update(sweep=records, judges=judge_meta)
    return summary
