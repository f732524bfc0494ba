"""Build the README tables of BISE from the result files under bise/results/.

    python -m bise.tables --collect   # copy finished runs/ metrics into bise/results/
    python -m bise.tables             # rewrite the tables in bise/README.md (and the figure)
    python -m bise.tables --check     # exit 1 when a README table differs from the results
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from bise.config import FOLDER_KEEPING_OVERRIDES
from common.results import atomic_write_text, fill_tables, markdown_table, read_json, verify_tables

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
RESULTS_DIR = PACKAGE_DIR / "results"
README = PACKAGE_DIR / "README.md"
FIGURE = PACKAGE_DIR / "figures" / "gate_training.png"
SCALE_ORDER = {"paper": 0, "smoke": 1}


def collect(runs_root: Path, results_dir: Path = RESULTS_DIR) -> int:
    """Copy every finished run's metrics.json to results/<scale>/<experiment>/seed<k>.json."""
    copied = 0
    for metrics_path in sorted(Path(runs_root).glob("bise/*/*/seed*/metrics.json")):
        scale, experiment, seed = metrics_path.parts[-4:-1]
        overrides = set(read_json(metrics_path).get("overrides", {})) - set(FOLDER_KEEPING_OVERRIDES)
        if overrides:
            log.info("skipping %s: made with --set %s, not a config as written", metrics_path, sorted(overrides))
            continue
        target = results_dir / scale / experiment / f"{seed}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(metrics_path, target)
        copied += 1
    return copied


def load_results(results_dir: Path = RESULTS_DIR) -> list[dict]:
    return [read_json(path) for path in sorted(results_dir.glob("*/*/seed*.json"))]


def load_paper_numbers() -> dict:
    with (PACKAGE_DIR / "paper_numbers.yaml").open() as handle:
        return yaml.safe_load(handle)


# ------------------------------------------------------------------ grouping


def setting_key(record: dict) -> tuple:
    data = record["config"]["data"]
    train = record["config"]["train"]
    recipe = f"{train['epochs']} ep, lr {train['lr']:g}, {record['config']['precision']}"
    return (record["scale"], data["source"], data["rho"], data["train_size"], recipe)


def ablation_variant(record: dict) -> str | None:
    """Name of the loss ablation a BISE record belongs to."""
    gates = record["config"]["gates"]
    mi, reweight = gates["gamma"] > 0, gates["reweight"]
    return {(True, True): "both", (False, True): "reweight_only", (True, False): "mi_only", (False, False): "neither"}[(mi, reweight)]


