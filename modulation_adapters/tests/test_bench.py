"""The benchmark's report, with the timed step replaced by a constant (no model is timed)."""

from __future__ import annotations

from modulation_adapters import bench


def test_report_shows_rank_only_for_modulation(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench, "step_time", lambda *args: 0.5)
    assert bench.main(["--out", str(tmp_path), "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "rank None" not in printed
    assert "feature     rank -: 0.500 s per step" in printed
    assert "modulation  rank 4: 0.500 s per step" in printed
    assert "modulation  rank full: 0.500 s per step" in printed
    report = (tmp_path / "modadapters.md").read_text()
    assert "| feature | - | 0.500 | 1.00 |  |" in report
    assert "| modulation | full | 0.500 | 1.00 | met |" in report
