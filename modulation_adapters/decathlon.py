"""The Visual Decathlon score (Rebuffi et al., NeurIPS 2017).

    S = sum over domains d of alpha_d * max(0, Emax_d - E_d) ** 2

E_d is the test error of domain d as a fraction, Emax_d twice the baseline
error and alpha_d = 1000 / Emax_d ** 2. A domain at the baseline error gives
250 points, a perfect one 1000, and one at twice the baseline error or worse
0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# Baseline top-1 accuracies (%) of the public scoring code, per Decathlon domain.
BASELINE_ACCURACY = {
    "imagenet12": 59.87,
    "aircraft": 60.34,
    "cifar100": 82.12,
    "daimlerpedcls": 92.82,
    "dtd": 55.53,
    "gtsrb": 97.53,
    "vgg-flowers": 81.41,
    "omniglot": 87.69,
    "svhn": 96.55,
    "ucf101": 51.20,
}


def domain_score(accuracy: float, baseline_accuracy: float) -> float:
    """Points of one domain, from accuracies in percent."""
    for name, value in (("accuracy", accuracy), ("baseline_accuracy", baseline_accuracy)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 100.0 or math.isnan(value):
            raise ValueError(f"{name} must be a percentage in [0, 100], got {value!r}")
    if baseline_accuracy == 100.0:
        raise ValueError("baseline_accuracy of 100% leaves no error to scale by; use a baseline below 100%")
    error = 1.0 - accuracy / 100.0
    max_error = 2.0 * (1.0 - baseline_accuracy / 100.0)
    return 1000.0 / max_error**2 * max(0.0, max_error - error) ** 2


def decathlon_score(accuracies: Mapping[str, float], baselines: Mapping[str, float] = BASELINE_ACCURACY) -> float:
    """Sum of domain scores; every domain of `accuracies` needs a baseline."""
    missing = sorted(set(accuracies) - set(baselines))
    if missing:
        raise ValueError(f"no baseline accuracy for domains {missing}; known domains are {sorted(baselines)}")
    return sum(domain_score(accuracies[name], baselines[name]) for name in accuracies)
