"""Build the README tables and figures of How I Met Your Bias from how_i_met_your_bias/results/.

    python -m how_i_met_your_bias.tables --collect   # copy finished runs into results/ first
    python -m how_i_met_your_bias.tables             # rewrite the README tables and the figures
    python -m how_i_met_your_bias.tables --check     # exit 1 when a README table differs from the results

results/<scale>/<experiment>/seed<k>/ contains train.json, one <key>.json per
sampler setting and grids/<key>.png. Records of several seeds of one
setting are pooled: their counts add up before rho_model and its interval
are computed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from common.results import atomic_write_text, fill_tables, markdown_table, read_json, verify_tables
from how_i_met_your_bias.config import LOCATION_KEYS
from how_i_met_your_bias.metrics import clopper_pearson

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
RESULTS_DIR = PACKAGE_DIR / "results"
README = PACKAGE_DIR / "README.md"
FIGURES_DIR = PACKAGE_DIR / "figures"
RELEASED = PACKAGE_DIR / "released_numbers.yaml"
SCALE_ORDER = {"paper": 0, "smoke": 1}
SAMPLER_ORDER = ["ddpm", "ddim", "dpmpp", "euler", "euler_ancestral", "heun"]
TRAIN_RECORD = "train.json"


def collect(runs_root: Path, results_dir: Path = RESULTS_DIR) -> int:
    """Copy train.json, the sweep records and the grids of every run into results/."""
    copied = 0
    for train in sorted(Path(runs_root).glob("how_i_met_your_bias/*/*/seed*/train.json")):
        run_dir = train.parent
        scale, experiment, seed = run_dir.parts[-3:]
        if "-set-" in experiment:
            log.info("skipping %s: made with --set, not a config as written", run_dir)
            continue
        target = results_dir / scale / experiment / seed
        (target / "grids").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(train, target / TRAIN_RECORD)
        for record in sorted((run_dir / "sweep").glob("*.json")):
            changed = set(read_json(record).get("overrides", {})) - {"seed", "device", *LOCATION_KEYS}
            if changed:
                log.info("skipping %s: made with --set %s, not the config as written", record, sorted(changed))
                continue
            shutil.copyfile(record, target / record.name)
            grid = run_dir / "grids" / f"{record.stem}.png"
            if grid.exists():
                shutil.copyfile(grid, target / "grids" / grid.name)
            copied += 1
    return copied


class Experiment:
    """The records of one (scale, experiment), pooled over seeds."""

    def __init__(self, scale: str, name: str):
        self.scale, self.name = scale, name
        self.train: list[dict] = []
        self.settings: dict[str, list[dict]] = defaultdict(list)

    def pooled(self, key: str, attribute: str) -> dict:
        records = self.settings[key]
        counts = np.sum([np.array(r["attributes"][attribute]["counts"]) for r in records], axis=0)
        n, aligned = int(counts.sum()), int(np.trace(counts))
        low, high = clopper_pearson(aligned, n)
        rho_dataset = float(np.mean([r["attributes"][attribute]["rho_dataset"] for r in records]))
        fidelity = None
        if all(r["fidelity"] is not None for r in records):
            correct = sum(round(r["fidelity"]["value"] * r["attributes"][attribute]["n"]) for r in records)
            fidelity = (correct / n, *clopper_pearson(correct, n))
        return {"rho": aligned / n, "low": low, "high": high, "n": n, "rho_dataset": rho_dataset, "fidelity": fidelity,
                "seeds": len(records), "evals_per_s": float(np.mean([r["unet_evaluations_per_s"] for r in records]))}

    def in_group(self, group: str) -> list[dict]:
        """Return one representative record (the first seed's) per setting of `group`."""
        return [records[0] for records in self.settings.values() if group in records[0]["groups"]]

    @property
    def attributes(self) -> list[str]:
        first = next(iter(self.settings.values()))[0]
        return list(first["attributes"])

    @property
    def hardware(self) -> str:
        return "; ".join(sorted({r["hardware"] for r in self.train}))


def load_experiments(results_dir: Path = RESULTS_DIR) -> list[Experiment]:
    experiments: dict[tuple[str, str], Experiment] = {}
    for path in sorted(results_dir.glob("*/*/seed*/*.json")):
        scale, name = path.parts[-4], path.parts[-3]
        experiment = experiments.setdefault((scale, name), Experiment(scale, name))
        record = read_json(path)
        if path.name == TRAIN_RECORD:
            experiment.train.append(record)
        else:
            experiment.settings[record["key"]].append(record)
    return sorted(experiments.values(), key=lambda e: (SCALE_ORDER.get(e.scale, 9), e.name))


def load_released() -> dict:
    with RELEASED.open() as handle:
        return yaml.safe_load(handle)


def number(value: float | None) -> str:
    """Print a released number with at least three decimals, as the notebooks did (0.92 as 0.920)."""
    if value is None:
        return "-"
    text = f"{value:.3f}"
    return text if float(text) == value else f"{value:.4f}"


def interval(stats: dict) -> str:
    return f"{stats['rho']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"


def fidelity_text(stats: dict) -> str:
    return "-" if stats["fidelity"] is None else f"{stats['fidelity'][0]:.3f}"


def amplification(stats: dict) -> str:
    return f"{stats['rho'] - stats['rho_dataset']:+.3f}"


# ------------------------------------------------------------------ tables


def training_table(experiments: list[Experiment]) -> str:
    header = ["scale", "experiment", "training images", "rho_dataset (measured)", "UNet", "T, prediction", "steps x batch",
              "train images/s", "wall time", "seeds; hardware"]
    rows = []
    for e in experiments:
        if not e.train or not e.settings:
            continue
        first = e.train[0]
        rho = next(iter(e.settings.values()))[0]["attributes"]
        rho_text = ", ".join(f"{name} {values['rho_dataset']:.3f}" for name, values in rho.items())
        widths = "/".join(str(w) for w in first.get("block_out_channels", []))
        rows.append([e.scale, e.name, first["train_images"], rho_text, f"{widths}, {first['parameters'] / 1e6:.2f} M",
                     f"{first.get('num_train_timesteps', '-')}, {first.get('prediction_type', '-')}",
                     f"{first['steps']} x {first['images_seen'] // first['steps']}", f"{first['train_images_per_s']:.0f}",
                     f"{first['wall_time_s'] / 60:.1f} min", f"{len(e.train)}; {e.hardware}"])
    return markdown_table(header, rows)


def steps_table(experiments: list[Experiment]) -> str:
    """rho_model by sampler (rows) and number of steps (columns), w = 1."""
    blocks = []
    for e in experiments:
        records = e.in_group("steps")
        if not records:
            continue
        steps = sorted({r["setting"]["steps"] for r in records})
        samplers = sorted({r["setting"]["sampler"] for r in records}, key=SAMPLER_ORDER.index)
        for attribute in e.attributes:
            header = ["sampler"] + [f"{s} steps" for s in steps] + ["fidelity (most steps)"]
            rows = []
            for sampler in samplers:
                row, last = [sampler], None
                for s in steps:
                    match = [r for r in records if r["setting"]["sampler"] == sampler and r["setting"]["steps"] == s]
                    last = e.pooled(match[0]["key"], attribute) if match else last
                    row.append(interval(e.pooled(match[0]["key"], attribute)) if match else "-")
                rows.append(row + [fidelity_text(last)])
            stats = e.pooled(records[0]["key"], attribute)
            blocks.append(f"**{e.name}** ({e.scale} scale, {attribute}, rho_dataset {stats['rho_dataset']:.3f}, "
                          f"{stats['n']} samples per setting, w = 1; {e.hardware})\n\n" + markdown_table(header, rows))
    return "\n\n".join(blocks) if blocks else "No results yet."


def knob_table(experiments: list[Experiment], group: str, knob: str, released: dict) -> str:
    """rho_model against one knob (w, eta or churn), with the released notebook's numbers where comparable."""
    blocks = []
    for e in experiments:
        records = sorted(e.in_group(group), key=lambda r: r["setting"][knob])
        if not records:
            continue
        reference = released.get(group, {}).get(e.name, {}) if e.scale == "paper" or group == "guidance" else {}
        columns = reference.get("columns", {})
        for attribute in e.attributes:
            header = [knob, "rho_model [95% CI]", "amplification", "fidelity"] + [f"released notebook: {c}" for c in columns]
            rows = []
            for record in records:
                stats = e.pooled(record["key"], attribute)
                value = record["setting"][knob]
                notebook = [number(columns[c].get(value)) for c in columns]
                rows.append([f"{value:g}", interval(stats), amplification(stats), fidelity_text(stats)] + notebook)
            setting = records[0]["setting"]
            described = f"{setting['sampler']}, {setting['steps']} steps" + (f", order {setting['order']}" if setting["sampler"] == "dpmpp" else "")
            stats = e.pooled(records[0]["key"], attribute)
            note = f"\n\n{reference['note']}" if reference.get("note") else ""
            blocks.append(f"**{e.name}** ({e.scale} scale, {attribute}, rho_dataset {stats['rho_dataset']:.3f}, {described}, "
                          f"{stats['n']} samples per setting; {e.hardware})\n\n" + markdown_table(header, rows) + note)
    return "\n\n".join(blocks) if blocks else "No results yet."


def fidelity_table(experiments: list[Experiment]) -> str:
    """Build the table of whether samples show their conditioning class, for every experiment."""
    header = ["scale", "experiment", "prediction", "setting", "fidelity [95% CI]", "rho_model [95% CI]", "samples", "hardware"]
    rows = []
    for e in experiments:
        prediction = e.train[0].get("prediction_type", "-") if e.train else "-"
        for record in e.in_group("fidelity"):
            stats = e.pooled(record["key"], e.attributes[0])
            if stats["fidelity"] is None:
                continue
            value, low, high = stats["fidelity"]
            rows.append([e.scale, e.name, prediction, record["key"], f"{value:.3f} [{low:.3f}, {high:.3f}]", interval(stats),
                         stats["n"], e.hardware])
    return markdown_table(header, rows)


def speed_table(experiments: list[Experiment]) -> str:
    header = ["scale", "experiment", "setting", "UNet evaluations", "sampling time", "UNet evaluations/s", "hardware"]
    rows = []
    for e in experiments:
        for key, records in sorted(e.settings.items()):
            record = records[0]
            rows.append([e.scale, e.name, key, record["unet_evaluations"], f"{record['sampling_s']:.1f} s",
                         f"{record['unet_evaluations_per_s']:.0f}", record["hardware"]])
    return markdown_table(header, rows)


def released_edm_table(released: dict) -> str:
    edm = released["edm_10class"]
    columns = edm["rho_dataset"]
    header = ["(steps, S_churn)"] + [f"rho_dataset {c}" for c in columns]
    rows = [[f"({steps}, {churn})"] + [number(v) for v in values] for (steps, churn, *_), values in
            ((tuple(map(int, key.split(","))), values) for key, values in edm["rho_model"].items())]
    return edm["note"] + "\n\n" + markdown_table(header, rows)


def build_tables(experiments: list[Experiment], released: dict) -> dict[str, str]:
    return {
        "himyb_training": training_table(experiments),
        "himyb_fidelity": fidelity_table(experiments),
        "himyb_steps": steps_table(experiments),
        "himyb_guidance": knob_table(experiments, "guidance", "w", released),
        "himyb_eta": knob_table(experiments, "eta", "eta", released),
        "himyb_churn": knob_table(experiments, "churn", "churn", released),
        "himyb_speed": speed_table(experiments),
        "himyb_released_edm": released_edm_table(released),
    }


# ------------------------------------------------------------------ figures


def plot_figures(experiments: list[Experiment], released: dict, figures_dir: Path = FIGURES_DIR) -> list[Path]:
    """rho_model against steps, w, eta and churn, one file per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    figures_dir.mkdir(parents=True, exist_ok=True)
    for e in experiments:
        if not e.settings:
            continue
        attribute = e.attributes[0]
        panels = [g for g in ("steps", "guidance", "eta", "churn") if e.in_group(g)]
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
        for ax, group in zip(axes[0], panels):
            records = e.in_group(group)
            rho_dataset = e.pooled(records[0]["key"], attribute)["rho_dataset"]
            if group == "steps":
                samplers = sorted({r["setting"]["sampler"] for r in records}, key=SAMPLER_ORDER.index)
                for index, sampler in enumerate(samplers):
                    mine = sorted((r for r in records if r["setting"]["sampler"] == sampler), key=lambda r: r["setting"]["steps"])
                    # Samplers that coincide (DDIM and Euler) would hide each other, so each is shifted a little.
                    shift = 1 + 0.04 * (index - (len(samplers) - 1) / 2)
                    _errorbar(ax, [r["setting"]["steps"] * shift for r in mine], [e.pooled(r["key"], attribute) for r in mine], sampler)
                steps = sorted({r["setting"]["steps"] for r in records})
                ax.set_xscale("log")
                ax.set_xticks(steps, [str(s) for s in steps])
                ax.minorticks_off()
                ax.set_xlabel("sampling steps (w = 1)")
            else:
                knob = {"guidance": "w", "eta": "eta", "churn": "churn"}[group]
                mine = sorted(records, key=lambda r: r["setting"][knob])
                _errorbar(ax, [r["setting"][knob] for r in mine], [e.pooled(r["key"], attribute) for r in mine], "ours")
                if group == "guidance":
                    reference = released.get("guidance", {}).get(e.name, {})
                    for label, values in reference.get("columns", {}).items():
                        ax.plot(list(values), list(values.values()), "x--", alpha=0.7, label=f"notebook {label}")
                    ax.set_xscale("symlog", linthresh=1.0)
                setting = mine[0]["setting"]
                ax.set_xlabel(f"{knob} ({setting['sampler']}, {setting['steps']} steps)")
            ax.axhline(rho_dataset, color="black", linestyle=":", label=f"rho_dataset {rho_dataset:.3f}")
            ax.set_ylabel("rho_model (95% CI)")
            ax.set_ylim(min(0.45, rho_dataset - 0.1), 1.01)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        fig.suptitle(f"{e.name} ({e.scale} scale, {attribute}; {e.hardware})", fontsize=9)
        fig.tight_layout()
        path = figures_dir / f"{e.scale}_{e.name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _errorbar(ax, xs, stats, label):
    ys = [s["rho"] for s in stats]
    errors = [[s["rho"] - s["low"] for s in stats], [s["high"] - s["rho"] for s in stats]]
    ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", action="store_true", help="copy finished runs into how_i_met_your_bias/results/ first")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"), help="runs folder read by --collect")
    parser.add_argument("--check", action="store_true", help="only compare README tables with the results; exit 1 if stale")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.collect:
        log.info("copied %d sweep records from %s", collect(args.runs_root), args.runs_root)
    experiments = load_experiments()
    released = load_released()
    tables = build_tables(experiments, released)
    count = sum(len(e.settings) for e in experiments)
    if args.check:
        return verify_tables(README, tables, results_dir="how_i_met_your_bias/results/", sources=f"{count} sweep settings")
    atomic_write_text(README, fill_tables(README, tables))
    figures = plot_figures(experiments, released)
    print(f"wrote {len(tables)} tables from {count} sweep settings into {README} and {len(figures)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
