"""Paper-scale experiment on Visual Decathlon: one frozen ImageNet-12 ResNet-26, then every method on every domain.

    python -m modulation_adapters.paper --config modulation_adapters/configs/paper/decathlon.yaml

Training follows the recipe of the residual-adapter code. It uses SGD with
momentum 0.9 and batch 128 for 120 epochs, with the learning rate 0.1 divided
by 10 at epochs 80 and 100. Weight decay is 5e-4 on the heads and 1e-4 on the
other per-domain parameters.

A run writes runs/modulation_adapters/paper/<name>/seed<k>/: backbone.safetensors
(the ImageNet-12 backbone, published or trained here), one <entry>.json record
per method entry and, while an entry trains, <entry>/<domain>.pt after every
epoch and <entry>/<domain>.json when a domain is finished. A rerun skips what
is finished and resumes a domain from its last epoch. Every one of these files
stores the config hash (and the entry's method and rank), and a rerun whose
config differs stops with an error naming the file instead of reusing or
overwriting it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.checkpoint import CheckpointMismatchError, CheckpointReadError, load_checkpoint, save_checkpoint
from common.config import ConfigError, apply_overrides, config_hash, from_dict, load_yaml, parse_set_pairs, to_dict
from common.device import autocast, choose_device, describe_device, seed_everything
from common.download import DownloadError
from common.results import atomic_write_json, read_json, run_metadata
from modulation_adapters import data
from modulation_adapters.decathlon import BASELINE_ACCURACY, decathlon_score
from modulation_adapters.models import ResNet26, count
from modulation_adapters.pretrained import (
    DRIVE_PAGE_URL,
    BackboneMismatchError,
    RebuffiResNet26,
    load_backbone,
    load_imagenet12_backbone,
    read_backbone_meta,
    save_backbone,
)
from modulation_adapters.runner import (
    Entry,
    check_stored,
    config_error,
    domain_cost,
    entry_problems,
    finished_records,
    layout_problems,
    name_problems,
    schedule_problems,
)
from modulation_adapters.training import copy_source_batchnorm, trainable_parameters

log = logging.getLogger(__name__)
ARCHITECTURES = {"rebuffi": RebuffiResNet26, "ours": ResNet26}
BACKBONE_CHOICES = ("published", "pretrain")
PRECISIONS = ("fp32", "bf16")  # fp16 would need loss scaling, which train_domain does not do
RENAME = "use another run name (--set name=NEW)"


@dataclasses.dataclass(frozen=True)
class Schedule:
    epochs: int = 120
    lr: float = 0.1
    milestones: tuple[int, ...] = (80, 100)
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay_head: float = 5e-4
    weight_decay_domain: float = 1e-4  # adapters and BatchNorms (and the backbone, when fine-tuning)


@dataclasses.dataclass(frozen=True)
class PaperConfig:
    name: str
    scale: str = "paper"
    benchmark: str = "decathlon"
    source: str = "imagenet12"
    domains: tuple[str, ...] = ()  # target domains, trained one by one
    data_root: str | None = None  # the prepared Decathlon folder (python -m modulation_adapters.data)
    eval_split: str = "val"  # "test" needs test_labels
    test_labels: str | None = None
    backbone: str = "published"  # "published", "pretrain" (train on the source here) or the path of a save_backbone file
    backbone_path: str | None = None  # a local copy of the published file (see pretrained.py)
    backbone_sha256: str | None = None
    architecture: str = "rebuffi"
    widths: tuple[int, ...] = (64, 128, 256)
    stem_width: int = 32
    blocks_per_stage: int = 4
    pretrain: Schedule = Schedule()
    adapt: Schedule = Schedule()
    workers: int = 8
    precision: str = "bf16"
    seed: int = 0
    entries: tuple[Entry, ...] = ()
    path: str | None = None

    def hash(self) -> str:
        values = to_dict(self)
        for key in ("path", "entries", "data_root", "workers", "backbone_path"):
            values.pop(key)
        return config_hash(values)


def load_config(path: str | Path, overrides: dict | None = None) -> PaperConfig:
    """Load a paper config with `overrides` (dotted keys) applied, and check every value that needs no data."""
    path = Path(path)
    values = apply_overrides(load_yaml(path), overrides or {})
    values.pop("defaults", None)
    config = from_dict(PaperConfig, {**values, "path": str(path)}, where=str(path))
    problems = name_problems("name", [config.name]) + _domain_problems(config) + _backbone_problems(config)
    problems += layout_problems(config.stem_width, config.widths, config.blocks_per_stage)
    problems += entry_problems(config.entries, config.stem_width, config.widths, config.blocks_per_stage)
    problems += _training_problems(config)
    if problems:
        raise config_error(path, problems)
    return config


def _domain_problems(config: PaperConfig) -> list[str]:
    known = data.DECATHLON_DOMAINS if config.benchmark == "decathlon" else data.SKETCH_DOMAINS
    problems = []
    if config.benchmark != "decathlon":
        problems.append(f"benchmark {config.benchmark!r}: only 'decathlon' has a paper runner (ImageNet-to-Sketch needs the "
                        f"ResNet-50 of Piggyback, which is not built; its loaders are in data.py)")
    for domain in (config.source, *config.domains):
        if domain not in known:
            problems.append(f"unknown domain {domain!r}; expected one of {known}")
    if config.source in config.domains:
        problems.append(f"the source domain {config.source!r} is also listed as a target")
    repeated = sorted({domain for domain in config.domains if config.domains.count(domain) > 1})
    if repeated:
        problems.append(f"domains lists {repeated} more than once")
    if config.eval_split not in ("val", "test"):
        problems.append(f"eval_split must be val or test, got {config.eval_split!r}")
    if config.eval_split == "test" and not config.test_labels:
        problems.append("eval_split 'test' needs test_labels (the labelled test annotations; see data.prepare_decathlon)")
    return problems


def _backbone_problems(config: PaperConfig) -> list[str]:
    problems = []
    if config.architecture not in ARCHITECTURES:
        problems.append(f"architecture {config.architecture!r} is unknown; expected one of {sorted(ARCHITECTURES)}")
    if config.backbone not in BACKBONE_CHOICES and not Path(config.backbone).is_file():
        problems.append(f"backbone {config.backbone!r} is neither a choice nor an existing file; expected 'published' "
                        "(the residual-adapter ImageNet-12 weights), 'pretrain' (train on the source domain here) or the "
                        "path of a file written by pretrained.save_backbone")
    if config.backbone == "published" and (config.architecture != "rebuffi" or config.source != "imagenet12"):
        problems.append("backbone 'published' needs architecture 'rebuffi' and source 'imagenet12'")
    if config.backbone == "published" and config.backbone_path is not None and not Path(config.backbone_path).is_file():
        problems.append(f"backbone_path {config.backbone_path!r} is not a file; expected a local copy of the published "
                        "ImageNet-12 ResNet-26, converted to a state dict as pretrained.py explains")
    return problems


def _training_problems(config: PaperConfig) -> list[str]:
    problems = []
    if config.precision not in PRECISIONS:
        problems.append(f"precision must be one of {PRECISIONS}, got {config.precision!r} (fp16 would need loss scaling, "
                        "which this runner does not do)")
    if config.workers < 0:
        problems.append(f"workers must be 0 (load in the main process) or more, got {config.workers}")
    for section, schedule in (("pretrain", config.pretrain), ("adapt", config.adapt)):
        problems += schedule_problems(section, schedule)
        milestones = list(schedule.milestones)
        increasing = all(earlier < later for earlier, later in zip(milestones, milestones[1:]))
        within_epochs = all(1 <= milestone < schedule.epochs for milestone in milestones)
        if not (increasing and within_epochs):
            problems.append(f"{section}.milestones must be increasing epochs from 1 to {section}.epochs - 1 = "
                            f"{schedule.epochs - 1}, got {milestones}")
        if not 0 <= schedule.momentum < 1:
            problems.append(f"{section}.momentum must be in [0, 1), got {schedule.momentum}")
    return problems


def build_model(config: PaperConfig, adapter: str = "none", rank: int | None = None) -> ResNet26:
    classes = [data.num_classes(config.benchmark, domain) for domain in (config.source, *config.domains)]
    return ARCHITECTURES[config.architecture](classes, widths=config.widths, stem_width=config.stem_width,
                                              blocks_per_stage=config.blocks_per_stage, adapter=adapter, rank=rank)


def check_data_root(config: PaperConfig) -> Path:
    """Return the data root, raising ConfigError when it is not set or not a folder."""
    prepare = "prepare the data with `python -m modulation_adapters.data --root DIR` and pass --set data_root=DIR"
    if config.data_root is None:
        raise ConfigError(f"{config.path}: data_root is not set; {prepare}")
    root = Path(config.data_root)
    if not root.is_dir():
        raise ConfigError(f"{config.path}: data_root {root} does not exist or is not a folder; {prepare}")
    return root


def loaders(config: PaperConfig, domain: str, batch_size: int) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    root = check_data_root(config)
    train = data.DecathlonDataset(root, domain, "train")
    test = data.DecathlonDataset(root, domain, config.eval_split, test_labels=config.test_labels)
    options = {"num_workers": config.workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": config.workers > 0}
    return (torch.utils.data.DataLoader(train, batch_size, shuffle=True, drop_last=len(train) > batch_size, **options),
            torch.utils.data.DataLoader(test, 2 * batch_size, **options))


def optimizer_for(model: ResNet26, method: str, domain: int, schedule: Schedule) -> torch.optim.SGD:
    parameters = trainable_parameters(model, method, domain)
    head = {id(p) for p in model.heads[domain].parameters()}
    groups = [{"params": [p for p in parameters if id(p) in head], "weight_decay": schedule.weight_decay_head},
              {"params": [p for p in parameters if id(p) not in head], "weight_decay": schedule.weight_decay_domain}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=schedule.lr, momentum=schedule.momentum)


@torch.no_grad()
def loader_accuracy(model: ResNet26, loader, domain: int, device: torch.device, precision: str) -> float:
    model.eval()
    model.set_domain(domain)
    correct = total = 0
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, precision):
            correct += (model(images).argmax(1) == targets).sum().item()
        total += len(targets)
    return 100.0 * correct / total


def stamp(config: PaperConfig, entry: Entry) -> dict:
    """Return the provenance fields stored in every per-domain result and checkpoint, compared on reuse by runner.check_stored."""
    return {"config_hash": config.hash(), "method": entry.method, "rank": entry.rank}


def train_domain(model: ResNet26, config: PaperConfig, entry: Entry, domain: int, train_loader, schedule: Schedule,
                 device: torch.device, checkpoint: Path, label: str) -> None:
    """Train `entry.method` on one domain in place for `schedule.epochs`, resuming from `checkpoint` when it exists.

    A checkpoint written by another config or entry raises ConfigError.
    """
    method, precision = entry.method, config.precision
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    parameters = trainable_parameters(model, method, domain)
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = optimizer_for(model, method, domain, schedule)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(schedule.milestones), gamma=0.1)
    start = 0
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        check_stored(checkpoint, state, config.hash(), entry, checkpoint.parent, RENAME)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["epoch"]
        log.info("%s: resuming at epoch %d", label, start)
    model.set_domain(domain)
    for epoch in range(start, schedule.epochs):
        model.train()
        if method == "feature":
            model.eval()  # the source BatchNorm statistics stay as they are
        total = 0.0
        for images, targets in tqdm(train_loader, desc=f"{label} epoch {epoch + 1}/{schedule.epochs}", leave=False,
                                    dynamic_ncols=True, disable=not sys.stderr.isatty()):
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with autocast(device, precision):
                loss = F.cross_entropy(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        scheduler.step()
        log.info("%s: epoch %d/%d mean loss %.4f", label, epoch + 1, schedule.epochs, total / max(len(train_loader), 1))
        save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "epoch": epoch + 1, **stamp(config, entry)})
    for parameter in model.parameters():
        parameter.requires_grad_(True)


def check_run_backbone(config: PaperConfig, path: Path) -> None:
    """Raise unless the run folder's backbone file `path` is readable and was written by this config."""
    try:
        meta = read_backbone_meta(path)
    except CheckpointReadError as error:
        raise CheckpointReadError(f"{error} The run rebuilds its backbone when the file is missing: delete {path}, "
                                  f"or {RENAME}.") from None
    check_stored(path, meta, config.hash(), None, path.parent, RENAME)


