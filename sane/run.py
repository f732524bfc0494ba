"""Run SANE on a dataset: decompose, edit with InstructPix2Pix and with SANE, measure.

    python -m sane.run --config sane/configs/smoke/photos_run.yaml
    python -m sane.run --config sane/configs/paper/emu_edit.yaml --set decompose.base_url=URL --set decompose.model=NAME

Rerunning the same command skips images already edited.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from common.config import ConfigError, parse_set_pairs
from sane.config import load_config
from sane.decompose import DecompositionError
from sane.runner import DEFAULT_RUNS_ROOT, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sane.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--runs-root", type=Path, default=DEFAULT_RUNS_ROOT)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, parse_set_pairs(args.overrides))
        metrics = run(config, args.runs_root)
    except (ConfigError, DecompositionError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(json.dumps({method: values["means"] for method, values in metrics["results"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
