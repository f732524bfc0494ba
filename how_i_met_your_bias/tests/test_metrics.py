"""Count matrix, rho_model, Clopper-Pearson intervals and the bias report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from how_i_met_your_bias.metrics import bias_report, clopper_pearson, count_matrix, rho_model


def test_count_matrix_hand_case():
    classes = [0, 0, 0, 1, 1, 2]
    bias = [0, 1, 0, 1, 2, 0]

    counts = count_matrix(classes, bias, num_classes=3, num_bias=3)

    expected = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(counts, expected)
    assert counts.dtype == np.int64


def test_count_matrix_rectangular_from_tensors():
    counts = count_matrix(torch.tensor([0, 1, 1]), torch.tensor([3, 3, 0]), num_classes=2, num_bias=4)

    np.testing.assert_array_equal(counts, [[0, 0, 0, 1], [1, 0, 0, 1]])


def test_rho_model_is_aligned_fraction():
    counts = np.array([[8, 2], [1, 9]])

    assert rho_model(counts) == pytest.approx(17 / 20)


def test_clopper_pearson_zero_successes():
    low, high = clopper_pearson(0, 10)

    assert low == 0.0
    assert high == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)


def test_clopper_pearson_all_successes():
    low, high = clopper_pearson(20, 20)

    assert low == pytest.approx(0.025 ** (1 / 20), rel=1e-9)
    assert high == 1.0


def test_clopper_pearson_half():
    # Published exact 95% interval for 5 successes in 10 trials.
    low, high = clopper_pearson(5, 10)

    assert low == pytest.approx(0.18709, abs=1e-5)
    assert high == pytest.approx(0.81291, abs=1e-5)


def test_clopper_pearson_narrows_with_confidence():
    low_95, high_95 = clopper_pearson(30, 100, confidence=0.95)
    low_80, high_80 = clopper_pearson(30, 100, confidence=0.80)

    assert low_95 < low_80 < 0.3 < high_80 < high_95


def test_bias_report_amplification_positive():
    # 90 of 100 samples aligned against a dataset at 0.8.
    classes = np.repeat([0, 1], 50)
    bias = classes.copy()
    bias[:5] = 1
    bias[50:55] = 0

    report = bias_report(classes, bias, num_classes=2, rho_dataset=0.8)

    assert report.n == 100
    assert report.rho_model == pytest.approx(0.9)
    assert report.amplification == pytest.approx(0.1)
    assert report.ci_low < 0.9 < report.ci_high
    assert (report.ci_low, report.ci_high) == pytest.approx(clopper_pearson(90, 100))
    assert report.rho_per_class == pytest.approx([0.9, 0.9])
    assert report.fidelity is None


def test_bias_report_amplification_negative():
    classes = np.repeat([0, 1], 50)
    bias = np.tile([0, 1], 50)  # half of each class aligned

    report = bias_report(classes, bias, num_classes=2, rho_dataset=0.9)

    assert report.rho_model == pytest.approx(0.5)
    assert report.amplification == pytest.approx(-0.4)


def test_bias_report_fidelity():
    classes = np.array([0, 1, 2, 2])
    correct = np.array([True, True, False, True])

    report = bias_report(classes, classes, num_classes=4, rho_dataset=0.5, correct=correct)

    assert report.fidelity == pytest.approx(0.75)
    assert (report.fidelity_ci_low, report.fidelity_ci_high) == pytest.approx(clopper_pearson(3, 4))
    assert report.rho_per_class[3] is None  # class 3 has no samples


def test_bias_report_to_dict_is_json():
    classes = torch.tensor([0, 1, 1])
    report = bias_report(classes, torch.tensor([0, 1, 0]), num_classes=2, rho_dataset=0.9, correct=torch.tensor([True, False, True]))

    restored = json.loads(json.dumps(report.to_dict()))

    assert restored["counts"] == [[1, 0], [1, 1]]
    assert restored["n"] == 3
    assert restored["rho_model"] == pytest.approx(2 / 3)
    assert restored["fidelity"] == pytest.approx(2 / 3)
    assert set(restored) >= {"ci_low", "ci_high", "rho_dataset", "amplification", "confidence"}


def test_count_matrix_length_mismatch_raises():
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        count_matrix([0, 1, 1], [0, 1], num_classes=2, num_bias=2)


@pytest.mark.parametrize(
    "classes, bias, message",
    [
        ([0, 2], [0, 1], "classes labels must lie in"),
        ([0, 1], [0, -1], "bias labels must lie in"),
        ([[0, 1]], [0, 1], "1-D"),
        ([0.0, 1.0], [0, 1], "integer labels"),
    ],
)
def test_count_matrix_invalid_labels_raise(classes, bias, message):
    with pytest.raises(ValueError, match=message):
        count_matrix(classes, bias, num_classes=2, num_bias=2)


def test_rho_model_non_square_raises():
    with pytest.raises(ValueError, match="square"):
        rho_model(np.ones((2, 3), dtype=np.int64))


def test_rho_model_empty_raises():
    with pytest.raises(ValueError, match="no samples"):
        rho_model(np.zeros((2, 2), dtype=np.int64))


def test_bias_report_no_samples_raises():
    with pytest.raises(ValueError, match="no samples"):
        bias_report([], [], num_classes=2, rho_dataset=0.9)


@pytest.mark.parametrize(
    "k, n, confidence, message",
    [
        (0, 0, 0.95, "n must be a positive integer"),
        (11, 10, 0.95, r"k must be an integer number of successes in \[0, n=10\]"),
        (-1, 10, 0.95, "k must be"),
        (5, 10, 1.0, "confidence"),
    ],
)
def test_clopper_pearson_invalid_raises(k, n, confidence, message):
    with pytest.raises(ValueError, match=message):
        clopper_pearson(k, n, confidence)


@pytest.mark.parametrize("rho_dataset", [-0.1, 1.5, "0.9"])
def test_bias_report_invalid_rho_dataset_raises(rho_dataset):
    with pytest.raises(ValueError, match="rho_dataset"):
        bias_report([0], [0], num_classes=2, rho_dataset=rho_dataset)


def test_bias_report_correct_shape_raises():
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        bias_report([0, 1], [0, 1], num_classes=2, rho_dataset=0.9, correct=np.array([True]))
