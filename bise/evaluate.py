"""Evaluate a saved pruned network on the unbiased Biased MNIST test set.

    python -m bise.evaluate --model runs/bise/smoke/bise_rho0.99/seed0/pruned.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bise.config import DATA_SOURCES
from bise.engine import evaluate_accuracy
from bise.prune import count_macs, load_pruned
from common.data.biased_mnist import build_test_set
from common.data.mnist import load_digits
from common.device import choose_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="pruned.safetensors written by bise.train")
    parser.add_argument("--data", choices=DATA_SOURCES, default="embedded", help="digit source of the test set")
    parser.add_argument("--data-seed", type=int, default=0, help="data.seed of the run (colours of the test set)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="fp32", help="fp32 or bf16")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"error: model file {args.model} not found; train a BISE config first (python -m bise.train --config ...)", file=sys.stderr)
        return 2

    device = choose_device(args.device)
    model = load_pruned(args.model).to(device)
    digits = load_digits(args.data)
    test_set = build_test_set(digits, args.data_seed)
    accuracy = evaluate_accuracy(model, test_set, device, args.precision)
    print(
        f"{args.model}: widths {list(model.widths)}, {count_macs(model.cpu()) / 1e6:.1f} MMACs; "
        f"test unbiased {accuracy['unbiased']:.2f}%, aligned {accuracy['aligned']:.2f}%, conflicting {accuracy['conflicting']:.2f}% "
        f"on {accuracy['num_samples']} {args.data} digits"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