def prepare_backbone(config: PaperConfig, directory: Path, device: torch.device) -> Path:
    """Return the run's backbone file: the published ImageNet-12 weights, a given file, or a source network trained here.

    An existing file is reused only when this config wrote it.
    """
    path = directory / "backbone.safetensors"
    if path.exists():
        check_run_backbone(config, path)
        return path
    if config.backbone == "published" and config.backbone_path is None and config.backbone_sha256 is None:
        raise ConfigError(
            f"{config.path}: backbone 'published' needs backbone_sha256 or backbone_path. No checksum of the published "
            f"file exists, so it is downloaded only with --set backbone_sha256=HEX (the sha256sum of a copy you trust). "
            f"Or pass --set backbone_path=FILE, a local copy converted to a state dict as pretrained.py explains. The "
            f"reproduce script takes them as BACKBONE_SHA256=HEX or BACKBONE_PATH=FILE. The file is linked from "
            f"{DRIVE_PAGE_URL}."
        )
    domains = [config.source, *config.domains]
    model = build_model(config)
    if config.backbone == "published":
        load_imagenet12_backbone(model, config.backbone_path, sha256=config.backbone_sha256)
    elif config.backbone == "pretrain":
        train_loader, test_loader = loaders(config, config.source, config.pretrain.batch_size)
        model.to(device)
        train_domain(model, config, Entry("pretrain", "finetune"), 0, train_loader, config.pretrain, device,
                     directory / "pretrain.pt", f"pretrain {config.source}")
        log.info("source accuracy %.2f%%", loader_accuracy(model, test_loader, 0, device, config.precision))
        model.cpu()
    else:
        load_backbone(config.backbone, model, domains=domains)
    save_backbone(path, model, {"domains": domains, "config_hash": config.hash()})
    return path


