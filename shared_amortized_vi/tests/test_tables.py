"""SAMOVAR README tables, the prior-variance figure and the collect step, built from fake run records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared_amortized_vi import tables
from shared_amortized_vi.config import load_config
from shared_amortized_vi.tables import (
    REPORTED_ACCURACIES,
    build_tables,
    collect,
    load_runs,
    main_table,
    plot_all,
    reported_table,
    variance_table,
)

HARDWARE = "CPU test, 2 threads"


def make_record(method: str, shots: int, *, scale: str = "smoke", dataset: str = "omniglot", backbone: str = "conv4",
                seed: int = 0, accuracy: float = 90.0, ci95: float = 0.5, variance: float | None = 0.1,
                name: str | None = None, hardware: str = HARDWARE) -> dict:
    """A record as load_runs returns it: result.json's keys plus the training history."""
    prior_variance = None if method == "protonet" else variance
    history = [
        {"step": 25, "loss": 1.2, "accuracy": 0.5, "prior_variance": None if method == "protonet" else 1.0},
        {"step": 50, "loss": 0.8, "accuracy": 0.7, "prior_variance": prior_variance},
    ]
    return {
        "name": name or f"{method}_{shots}shot", "dataset": dataset, "method": method, "backbone": backbone, "ways": 5,
        "shots": shots, "accuracy": accuracy, "ci95": ci95, "test_tasks": 600, "test_samples": 100,
        "final_prior_variance": prior_variance, "train_steps": 1000, "train_tasks_per_s": 10.0, "eval_tasks_per_s": 50.0,
        "config_hash": "0" * 12, "seed": seed, "scale": scale, "hardware": hardware, "wall_time_s": 1.0, "history": history,
    }


def write_run(root: Path, record: dict) -> Path:
    """Write a record as result.json and history.json under root/<scale>/<name>/seed<k>/."""
    folder = root / record["scale"] / record["name"] / f"seed{record['seed']}"
    folder.mkdir(parents=True, exist_ok=True)
    result = {key: value for key, value in record.items() if key != "history"}
    (folder / "result.json").write_text(json.dumps(result))
    (folder / "history.json").write_text(json.dumps(record["history"]))
    return folder


def table_row(table: str, first_cell: str) -> list[str]:
    """The cells of the markdown row whose first cell is `first_cell`."""
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{table}")


def header_cells(table: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith("| method"))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


@pytest.fixture
def smoke_records() -> list[dict]:
    return [
        make_record("samovar", 1, accuracy=90.0, ci95=0.5, variance=0.5),
        make_record("samovar", 5, accuracy=97.25, ci95=0.125, variance=0.25),
        make_record("versa", 1, accuracy=88.0, ci95=0.75, variance=0.001),
        make_record("protonet", 1, accuracy=91.5, ci95=0.625),
        make_record("protonet", 5, accuracy=98.0, ci95=0.25),
    ]


# ---------------------------------------------------------------- main table


def test_main_table_cells(smoke_records):
    table = main_table(smoke_records)
    assert header_cells(table)[:5] == ["method", "backbone", "seed", "5-way 1-shot", "5-way 5-shot"]
    assert table_row(table, "SAMOVAR") == ["SAMOVAR", "Conv-4", "0", "90.00 ± 0.50", "97.25 ± 0.12", "600 / 600", "1000 / 1000"]
    assert table_row(table, "ProtoNets")[3:5] == ["91.50 ± 0.62", "98.00 ± 0.25"]


def test_main_table_missing_cell_is_dash(smoke_records):
    row = table_row(main_table(smoke_records), "VERSA-style MC")
    assert row[3:] == ["88.00 ± 0.75", "-", "600 / -", "1000 / -"]


def test_main_table_caption_names_scale_and_hardware(smoke_records):
    caption = main_table(smoke_records).splitlines()[0]
    assert "Omniglot, smoke scale, 5-way" in caption
    assert HARDWARE in caption
    assert "one row per training seed" in caption


def test_main_table_one_row_per_seed():
    records = [make_record("samovar", 1, seed=0, accuracy=90.0), make_record("samovar", 1, seed=1, accuracy=80.0)]
    rows = [line for line in main_table(records).splitlines() if line.startswith("| SAMOVAR |")]
    assert len(rows) == 2
    assert "| 0 | 90.00 ± 0.50 |" in rows[0]
    assert "| 1 | 80.00 ± 0.50 |" in rows[1]


