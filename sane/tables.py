"""Build the README table of SANE from sane/results/.

    python -m sane.tables --collect   # copy finished runs' metrics.json into sane/results/<scale>/<run>.json
    python -m sane.tables             # rewrite the table in sane/README.md
    python -m sane.tables --check     # exit 1 when the README table differs from the results
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from common.results import atomic_write_text, fill_tables, markdown_table, read_json, verify_tables

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
RESULTS_DIR = PACKAGE_DIR / "results"
README = PACKAGE_DIR / "README.md"
COLUMNS = [("clip_i", "CLIP-I"), ("clip_t", "CLIP-T"), ("clip_direction", "CLIP direction"), ("dino", "DINO"), ("l1", "L1"),
           ("dino_diversity", "diversity (DINO)")]
METHODS = [("baseline", "InstructPix2Pix"), ("sane", "+ SANE")]


def collect(runs_root: Path, results_dir: Path = RESULTS_DIR) -> int:
    copied = 0
    for metrics in sorted(Path(runs_root).glob("sane/*/*/metrics.json")):
        scale, run = metrics.parts[-3], metrics.parts[-2]
        if "-set-" in run:
            log.info("skipping %s: made with --set, not a config as written", metrics)
            continue
        target = results_dir / scale / f"{run}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(metrics, target)
        copied += 1
    return copied


def results_table(records: list[dict]) -> str:
    header = ["scale", "dataset", "method"] + [label for _, label in COLUMNS] + ["images x seeds", "N", "editor; hardware"]
    rows = []
    for record in records:
        for method, label in METHODS:
            means = record["results"][method]["means"]
            values = ["-" if means.get(key) is None else f"{means[key]:.3f}" for key, _ in COLUMNS]
            rows.append([record["scale"], record["dataset"], label] + values +
                        [f"{record['images']} x {len(record['seeds'])}", record["n"], f"{record['editor']}; {record['hardware']}"])
    return markdown_table(header, rows) if rows else "No results yet."


def build_tables(results_dir: Path = RESULTS_DIR) -> tuple[dict[str, str], int]:
    records = [read_json(path) for path in sorted(results_dir.glob("*/*.json"))]
    records.sort(key=lambda r: (r["scale"] != "paper", r["dataset"]))
    return {"sane_results": results_table(records)}, len(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.collect:
        log.info("copied %d result files from %s", collect(args.runs_root), args.runs_root)
    tables, count = build_tables()
    if args.check:
        return verify_tables(README, tables, results_dir="sane/results/", sources=f"{count} result files")
    atomic_write_text(README, fill_tables(README, tables))
    print(f"wrote {len(tables)} tables from {count} result files into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
