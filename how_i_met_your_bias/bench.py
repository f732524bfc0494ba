"""Sampler throughput against the bare UNet; writes benchmarks/himyb.md and .json.

    python -m how_i_met_your_bias.bench            # or: make bench-himyb

For each sampler, UNet evaluations per second while sampling, next to the
bare UNet forward pass at the same UNet batch (guidance with w not in {0, 1}
sends the conditional and null halves through the UNet as one batch of twice
the images). The ratio is the share of sampling time spent in the UNet; the
target is at least 0.9. Also times diffusion training steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common.benchmark import median_time
from common.device import autocast, choose_device, describe_device
from how_i_met_your_bias.config import load_config
from how_i_met_your_bias.model import build_unet, count_parameters
from how_i_met_your_bias.samplers import GuidedDenoiser, SamplerSetting, sample
from how_i_met_your_bias.training import diffusion_loss, noise_scheduler

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "smoke" / "biased_mnist_2class_rho0.9.yaml"
SETTINGS = [
    SamplerSetting("ddpm", 10),
    SamplerSetting("ddim", 10, eta=0.5),
    SamplerSetting("dpmpp", 10, order=3),
    SamplerSetting("euler", 10, churn=40.0),
    SamplerSetting("euler_ancestral", 10),
    SamplerSetting("heun", 10),
    SamplerSetting("dpmpp", 10, order=3, w=2.0),
]


@torch.no_grad()
def bench_sampler(unet, config, setting: SamplerSetting, images: int, device, repeats: int) -> dict:
    labels = (torch.arange(images) % config.num_classes).to(device)
    shape = (3, config.data.image_size, config.data.image_size)
    denoiser = GuidedDenoiser(unet, config.num_classes, setting.w, autocast=lambda: autocast(device, config.precision))
    unet_batch = images if setting.w in (0.0, 1.0) else 2 * images

    def run_sampler():
        sample(denoiser, setting, config.noise, labels, shape, torch.Generator().manual_seed(0))

    x = torch.randn(unet_batch, *shape, device=device)
    t = torch.full((unet_batch,), 500, device=device)
    y = (torch.arange(unet_batch) % config.num_classes).to(device)

    def run_unet():
        with autocast(device, config.precision):
            unet(x, t, class_labels=y)

    evaluations = setting.unet_evaluations(images)
    calls = evaluations // unet_batch
    sampler_s = median_time(run_sampler, repeats)
    unet_s = median_time(run_unet, repeats * 3)
    sampler_rate = evaluations / sampler_s
    unet_rate = unet_batch / unet_s
    return {"setting": setting.key, "images": images, "unet_batch": unet_batch, "unet_calls": calls,
            "sampler_evals_per_s": sampler_rate, "unet_evals_per_s": unet_rate, "ratio": sampler_rate / unet_rate}


def bench_training(config, device, batch_size: int, repeats: int) -> float:
    torch.manual_seed(0)
    unet = build_unet(config).to(device).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    scheduler = noise_scheduler(config)
    images = torch.rand(batch_size, 3, config.data.image_size, config.data.image_size, device=device) * 2 - 1
    labels = (torch.arange(batch_size) % config.num_classes).to(device)

    def step():
        loss = diffusion_loss(unet, scheduler, images, labels, null_class=config.num_classes, label_dropout=0.1,
                              generator=torch.Generator().manual_seed(0), precision=config.precision)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return batch_size / median_time(step, repeats)


def write_report(results: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "himyb.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# How I Met Your Bias benchmarks",
        "",
        f"Command: `{results['command']}`. Machine: {results['hardware']}; torch {results['torch']}, "
        f"{results['threads']} threads. Model: the UNet of `{results['config']}` ({results['parameters'] / 1e6:.2f} M parameters, "
        f"{results['image_size']} px, {results['precision']}), random weights. Median of repeated timings.",
        "",
        "## Sampling: UNet evaluations per second, sampler against the bare UNet at the same UNet batch",
        "",
        "| setting | images | UNet batch | sampler (evals/s) | bare UNet (evals/s) | ratio | at least 0.9 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["sampling"]:
        lines.append(f"| {row['setting']} | {row['images']} | {row['unet_batch']} | {row['sampler_evals_per_s']:.0f} | "
                     f"{row['unet_evals_per_s']:.0f} | {row['ratio']:.3f} | {'yes' if row['ratio'] >= 0.9 else 'no'} |")
    lines += ["", "## Training", "",
              f"Diffusion training step (batch {results['train_batch']}): {results['train_images_per_s']:.0f} images/s.", ""]
    path = out_dir / "himyb.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config whose UNet is measured")
    parser.add_argument("--images", type=int, default=250, help="images per sampler call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    device = choose_device(config.device)
    torch.manual_seed(0)
    unet = build_unet(config).to(device).eval()
    rows = []
    for setting in SETTINGS:
        row = bench_sampler(unet, config, setting, args.images, device, args.repeats)
        print(f"{row['setting']:<24} sampler {row['sampler_evals_per_s']:7.0f} evals/s, bare UNet {row['unet_evals_per_s']:7.0f}, "
              f"ratio {row['ratio']:.3f}", flush=True)
        rows.append(row)
    train_batch = config.train.batch_size
    results = {
        "command": "make bench-himyb",
        "hardware": describe_device(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": str(args.config.relative_to(REPO_ROOT)) if args.config.is_absolute() else str(args.config),
        "parameters": count_parameters(unet),
        "image_size": config.data.image_size,
        "precision": config.precision,
        "sampling": rows,
        "train_batch": train_batch,
        "train_images_per_s": bench_training(config, device, train_batch, args.repeats),
    }
    path = write_report(results, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
