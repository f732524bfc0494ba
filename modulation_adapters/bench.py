"""Training-step cost of each method against the frozen backbone with a new head; writes benchmarks/modadapters.md and .json.

    python -m modulation_adapters.bench            # or: make bench-modadapters

ResNet-26 at the residual-adapter widths (64, 128, 256), 64 px, batch 128, random
data. The target is a modulation step costing at most 1.3 times a feature
extractor step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from common.benchmark import median_time
from common.device import choose_device, describe_device
from modulation_adapters.models import ResNet26
from modulation_adapters.training import trainable_parameters

REPO_ROOT = Path(__file__).resolve().parents[1]
CASES = [("feature", "none", None), ("bn", "none", None), ("modulation", "modulation", 4), ("modulation", "modulation", None),
         ("series", "series", None), ("parallel", "parallel", None), ("finetune", "none", None)]


def rank_label(method: str, rank: int | None) -> str:
    """Return the rank column text: the rank of a modulation case ("full" when None), "-" for other methods."""
    if method != "modulation":
        return "-"
    return "full" if rank is None else str(rank)


def step_time(method: str, adapter: str, rank: int | None, batch: int, size: int, device, repeats: int) -> float:
    torch.manual_seed(0)
    model = ResNet26([10, 10], adapter=adapter, rank=rank).to(device).train()
    model.set_domain(1)
    parameters = trainable_parameters(model, method, 1)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=device)
    targets = torch.randint(0, 10, (batch,), device=device)

    def step():
        loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return median_time(step, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks")
    args = parser.parse_args(argv)
    device = choose_device("auto")
    rows = []
    for method, adapter, rank in CASES:
        seconds = step_time(method, adapter, rank, args.batch, args.size, device, args.repeats)
        rows.append({"method": method, "rank": rank, "step_s": seconds})
        print(f"{method:<11} rank {rank_label(method, rank)}: {seconds:.3f} s per step", flush=True)
    base = rows[0]["step_s"]
    results = {"command": "make bench-modadapters", "hardware": describe_device(device), "torch": torch.__version__,
               "batch": args.batch, "size": args.size, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "modadapters.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Modulation Adapters benchmarks", "",
             f"Command: `make bench-modadapters`. Machine: {results['hardware']}; torch {results['torch']}. ResNet-26 (widths 64/128/256, "
             f"stem 32), batch {args.batch}, {args.size} px, random data, SGD step on the method's own parameters, median of "
             f"{args.repeats} steps.", "",
             "| method | rank | step (s) | ratio to the feature extractor | modulation target: at most 1.3 |", "|---|---|---|---|---|"]
    for row in rows:
        rank = rank_label(row["method"], row["rank"])
        target = ""
        if row["method"] == "modulation":
            target = "met" if row["step_s"] / base <= 1.3 else "not met"
        lines.append(f"| {row['method']} | {rank} | {row['step_s']:.3f} | {row['step_s'] / base:.2f} | {target} |")
    lines += ["", "The feature extractor needs no backward pass through the convolutions; every other method does, "
              "because its parameters sit inside the network.", ""]
    (args.out / "modadapters.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'modadapters.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
