"""README tables are generated from result records and checked against them."""

from __future__ import annotations

import copy

import pytest

from bise.tables import build_tables
from bise.tables import main as tables_main
from common.results import check_tables, fill_tables


def make_record(method: str, seed: int, unbiased: float, *, gamma: float = 1.0, reweight: bool = True) -> dict:
    accuracy = {"test": {"unbiased": unbiased, "aligned": 99.0, "conflicting": unbiased - 1.0, "num_samples": 1000}}
    sparsity = {"sparsity_channels": 20.0, "sparsity_weights": 30.0, "mflops_dense": 414.9, "mflops_pruned": 300.0, "kept_per_layer": [1, 2, 3, 4]}
    if method == "vanilla":
        results = {"vanilla": {**accuracy, **sparsity, "sparsity_channels": 0.0}}
    else:
        results = {"bise": {**accuracy, **sparsity}, "bise_ft": {**accuracy, **sparsity}, "history": []}
    return {
        "experiment": f"{method}_rho0.99",
        "method": method,
        "scale": "smoke",
        "seed": seed,
        "hardware": "CPU test, 2 threads",
        "config": {
            "precision": "bf16",
            "data": {"source": "embedded", "rho": 0.99, "train_size": None},
            "train": {"epochs": 3, "lr": 0.1},
            "gates": {"gamma": gamma, "reweight": reweight},
        },
        "results": results,
    }


@pytest.fixture
def records() -> list[dict]:
    return [make_record("vanilla", 0, 10.0), make_record("vanilla", 1, 12.0), make_record("bise", 0, 50.0), make_record("bise", 1, 60.0)]


@pytest.fixture
def readme(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("intro\n<!-- table:main -->\nold\n<!-- /table:main -->\n<!-- table:sparsity -->\n<!-- /table:sparsity -->\n"
                    "<!-- table:ablation -->\n<!-- /table:ablation -->\nend\n")
    return path


def test_main_table_mean_and_spread(records):
    main = build_tables(records)["main"]
    assert "| Vanilla | 11.0 ± 1.4 |" in main
    assert "| BISE | 55.0 ± 7.1 |" in main


def test_main_table_shows_paper_number(records):
    main = build_tables(records)["main"]
    bise_row = next(line for line in main.splitlines() if "| BISE |" in line)
    assert "| 96.1 |" in bise_row


def test_fill_then_check_passes(records, readme):
    tables = build_tables(records)
    readme.write_text(fill_tables(readme, tables))
    assert check_tables(readme, tables) == []
    assert readme.read_text().startswith("intro\n")
    assert readme.read_text().endswith("end\n")


def test_check_detects_edited_number(records, readme):
    tables = build_tables(records)
    readme.write_text(fill_tables(readme, tables).replace("55.0 ± 7.1", "58.0 ± 7.1"))
    assert check_tables(readme, tables) == ["main"]


def test_check_detects_new_result(records, readme):
    readme.write_text(fill_tables(readme, build_tables(records)))
    changed = copy.deepcopy(records)
    changed[2]["results"]["bise"]["test"]["unbiased"] = 51.0
    assert "main" in check_tables(readme, build_tables(changed))


def test_ablation_rows_need_variants(records):
    assert build_tables(records)["ablation"].count("\n") == 1  # header only
    ablated = records + [make_record("bise", 0, 40.0, gamma=0.0)]
    ablation = build_tables(ablated)["ablation"]
    assert "reweighting only (gamma = 0)" in ablation
    assert "both (BISE)" in ablation


def test_missing_markers_raise(records, tmp_path):
    path = tmp_path / "README.md"
    path.write_text("no markers here\n")
    with pytest.raises(KeyError, match="table:main"):
        fill_tables(path, build_tables(records))


def test_committed_readme_matches_results():
    assert tables_main(["--check"]) == 0