def rows_by_setting(records: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    """{setting: {row name: [per-seed result dicts]}} for vanilla, bise, bise_ft and the ablations."""
    table: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        key = setting_key(record)
        results = record["results"]
        method = record["method"]
        entry = lambda name: {**results[name], "_record": record}  # noqa: E731
        if method == "vanilla":
            table[key]["vanilla"].append(entry("vanilla"))
        elif method == "bise":
            variant = ablation_variant(record)
            if variant == "both":
                table[key]["bise"].append(entry("bise"))
                if "bise_ft" in results:
                    table[key]["bise_ft"].append(entry("bise_ft"))
            table[key][f"ablation:{variant}"].append(entry("bise"))
        else:
            table[key][f"ablation:{method}"].append(entry(method))
    return table


def sorted_settings(table: dict) -> list[tuple]:
    return sorted(table, key=lambda key: (SCALE_ORDER.get(key[0], 9), key[1], key[2], key[3] or 0, key[4]))


def summarise(values: list[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def describe_setting(key: tuple) -> list[str]:
    scale, source, rho, train_size, recipe = key
    data = {"embedded": "embedded 5k", "full": "full MNIST"}[source]
    if train_size:
        data += f", {train_size} train"
    return [scale, data, f"{rho:g}", recipe]


def provenance(rows: list[dict]) -> str:
    records = [row["_record"] for row in rows]
    hardware = sorted({record["hardware"] for record in records})
    seeds = sorted({record["seed"] for record in records})
    return f"{len(seeds)} ({', '.join(map(str, seeds))}); {'; '.join(hardware)}"


ROW_LABELS = {"vanilla": "Vanilla", "bise": "BISE", "bise_ft": "BISE+FT"}
ABLATION_LABELS = {
    "ablation:neither": "neither term (gamma = 0, plain CE)",
    "ablation:reweight_only": "reweighting only (gamma = 0)",
    "ablation:mi_only": "MI only (plain CE)",
    "ablation:both": "both (BISE)",
    "ablation:random": "random pruning, BISE's per-layer sparsity",
    "ablation:magnitude": "weight-magnitude pruning, BISE's per-layer sparsity",
}


def main_table(table: dict, paper: dict) -> str:
    header = ["scale", "data", "rho", "recipe", "method", "unbiased", "aligned", "conflicting",
              "channels pruned %", "paper unbiased (paper scale)", "seeds; hardware"]
    rows = []
    for key in sorted_settings(table):
        for name in ("vanilla", "bise", "bise_ft"):
            entries = table[key].get(name)
            if not entries:
                continue
            paper_value = paper["main"][name].get(key[2])
            rows.append(describe_setting(key) + [
                ROW_LABELS[name],
                summarise([entry["test"]["unbiased"] for entry in entries]),
                summarise([entry["test"]["aligned"] for entry in entries]),
                summarise([entry["test"]["conflicting"] for entry in entries]),
                summarise([entry["sparsity_channels"] for entry in entries]),
                "-" if paper_value is None else f"{paper_value:.1f}",
                provenance(entries),
            ])
    return markdown_table(header, rows)


def sparsity_table(table: dict, paper: dict) -> str:
    header = ["scale", "data", "rho", "recipe", "method", "channels pruned %", "weights pruned %",
              "MFLOPs dense", "MFLOPs pruned", "paper (paper scale): pruned % / MFLOPs"]
    rows = []
    for key in sorted_settings(table):
        for name in ("bise", "bise_ft"):
            entries = table[key].get(name)
            if not entries:
                continue
            reference = paper["sparsity"].get(key[2])
            paper_text = "-" if reference is None else f"{reference['sparsity']:.1f} / {reference['mflops_dense']:.1f} → {reference['mflops_pruned']:.1f}"
            rows.append(describe_setting(key) + [
                ROW_LABELS[name],
                summarise([entry["sparsity_channels"] for entry in entries]),
                summarise([entry["sparsity_weights"] for entry in entries]),
                summarise([entry["mflops_dense"] for entry in entries]),
                summarise([entry["mflops_pruned"] for entry in entries]),
                paper_text,
            ])
    return markdown_table(header, rows)


def ablation_table(table: dict, paper: dict) -> str:
    header = ["scale", "data", "rho", "recipe", "variant", "unbiased", "conflicting", "channels pruned %",
              "MFLOPs", "paper (paper scale, rho 0.99): acc / pruned % / MFLOPs"]
    rows = []
    for key in sorted_settings(table):
        names = [name for name in ABLATION_LABELS if table[key].get(name)]
        if len(names) < 2:  # a setting without ablation runs has only "both"
            continue
        for name in names:
            entries = table[key][name]
            reference = paper["ablation"].get(name.split(":", 1)[1]) if key[2] == 0.99 else None
            paper_text = "-" if reference is None else f"{reference['accuracy']:.1f} / {reference['sparsity']:.1f} / {reference['mflops']:.1f}"
            rows.append(describe_setting(key) + [
                ABLATION_LABELS[name],
                summarise([entry["test"]["unbiased"] for entry in entries]),
                summarise([entry["test"]["conflicting"] for entry in entries]),
                summarise([entry["sparsity_channels"] for entry in entries]),
                summarise([entry["mflops_pruned"] for entry in entries]),
                paper_text,
            ])
    return markdown_table(header, rows)


def build_tables(records: list[dict]) -> dict[str, str]:
    table = rows_by_setting(records)
    paper = load_paper_numbers()
    if not records:
        empty = "No result files yet: run `make reproduce-bise`, then `make tables`."
        return {"main": empty, "sparsity": empty, "ablation": empty}
    return {"main": main_table(table, paper), "sparsity": sparsity_table(table, paper), "ablation": ablation_table(table, paper)}


def plot_gate_training(records: list[dict], path: Path = FIGURE) -> None:
    """Validation accuracy and kept channels over gate epochs, one line per BISE run (seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in records if r["method"] == "bise" and r["seed"] == min(x["seed"] for x in records) and ablation_variant(r) == "both"]
    if not runs:
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for record in sorted(runs, key=lambda r: (r["scale"], r["experiment"])):
        history = [entry for entry in record["results"]["history"] if entry["kind"] == "gates"]
        epochs = [entry["epoch"] for entry in history]
        label = f"{record['scale']}: {record['experiment']}"
        if all("val" in entry for entry in history):
            left.plot(epochs, [entry["val"]["unbiased"] for entry in history], marker=".", label=label)
        right.plot(epochs, [100.0 * entry["channels_kept"] / entry["channels_total"] for entry in history], marker=".", label=label)
    left.set(xlabel="gate epoch", ylabel="unbiased validation accuracy (%)", title="Validation accuracy during gate training")
    right.set(xlabel="gate epoch", ylabel="channels kept (%)", title="Kept channels during gate training")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    right.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", action="store_true", help="copy finished runs' metrics into bise/results/ first")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"), help="runs folder read by --collect")
    parser.add_argument("--check", action="store_true", help="only compare README tables with the results; exit 1 if stale")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.collect:
        log.info("copied %d result files from %s", collect(args.runs_root), args.runs_root)
    records = load_results()
    tables = build_tables(records)
    if args.check:
        return verify_tables(README, tables, results_dir="bise/results/", sources=f"{len(records)} result files")
    atomic_write_text(README, fill_tables(README, tables))
    plot_gate_training(records)
    print(f"wrote {len(tables)} tables from {len(records)} result files into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