def test_main_table_separates_scales_and_datasets():
    records = [make_record("samovar", 1, accuracy=95.0),
               make_record("samovar", 1, scale="paper", dataset="fc100", backbone="resnet12", accuracy=40.0)]
    table = main_table(records)
    paper_block, smoke_block = table.split("\n\n**")
    assert paper_block.startswith("**FC100, paper scale")
    assert "40.00" in paper_block
    assert "95.00" not in paper_block
    assert smoke_block.startswith("Omniglot, smoke scale")
    assert "95.00" in smoke_block
    assert "40.00" not in smoke_block


def test_ablation_config_gets_own_row():
    records = [make_record("samovar", 1), make_record("samovar", 1, name="samovar_beta0.1_1shot", accuracy=85.0)]
    table = main_table(records)
    assert table_row(table, "SAMOVAR")[3] == "90.00 ± 0.50"
    assert table_row(table, "SAMOVAR (samovar_beta0.1)")[3] == "85.00 ± 0.50"


def test_two_runs_in_one_cell_raise():
    records = [make_record("samovar", 1, name="samovar_1shot"), make_record("samovar", 1, name="omniglot_samovar_1shot")]
    with pytest.raises(ValueError, match="omniglot_samovar_1shot"):
        main_table(records)


def test_undefined_interval_shows_mean_only():
    row = table_row(main_table([make_record("samovar", 1, ci95=float("nan"))]), "SAMOVAR")
    assert row[3] == "90.00"


def test_no_records_gives_instructions():
    assert "shared_amortized_vi.train" in main_table([])


# ---------------------------------------------------------------- reported numbers


def test_reported_numbers_only_beside_our_benchmark():
    records = [make_record("samovar", 1, scale="paper", dataset="mini-imagenet", backbone="resnet12", accuracy=61.25, ci95=0.5)]
    table = reported_table(records)
    header = header_cells(table)
    columns = {name: header.index(name) for name in header}
    ours = table_row(table, "SAMOVAR")
    assert ours[columns["source"]] == "measured here"
    assert ours[columns["miniImageNet 1-shot"]] == "61.25 ± 0.50"
    assert ours[columns["miniImageNet 5-shot"]] == "-"
    metaoptnet = table_row(table, "MetaOptNet")
    assert metaoptnet[columns["source"]] == "reported by the authors of that method"
    assert metaoptnet[columns["miniImageNet 1-shot"]] == "62.64"
    for column in ("miniImageNet 5-shot", "CIFAR-FS 1-shot", "CIFAR-FS 5-shot", "FC100 1-shot", "FC100 5-shot"):
        assert metaoptnet[columns[column]] == "-", column
    assert table_row(table, "TADAM")[columns["miniImageNet 1-shot"]] == "58.50"


def test_reported_cell_without_published_number_is_dash():
    records = [make_record("samovar", 1, scale="paper", dataset="cifarfs", backbone="resnet12")]
    table = reported_table(records)
    column = header_cells(table).index("CIFAR-FS 1-shot")
    assert table_row(table, "MetaOptNet")[column] == "72.00"
    assert table_row(table, "TADAM")[column] == "-"


def test_protonets_resnet12_not_labelled_as_authors():
    records = [make_record("protonet", 1, scale="paper", dataset="fc100", backbone="resnet12")]
    table = reported_table(records)
    source = header_cells(table).index("source")
    assert table_row(table, "ProtoNets")[source] == "measured here"
    reported = [line for line in table.splitlines() if line.startswith("| ProtoNets |") and "measured here" not in line]
    assert len(reported) == 1
    assert "later work" in reported[0]
    assert REPORTED_ACCURACIES["ProtoNets"]["source"] != tables.AUTHORS


def test_smoke_rows_never_beside_paper_numbers():
    smoke = [make_record("samovar", 1, accuracy=12.34), make_record("samovar", 5, dataset="mini-imagenet", accuracy=23.45)]
    table = reported_table(smoke)
    assert "No paper-scale runs" in table
    assert "62.64" not in table

    paper = make_record("versa", 1, scale="paper", dataset="mini-imagenet", backbone="resnet12", accuracy=55.0)
    table = reported_table(smoke + [paper])
    assert "62.64" in table
    assert "12.34" not in table
    assert "23.45" not in table


# ---------------------------------------------------------------- variance collapse


def test_variance_table_ratio(smoke_records):
    table = variance_table(smoke_records)
    row = next(line for line in table.splitlines() if "5-way 1-shot" in line)
    assert "| samovar_1shot / versa_1shot | 0.5 | 0.001 | 500 |" in row
    assert "ProtoNets" not in table


