"""Build the README tables and the prior-variance figure of SAMOVAR from shared_amortized_vi/results/.

    python -m shared_amortized_vi.tables --collect   # copy finished runs from runs/ into shared_amortized_vi/results/
    python -m shared_amortized_vi.tables             # rewrite the README tables and the figures
    python -m shared_amortized_vi.tables --check     # exit 1 when a README table differs from the results

README tables (between `<!-- table:NAME -->` markers):

- main: test accuracy of every run, one block per scale, dataset and way count.
- reported: paper-scale runs beside the numbers that other methods'
  authors published for the same benchmark.
- variance: the conditional prior's final mean variance, SAMOVAR against
  the VERSA-style objective, per shot setting.

Every table has one row per training seed. A row's interval covers the
variation over test tasks of one trained model (all seeds see the same fixed
test tasks), so a mean over seeds would need an interval of its own.
Figures: figures/<scale>_prior_variance.png per scale.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from common.config import ConfigError
from common.results import atomic_write_text, fill_tables, markdown_table, read_json, verify_tables
from shared_amortized_vi.config import DATASETS, ModelOptions, load_config

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
RESULTS_DIR = PACKAGE_DIR / "results"
CONFIGS_DIR = PACKAGE_DIR / "configs"
FIGURES_DIR = PACKAGE_DIR / "figures"
README = PACKAGE_DIR / "README.md"
RUN_FILES = ("result.json", "history.json")
REQUIRED_KEYS = ("name", "dataset", "method", "backbone", "ways", "shots", "accuracy", "ci95", "test_tasks", "train_steps",
                 "scale", "seed", "hardware")
TABLE_NAMES = ("main", "reported", "variance")

SCALE_ORDER = ("paper", "smoke")
METHOD_ORDER = ("samovar", "versa", "protonet")
METHOD_LABELS = {"samovar": "SAMOVAR", "versa": "VERSA-style MC", "protonet": "ProtoNets"}
DATASET_LABELS = {"omniglot": "Omniglot", "mini-imagenet": "miniImageNet", "cifarfs": "CIFAR-FS", "fc100": "FC100"}
BACKBONE_LABELS = {"conv4": "Conv-4", "resnet12": "ResNet-12"}
PAPER_DATASETS = ("mini-imagenet", "cifarfs", "fc100")
DATASET_TOKENS = {"omniglot", "mini-imagenet", "miniimagenet", "imagenet", "mini", "cifarfs", "cifar-fs", "fc100"}
DEFAULT_SHOTS = (1, 5)
DEFAULT_MIN_LOGVAR = ModelOptions().logvar_clamp[0]

AUTHORS = "reported by the authors of that method"
# 5-way test accuracies (%) that other methods published on the paper-scale benchmarks, keyed by
# (dataset, shots). Sources: MetaOptNet-SVM with ResNet-12 from Lee et al., "Meta-Learning with
# Differentiable Convex Optimization", CVPR 2019; TADAM with ResNet-12 from Oreshkin et al.,
# "TADAM: Task dependent adaptive metric for improved few-shot learning", NeurIPS 2018.
# NOTE: these values were not checked against the papers' tables in this repository. The ProtoNets
# paper (Snell et al., NeurIPS 2017) used a Conv-4 backbone, so its ResNet-12 numbers come from a
# later re-implementation, not from the ProtoNets authors, and are labelled that way.
REPORTED_ACCURACIES = {
    "MetaOptNet": {
        "source": AUTHORS,
        "backbone": "ResNet-12",
        "accuracy": {("mini-imagenet", 1): 62.64, ("mini-imagenet", 5): 78.63, ("cifarfs", 1): 72.0, ("cifarfs", 5): 84.2,
                     ("fc100", 1): 41.1, ("fc100", 5): 55.5},
    },
    "TADAM": {
        "source": AUTHORS,
        "backbone": "ResNet-12",
        "accuracy": {("mini-imagenet", 1): 58.5, ("mini-imagenet", 5): 76.7, ("fc100", 1): 40.1, ("fc100", 5): 56.1},
    },
    "ProtoNets": {
        "source": "reported by later work that re-trained ProtoNets with ResNet-12",
        "backbone": "ResNet-12",
        "accuracy": {("mini-imagenet", 1): 60.37, ("mini-imagenet", 5): 78.02, ("fc100", 1): 41.54, ("fc100", 5): 57.08},
    },
}
REPORTED_WAYS = 5

README_TEMPLATE = "# SAMOVAR: meta-learning with shared amortized variational inference\n\n" + "".join(
    f"<!-- table:{name} -->\n<!-- /table:{name} -->\n\n" for name in TABLE_NAMES)


# ---------------------------------------------------------------- result files


def config_mismatch(result: dict, scale: str, name: str, configs_dir: Path) -> str | None:
    """Return why a run's record does not belong to its config file as written, or None when it does."""
    path = configs_dir / scale / f"{name}.yaml"
    if not path.exists():
        return f"{path} does not exist"
    try:
        expected = load_config(path, {"seed": result.get("seed", 0)}).hash()
    except ConfigError as error:
        return f"{path} is invalid ({error})"
    if result.get("config_hash") != expected:
        return (f"it was made from another version of {path} or with --set overrides "
                f"(config hash {result.get('config_hash')}, the file gives {expected})")
    return None


