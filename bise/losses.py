"""Bias-reweighted cross-entropy and the batch mutual-information estimator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def alignment_weights(targets: torch.Tensor, bias: torch.Tensor, rho: float, num_classes: int) -> torch.Tensor:
    """Per-sample weights of L_r for C classes and bias ratio rho.

    Bias-aligned samples weigh 1 / (C rho) and bias-conflicting ones
    (C - 1) / (C (1 - rho)), so each group contributes as if the data were
    unbiased.
    """
    aligned = bias == targets
    aligned_weight = 1.0 / (num_classes * rho)
    conflicting_weight = (num_classes - 1) / (num_classes * (1.0 - rho))
    return torch.where(aligned, aligned_weight, conflicting_weight).to(torch.float32)


def reweighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor, rho: float, num_classes: int
) -> torch.Tensor:
    """L_r: the batch mean of alignment-weighted per-sample cross-entropy."""
    per_sample = F.cross_entropy(logits.float(), targets, reduction="none")
    return (alignment_weights(targets, bias, rho, num_classes) * per_sample).mean()


def batch_mutual_information(bias_logits: torch.Tensor, bias: torch.Tensor, num_bias: int) -> torch.Tensor:
    """Estimate I(b_hat; b) / log(num_bias) on one batch.

    joint = onehot(b)^T softmax(bias_logits) / N is the empirical joint of the
    true bias b and the predicted bias b_hat; MI = sum joint log(joint / (p_b p_bhat)).
    Empty cells contribute 0. An empty batch returns 0 with a gradient path.
    """
    if bias.numel() == 0:
        return bias_logits.sum() * 0.0
    probabilities = torch.softmax(bias_logits.float(), dim=1)  # (N, K)
    onehot = F.one_hot(bias, num_bias).to(probabilities.dtype)  # (N, K)
    joint = onehot.t() @ probabilities / bias.numel()  # (K, K): rows b, columns b_hat
    p_b = joint.sum(dim=1, keepdim=True)  # (K, 1)
    p_bhat = joint.sum(dim=0, keepdim=True)  # (1, K)
    ratio = joint / (p_b * p_bhat).clamp_min(1e-12)
    terms = torch.where(joint > 0, joint * torch.log(ratio.clamp_min(1e-12)), torch.zeros_like(joint))
    return terms.sum() / math.log(num_bias)
