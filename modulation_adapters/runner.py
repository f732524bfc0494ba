"""Smoke-scale experiment: train the source backbone once, then every method on every target domain.

    python -m modulation_adapters.runner --config modulation_adapters/configs/smoke/digits.yaml

A run writes runs/modulation_adapters/<scale>/<name>/seed<k>/: backbone.safetensors
and one <entry>.json record per method entry (per-domain test accuracy and
per-domain parameter cost). Finished entries are skipped on a rerun. Both files
store the config hash, and a rerun whose config hashes differently stops with
an error instead of reusing or overwriting them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
from pathlib import Path

import safetensors
import torch

from common.checkpoint import CheckpointMismatchError, CheckpointReadError, save_safetensors
from common.config import ConfigError, config_hash, from_dict, load_yaml, to_dict
from common.device import seed_everything
from common.results import atomic_write_json, read_json, run_metadata
from modulation_adapters.models import ResNet26, count
from modulation_adapters.smoke_data import DOMAINS, SOURCE, build_smoke_domains
from modulation_adapters.training import METHODS, accuracy, copy_source_batchnorm, train_domain

log = logging.getLogger(__name__)
# Run and entry names become file and folder names in the run folder.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
SMOKE_RENAME = "give the config another name (its name: key)"


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
    problems = name_problems("name", [config.name])
    if not config.entries:
        problems.append("entries is empty, so there is nothing to run; list at least one entry such as "
                        "{name: bn, method: bn}")
    if config.image_size < 8:
        problems.append(f"image_size must be at least 8 pixels, got {config.image_size}")
    problems += layout_problems(config.stem_width, config.widths, config.blocks_per_stage)
    problems += entry_problems(config.entries, config.stem_width, config.widths, config.blocks_per_stage)
    problems += schedule_problems("pretrain", config.pretrain) + schedule_problems("adapt", config.adapt)
    if problems:
        raise config_error(path, problems)
    return config


def config_error(path: Path, problems: list[str]) -> ConfigError:
    """Return one ConfigError listing every problem of the config file at `path`, one per line when there are several."""
    if len(problems) == 1:
        return ConfigError(f"{path}: {problems[0]}")
    return ConfigError(f"{path} has {len(problems)} problems:\n" + "\n".join(f"  - {problem}" for problem in problems))


def name_problems(key: str, names: list[str]) -> list[str]:
    """Return a message for each name that is not a plain file name, because names become files of the run folder."""
    return [f"{key} {name!r} is invalid: use only letters, digits, '_', '.' and '-', not starting with '.', because "
            f"it names files in the run folder" for name in names if not PLAIN_NAME.fullmatch(name) or name.startswith(".")]


def layout_problems(stem_width: int, widths: tuple[int, ...], blocks_per_stage: int) -> list[str]:
    problems = []
    if stem_width < 1:
        problems.append(f"stem_width must be at least 1, got {stem_width}")
    if not widths or min(widths) < 1:
        problems.append(f"widths must list at least one positive channel count, got {list(widths)}")
    if blocks_per_stage < 1:
        problems.append(f"blocks_per_stage must be at least 1, got {blocks_per_stage}")
    return problems


def max_modulation_rank(stem_width: int, widths: tuple[int, ...], blocks_per_stage: int) -> int | None:
    """Return the largest rank that every adapted block convolution accepts: the minimum of min(C_in, C_out).

    The stem is left out because ResNet26 caps its rank at 3. None when the layout has no blocks.
    """
    smallest, channels = None, stem_width
    for width in widths:
        for _ in range(blocks_per_stage):
            full = min(channels, width)
            smallest = full if smallest is None else min(smallest, full)
            channels = width
    return smallest


def entry_problems(entries: tuple[Entry, ...], stem_width: int, widths: tuple[int, ...], blocks_per_stage: int) -> list[str]:
    """Return messages for invalid entries (names, duplicates, unknown methods, ranks), so they fail before any training."""
    names = [entry.name for entry in entries]
    problems = name_problems("entry name", names)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        problems.append(f"entry names must be unique, but {duplicates} appear more than once")
    full = max_modulation_rank(stem_width, widths, blocks_per_stage)
    for entry in entries:
        if entry.method not in METHODS:
            problems.append(f"entry {entry.name!r} has unknown method {entry.method!r}; expected one of {METHODS}")
        elif entry.rank is not None and entry.method != "modulation":
            problems.append(f"entry {entry.name!r} has rank {entry.rank}, but only method 'modulation' has a rank "
                            f"(this entry's method is {entry.method!r}); remove the rank")
        elif entry.rank is not None and full is not None and not 1 <= entry.rank <= full:
            problems.append(f"entry {entry.name!r} has rank {entry.rank}, but a modulation rank must be an integer in "
                            f"[1, {full}] for stem_width {stem_width} and widths {list(widths)} (the full rank of the "
                            f"smallest adapted convolution); use null for full rank")
    return problems


def schedule_problems(section: str, schedule) -> list[str]:
    """Return messages for invalid values of a training schedule (this module's Schedule or paper.Schedule)."""
    problems = []
    if schedule.epochs < 1:
        problems.append(f"{section}.epochs must be at least 1, got {schedule.epochs}")
    if schedule.batch_size < 1:
        problems.append(f"{section}.batch_size must be at least 1, got {schedule.batch_size}")
    if not schedule.lr > 0:
        problems.append(f"{section}.lr must be positive, got {schedule.lr}")
    for field in dataclasses.fields(schedule):
        value = getattr(schedule, field.name)
        if field.name.startswith("weight_decay") and not value >= 0:
            problems.append(f"{section}.{field.name} must be zero or positive, got {value}")
    return problems


def stale_file_error(path: Path, found: str | None, expected: str, run_dir: Path, rename: str) -> ConfigError:
    return ConfigError(
        f"{path} was written by a run with config hash {found or '(none recorded)'}, but this config hashes to "
        f"{expected}, so it can be neither reused nor overwritten. To keep that run, {rename}, or move {run_dir} "
        "away; then run again."
    )


def check_stored(path: Path, stored: dict, expected_hash: str, entry: Entry | None, run_dir: Path, rename: str) -> None:
    """Raise ConfigError unless a stored record, result or checkpoint was written by this config (and this entry)."""
    found = stored.get("config_hash")
    if found != expected_hash:
        raise stale_file_error(path, found, expected_hash, run_dir, rename)
    if entry is not None and (stored.get("method"), stored.get("rank")) != (entry.method, entry.rank):
        raise ConfigError(
            f"{path} was written for method {stored.get('method')!r} with rank {stored.get('rank')!r}, but entry "
            f"{entry.name!r} has method {entry.method!r} with rank {entry.rank!r}. To keep that result, give the entry "
            f"another name, or move {entry.name}.json and {entry.name}/ out of {run_dir}; then run again."
        )


def finished_records(entries: tuple[Entry, ...], expected_hash: str, run_dir: Path, rename: str) -> dict[str, dict]:
    """Return the records of finished entries by entry name, each checked against the config and its entry."""
    finished = {}
    for entry in entries:
        path = run_dir / f"{entry.name}.json"
        if path.exists():
            record = read_json(path)
            check_stored(path, record, expected_hash, entry, run_dir, rename)
            finished[entry.name] = record
    return finished


def read_backbone(path: Path, config: SmokeConfig, run_dir: Path) -> dict[str, torch.Tensor]:
    """Return the tensors of the run's backbone file after checking its config hash and its tensor shapes."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as file:
            metadata = dict(file.metadata() or {})
            state = {name: file.get_tensor(name) for name in file.keys()}
    except (safetensors.SafetensorError, OSError) as error:
        raise CheckpointReadError(
            f"cannot read the backbone {path} ({error}); it may be truncated. Delete it so that the next run trains "
            f"the backbone again, or {SMOKE_RENAME}."
        ) from None
    found = metadata.get("config_hash")
    if found != config.hash():
        raise stale_file_error(path, found, config.hash(), run_dir, SMOKE_RENAME)

    expected = build_model(config).state_dict()
    differences = [f"missing {name}" for name in sorted(set(expected) - set(state))]
    differences += [f"unexpected {name}" for name in sorted(set(state) - set(expected))]
    differences += [f"{name} has shape {tuple(state[name].shape)}, expected {tuple(expected[name].shape)}"
                    for name in sorted(set(state) & set(expected)) if state[name].shape != expected[name].shape]
    if differences:
        raise CheckpointMismatchError(
            f"the backbone {path} does not fit the model of this config (stem_width {config.stem_width}, widths "
            f"{list(config.widths)}, blocks_per_stage {config.blocks_per_stage}); {len(differences)} tensors differ, "
            f"the first: {'; '.join(differences[:3])}. Delete "
            f"it so that the next run trains the backbone again, or {SMOKE_RENAME}."
        )
    return state


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
    backbone_path = run_dir / "backbone.safetensors"
    started = time.perf_counter()
    # Files of an earlier run are checked first, so that a mismatch stops the run before any training.
    state = read_backbone(backbone_path, config, run_dir) if backbone_path.exists() else None
    finished = finished_records(config.entries, config.hash(), run_dir, SMOKE_RENAME)
    if state is not None and len(finished) == len(config.entries):
        log.info("%s: every entry is finished in %s", config.name, run_dir)
        return [finished[entry.name] for entry in config.entries]

    domains = build_smoke_domains(config.image_size, config.seed)
    if state is None:
        seed_everything(config.seed)
        source = domains[SOURCE]
        backbone = train_domain(build_model(config), source.train_images, source.train_targets, 0, "finetune",
                                epochs=config.pretrain.epochs, lr=config.pretrain.lr, batch_size=config.pretrain.batch_size, seed=config.seed)
        save_safetensors(backbone_path, backbone.state_dict(), {"config_hash": config.hash(),
                         "source_accuracy": str(accuracy(backbone, source.test_images, source.test_targets, 0))})
        state = read_backbone(backbone_path, config, run_dir)
    records = []
    for entry in config.entries:
        if entry.name in finished:
            records.append(finished[entry.name])
            continue
        path = run_dir / f"{entry.name}.json"
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
    except (ConfigError, ValueError, CheckpointMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({r["entry"]: round(r["mean_accuracy"], 2) for r in records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