def collect(runs_root: Path, results_dir: Path = RESULTS_DIR, configs_dir: Path = CONFIGS_DIR,
            include_modified: bool = False) -> int:
    """Copy result.json and history.json of every finished run to results/<scale>/<name>/seed<k>/ and return the run count.

    A run without result.json is unfinished and skipped. A run whose config hash
    differs from its config file as written is skipped with a warning, unless
    `include_modified` is set.
    """
    copied = 0
    for result_path in sorted(Path(runs_root).glob("shared_amortized_vi/*/*/seed*/result.json")):
        scale, name, seed = result_path.parts[-4:-1]
        reason = config_mismatch(read_json(result_path), scale, name, configs_dir)
        if reason is not None:
            if not include_modified:
                log.warning("skipping %s: %s; pass --include-modified to copy it anyway", result_path.parent, reason)
                continue
            log.warning("copying %s although %s", result_path.parent, reason)
        target = results_dir / scale / name / seed
        target.mkdir(parents=True, exist_ok=True)
        for file_name in RUN_FILES:
            source = result_path.parent / file_name
            if source.exists():
                shutil.copyfile(source, target / file_name)
        copied += 1
    return copied


def load_runs(results_dir: Path = RESULTS_DIR) -> list[dict]:
    """Read every results/<scale>/<name>/seed<k>/result.json, with its training history under the key "history"."""
    records = []
    for path in sorted(Path(results_dir).glob("*/*/seed*/result.json")):
        record = read_json(path)
        missing = [key for key in REQUIRED_KEYS if key not in record]
        if missing:
            raise ValueError(f"{path} lacks the keys {missing}; it was not written by shared_amortized_vi.train "
                             f"(or by an older version of it). Rerun that config and collect it again")
        history_path = path.with_name("history.json")
        record["history"] = read_json(history_path) if history_path.exists() else []
        records.append(record)
    return records


# ---------------------------------------------------------------- formatting


def order_index(value, order: tuple) -> int:
    return order.index(value) if value in order else len(order)


def dataset_label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset, dataset)


def backbone_label(backbone: str) -> str:
    return BACKBONE_LABELS.get(backbone, backbone)


def format_accuracy(record: dict | None) -> str:
    """Format "mean ± 95% half-width" in %, "-" for a missing run, and the mean alone when the interval is undefined (one task)."""
    if record is None:
        return "-"
    half_width = record["ci95"]
    if half_width is None or not math.isfinite(half_width):
        return f"{record['accuracy']:.2f}"
    return f"{record['accuracy']:.2f} ± {half_width:.2f}"


def format_variance(value) -> str:
    """Format three significant digits, in scientific notation outside [0.001, 10000), and "-" for a missing value."""
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.2e}"


def hardware_of(records: list[dict]) -> str:
    return "; ".join(sorted({record["hardware"] for record in records}))


def shot_settings(records: list[dict]) -> list[int]:
    return sorted(set(DEFAULT_SHOTS) | {record["shots"] for record in records})


def variant_name(record: dict) -> str:
    """Return the run name without its shot token ("1shot") and dataset token: samovar_beta0.1_1shot -> samovar_beta0.1.

    Runs of one variant at different shot settings or datasets share a table
    row, and an ablation config gets its own row.
    """
    tokens = [token for token in record["name"].split("_")
              if not re.fullmatch(r"\d+shots?", token) and token.lower() not in DATASET_TOKENS]
    return "_".join(tokens)


