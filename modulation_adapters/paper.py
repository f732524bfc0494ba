"""Paper-scale experiment on Visual Decathlon: one frozen ImageNet-12 ResNet-26, then every method on every domain.

    python -m modulation_adapters.paper --config modulation_adapters/configs/paper/decathlon.yaml

The recipe of the residual-adapter line (see the README): SGD with momentum
0.9, learning rate 0.1 divided by 10 at epochs 80 and 100 of 120, batch 128,
weight decay 5e-4 on the heads and 1e-4 on the other per-domain parameters.

A run writes runs/modulation_adapters/paper/<name>/seed<k>/: backbone.safetensors
(the ImageNet-12 backbone, published or trained here), one <entry>.json record
per method entry and, while an entry trains, <entry>/<domain>.pt after every
epoch and <entry>/<domain>.json when a domain is finished. A rerun skips what
is finished and resumes a domain from its last epoch.
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

from common.checkpoint import CheckpointReadError, load_checkpoint, save_checkpoint
from common.config import ConfigError, apply_overrides, config_hash, from_dict, load_yaml, parse_set_pairs, to_dict
from common.device import autocast, choose_device, describe_device, seed_everything
from common.download import DownloadError
from common.results import atomic_write_json, read_json, run_metadata
from modulation_adapters import data
from modulation_adapters.decathlon import BASELINE_ACCURACY, decathlon_score
from modulation_adapters.models import ResNet26, count
from modulation_adapters.pretrained import RebuffiResNet26, load_backbone, load_imagenet12_backbone, save_backbone
from modulation_adapters.runner import Entry, domain_cost
from modulation_adapters.training import METHODS, copy_source_batchnorm, trainable_parameters

log = logging.getLogger(__name__)
ARCHITECTURES = {"rebuffi": RebuffiResNet26, "ours": ResNet26}


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
    path = Path(path)
    values = apply_overrides(load_yaml(path), overrides or {})
    values.pop("defaults", None)
    config = from_dict(PaperConfig, {**values, "path": str(path)}, where=str(path))
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
    if config.architecture not in ARCHITECTURES:
        problems.append(f"architecture {config.architecture!r} is unknown; expected one of {sorted(ARCHITECTURES)}")
    if config.backbone == "published" and (config.architecture != "rebuffi" or config.source != "imagenet12"):
        problems.append("backbone 'published' needs architecture 'rebuffi' and source 'imagenet12'")
    if config.eval_split not in ("val", "test"):
        problems.append(f"eval_split must be val or test, got {config.eval_split!r}")
    if config.eval_split == "test" and not config.test_labels:
        problems.append("eval_split 'test' needs test_labels (the labelled test annotations; see data.prepare_decathlon)")
    for entry in config.entries:
        if entry.method not in METHODS:
            problems.append(f"entry {entry.name!r} has unknown method {entry.method!r}; expected one of {METHODS}")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return config


def build_model(config: PaperConfig, adapter: str = "none", rank: int | None = None) -> ResNet26:
    classes = [data.num_classes(config.benchmark, domain) for domain in (config.source, *config.domains)]
    return ARCHITECTURES[config.architecture](classes, widths=config.widths, stem_width=config.stem_width,
                                              blocks_per_stage=config.blocks_per_stage, adapter=adapter, rank=rank)


def loaders(config: PaperConfig, domain: str, batch_size: int) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    if config.data_root is None:
        raise ConfigError(f"{config.path}: data_root is not set; prepare the data with `python -m modulation_adapters.data "
                          f"--root DIR` and pass --set data_root=DIR")
    root = Path(config.data_root)
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


def train_domain(model: ResNet26, method: str, domain: int, train_loader, schedule: Schedule, device: torch.device,
                 precision: str, checkpoint: Path, label: str) -> None:
    """Train `method` on one domain in place for `schedule.epochs`, resuming from `checkpoint` when it exists."""
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
                                     "scheduler": scheduler.state_dict(), "epoch": epoch + 1})
    for parameter in model.parameters():
        parameter.requires_grad_(True)


def prepare_backbone(config: PaperConfig, directory: Path, device: torch.device) -> Path:
    """The run's backbone file: the published ImageNet-12 weights, a given file, or a source network trained here."""
    path = directory / "backbone.safetensors"
    if path.exists():
        return path
    domains = [config.source, *config.domains]
    model = build_model(config)
    if config.backbone == "published":
        load_imagenet12_backbone(model, config.backbone_path, sha256=config.backbone_sha256)
    elif config.backbone == "pretrain":
        train_loader, test_loader = loaders(config, config.source, config.pretrain.batch_size)
        model.to(device)
        train_domain(model, "finetune", 0, train_loader, config.pretrain, device, config.precision,
                     directory / "pretrain.pt", f"pretrain {config.source}")
        log.info("source accuracy %.2f%%", loader_accuracy(model, test_loader, 0, device, config.precision))
        model.cpu()
    else:
        load_backbone(config.backbone, model, domains=domains)
    save_backbone(path, model, {"domains": domains, "config_hash": config.hash()})
    return path


