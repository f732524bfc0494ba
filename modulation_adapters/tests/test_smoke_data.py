"""The offline smoke benchmark: five 10-class domains, disjoint source and target digits."""

from __future__ import annotations

import pytest
import torch

from modulation_adapters.smoke_data import DOMAINS, SOURCE, build_smoke_domains


@pytest.fixture(scope="module")
def domains():
    return build_smoke_domains(size=32)


def test_every_domain_has_train_and_test_images(domains):
    assert list(domains) == list(DOMAINS)
    for split in domains.values():
        assert split.train_images.shape[1:] == (3, 32, 32)
        assert split.test_images.shape[1:] == (3, 32, 32)
        assert len(split.train_images) == len(split.train_targets)
        assert set(split.train_targets.unique().tolist()) == set(range(10))
        assert split.train_images.min() >= -1.0
        assert split.train_images.max() <= 1.0


def test_target_domains_do_not_reuse_source_digits(domains):
    source = domains[SOURCE].train_images
    inverted_back = -domains["inverted"].train_images
    assert len(source) == len(inverted_back)
    assert not torch.equal(source, inverted_back)


def test_domains_differ_in_appearance(domains):
    means = {name: split.train_images.mean().item() for name, split in domains.items()}
    assert means["inverted"] > means["mnist"]
    assert domains["coloured"].train_images[:, 0].std() > 0


def test_too_small_size_is_named():
    with pytest.raises(ValueError, match="size must be at least 8 pixels, got 4"):
        build_smoke_domains(size=4)