def row_label(method: str, variant: str) -> str:
    label = METHOD_LABELS.get(method, method)
    return label if variant in (method, "") else f"{label} ({variant})"


def rows_by_model(records: list[dict], cell_key) -> dict[tuple, dict]:
    """Group records into table rows, {(method, variant, backbone, seed): {cell_key(record): record}}, in table order.

    Raises ValueError when two runs fall into one cell.
    """
    rows: dict[tuple, dict] = defaultdict(dict)
    for record in records:
        key = (record["method"], variant_name(record), record["backbone"], record["seed"])
        cell = cell_key(record)
        if cell in rows[key]:
            raise ValueError(f"the runs {rows[key][cell]['name']} and {record['name']} both give the {row_label(*key[:2])} row, "
                             f"{key[2]}, seed {key[3]}, {record['dataset']} {record['ways']}-way {record['shots']}-shot at "
                             f"{record['scale']} scale; move one of them out of the results folder")
        rows[key][cell] = record
    return dict(sorted(rows.items(), key=lambda item: (order_index(item[0][0], METHOD_ORDER), *item[0][1:])))


def per_shot(cells: dict[int, dict], shots: list[int], key: str) -> str:
    return " / ".join(str(cells[k][key]) if k in cells else "-" for k in shots)


# ---------------------------------------------------------------- tables


def main_table(records: list[dict]) -> str:
    """Build one block per (scale, dataset, ways), with a row per method, variant, backbone and seed, and a column per shot setting."""
    if not records:
        return ("No result files yet: train the configs in shared_amortized_vi/configs/<scale>/ with "
                "`python -m shared_amortized_vi.train`, then run `python -m shared_amortized_vi.tables --collect`.")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[(record["scale"], record["dataset"], record["ways"])].append(record)
    blocks = []
    for scale, dataset, ways in sorted(groups, key=lambda key: (order_index(key[0], SCALE_ORDER), order_index(key[1], DATASETS), key[2])):
        group = groups[(scale, dataset, ways)]
        shots = shot_settings(group)
        shot_text = " / ".join(f"{k}-shot" for k in shots)
        header = ["method", "backbone", "seed"] + [f"{ways}-way {k}-shot" for k in shots]
        header += [f"test tasks ({shot_text})", f"train steps ({shot_text})"]
        body = []
        for (method, variant, backbone, seed), cells in rows_by_model(group, lambda record: record["shots"]).items():
            body.append([row_label(method, variant), backbone_label(backbone), seed]
                        + [format_accuracy(cells.get(k)) for k in shots]
                        + [per_shot(cells, shots, "test_tasks"), per_shot(cells, shots, "train_steps")])
        caption = (f"**{dataset_label(dataset)}, {scale} scale, {ways}-way.** Test accuracy (%) ± half-width of the 95% "
                   f"confidence interval over the test tasks; one row per training seed, all seeds tested on the same fixed "
                   f"tasks; \"-\" means no run. Hardware: {hardware_of(group)}.")
        blocks.append(caption + "\n\n" + markdown_table(header, body))
    return "\n\n".join(blocks)


def reported_table(records: list[dict]) -> str:
    """Put paper-scale 5-way runs beside REPORTED_ACCURACIES. A reported number appears only in a column where a run of ours exists."""
    ours = [record for record in records
            if record["scale"] == "paper" and record["dataset"] in PAPER_DATASETS and record["ways"] == REPORTED_WAYS]
    if not ours:
        return ("No paper-scale runs yet. Numbers that other methods' authors published are listed here only beside a "
                f"paper-scale run of ours on the same benchmark ({', '.join(dataset_label(d) for d in PAPER_DATASETS)}, "
                f"{REPORTED_WAYS}-way); smoke-scale runs never appear here.")
    columns = [(dataset, shots) for dataset in PAPER_DATASETS for shots in DEFAULT_SHOTS]
    measured = {(record["dataset"], record["shots"]) for record in ours}
    header = ["method", "source", "backbone", "seed"] + [f"{dataset_label(d)} {k}-shot" for d, k in columns]
    body = []
    for (method, variant, backbone, seed), cells in rows_by_model(ours, lambda record: (record["dataset"], record["shots"])).items():
        body.append([row_label(method, variant), "measured here", backbone_label(backbone), seed]
                    + [format_accuracy(cells.get(column)) for column in columns])
    for name, entry in REPORTED_ACCURACIES.items():
        values = [entry["accuracy"].get(column) if column in measured else None for column in columns]
        body.append([name, entry["source"], entry["backbone"], "-"] + ["-" if value is None else f"{value:.2f}" for value in values])
    caption = (f"**Paper scale, {REPORTED_WAYS}-way.** Test accuracy (%); our rows give ± the half-width of the 95% confidence "
               f"interval over the test tasks, one row per training seed (hardware: {hardware_of(ours)}). Rows whose source is "
               f"not \"measured here\" are published numbers, not measured in this repository; each appears only in a column "
               f"where a run of ours exists, and \"-\" marks the rest. Smoke-scale (Omniglot) runs never appear here.")
    return caption + "\n\n" + markdown_table(header, body)


