"""Edit one image with SANE and save the InstructPix2Pix edit, the SANE edit and a contact sheet.

    python -m sane.edit --image photo.jpg --instruction "make it look vintage" --caption "a red car on a street"
    python -m sane.edit --image photo.jpg --instruction "make it look vintage" --specific "add old cars" --specific "sepia tones"

Without --specific the embedded SmolLM2-135M model decomposes the instruction
(--backend openai --base-url URL --model NAME for an API). --editor tiny-random
runs offline with a random model (a code-path check, not an edit).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from common.device import choose_device
from sane.data import load_image, resize_for_vae
from sane.decompose import DecompositionError, OpenAIChatBackend, TransformersBackend, decompose
from sane.pipeline import SCHEDULERS, SanePipeline, check_scale
from sane.runner import contact_sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sane.edit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--instruction", required=True)
    parser.add_argument("--caption", help="caption of the input image (needed to decompose)")
    parser.add_argument("--specific", action="append", default=[], help="a specific instruction (repeatable); skips the decomposition")
    parser.add_argument("--n", type=int, default=3, help="specific instructions to ask for (default 3)")
    parser.add_argument("--backend", choices=("embedded", "openai"), default="embedded")
    parser.add_argument("--base-url")
    parser.add_argument("--model", help="openai: chat model name")
    parser.add_argument("--editor", default="timbrooks/instruct-pix2pix", help="hub id, local path, or tiny-random")
    parser.add_argument("--scheduler", default="euler_ancestral", help=f"one of {', '.join(sorted(SCHEDULERS))}")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512, help="square size the image is resized to (a multiple of 8)")
    parser.add_argument("--s-text", type=float, default=7.5)
    parser.add_argument("--s-image", type=float, default=1.5)
    parser.add_argument("--s-additional", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("sane_edit"), help="output folder (default: ./sane_edit)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if not args.instruction.strip():
            raise ValueError("--instruction is empty; give the edit to make, e.g. \"make it look vintage\"")
        if args.n < 0:
            raise ValueError(f"--n must be 0 or more, got {args.n}")
        for name, value in (("--s-text", args.s_text), ("--s-image", args.s_image), ("--s-additional", args.s_additional)):
            check_scale(name, value)
        if args.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown --scheduler {args.scheduler!r}; expected one of {sorted(SCHEDULERS)}")
        if args.size < 8 or args.size % 8:
            raise ValueError(f"--size must be a positive multiple of 8, got {args.size}")
        image = resize_for_vae(load_image(args.image, size=args.size))
        specific = list(args.specific)
        if not specific and args.n:
            if not args.caption:
                raise ValueError("--caption is needed to decompose the instruction (or pass --specific instructions)")
            if args.backend == "openai":
                if not args.base_url or not args.model:
                    raise ValueError("--backend openai needs --base-url and --model")
                backend = OpenAIChatBackend(args.base_url, args.model)
            else:
                backend = TransformersBackend.embedded()
            specific = decompose(args.caption, args.instruction, args.n, backend, on_shortfall="pad")
        device = choose_device("auto")
        if args.editor == "tiny-random":
            from sane.tiny import tiny_components

            pipeline = SanePipeline(**tiny_components())
        else:
            pipeline = SanePipeline.from_pretrained(args.editor, safety_checker=None)
        pipeline.set_scheduler(args.scheduler)
        pipeline = pipeline.to(device)
        baseline = pipeline(prompt=args.instruction, image=image, num_inference_steps=args.steps, guidance_scale=args.s_text,
                            image_guidance_scale=args.s_image, generator=torch.Generator().manual_seed(args.seed)).images[0]
        result = pipeline.edit(image, args.instruction, specific, num_inference_steps=args.steps, s_text=args.s_text, s_image=args.s_image,
                               s_additional=args.s_additional, generator=torch.Generator().manual_seed(args.seed))
    except (ValueError, FileNotFoundError, OSError, DecompositionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    baseline.save(args.out / "instruct_pix2pix.png")
    result.images[0].save(args.out / "sane.png")
    contact_sheet(args.out / "sheet.png", image, baseline, result.images[0], args.instruction, specific)
    print(json.dumps({"specific": specific, "selection_share": result.selection_share[0], "out": str(args.out)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
