"""Build the README table and the score-against-cost figure of Modulation Adapters from results/.

    python -m modulation_adapters.tables --collect   # copy finished runs into modulation_adapters/results/
    python -m modulation_adapters.tables             # rewrite the README tables and the figures
    python -m modulation_adapters.tables --check     # exit 1 when a README table differs from the results

Paper-scale runs (results/paper/) go under the README marker modadapters_paper,
every other scale under modadapters_smoke.

The smoke benchmark has no published baseline, so its Decathlon-style score
takes the baseline error of each domain from our own fine-tuning entry of
the same run (which then scores 250 per domain).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from common.results import atomic_write_text, fill_tables, markdown_table, read_json, verify_tables
from modulation_adapters.decathlon import decathlon_score

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
RESULTS_DIR = PACKAGE_DIR / "results"
README = PACKAGE_DIR / "README.md"
FIGURE = PACKAGE_DIR / "figures" / "smoke_score_vs_parameters.png"
BASELINE_ENTRY = "finetune"
SMOKE_TABLE, PAPER_TABLE = "modadapters_smoke", "modadapters_paper"
NO_PAPER_RESULTS = "No paper-scale results yet."


def collect(runs_root: Path, results_dir: Path = RESULTS_DIR) -> int:
    copied = 0
    for record in sorted(Path(runs_root).glob("modulation_adapters/*/*/seed*/*.json")):
        target = results_dir / Path(*record.parts[-4:])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record, target)
        copied += 1
    return copied


def load_runs(results_dir: Path = RESULTS_DIR) -> dict[tuple[str, str, str], list[dict]]:
    runs: dict[tuple[str, str, str], list[dict]] = {}
    for path in sorted(results_dir.glob("*/*/seed*/*.json")):
        runs.setdefault(tuple(path.parts[-4:-1]), []).append(read_json(path))
    return runs


def scored(records: list[dict]) -> list[dict]:
    """Records with their score: the official Decathlon score at paper scale (computed by the runner), else
    the score against the fine-tuning entry's accuracies (None without that entry)."""
    baseline = next((r for r in records if r["entry"] == BASELINE_ENTRY), None)
    rows = []
    for record in records:
        if record.get("scale") == "paper":
            rows.append(record)
            continue
        accuracies = {name: values["accuracy"] for name, values in record["domains"].items()}
        score = None
        if baseline is not None:
            score = decathlon_score(accuracies, {name: values["accuracy"] for name, values in baseline["domains"].items()})
        rows.append({**record, "score": score})
    order = {name: index for index, name in enumerate(["feature", "bn", "modulation", "series", "parallel", "finetune"])}
    return sorted(rows, key=lambda r: (order.get(r["method"], 9), r["rank"] if r["rank"] is not None else 10**9))


def _disagreement(records: list[dict], key: str, default: str) -> str | None:
    """Return how the records of one run folder differ on `key` (e.g. "test (series), val (bn, feature)"), or None."""
    entries: dict[str, list[str]] = {}
    for record in records:
        entries.setdefault(str(record.get(key, default)), []).append(record["entry"])
    if len(entries) < 2:
        return None
    return ", ".join(f"{value} ({', '.join(sorted(names))})" for value, names in sorted(entries.items()))


def _scoring_note(scale: str, records: list[dict], domain_count: int) -> str:
    """Return the header note on a run's split and score, naming the records that disagree on the split or the config."""
    default_split = "test" if scale != "paper" else "unrecorded"  # the smoke runner always evaluates on its test split
    split_conflict = _disagreement(records, "eval_split", default_split)
    if split_conflict is None:
        accuracy = f"{records[0].get('eval_split', default_split)} accuracy %"
    else:
        accuracy = f"accuracy % on different splits: {split_conflict}"
    if scale == "paper":
        scoring = f"{accuracy}; Decathlon score with the official baseline errors over these {domain_count} domains"
    else:
        scoring = f"{accuracy}; score with baseline errors from our fine-tuning entry, {domain_count * 250} = fine-tuning"
    hash_conflict = _disagreement(records, "config_hash", "none")
    if hash_conflict is not None:
        scoring += f"; NOTE: the records come from different configs, config_hash {hash_conflict}"
    return scoring


