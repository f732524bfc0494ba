"""The sampler sweep: one result record and one sample grid per setting.

For each setting the trained model draws `samples_per_class` images of every
class. Each image's bias attribute is measured: palette matching for the
MNIST sets, a gender classifier for BFFHQ. A digit classifier checks that
the image shows its conditioning class. The record contains the
class-by-bias counts, rho_model with its exact 95% interval, the bias
amplification rho_model - rho_dataset and that fidelity.

Records are written atomically as each setting finishes. A rerun skips the
settings whose record matches the model and the sample count, so an
interrupted sweep resumes where it stopped. Under torchrun the settings are
shared out between the processes.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from common.device import autocast, describe_device
from common.distributed import DistContext, barrier
from common.results import atomic_write_json, read_json, run_metadata
from how_i_met_your_bias import bias as bias_measure
from how_i_met_your_bias import metrics
from how_i_met_your_bias.config import ExperimentConfig, sweep_settings
from how_i_met_your_bias.data import conditioning_digits
from how_i_met_your_bias.samplers import GuidedDenoiser, SamplerSetting, sample

log = logging.getLogger(__name__)
SWEEP_DIR = "sweep"
GRID_DIR = "grids"


@dataclasses.dataclass
class Judges:
    """Callables that measure a generated image: its bias attribute(s) and the class it shows."""

    measure_bias: callable  # images -> (N, A) long tensor, one column per bias attribute; label c is aligned with class c
    attribute_names: tuple[str, ...]
    predict_class: callable | None  # images -> (N,) predicted conditioning class, or None when unavailable
    fidelity_note: str


def generate(
    unet: torch.nn.Module,
    config: ExperimentConfig,
    setting: SamplerSetting,
    device: torch.device,
    *,
    samples_per_class: int,
    batch_size: int,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `samples_per_class` images of every class; returns (images on CPU, labels).

    Batch b always starts from the noise of generator seed (seed, b), so two
    settings start from the same noise: comparisons between settings do not
    carry the variance of different starting points.
    """
    labels = torch.arange(config.num_classes).repeat_interleave(samples_per_class)
    shape = (3, config.data.image_size, config.data.image_size)
    denoiser = GuidedDenoiser(unet, config.num_classes, setting.w, autocast=lambda: autocast(device, config.precision))
    outputs = []
    starts = range(0, len(labels), batch_size)
    for batch, start in enumerate(tqdm(starts, desc=setting.key, leave=False, disable=not progress)):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + batch)
        batch_labels = labels[start:start + batch_size].to(device)
        outputs.append(sample(denoiser, setting, config.noise, batch_labels, shape, generator).cpu())
    return torch.cat(outputs), labels


