"""Throughput of BISE's stages on this machine; writes benchmarks/bise.md and .json.

    python -m bise.bench            # or: make bench-bise

Measures images/s of vanilla training and gate training, in fp32 and in
bf16 autocast. Times one C_aux refinement with cached and with uncached
features. Compares the inference time of the physically pruned network with
the gated one at batch 256, next to their MFLOPs ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bise.aux import train_aux
from bise.losses import batch_mutual_information, reweighted_cross_entropy
from bise.models import BiasClassifier, SimpleConvNet
from bise.prune import count_macs, export_pruned, random_masks
from common.benchmark import median_time
from common.data.biased_mnist import build_splits
from common.data.mnist import load_embedded_mnist
from common.device import autocast, choose_device, describe_device

REPO_ROOT = Path(__file__).resolve().parents[1]


def bench_training(device, precision: str, batch_size: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, 28, 28, device=device)
    targets = torch.randint(0, 10, (batch_size,), device=device)
    bias = torch.randint(0, 10, (batch_size,), device=device)

    model = SimpleConvNet().to(device).train()
    for parameter in model.gate_parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=0.01, momentum=0.9)

    def vanilla_step():
        with autocast(device, precision):
            loss = F.cross_entropy(model(images).float(), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    gated = SimpleConvNet().to(device).eval()
    gated.set_gates_active(True)
    for parameter in gated.weight_parameters():
        parameter.requires_grad_(False)
    aux = BiasClassifier(128, 10).to(device)
    for parameter in aux.parameters():
        parameter.requires_grad_(False)
    gate_optimizer = torch.optim.SGD(gated.gate_parameters(), lr=0.01, momentum=0.9)

    def gate_step():
        with autocast(device, precision):
            logits, z = gated(images, return_features=True)
        loss = reweighted_cross_entropy(logits, targets, bias, 0.99, 10)
        loss = loss + batch_mutual_information(aux(z.float()), bias, 10)
        gate_optimizer.zero_grad()
        loss.backward()
        gate_optimizer.step()

    return {
        "vanilla_images_per_s": batch_size / median_time(vanilla_step, repeats),
        "gates_images_per_s": batch_size / median_time(gate_step, repeats),
    }


def bench_aux(device, precision: str, num_samples: int, epochs: int) -> dict[str, float]:
    splits = build_splits(load_embedded_mnist(), 0.99, seed=0, val_size=0, train_size=num_samples)
    model = SimpleConvNet().to(device).eval()
    model.set_keep_masks(random_masks(model.widths, [12, 24, 48, 96], seed=0))
    indices = torch.arange(num_samples)
    timings = {}
    for cached in (True, False):
        aux = BiasClassifier(128, 10).to(device)
        started = time.perf_counter()
        train_aux(aux, model, splits.train, indices, epochs=epochs, batch_size=100, lr=0.1, momentum=0.9,
                  weight_decay=1e-4, seed=0, device=device, precision=precision, cache_features=cached)
        timings["cached_s" if cached else "uncached_s"] = time.perf_counter() - started
    timings["speedup"] = timings["uncached_s"] / timings["cached_s"]
    timings.update(num_samples=num_samples, epochs=epochs)
    return timings


def bench_inference(device, batch_size: int, repeats: int, kept: list[int], memory_format: torch.memory_format) -> dict[str, float]:
    torch.manual_seed(0)
    gated = SimpleConvNet().eval()
    masks = random_masks(gated.widths, kept, seed=0)
    gated.set_keep_masks(masks)
    pruned = export_pruned(gated, masks)
    gated = gated.to(device, memory_format=memory_format)
    pruned = pruned.to(device, memory_format=memory_format)
    images = torch.randn(batch_size, 3, 28, 28, device=device).contiguous(memory_format=memory_format)
    with torch.no_grad():
        gated_s = median_time(lambda: gated(images), repeats)
        pruned_s = median_time(lambda: pruned(images), repeats)
    macs_ratio = count_macs(pruned.cpu()) / count_macs(SimpleConvNet())
    time_ratio = pruned_s / gated_s
    return {
        "batch_size": batch_size,
        "kept_per_layer": kept,
        "gated_s": gated_s,
        "pruned_s": pruned_s,
        "time_ratio": time_ratio,
        "macs_ratio": macs_ratio,
        "time_ratio_over_macs_ratio": time_ratio / macs_ratio,
    }


def masks_to_benchmark() -> list[tuple[str, list[int]]]:
    """Kept channels per layer: the committed smoke BISE runs, then uniform 65% and 50%."""
    cases = []
    for path in sorted((REPO_ROOT / "bise" / "results" / "smoke").glob("bise_rho*/seed0.json")):
        record = json.loads(path.read_text())
        if record["config"]["gates"]["gamma"] > 0 and record["config"]["gates"]["reweight"]:
            cases.append((f"BISE {record['experiment']}", record["results"]["bise"]["kept_per_layer"]))
    for fraction in (0.65, 0.5):
        cases.append((f"uniform {fraction:.0%} kept", [max(1, round(width * fraction)) for width in SimpleConvNet().widths]))
    return cases


def render(results: dict) -> str:
    training = results["training"]
    aux = results["aux"]
    lines = [
        "# BISE benchmarks",
        "",
        f"Command: `{results['command']}`. Machine: {results['machine']}; torch {results['torch']}, "
        f"{results['threads']} threads. Median of repeated timings; random inputs of shape 3x28x28.",
        "",
        "## Training throughput (SimpleConvNet, batch 100)",
        "",
        "| precision | vanilla training (images/s) | gate training (images/s) |",
        "|---|---|---|",
    ]
    for precision, values in training.items():
        lines.append(f"| {precision} | {values['vanilla_images_per_s']:.0f} | {values['gates_images_per_s']:.0f} |")
    lines += [
        "",
        f"## C_aux refinement ({aux['epochs']} epochs on {aux['num_samples']} digits, {results['aux_precision']})",
        "",
        "| features | time (s) |",
        "|---|---|",
        f"| cached once per refinement | {aux['cached_s']:.2f} |",
        f"| recomputed for every batch | {aux['uncached_s']:.2f} |",
        f"| speed-up | {aux['speedup']:.1f}x |",
        "",
        "## Inference of the pruned network against the gated one (fp32)",
        "",
        "| masks | memory format | kept channels per layer | batch | gated (ms) | pruned (ms) | time ratio | MFLOPs ratio | time ratio / MFLOPs ratio | at most 1.2 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["inference"]:
        lines.append(
            f"| {row['masks']} | {row['memory_format']} | {row['kept_per_layer']} | {row['batch_size']} | {1000 * row['gated_s']:.1f} | "
            f"{1000 * row['pruned_s']:.1f} | {row['time_ratio']:.3f} | {row['macs_ratio']:.3f} | {row['time_ratio_over_macs_ratio']:.2f} | "
            f"{'yes' if row['time_ratio_over_macs_ratio'] <= 1.2 else 'no'} |"
        )
    lines += [
        "",
        "Target: time ratio / MFLOPs ratio at most 1.2 at batch 256 on CPU. The gated network costs as much as",
        "the dense one, so the time ratio is the speed-up that physical pruning buys. Convolutions with few",
        "channels run below the CPU's peak rate, so the ratio grows when almost every channel is pruned (the",
        "smoke BISE masks at rho 0.99 and 0.997), and channels_last is faster than NCHW for odd channel counts.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "bise.md")
    args = parser.parse_args(argv)

    device = choose_device(args.device)
    precisions = ["fp32", "bf16"]
    results = {
        "command": "make bench-bise",
        "machine": f"{describe_device(device)}, {platform.machine()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "training": {precision: bench_training(device, precision, 100, args.repeats) for precision in precisions},
        "aux_precision": "bf16",
        "aux": bench_aux(device, "bf16", num_samples=1000, epochs=5),
        "inference": [
            {"masks": name, "memory_format": format_name, **bench_inference(device, 256, args.repeats, kept, memory_format)}
            for name, kept in masks_to_benchmark()
            for format_name, memory_format in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last))
        ],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(results))
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