def test_variance_table_reports_either_direction():
    records = [make_record("samovar", 1, variance=0.002), make_record("versa", 1, variance=0.2)]
    assert "| 0.002 | 0.2 | 0.01 |" in variance_table(records)


def test_variance_table_missing_partner_is_dash(smoke_records):
    row = next(line for line in variance_table(smoke_records).splitlines() if "5-way 5-shot" in line)
    assert "| samovar_5shot / - | 0.25 | - | - | - | - | 1000 / - |" in row


# ---------------------------------------------------------------- files, README and figure


def test_load_runs_reads_history(tmp_path, smoke_records):
    for record in smoke_records:
        write_run(tmp_path, record)
    records = load_runs(tmp_path)
    assert len(records) == len(smoke_records)
    assert all(record["history"][-1]["step"] == 50 for record in records)


def test_load_runs_rejects_incomplete_record(tmp_path):
    folder = write_run(tmp_path, make_record("samovar", 1))
    (folder / "result.json").write_text(json.dumps({"name": "samovar_1shot"}))
    with pytest.raises(ValueError, match="lacks the keys"):
        load_runs(tmp_path)


def test_collect_copies_finished_runs(tmp_path):
    configs = tables.CONFIGS_DIR
    runs = tmp_path / "runs" / "shared_amortized_vi"
    finished = make_record("samovar", 1)
    finished["config_hash"] = load_config(configs / "smoke" / "samovar_1shot.yaml", {"seed": 0}).hash()
    write_run(runs, finished)
    (write_run(runs, make_record("versa", 1)) / "result.json").unlink()  # unfinished: history only
    write_run(runs, make_record("protonet", 1))  # hash of another config version
    results = tmp_path / "results"

    assert collect(tmp_path / "runs", results, configs) == 1
    copied = results / "smoke" / "samovar_1shot" / "seed0"
    assert sorted(path.name for path in copied.iterdir()) == ["history.json", "result.json"]
    assert not (results / "smoke" / "versa_1shot").exists()
    assert not (results / "smoke" / "protonet_1shot").exists()

    assert collect(tmp_path / "runs", results, configs, include_modified=True) == 2
    assert (results / "smoke" / "protonet_1shot" / "seed0" / "result.json").exists()


@pytest.fixture
def package_paths(tmp_path, monkeypatch):
    """Point the command line at a temporary results folder, README and figures folder."""
    monkeypatch.setattr(tables, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(tables, "README", tmp_path / "README.md")
    monkeypatch.setattr(tables, "FIGURES_DIR", tmp_path / "figures")
    return tmp_path


def test_cli_creates_readme_and_figure(package_paths, smoke_records):
    for record in smoke_records:
        write_run(package_paths / "results", record)
    assert tables.main([]) == 0
    readme = (package_paths / "README.md").read_text()
    assert readme.startswith("# SAMOVAR")
    for name in tables.TABLE_NAMES:
        assert f"<!-- table:{name} -->" in readme
    assert "| SAMOVAR | Conv-4 | 0 | 90.00 ± 0.50 |" in readme
    figure = package_paths / "figures" / "smoke_prior_variance.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_detects_stale_readme(package_paths, smoke_records, capsys):
    results = package_paths / "results"
    write_run(results, smoke_records[0])
    assert tables.main([]) == 0
    assert tables.main(["--check"]) == 0

    write_run(results, smoke_records[1])
    capsys.readouterr()
    assert tables.main(["--check"]) == 1
    assert "differ" in capsys.readouterr().err


def test_check_without_readme_fails(package_paths, capsys):
    assert tables.main(["--check"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_readme_without_markers_fails(package_paths, capsys):
    (package_paths / "README.md").write_text("# SAMOVAR\n")
    assert tables.main([]) == 2
    assert "no markers" in capsys.readouterr().err


def test_figure_per_scale(tmp_path, smoke_records):
    paper = make_record("samovar", 1, scale="paper", dataset="fc100", backbone="resnet12")
    paths = plot_all(smoke_records + [paper], tmp_path)
    assert [path.name for path in paths] == ["paper_prior_variance.png", "smoke_prior_variance.png"]
    assert all(path.stat().st_size > 1000 for path in paths)


def test_build_tables_names_match_markers(smoke_records):
    assert tuple(build_tables(smoke_records)) == tables.TABLE_NAMES
