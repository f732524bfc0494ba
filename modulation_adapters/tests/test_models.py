"""ResNet-26, its per-domain parts and the adapters: identity at start, ranks, parameter counts."""

from __future__ import annotations

import pytest
import torch

from modulation_adapters.models import AdaptedConv3x3, ResNet26, count, parameter_report

CLASSES = [10, 5]
SMALL = dict(widths=(8, 16, 32), stem_width=4, blocks_per_stage=1)


def backbone_and(adapter: str, rank: int | None = None) -> tuple[ResNet26, ResNet26]:
    torch.manual_seed(0)
    backbone = ResNet26(CLASSES, **SMALL).eval()
    adapted = ResNet26(CLASSES, adapter=adapter, rank=rank, **SMALL).eval()
    missing, unexpected = adapted.load_state_dict(backbone.state_dict(), strict=False)
    assert not unexpected
    return backbone, adapted


@pytest.mark.parametrize("adapter,rank", [("modulation", 2), ("modulation", None), ("series", None), ("parallel", None)])
def test_adapted_network_starts_equal_to_the_backbone(adapter, rank):
    backbone, adapted = backbone_and(adapter, rank)
    x = torch.randn(3, 3, 32, 32)
    for domain in (0, 1):
        backbone.set_domain(domain)
        adapted.set_domain(domain)
        torch.testing.assert_close(adapted(x), backbone(x), rtol=1e-5, atol=1e-5)


def test_modulation_changes_the_output_once_trained():
    backbone, adapted = backbone_and("modulation", 2)
    with torch.no_grad():
        for module in adapted.modules():
            if isinstance(module, AdaptedConv3x3):
                module.left[0].normal_(0, 0.1)
    x = torch.randn(2, 3, 32, 32)
    assert (adapted(x) - backbone(x)).abs().max() > 1e-3


@pytest.mark.parametrize("size", [64, 72])
def test_output_shape_per_domain(size):
    model = ResNet26(CLASSES, **SMALL).eval()
    model.set_domain(1)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 5)


def test_modulation_parameter_count_matches_the_formula():
    rank = 2
    model = ResNet26(CLASSES, adapter="modulation", rank=rank, **SMALL)
    convs = [m for m in model.modules() if isinstance(m, AdaptedConv3x3)]
    expected_adapters = sum(min(rank, c.conv.in_channels, c.conv.out_channels) * (c.conv.in_channels + c.conv.out_channels) for c in convs)
    norms = sum(2 * m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)) // len(CLASSES)
    head = 32 * 5 + 5
    assert count(model.domain_parameters(1)) == expected_adapters + norms + head


def test_full_rank_costs_one_value_per_channel_pair():
    model = ResNet26(CLASSES, adapter="modulation", rank=None, **SMALL)
    convs = [m for m in model.modules() if isinstance(m, AdaptedConv3x3)]
    assert count([p for c in convs for p in c.domain_parameters(0)]) == sum(c.conv.in_channels * c.conv.out_channels for c in convs)
    report = parameter_report(model, 0)
    assert 0 < report["domain_over_backbone"] < 1


@pytest.mark.parametrize("rank", [0, 9, 2.5])
def test_rank_outside_the_valid_range_is_named(rank):
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, 8\]"):
        AdaptedConv3x3(8, 16, 1, 2, "modulation", rank)


def test_unknown_adapter_and_domain_are_named():
    with pytest.raises(ValueError, match="unknown adapter 'lora'"):
        ResNet26(CLASSES, adapter="lora", **SMALL)
    with pytest.raises(ValueError, match="domain index 2 is out of range for 2 domains"):
        ResNet26(CLASSES, **SMALL).set_domain(2)
