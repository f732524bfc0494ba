"""The smoke table scores every method against the fine-tuning entry of its run."""

from __future__ import annotations

import math

from modulation_adapters.tables import results_table, scored


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