def finished_domains(config: PaperConfig, entry: Entry, directory: Path) -> dict[str, dict]:
    """Return the finished domain results of an entry by domain name, after checking every file it left.

    The checkpoint of an unfinished domain is checked here too, so that a mismatch stops the run before training.
    """
    results = {}
    for name in config.domains:
        done = directory / entry.name / f"{name}.json"
        checkpoint = done.with_suffix(".pt")
        if done.exists():
            stored = read_json(done)
            check_stored(done, stored, config.hash(), entry, directory, RENAME)
            results[name] = {"accuracy": stored["accuracy"], "parameters": stored["parameters"]}
        elif checkpoint.exists():
            check_stored(checkpoint, load_checkpoint(checkpoint), config.hash(), entry, directory, RENAME)
    return results


def run(config: PaperConfig, runs_root: Path = Path("runs"), device_name: str = "auto") -> list[dict]:
    check_data_root(config)
    directory = Path(runs_root) / "modulation_adapters" / config.scale / config.name / f"seed{config.seed}"
    directory.mkdir(parents=True, exist_ok=True)

    # Files of an earlier run are checked before the backbone is prepared or anything is trained.
    if (directory / "backbone.safetensors").exists():
        check_run_backbone(config, directory / "backbone.safetensors")
    finished = finished_records(config.entries, config.hash(), directory, RENAME)
    partial = {entry.name: finished_domains(config, entry, directory) for entry in config.entries if entry.name not in finished}

    device = choose_device(device_name)
    seed_everything(config.seed)
    backbone_path = prepare_backbone(config, directory, device)
    records = []
    for entry in config.entries:
        if entry.name in finished:
            records.append(finished[entry.name])
            continue
        record = train_entry(config, entry, directory, backbone_path, device, partial[entry.name])
        atomic_write_json(directory / f"{entry.name}.json", record)
        log.info("%s: mean accuracy %.2f%%, score %s", entry.name, record["mean_accuracy"], record["score"])
        records.append(record)
    return records