def variance_pairs(runs: dict[str, list[dict]]) -> list[tuple[dict | None, dict | None]]:
    """Pair the SAMOVAR and VERSA-style runs of one setting.

    The plain configs form one pair, and every other variant is paired with
    the plain run of the other method.
    """
    plain = {method: next((r for r in runs.get(method, []) if variant_name(r) in (method, "")), None) for method in ("samovar", "versa")}
    pairs = [(plain["samovar"], plain["versa"])] if plain["samovar"] or plain["versa"] else []
    for record in runs.get("samovar", []):
        if record is not plain["samovar"]:
            pairs.append((record, plain["versa"]))
    for record in runs.get("versa", []):
        if record is not plain["versa"]:
            pairs.append((plain["samovar"], record))
    return pairs


def variance_table(records: list[dict]) -> str:
    """Compare the final mean prior variance of SAMOVAR and of the VERSA-style objective per setting and seed, with their ratio."""
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record["method"] in ("samovar", "versa"):
            key = (record["scale"], record["dataset"], record["backbone"], record["ways"], record["shots"], record["seed"])
            groups[key][record["method"]].append(record)
    if not groups:
        return "No SAMOVAR or VERSA-style runs yet."
    header = ["scale", "dataset", "backbone", "setting", "seed", "runs (SAMOVAR / VERSA-style)", "SAMOVAR", "VERSA-style MC",
              "ratio SAMOVAR / VERSA-style", "relative: SAMOVAR", "relative: VERSA-style",
              "train steps (SAMOVAR / VERSA-style)"]
    body = []
    for key in sorted(groups, key=lambda k: (order_index(k[0], SCALE_ORDER), order_index(k[1], DATASETS), *k[2:])):
        scale, dataset, backbone, ways, shots, seed = key
        for samovar, versa in variance_pairs(groups[key]):
            samovar_variance = samovar.get("final_prior_variance") if samovar else None
            versa_variance = versa.get("final_prior_variance") if versa else None
            ratio = None
            if samovar_variance is not None and versa_variance is not None and versa_variance > 0:
                ratio = samovar_variance / versa_variance
            names = " / ".join(record["name"] if record else "-" for record in (samovar, versa))
            steps = " / ".join(str(record["train_steps"]) if record else "-" for record in (samovar, versa))
            body.append([scale, dataset_label(dataset), backbone_label(backbone), f"{ways}-way {shots}-shot", seed, names,
                         format_variance(samovar_variance), format_variance(versa_variance), format_variance(ratio),
                         *(format_variance(record.get("final_prior_relative_variance")) if record else "-" for record in (samovar, versa)),
                         steps])
    floor = math.exp(DEFAULT_MIN_LOGVAR)
    caption = ("Mean predicted variance of the conditional prior p(w | support) over classes and feature dimensions, "
               "averaged over the last logging window of training. \"Relative\" divides it by the mean squared prior mean, "
               "the scale at which the variance matters, since the backbone can grow its features. A ratio above 1 means "
               "the VERSA-style prior ended "
               "narrower than SAMOVAR's, and below 1 the opposite. With the default log-variance clamp the variance cannot "
               f"fall below exp({DEFAULT_MIN_LOGVAR:g}) = {floor:.2g}.")
    return caption + "\n\n" + markdown_table(header, body)


def build_tables(records: list[dict]) -> dict[str, str]:
    return {"main": main_table(records), "reported": reported_table(records), "variance": variance_table(records)}


# ---------------------------------------------------------------- figure


def finite_points(history: list[dict], key: str, factor: float = 1.0, positive: bool = False) -> tuple[list, list]:
    steps, values = [], []
    for entry in history:
        value = entry.get(key)
        if value is None or not math.isfinite(value) or (positive and value <= 0):
            continue
        steps.append(entry["step"])
        values.append(factor * value)
    return steps, values