def results_table(runs: dict, empty: str = "No results yet.") -> str:
    blocks = []
    for (scale, name, seed), records in sorted(runs.items()):
        rows = scored(records)
        domains = list(rows[0]["domains"])
        header = ["method", "rank"] + domains + ["mean", "score", "parameters per domain / backbone"]
        body = [[r["method"], "full" if r["method"] == "modulation" and r["rank"] is None else (r["rank"] or "-")]
                + [f"{r['domains'][d]['accuracy']:.1f}" for d in domains]
                + [f"{r['mean_accuracy']:.1f}", "-" if r["score"] is None else f"{r['score']:.0f}", f"{r['parameters_over_backbone']:.3f}"]
                for r in rows]
        scoring = _scoring_note(scale, rows, len(domains))
        blocks.append(f"**{name}** ({scale} scale, {seed}, {scoring}; {rows[0]['hardware']})\n\n" + markdown_table(header, body))
    return "\n\n".join(blocks) if blocks else empty


def build_tables(runs: dict) -> dict[str, str]:
    """Return the README tables by marker name: paper-scale runs in their own table, every other scale in the smoke one."""
    paper = {key: records for key, records in runs.items() if key[0] == "paper"}
    others = {key: records for key, records in runs.items() if key[0] != "paper"}
    return {SMOKE_TABLE: results_table(others), PAPER_TABLE: results_table(paper, empty=NO_PAPER_RESULTS)}


def plot(runs: dict, path: Path = FIGURE, title: str = "Modulation adapters and baselines, smoke benchmark (CPU)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for (scale, name, seed), records in sorted(runs.items()):
        rows = scored(records)
        for row in rows:
            label = row["method"] + ("" if row["method"] != "modulation" else f" r={row['rank'] or 'full'}")
            marker = "o" if row["method"] == "modulation" else "s"
            axes[0].scatter(row["parameters_over_backbone"], row["mean_accuracy"], marker=marker)
            axes[0].annotate(label, (row["parameters_over_backbone"], row["mean_accuracy"]), fontsize=7)
            if row["score"] is not None:
                axes[1].scatter(row["parameters_over_backbone"], row["score"], marker=marker)
                axes[1].annotate(label, (row["parameters_over_backbone"], row["score"]), fontsize=7)
        modulation = [r for r in rows if r["method"] == "modulation"]
        modulation.sort(key=lambda r: r["parameters_over_backbone"])
        axes[0].plot([r["parameters_over_backbone"] for r in modulation], [r["mean_accuracy"] for r in modulation], "-", alpha=0.5)
    for ax, label in zip(axes, ("mean target accuracy (%)", "score (fine-tuning = 250 per domain)")):
        ax.set_xscale("log")
        ax.set_xlabel("parameters per domain / backbone")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.collect:
        log.info("copied %d records from %s", collect(args.runs_root), args.runs_root)
    runs = load_runs(RESULTS_DIR)
    tables = build_tables(runs)
    count = sum(len(records) for records in runs.values())
    if args.check:
        return verify_tables(README, tables, results_dir="modulation_adapters/results/", sources=f"{count} result files")
    atomic_write_text(README, fill_tables(README, tables))
    for scale in sorted({key[0] for key in runs}):
        selected = {key: records for key, records in runs.items() if key[0] == scale}
        plot(selected, FIGURE.with_name(f"{scale}_score_vs_parameters.png"),
             f"Modulation adapters and baselines, {scale} scale ({next(iter(selected.values()))[0]['hardware']})")
    print(f"wrote {len(tables)} tables from {count} result files into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
