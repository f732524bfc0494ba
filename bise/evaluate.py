"""Evaluate a saved pruned network on the unbiased Biased MNIST test set.

    python -m bise.evaluate --model runs/bise/smoke/bise_rho0.99/seed0/pruned.safetensors

By default the test set and precision are those recorded in the file by the
run that wrote it, so the numbers match its metrics.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bise.config import DATA_SOURCES
from bise.engine import evaluate_accuracy
from bise.prune import count_macs, load_pruned, read_pruned_metadata
from common.data.biased_mnist import build_test_set
from common.data.mnist import load_digits
from common.device import PRECISIONS, choose_device
from common.download import DownloadError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bise.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, type=Path, help="pruned.safetensors or pruned_ft.safetensors written by bise.train")
    parser.add_argument("--data", choices=DATA_SOURCES, help="digit source of the test set (default: the run's)")
    parser.add_argument("--data-seed", type=int, help="data.seed that coloured the test set (default: the run's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, help="fp32, bf16 or fp16 autocast (default: the run's)")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"error: model file {args.model} not found or not a file; pass a pruned.safetensors from a BISE run folder", file=sys.stderr)
        return 2

    try:
        metadata = read_pruned_metadata(args.model)
        source = args.data or metadata.get("data_source", "embedded")
        data_seed = args.data_seed if args.data_seed is not None else int(metadata.get("data_seed", 0))
        precision = args.precision or metadata.get("precision", "fp32")
        device = choose_device(args.device)
        model = load_pruned(args.model).to(device)
        test_set = build_test_set(load_digits(source), data_seed)
    except (ValueError, DownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    accuracy = evaluate_accuracy(model, test_set, device, precision)
    print(
        f"{args.model}: widths {list(model.widths)}, {count_macs(model.cpu()) / 1e6:.1f} MMACs; "
        f"test unbiased {accuracy['unbiased']:.2f}%, aligned {accuracy['aligned']:.2f}%, conflicting {accuracy['conflicting']:.2f}% "
        f"on {accuracy['num_samples']} {source} digits (data seed {data_seed}, {precision})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
