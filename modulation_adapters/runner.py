"""Smoke-scale experiment: train the source backbone once, then every method on every target domain.

    python -m modulation_adapters.runner --config modulation_adapters/configs/smoke/digits.yaml

A run writes runs/modulation_adapters/<scale>/<name>/seed<k>/: backbone.safetensors
and one <method>.json record per method entry (per-domain test accuracy and
per-domain parameter cost). Finished entries are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from common.checkpoint import load_safetensors, save_safetensors
from common.config import ConfigError, config_hash, from_dict, load_yaml, to_dict
from common.device import seed_everything
from common.results import atomic_write_json, read_json, run_metadata
from modulation_adapters.models import ResNet26, count
from modulation_adapters.smoke_data import DOMAINS, SOURCE, build_smoke_domains
from modulation_adapters.training import METHODS, accuracy, copy_source_batchnorm, train_domain

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    method: str
    rank: int | None = None  # modulation only; null is full rank


@dataclasses.dataclass(frozen=True)
class Schedule:
    epochs: int = 3
    lr: float = 0.05
    batch_size: int = 64
    weight_decay: float = 5e-4


@dataclasses.dataclass(frozen=True)
class SmokeConfig:
    name: str
    scale: str = "smoke"
    seed: int = 0
    image_size: int = 32
    widths: tuple[int, ...] = (16, 32, 64)
    stem_width: int = 16
    blocks_per_stage: int = 2
    pretrain: Schedule = Schedule(epochs=4)
    adapt: Schedule = Schedule()
    entries: tuple[Entry, ...] = ()
    path: str | None = None

    def hash(self) -> str:
        values = to_dict(self)
        values.pop("path")
        values.pop("entries")
        return config_hash(values)


def load_config(path: str | Path) -> SmokeConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    config = from_dict(SmokeConfig, {**load_yaml(path), "path": str(path)}, where=str(path))
    for entry in config.entries:
        if entry.method not in METHODS:
            raise ConfigError(f"{path}: entry {entry.name!r} has unknown method {entry.method!r}; expected one of {METHODS}")
    names = [entry.name for entry in config.entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: entry names must be unique, got {names}")
    return config


def build_model(config: SmokeConfig, adapter: str = "none", rank: int | None = None) -> ResNet26:
    return ResNet26([10] * len(DOMAINS), widths=config.widths, stem_width=config.stem_width,
                    blocks_per_stage=config.blocks_per_stage, adapter=adapter, rank=rank)


def domain_cost(model: ResNet26, method: str, domain: int) -> int:
    """Parameters a new domain adds with `method` (fine-tuning stores a whole network)."""
    if method == "finetune":
        return count(list(model.parameters())) - count([p for d in range(len(model.heads)) if d != domain
                                                        for p in model.domain_parameters(d)])
    if method == "feature":
        return count(list(model.heads[domain].parameters()))
    return count(model.domain_parameters(domain))


def run(config: SmokeConfig, runs_root: Path = Path("runs")) -> list[dict]:
    run_dir = Path(runs_root) / "modulation_adapters" / config.scale / config.name / f"seed{config.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    domains = build_smoke_domains(config.image_size, config.seed)
    backbone_path = run_dir / "backbone.safetensors"
    started = time.perf_counter()
    if not backbone_path.exists():
        seed_everything(config.seed)
        source = domains[SOURCE]
        backbone = train_domain(build_model(config), source.train_images, source.train_targets, 0, "finetune",
                                epochs=config.pretrain.epochs, lr=config.pretrain.lr, batch_size=config.pretrain.batch_size, seed=config.seed)
        save_safetensors(backbone_path, backbone.state_dict(), {"config_hash": config.hash(),
                         "source_accuracy": str(accuracy(backbone, source.test_images, source.test_targets, 0))})
    state = load_safetensors(backbone_path)
    records = []
    for entry in config.entries:
        path = run_dir / f"{entry.name}.json"
        if path.exists() and read_json(path).get("config_hash") == config.hash():
            records.append(read_json(path))
            continue
        entry_started = time.perf_counter()
        adapter = entry.method if entry.method in ("modulation", "series", "parallel") else "none"
        seed_everything(config.seed)
        model = build_model(config, adapter, entry.rank)
        model.load_state_dict(state, strict=False)
        backbone_size = count(model.backbone_parameters())
        results = {}
        for index, name in enumerate(DOMAINS):
            if name == SOURCE:
                continue
            split = domains[name]
            copy_source_batchnorm(model, index)
            trained = train_domain(model, split.train_images, split.train_targets, index, entry.method, epochs=config.adapt.epochs,
                                   lr=config.adapt.lr, batch_size=config.adapt.batch_size, weight_decay=config.adapt.weight_decay,
                                   seed=config.seed)
            results[name] = {"accuracy": accuracy(trained, split.test_images, split.test_targets, index),
                             "parameters": domain_cost(model, entry.method, index)}
        record = {"entry": entry.name, "method": entry.method, "rank": entry.rank, "domains": results,
                  "mean_accuracy": sum(r["accuracy"] for r in results.values()) / len(results),
                  "parameters_over_backbone": sum(r["parameters"] for r in results.values()) / len(results) / backbone_size,
                  **run_metadata(config_hash=config.hash(), seed=config.seed, scale=config.scale,
                                 hardware=_hardware(), wall_time_s=time.perf_counter() - entry_started)}
        atomic_write_json(path, record)
        log.info("%s: mean target accuracy %.1f%%, %.3f x backbone per domain", entry.name, record["mean_accuracy"],
                 record["parameters_over_backbone"])
        records.append(record)
    log.info("%s: %d entries in %.0f s", config.name, len(records), time.perf_counter() - started)
    return records


def _hardware() -> str:
    from common.device import choose_device, describe_device

    return describe_device(choose_device("cpu"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modulation_adapters.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--runs-root", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        records = run(load_config(args.config), args.runs_root)
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({r["entry"]: round(r["mean_accuracy"], 2) for r in records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
