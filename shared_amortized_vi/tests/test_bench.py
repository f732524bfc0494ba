"""The SAMOVAR benchmark: a tiny run writes its page, and the loop it times computes what predict computes."""

from __future__ import annotations

import json

import pytest
import torch

from shared_amortized_vi.bench import TINY, main, make_model, predict_with_loop, random_task
from shared_amortized_vi.model import predict


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tiny_run_writes_page(tmp_path, restore_threads):
    page = tmp_path / "samovar.md"
    assert main(["--tiny", "--threads", "1", "--out", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# SAMOVAR benchmarks")
    assert "`python -m shared_amortized_vi.bench --tiny --threads 1 --out" in text
    for method in ("samovar", "versa", "protonet"):
        assert f"| conv4 | 1x28x28 | {method} | 1 |" in text
    assert "ResNet-12 at 84 px: not measured" in text

    results = json.loads(page.with_suffix(".json").read_text())
    assert [row["method"] for row in results["rows"]] == ["samovar", "versa", "protonet"]
    samovar, _, protonet = results["rows"]
    for key in ("train_step_s", "predict_s", "predict_loop_s", "scoring_s", "scoring_loop_s"):
        assert samovar[key] > 0, key
    for key in ("predict_loop_s", "scoring_s", "scoring_loop_s"):
        assert protonet[key] is None, key


def test_loop_matches_single_sample_predictions():
    """The loop's average equals the mean of predict calls with one sample each, drawn from the same generator."""
    model = make_model(TINY, "samovar", "conv4", torch.device("cpu")).eval()
    support_x, support_y, query_x, _ = random_task(TINY, 1, "omniglot", torch.device("cpu"))
    samples = 4

    looped = predict_with_loop(model, support_x, support_y, query_x, TINY.ways, samples, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    single = torch.stack([predict(model, support_x, support_y, query_x, TINY.ways, 1, generator) for _ in range(samples)]).mean(0)

    assert looped.shape == (len(query_x), TINY.ways)
    torch.testing.assert_close(looped, single, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(looped.sum(-1), torch.ones(len(query_x)))