def train_entry(config: PaperConfig, entry: Entry, directory: Path, backbone_path: Path, device: torch.device,
                finished: dict[str, dict]) -> dict:
    """Train one entry on every target domain not in `finished`, and return the entry's record."""
    started = time.perf_counter()
    domains = [config.source, *config.domains]
    adapter = entry.method if entry.method in ("modulation", "series", "parallel") else "none"
    seed_everything(config.seed)
    reference = build_model(config, adapter, entry.rank)
    load_backbone(backbone_path, reference, domains=domains)
    backbone_size = count(reference.backbone_parameters())

    results = {}
    for index, name in enumerate(domains):
        if index == 0:
            continue
        if name in finished:
            results[name] = finished[name]
            continue
        model = reference if entry.method != "finetune" else build_model(config, adapter, entry.rank)
        if entry.method == "finetune":
            load_backbone(backbone_path, model, domains=domains)
        copy_source_batchnorm(model, index)
        model.to(device)
        train_loader, test_loader = loaders(config, name, config.adapt.batch_size)
        train_domain(model, config, entry, index, train_loader, config.adapt, device,
                     directory / entry.name / f"{name}.pt", f"{entry.name} {name}")
        results[name] = {"accuracy": loader_accuracy(model, test_loader, index, device, config.precision),
                         "parameters": domain_cost(model, entry.method, index)}
        model.cpu()
        atomic_write_json(directory / entry.name / f"{name}.json", {**results[name], **stamp(config, entry)})

    accuracies = {name: result["accuracy"] for name, result in results.items()}
    known = {name: value for name, value in accuracies.items() if name in BASELINE_ACCURACY}
    return {"entry": entry.name, "method": entry.method, "rank": entry.rank, "domains": results,
            "eval_split": config.eval_split, "mean_accuracy": sum(accuracies.values()) / len(accuracies),
            "score": decathlon_score(known) if config.benchmark == "decathlon" else None,
            "parameters_over_backbone": sum(r["parameters"] for r in results.values()) / len(results) / backbone_size,
            **run_metadata(config_hash=config.hash(), seed=config.seed, scale=config.scale,
                           hardware=describe_device(device), wall_time_s=time.perf_counter() - started)}


