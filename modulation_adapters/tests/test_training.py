"""Per-method training touches only that method's parameters."""

from __future__ import annotations

import pytest
import torch

from modulation_adapters.models import ResNet26
from modulation_adapters.training import accuracy, copy_source_batchnorm, train_domain, trainable_parameters

SMALL = dict(widths=(4, 8, 8), stem_width=4, blocks_per_stage=1)


def data():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(32, 3, 16, 16, generator=generator), torch.randint(0, 3, (32,), generator=generator)


@pytest.mark.parametrize("method,adapter", [("feature", "none"), ("bn", "none"), ("modulation", "modulation"), ("series", "series"),
                                            ("parallel", "parallel")])
def test_training_changes_only_the_domain_parameters(method, adapter):
    torch.manual_seed(0)
    model = ResNet26([3, 3], adapter=adapter, rank=2 if adapter == "modulation" else None, **SMALL)
    copy_source_batchnorm(model, 1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    allowed = {id(p) for p in trainable_parameters(model, method, 1)}
    images, targets = data()
    train_domain(model, images, targets, 1, method, epochs=1, lr=0.1, batch_size=8)
    for name, parameter in model.named_parameters():
        if id(parameter) not in allowed:
            assert torch.equal(parameter, before[name]), name
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if id(p) in allowed)


def test_finetune_returns_a_trained_copy():
    torch.manual_seed(0)
    model = ResNet26([3, 3], **SMALL)
    images, targets = data()
    tuned = train_domain(model, images, targets, 1, "finetune", epochs=1, lr=0.1, batch_size=8)
    assert tuned is not model
    assert 0.0 <= accuracy(tuned, images, targets, 1) <= 100.0


def test_method_without_its_adapter_is_named():
    with pytest.raises(ValueError, match="method 'modulation' needs a model built with adapter='modulation'"):
        trainable_parameters(ResNet26([3, 3], **SMALL), "modulation", 1)
    with pytest.raises(ValueError, match="unknown method 'lora'"):
        trainable_parameters(ResNet26([3, 3], **SMALL), "lora", 1)
