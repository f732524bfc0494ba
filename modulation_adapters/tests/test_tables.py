"""The README tables: smoke scores against the fine-tuning entry, paper runs in their own table, headers from the records."""

from __future__ import annotations

import math

from common.results import fill_tables
from modulation_adapters.tables import (
    NO_PAPER_RESULTS,
    PAPER_TABLE,
    README,
    RESULTS_DIR,
    SMOKE_TABLE,
    build_tables,
    load_runs,
    results_table,
    scored,
)


def record(entry, method, accuracies, rank=None):
    return {"entry": entry, "method": method, "rank": rank, "hardware": "CPU test", "parameters_over_backbone": 0.1,
            "mean_accuracy": sum(accuracies.values()) / len(accuracies),
            "domains": {name: {"accuracy": value, "parameters": 1} for name, value in accuracies.items()}}


def test_score_against_finetune_baseline():
    records = [record("finetune", "finetune", {"a": 80.0, "b": 90.0}), record("modulation_full", "modulation", {"a": 90.0, "b": 95.0})]
    rows = {r["entry"]: r for r in scored(records)}
    assert math.isclose(rows["finetune"]["score"], 500.0)
    assert rows["modulation_full"]["score"] > 500.0


def test_table_lists_full_rank_and_the_scale():
    records = [record("finetune", "finetune", {"a": 80.0}), record("modulation_full", "modulation", {"a": 85.0})]
    table = results_table({("smoke", "digits", "seed0"): records})
    assert "| modulation | full |" in table
    assert "smoke scale" in table


def paper_record(entry, method, eval_split="val", config_hash="aaaaaaaaaaaa", rank=None):
    return {**record(entry, method, {"svhn": 90.0}, rank), "scale": "paper", "score": 250.0, "eval_split": eval_split,
            "config_hash": config_hash}


def test_paper_runs_get_their_own_table():
    smoke = [record("finetune", "finetune", {"a": 80.0})]
    paper = [paper_record("bn", "bn")]
    tables = build_tables({("smoke", "digits", "seed0"): smoke, ("paper", "decathlon", "seed0"): paper})
    assert "paper scale" not in tables[SMOKE_TABLE]
    assert "smoke scale" in tables[SMOKE_TABLE]
    assert "paper scale" in tables[PAPER_TABLE]
    assert "val accuracy %" in tables[PAPER_TABLE]


def test_paper_table_without_runs():
    tables = build_tables({("smoke", "digits", "seed0"): [record("finetune", "finetune", {"a": 80.0})]})
    assert tables[PAPER_TABLE] == NO_PAPER_RESULTS


def test_readme_has_both_markers():
    filled = fill_tables(README, build_tables(load_runs(RESULTS_DIR)))
    assert f"<!-- table:{PAPER_TABLE} -->\n{NO_PAPER_RESULTS}\n<!-- /table:{PAPER_TABLE} -->" in filled


def test_split_comes_from_the_records():
    table = results_table({("paper", "decathlon", "seed0"): [paper_record("bn", "bn", "test"), paper_record("feature", "feature", "test")]})
    assert "test accuracy %" in table
    assert "val accuracy" not in table


def test_records_disagreeing_on_split_are_named():
    records = [paper_record("bn", "bn", "val"), paper_record("feature", "feature", "test")]
    table = results_table({("paper", "decathlon", "seed0"): records})
    assert "accuracy % on different splits: test (feature), val (bn)" in table


def test_records_of_different_configs_are_named():
    records = [paper_record("bn", "bn", config_hash="aaaaaaaaaaaa"), paper_record("feature", "feature", config_hash="bbbbbbbbbbbb")]
    table = results_table({("paper", "decathlon", "seed0"): records})
    assert "the records come from different configs, config_hash aaaaaaaaaaaa (bn), bbbbbbbbbbbb (feature)" in table