def save_grid(path: Path, images: torch.Tensor, labels: torch.Tensor, per_class: int) -> None:
    """Save a grid of `per_class` samples per class, one row per class."""
    rows = [images[labels == c][:per_class] for c in labels.unique().tolist()]
    grid = make_grid(torch.cat(rows), nrow=per_class, padding=1, normalize=True, value_range=(-1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.tmp{path.suffix or '.png'}")
    save_image(grid, temp)
    temp.replace(path)


def record_path(run_dir: Path, setting: SamplerSetting) -> Path:
    return run_dir / SWEEP_DIR / f"{setting.key}.json"


def finished(path: Path, config: ExperimentConfig) -> bool:
    """Return whether `path` contains a record of this model at this sample count (anything else is redone)."""
    if not path.exists():
        return False
    try:
        record = read_json(path)
    except ValueError as error:
        log.warning("%s; running that setting again", error)
        return False
    return record.get("config_hash") == config.hash() and record.get("samples_per_class") == config.sweep.samples_per_class


def measure_setting(
    unet: torch.nn.Module,
    config: ExperimentConfig,
    setting: SamplerSetting,
    judges: Judges,
    rho_dataset: dict[str, float],
    device: torch.device,
    *,
    progress: bool = False,
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Sample one setting and measure it; returns (record without provenance, images, labels)."""
    started = time.perf_counter()
    images, labels = generate(unet, config, setting, device, samples_per_class=config.sweep.samples_per_class,
                              batch_size=config.sweep.batch_size, progress=progress)
    sampling_s = time.perf_counter() - started
    bias = judges.measure_bias(images)
    correct = None if judges.predict_class is None else (judges.predict_class(images) == labels).numpy()
    attributes = {}
    for column, name in enumerate(judges.attribute_names):
        report = metrics.bias_report(labels.numpy(), bias[:, column].numpy(), config.num_classes, rho_dataset[name], correct=correct)
        attributes[name] = report.to_dict()
    first = next(iter(attributes.values()))
    fidelity = None
    if correct is not None:
        fidelity = {"value": first["fidelity"], "ci_low": first["fidelity_ci_low"], "ci_high": first["fidelity_ci_high"]}
    evaluations = setting.unet_evaluations(len(labels))
    record = {
        "experiment": config.name,
        "key": setting.key,
        "setting": dataclasses.asdict(setting),
        "samples_per_class": config.sweep.samples_per_class,
        "num_classes": config.num_classes,
        "attributes": attributes,
        "fidelity": fidelity,
        "fidelity_judge": judges.fidelity_note,
        "unet_evaluations": evaluations,
        "sampling_s": round(sampling_s, 2),
        "unet_evaluations_per_s": round(evaluations / max(sampling_s, 1e-9), 1),
    }
    return record, images, labels


def run_sweep(
    unet: torch.nn.Module,
    config: ExperimentConfig,
    judges: Judges,
    rho_dataset: dict[str, float],
    run_dir: Path,
    device: torch.device,
    ctx: DistContext = DistContext(),
) -> list[dict]:
    """Run every setting of config.sweep not yet recorded; return all records of this run."""
    settings = sweep_settings(config)
    todo = [s for s in settings if not finished(record_path(run_dir, s), config)]
    if len(todo) < len(settings):
        log.info("%s: %d of %d sweep settings already recorded; running the other %d",
                 config.name, len(settings) - len(todo), len(settings), len(todo))
    progress = ctx.is_main and sys.stderr.isatty()
    unet.eval()
    for index, setting in enumerate(tqdm(todo, desc=f"sweep {config.name}", disable=not progress)):
        if index % ctx.world_size != ctx.rank:
            continue
        record, images, labels = measure_setting(unet, config, setting, judges, rho_dataset, device, progress=progress)
        record["groups"] = settings[setting]
        record["overrides"] = dict(config.overrides)
        record.update(run_metadata(config_hash=config.hash(), seed=config.seed, scale=config.scale,
                                   hardware=describe_device(device), wall_time_s=record["sampling_s"]))
        save_grid(run_dir / GRID_DIR / f"{setting.key}.png", images, labels, config.sweep.grid_per_class)
        atomic_write_json(record_path(run_dir, setting), record)
        summary = ", ".join(f"{name} rho_model {report['rho_model']:.3f}" for name, report in record["attributes"].items())
        fidelity = "" if record["fidelity"] is None else f", fidelity {record['fidelity']['value']:.3f}"
        log.info("%s %s: %s%s (%.0f UNet evaluations/s)", config.name, setting.key, summary, fidelity,
                 record["unet_evaluations_per_s"])
    barrier(ctx)
    return [read_json(record_path(run_dir, s)) for s in settings]


def palette_judges(config: ExperimentConfig, dataset, classifier_predict: callable | None) -> Judges:
    """Judges for the MNIST sets: palette matching for the colour(s), a digit classifier for the class."""
    digits = conditioning_digits(config)
    if config.data.name == "multicolor_mnist":
        left, right = dataset.palettes

        def measure(images):
            return bias_measure.match_multicolor(images, left, right)

        names = ("left", "right")
    else:
        palette = dataset.palette

        def measure(images):
            return bias_measure.match_palette(images, palette).unsqueeze(1)

        names = ("colour",)
    predict = None
    if classifier_predict is not None:
        to_class = torch.full((10,), -1, dtype=torch.long)  # digits no class shows map to -1
        to_class[torch.tensor(digits)] = torch.arange(len(digits))

        def predict(images):
            return to_class[classifier_predict(images).cpu()]

    note = "10-way digit classifier trained on unbiased Biased MNIST (training digits)"
    return Judges(measure, names, predict, note)

