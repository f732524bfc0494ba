"""Cost of one SANE denoising step against one InstructPix2Pix step; writes benchmarks/sane.md and .json.

    python -m sane.bench            # or: make bench-sane

Both pipelines share one randomly initialised UNet (a scaled-down Stable
Diffusion layout, so the run needs no download) and one batch of images.
The target is a SANE step with N specific instructions costing at most
1.05 x (3 + N) / 3 InstructPix2Pix steps. Peak memory is measured on CUDA
only; on a CPU the table gives the largest UNet call instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from common.benchmark import median_time
from common.device import choose_device, describe_device
from sane.pipeline import SanePipeline

REPO_ROOT = Path(__file__).resolve().parents[1]


def bench_components(device: torch.device) -> dict:
    from sane.tiny import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=8, out_channels=4, layers_per_block=2, block_out_channels=(64, 128, 256),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64, attention_head_dim=8,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32, 32),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8)
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    components = dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                      feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    for module in (unet, vae, text_encoder):
        module.to(device).eval()
    return components


def peak_text(peak_mib: float | None) -> str:
    return "-" if peak_mib is None else f"{peak_mib:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2, help="images per call")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latents are size / 8)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks")
    args = parser.parse_args(argv)
    device = choose_device("auto")
    components = bench_components(device)
    sane = SanePipeline(**components)
    reference = StableDiffusionInstructPix2PixPipeline(**components)
    for pipeline in (sane, reference):
        pipeline.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray((rng.random((args.size, args.size, 3)) * 255).astype("uint8")) for _ in range(args.batch)]
    instructions = ["make it look vintage"] * args.batch

    def run_reference():
        reference(prompt=instructions, image=images, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                  output_type="latent")

    base = median_time(run_reference, args.repeats) / args.steps
    rows = []
    for count in (1, 3, 5):
        for split in (None, 3 * args.batch):  # the split option at the size of InstructPix2Pix's UNet call
            specific = [[f"specific edit {k}" for k in range(count)] for _ in range(args.batch)]

            def run_sane():
                sane.edit(images, instructions, specific, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                          max_unet_batch=split, output_type="latent")

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            step = median_time(run_sane, args.repeats) / args.steps
            peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
            budget = 1.05 * (3 + count) / 3
            rows.append({"n": count, "max_unet_batch": split, "sane_step_s": step, "ip2p_step_s": base, "ratio": step / base,
                         "budget": budget, "met": step / base <= budget, "peak_mib": peak,
                         "largest_unet_call": (3 + count) * args.batch if split is None else split})
            print(f"N={count} split={split}: SANE step {step:.3f} s, InstructPix2Pix {base:.3f} s, ratio {step / base:.2f} "
                  f"(budget {budget:.2f})", flush=True)
    results = {"command": "make bench-sane", "hardware": describe_device(device), "torch": torch.__version__, "batch": args.batch,
               "size": args.size, "steps": args.steps, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sane.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# SANE benchmarks", "",
             f"Command: `make bench-sane`. Machine: {results['hardware']}; torch {results['torch']}. A randomly initialised UNet "
             f"(Stable Diffusion layout scaled down: widths 64/128/256, cross-attention), {args.batch} images of {args.size} px, "
             f"Euler ancestral, median over repeats, time per denoising step.", "",
             "| N | UNet split | SANE step (s) | InstructPix2Pix step (s) | ratio | budget 1.05 (3 + N) / 3 | met | largest UNet call | peak MiB (CUDA) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['n']} | {row['max_unet_batch'] or 'none'} | {row['sane_step_s']:.3f} | {row['ip2p_step_s']:.3f} | "
                     f"{row['ratio']:.2f} | {row['budget']:.2f} | {'yes' if row['met'] else 'no'} | {row['largest_unet_call']} | "
                     f"{peak_text(row['peak_mib'])} |")
    lines.append("")
    lines.append(f"InstructPix2Pix's largest UNet call is {3 * args.batch} inputs.")
    (args.out / "sane.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'sane.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
