"""Tests for bise.losses: the alignment weights of L_r and the batch mutual-information estimator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bise.losses import alignment_weights, batch_mutual_information, reweighted_cross_entropy

pytestmark = pytest.mark.timeout(10)

NUM_CLASSES = 10


def _biased_batch(size: int, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and bias labels of a batch whose first round(size * rho) samples are bias-aligned."""
    targets = torch.arange(size) % NUM_CLASSES
    n_aligned = round(size * rho)
    bias = targets.clone()
    bias[n_aligned:] = (targets[n_aligned:] + 1) % NUM_CLASSES
    return targets, bias


def _loop_mutual_information(probabilities: list[list[float]], bias: list[int], num_bias: int) -> float:
    """I(b_hat; b) / log(num_bias) of the soft joint, written out with explicit loops."""
    n = len(bias)
    joint = [[0.0] * num_bias for _ in range(num_bias)]
    for sample in range(n):
        for predicted in range(num_bias):
            joint[bias[sample]][predicted] += probabilities[sample][predicted] / n
    p_true = [sum(joint[true][predicted] for predicted in range(num_bias)) for true in range(num_bias)]
    p_predicted = [sum(joint[true][predicted] for true in range(num_bias)) for predicted in range(num_bias)]
    total = 0.0
    for true in range(num_bias):
        for predicted in range(num_bias):
            cell = joint[true][predicted]
            if cell > 0:
                total += cell * math.log(cell / (p_true[true] * p_predicted[predicted]))
    return total / math.log(num_bias)


@pytest.mark.parametrize("rho", [0.99, 0.995, 0.997, 0.5])
def test_alignment_weight_values(rho: float) -> None:
    targets = torch.tensor([0, 1, 2, 3])
    bias = torch.tensor([0, 1, 5, 7])  # two aligned, two conflicting

    weights = alignment_weights(targets, bias, rho, NUM_CLASSES)

    aligned = 1.0 / (NUM_CLASSES * rho)
    conflicting = (NUM_CLASSES - 1) / (NUM_CLASSES * (1.0 - rho))
    expected = torch.tensor([aligned, aligned, conflicting, conflicting], dtype=torch.float32)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("rho", [0.99, 0.995, 0.997, 0.9, 0.5])
def test_weights_sum_to_batch_size(rho: float) -> None:
    size = 2000
    targets, bias = _biased_batch(size, rho)

    weights = alignment_weights(targets, bias, rho, NUM_CLASSES)

    assert float(weights.sum()) == pytest.approx(size, rel=1e-4)


def test_weights_unbiased_rho_all_one() -> None:
    # At rho = 1/C the training set is unbiased already, so no sample needs reweighting.
    targets, bias = _biased_batch(100, 0.5)

    weights = alignment_weights(targets, bias, 1.0 / NUM_CLASSES, NUM_CLASSES)

    torch.testing.assert_close(weights, torch.ones(100), rtol=1e-6, atol=0)


def test_reweighted_ce_is_weighted_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, NUM_CLASSES, generator=generator)
    targets = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    bias = torch.tensor([0, 1, 2, 3, 9, 9, 9, 9])

    loss = reweighted_cross_entropy(logits, targets, bias, 0.99, NUM_CLASSES)

    per_sample = F.cross_entropy(logits, targets, reduction="none")
    expected = (alignment_weights(targets, bias, 0.99, NUM_CLASSES) * per_sample).mean()
    torch.testing.assert_close(loss, expected)


def test_mi_matches_loop() -> None:
    logits = torch.tensor(
        [
            [2.0, 0.5, -1.0],
            [0.1, 1.5, 0.3],
            [-0.5, 0.2, 2.5],
            [1.0, 1.0, 0.0],
            [0.0, -2.0, 1.0],
            [3.0, 0.0, 0.0],
        ]
    )
    bias = torch.tensor([0, 1, 2, 0, 2, 1])

    estimate = batch_mutual_information(logits, bias, num_bias=3)

    expected = _loop_mutual_information(torch.softmax(logits, dim=1).tolist(), bias.tolist(), 3)
    assert float(estimate) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_mi_matches_loop_missing_class() -> None:
    # Bias label 3 never occurs, so its row of the joint is empty.
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 4, generator=generator)
    bias = torch.tensor([0, 0, 1, 2, 2, 1, 0])

    estimate = batch_mutual_information(logits, bias, num_bias=4)

    expected = _loop_mutual_information(torch.softmax(logits, dim=1).tolist(), bias.tolist(), 4)
    assert float(estimate) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_mi_zero_when_independent() -> None:
    row = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.0, 1.0, -0.2, 0.7, 0.1, -3.0])
    logits = row.repeat(40, 1)
    bias = torch.arange(40) % NUM_CLASSES

    estimate = batch_mutual_information(logits, bias, NUM_CLASSES)

    assert abs(float(estimate)) < 1e-6


def test_mi_one_for_perfect_predictions() -> None:
    bias = torch.arange(50) % NUM_CLASSES  # uniform over all classes
    logits = 50.0 * F.one_hot(bias, NUM_CLASSES).float()

    estimate = batch_mutual_information(logits, bias, NUM_CLASSES)

    assert float(estimate) == pytest.approx(1.0, abs=1e-4)


def test_mi_has_gradient() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(30, NUM_CLASSES, generator=generator, requires_grad=True)
    bias = torch.arange(30) % NUM_CLASSES

    batch_mutual_information(logits, bias, NUM_CLASSES).backward()

    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert float(logits.grad.abs().sum()) > 0


def test_mi_gradient_matches_finite_difference() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor([0, 1, 2, 0, 1, 2])

    # The estimator computes in float32, so compare against a float64 central difference loosely.
    batch_mutual_information(logits, bias, 3).backward()
    step = 1e-3
    numeric = torch.zeros_like(logits)
    with torch.no_grad():
        for row in range(6):
            for column in range(3):
                shifted = logits.detach().clone()
                shifted[row, column] += step
                upper = _loop_mutual_information(torch.softmax(shifted, 1).tolist(), bias.tolist(), 3)
                shifted[row, column] -= 2 * step
                lower = _loop_mutual_information(torch.softmax(shifted, 1).tolist(), bias.tolist(), 3)
                numeric[row, column] = (upper - lower) / (2 * step)
    torch.testing.assert_close(logits.grad, numeric, rtol=1e-3, atol=1e-5)


def test_mi_empty_batch() -> None:
    logits = torch.zeros(0, NUM_CLASSES, requires_grad=True)
    bias = torch.zeros(0, dtype=torch.long)

    estimate = batch_mutual_information(logits, bias, NUM_CLASSES)
    estimate.backward()

    assert float(estimate.detach()) == 0.0
    assert logits.grad is not None
    assert logits.grad.shape == (0, NUM_CLASSES)
