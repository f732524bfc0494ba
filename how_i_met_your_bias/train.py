"""Train the diffusion model of one experiment config and run its sampler sweep.

    python -m how_i_met_your_bias.train --config how_i_met_your_bias/configs/smoke/biased_mnist_2class_rho0.9.yaml
    torchrun --nproc_per_node=4 -m how_i_met_your_bias.train --config how_i_met_your_bias/configs/paper/biased_mnist_2class_rho0.9.yaml

Restarting the same command resumes: training from its last checkpoint, the
sweep from the first setting without a record.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common.checkpoint import CheckpointMismatchError
from common.config import ConfigError, parse_set_pairs
from common.distributed import init_distributed, shutdown_distributed
from common.download import DownloadError
from how_i_met_your_bias.config import load_config
from how_i_met_your_bias.model import WeightsMismatchError
from how_i_met_your_bias.runner import DEFAULT_RUNS_ROOT, run_experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m how_i_met_your_bias.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="experiment YAML under how_i_met_your_bias/configs/")
    parser.add_argument("--seed", type=int, help="seed (overrides the config's seed; each seed has its own run folder)")
    parser.add_argument("--runs-root", type=Path, default=DEFAULT_RUNS_ROOT, help="root folder of the run directories (default: ./runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set sweep.samples_per_class=100 (repeatable)")
    parser.add_argument("--no-sweep", action="store_true", help="train only; skip the sampler sweep")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_set_pairs(args.overrides)
        if args.seed is not None:
            overrides["seed"] = args.seed
        config = load_config(args.config, overrides)
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    ctx = init_distributed()
    try:
        summary = run_experiment(config, runs_root=args.runs_root, ctx=ctx, sweep=not args.no_sweep)
    except (ConfigError, CheckpointMismatchError, WeightsMismatchError, DownloadError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed()
    if ctx.is_main:
        print(f"{config.name} seed {config.seed}: rho_dataset {summary['rho_dataset']} ({summary['run_dir']})")
        for record in summary["sweep"]:
            parts = [f"{name} rho_model {r['rho_model']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                     for name, r in record["attributes"].items()]
            if record["fidelity"] is not None:
                parts.append(f"fidelity {record['fidelity']['value']:.3f}")
            print(f"  {record['key']:<28} " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