def backbone_fix(error: BackboneMismatchError) -> str:
    """Return the command-line form of the fix for a backbone checkpoint that does not fit the config's model."""
    saved = error.saved
    if error.setting in ("widths", "stem_width", "blocks_per_stage"):
        value = f"[{','.join(map(str, saved))}]" if isinstance(saved, (list, tuple)) else saved
        setting = f"--set {error.setting}={value}"
    elif error.setting == "architecture":
        keys = {architecture.__name__: key for key, architecture in ARCHITECTURES.items()}
        setting = f"--set architecture={keys.get(saved, saved)}"
    elif error.setting == "domains" and isinstance(saved, list) and saved:
        setting = f"--set source={saved[0]} domains=[{','.join(saved[1:])}]"
    else:
        setting = "setting source and domains to the domains the backbone was saved with"
    return (f"From the command line: {setting} builds a model that fits this backbone, or pass another backbone with "
            "--set backbone=published, backbone=pretrain or backbone=PATH. If the file is the run folder's "
            f"backbone.safetensors, {RENAME} or move the run folder away.")


def _error_text(error: OSError) -> str:
    """Return an OSError's message, without the worker traceback that DataLoader puts in front of it."""
    text = str(error)
    if text.startswith("Caught "):
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else text
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modulation_adapters.paper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys, e.g. data_root=/data/decathlon")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        records = run(load_config(args.config, parse_set_pairs(args.set)), args.runs_root, args.device)
    except BackboneMismatchError as error:
        print(f"error: {error} {backbone_fix(error)}", file=sys.stderr)
        return 2
    except (ConfigError, ValueError, DownloadError, CheckpointReadError, CheckpointMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a missing file, or an image that cannot be decoded (data.load_rgb names it)
        print(f"error: {_error_text(error)}", file=sys.stderr)
        return 2
    print(json.dumps({r["entry"]: round(r["mean_accuracy"], 2) for r in records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