def run(config: PaperConfig, runs_root: Path = Path("runs"), device_name: str = "auto") -> list[dict]:
    directory = Path(runs_root) / "modulation_adapters" / config.scale / config.name / f"seed{config.seed}"
    directory.mkdir(parents=True, exist_ok=True)
    device = choose_device(device_name)
    seed_everything(config.seed)
    backbone_path = prepare_backbone(config, directory, device)
    domains = [config.source, *config.domains]
    records = []
    for entry in config.entries:
        record_path = directory / f"{entry.name}.json"
        if record_path.exists() and read_json(record_path).get("config_hash") == config.hash():
            records.append(read_json(record_path))
            continue
        started = time.perf_counter()
        adapter = entry.method if entry.method in ("modulation", "series", "parallel") else "none"
        seed_everything(config.seed)
        reference = build_model(config, adapter, entry.rank)
        load_backbone(backbone_path, reference, domains=domains)
        backbone_size = count(reference.backbone_parameters())
        results = {}
        for index, name in enumerate(domains):
            if index == 0:
                continue
            done = directory / entry.name / f"{name}.json"
            if done.exists():
                results[name] = read_json(done)
                continue
            model = reference if entry.method != "finetune" else build_model(config, adapter, entry.rank)
            if entry.method == "finetune":
                load_backbone(backbone_path, model, domains=domains)
            copy_source_batchnorm(model, index)
            model.to(device)
            train_loader, test_loader = loaders(config, name, config.adapt.batch_size)
            train_domain(model, entry.method, index, train_loader, config.adapt, device, config.precision,
                         directory / entry.name / f"{name}.pt", f"{entry.name} {name}")
            results[name] = {"accuracy": loader_accuracy(model, test_loader, index, device, config.precision),
                             "parameters": domain_cost(model, entry.method, index)}
            model.cpu()
            atomic_write_json(done, results[name])
        accuracies = {name: result["accuracy"] for name, result in results.items()}
        known = {name: value for name, value in accuracies.items() if name in BASELINE_ACCURACY}
        record = {"entry": entry.name, "method": entry.method, "rank": entry.rank, "domains": results,
                  "eval_split": config.eval_split, "mean_accuracy": sum(accuracies.values()) / len(accuracies),
                  "score": decathlon_score(known) if config.benchmark == "decathlon" else None,
                  "parameters_over_backbone": sum(r["parameters"] for r in results.values()) / len(results) / backbone_size,
                  **run_metadata(config_hash=config.hash(), seed=config.seed, scale=config.scale,
                                 hardware=describe_device(device), wall_time_s=time.perf_counter() - started)}
        atomic_write_json(record_path, record)
        log.info("%s: mean accuracy %.2f%%, score %s", entry.name, record["mean_accuracy"], record["score"])
        records.append(record)
    return records


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
    except (ConfigError, ValueError, FileNotFoundError, DownloadError, CheckpointReadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({r["entry"]: round(r["mean_accuracy"], 2) for r in records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
