"""Sample one setting from a trained model, save a grid and print its bias measurement.

    python -m how_i_met_your_bias.sample --config how_i_met_your_bias/configs/smoke/biased_mnist_2class_rho0.9.yaml \\
        --sampler dpmpp --order 3 --steps 20 --w 4 --samples-per-class 100 --out grid.png

The model is the one `python -m how_i_met_your_bias.train` wrote for the
same config and seed. Nothing is written to the run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from common.config import ConfigError, parse_set_pairs
from common.device import choose_device
from how_i_met_your_bias.config import load_config
from how_i_met_your_bias.data import build_training_set
from how_i_met_your_bias.model import WeightsMismatchError, load_weights
from how_i_met_your_bias.runner import DEFAULT_RUNS_ROOT, build_judges, rho_dataset_of, run_dir_for
from how_i_met_your_bias.samplers import SAMPLERS, SamplerSetting
from how_i_met_your_bias.sweep import measure_setting, save_grid
from how_i_met_your_bias.training import WEIGHTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m how_i_met_your_bias.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="the experiment config the model was trained with")
    parser.add_argument("--seed", type=int, help="seed of the trained run (default: the config's)")
    parser.add_argument("--runs-root", type=Path, default=DEFAULT_RUNS_ROOT)
    parser.add_argument("--sampler", required=True, help=f"one of {', '.join(sorted(SAMPLERS))}")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--w", type=float, default=1.0, help="guidance weight: 1 conditional, 0 unconditional (default 1)")
    parser.add_argument("--eta", type=float, default=0.0, help="ddim only, in [0, 1]")
    parser.add_argument("--churn", type=float, default=0.0, help="euler only: EDM's S_churn")
    parser.add_argument("--order", type=int, default=2, help="dpmpp only: solver order 1 to 3")
    parser.add_argument("--karras", action="store_true", help="Karras sigma spacing (euler, euler_ancestral, heun, dpmpp)")
    parser.add_argument("--samples-per-class", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("samples.png"), help="grid PNG to write (default: samples.png)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        overrides = parse_set_pairs(args.overrides)
        if args.seed is not None:
            overrides["seed"] = args.seed
        config = load_config(args.config, overrides)
        if args.samples_per_class < 1:
            raise ValueError(f"--samples-per-class must be at least 1, got {args.samples_per_class}")
        setting = SamplerSetting(args.sampler, args.steps, w=args.w, eta=args.eta, churn=args.churn, order=args.order,
                                 karras=args.karras).validate().normalised()
        if setting.steps > config.noise.num_train_timesteps:
            raise ValueError(f"--steps {setting.steps} is more than the model's {config.noise.num_train_timesteps} training timesteps")
        config = dataclasses.replace(config, sweep=dataclasses.replace(config.sweep, samples_per_class=args.samples_per_class))
        device = choose_device(config.device)
        run_dir = run_dir_for(config, args.runs_root)
        unet = load_weights(run_dir / WEIGHTS, config).to(device).eval()
        dataset = build_training_set(config)
        judges, _ = build_judges(config, dataset, args.runs_root, device, ctx=_single_process())
        record, images, labels = measure_setting(unet, config, setting, judges, rho_dataset_of(dataset, config), device, progress=True)
    except (ConfigError, ValueError, FileNotFoundError, WeightsMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    save_grid(args.out, images, labels, min(args.samples_per_class, 16))
    summary = {name: {k: report[k] for k in ("rho_model", "ci_low", "ci_high", "rho_dataset", "amplification", "fidelity")}
               for name, report in record["attributes"].items()}
    print(json.dumps({"setting": setting.key, "attributes": summary, "grid": str(args.out)}, indent=2))
    return 0


def _single_process():
    from common.distributed import DistContext

    return DistContext()


if __name__ == "__main__":
    sys.exit(main())
