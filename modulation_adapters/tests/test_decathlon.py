"""The Decathlon score on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from modulation_adapters.decathlon import BASELINE_ACCURACY, decathlon_score, domain_score


def test_baseline_accuracy_gives_250_per_domain():
    assert math.isclose(decathlon_score(dict(BASELINE_ACCURACY)), 2500.0)


def test_perfect_accuracy_gives_1000():
    assert math.isclose(domain_score(100.0, 80.0), 1000.0)


def test_twice_the_baseline_error_or_worse_gives_0():
    assert domain_score(60.0, 80.0) == 0.0
    assert domain_score(10.0, 80.0) == 0.0


def test_hand_computed_case():
    # Baseline 80%: Emax = 0.4, alpha = 1000 / 0.16 = 6250. Accuracy 90%: E = 0.1, so 6250 * 0.3 ** 2 = 562.5.
    assert math.isclose(domain_score(90.0, 80.0), 562.5)


def test_score_is_capped_at_1000_per_domain():
    scores = [domain_score(accuracy, 50.0) for accuracy in (99.0, 99.9, 100.0)]
    assert max(scores) <= 1000.0
    assert scores == sorted(scores)


@pytest.mark.parametrize("accuracy", [-1.0, 100.5, float("nan")])
def test_bad_accuracy_is_named(accuracy):
    with pytest.raises(ValueError, match="accuracy must be a percentage in"):
        domain_score(accuracy, 80.0)


def test_unknown_domain_is_named():
    with pytest.raises(ValueError, match=r"no baseline accuracy for domains \['mnist'\]"):
        decathlon_score({"mnist": 99.0})