def plot_scale(records: list[dict], path: Path) -> None:
    """Plot prior variance (log scale, SAMOVAR and VERSA-style) and training accuracy (every method) against training step.

    The figure has one column per shot setting. Line colour shows the method,
    and the line style distinguishes datasets or seeds when a scale has several.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({record["shots"] for record in records})
    several_datasets = len({record["dataset"] for record in records}) > 1
    several_seeds = len({record["seed"] for record in records}) > 1
    styles = ("-", "--", ":", "-.")
    variants = sorted({(record["dataset"], record["backbone"], record["seed"]) for record in records})
    colours = {"samovar": "tab:blue", "versa": "tab:orange", "protonet": "tab:green"}

    figure, axes = plt.subplots(2, len(shots), figsize=(max(6.0, 4.6 * len(shots)), 6.8), squeeze=False, sharex="col")
    for record in sorted(records, key=lambda r: (order_index(r["method"], METHOD_ORDER), r["dataset"], r["seed"])):
        column = shots.index(record["shots"])
        variant = variant_name(record)
        label = row_label(record["method"], variant)
        if several_datasets:
            label += f", {dataset_label(record['dataset'])}"
        if several_seeds:
            label += f", seed {record['seed']}"
        style = styles[variants.index((record["dataset"], record["backbone"], record["seed"])) % len(styles)]
        if variant not in (record["method"], ""):
            style = ":"  # an ablation of the same method, dotted beside the plain run
        colour = colours.get(record["method"])
        if record["method"] in ("samovar", "versa"):
            steps, values = finite_points(record["history"], "prior_variance", positive=True)
            axes[0][column].plot(steps, values, style, color=colour, label=label)
        steps, values = finite_points(record["history"], "accuracy", factor=100.0)
        axes[1][column].plot(steps, values, style, color=colour, label=label)

    ways = sorted({record["ways"] for record in records})
    for column, k in enumerate(shots):
        top, bottom = axes[0][column], axes[1][column]
        top.set_yscale("log")
        top.set(title=f"{'/'.join(map(str, ways))}-way {k}-shot", ylabel="mean prior variance")
        bottom.set(xlabel="training step", ylabel="training query accuracy (%)")
        for axis in (top, bottom):
            axis.grid(alpha=0.3, which="both")
            if axis.has_data():
                axis.legend(fontsize=7)
    scale = records[0]["scale"]
    figure.suptitle(f"SAMOVAR against the VERSA-style objective, {scale} scale\n{hardware_of(records)}", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_all(records: list[dict], figures_dir: Path = FIGURES_DIR) -> list[Path]:
    """Write figures_dir/<scale>_prior_variance.png for every scale that has runs and return the paths."""
    paths = []
    for scale in sorted({record["scale"] for record in records}, key=lambda s: order_index(s, SCALE_ORDER)):
        path = Path(figures_dir) / f"{scale}_prior_variance.png"
        plot_scale([record for record in records if record["scale"] == scale], path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared_amortized_vi.tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", action="store_true", help="first copy finished runs from --runs-root into shared_amortized_vi/results/")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"), help="runs folder read by --collect (default: runs)")
    parser.add_argument("--include-modified", action="store_true",
                        help="with --collect, also copy runs whose config hash differs from their config file as written")
    parser.add_argument("--check", action="store_true", help="only compare the README tables with the results; exit 1 if they differ")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.collect:
        log.info("copied %d runs from %s", collect(args.runs_root, RESULTS_DIR, CONFIGS_DIR, args.include_modified), args.runs_root)
    try:
        records = load_runs(RESULTS_DIR)
        tables = build_tables(records)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        if not README.exists():
            print(f"error: {README} does not exist; run `python -m shared_amortized_vi.tables` to create it", file=sys.stderr)
            return 1
        return verify_tables(README, tables, results_dir=f"{RESULTS_DIR}/", sources=f"{len(records)} result files")
    if not README.exists():
        atomic_write_text(README, README_TEMPLATE)
        log.info("created %s with empty table markers", README)
    try:
        text = fill_tables(README, tables)
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    atomic_write_text(README, text)
    figures = plot_all(records, FIGURES_DIR)
    print(f"wrote {len(tables)} tables from {len(records)} result files into {README}"
          + (f" and {len(figures)} figures into {FIGURES_DIR}" if figures else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
