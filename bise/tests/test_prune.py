"""Tests for bise.prune: physical pruning, saved pruned networks, MACs, sparsity and baseline masks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from bise.models import SimpleConvNet
from bise.prune import (
    count_macs,
    count_weights,
    export_pruned,
    load_pruned,
    magnitude_masks,
    random_masks,
    save_pruned,
    sparsity_report,
)
from common.checkpoint import save_safetensors

pytestmark = pytest.mark.timeout(30)

WIDTHS = (4, 6, 5, 8)
KERNEL = 7
PIXELS = 28 * 28


def _random_model(widths: tuple[int, ...] = WIDTHS, seed: int = 0) -> SimpleConvNet:
    """SimpleConvNet with random BatchNorm statistics and affine parameters, in eval mode."""
    torch.manual_seed(seed)
    model = SimpleConvNet(widths=widths)
    with torch.no_grad():
        for block in model.blocks:
            bn = block[1]
            bn.running_mean.normal_(0.0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_(1.0, 0.3)
            bn.bias.normal_(0.1, 0.3)
        model.fc.bias.normal_()
    return model.eval()


def _masks(kept: list[list[int]], widths: tuple[int, ...] = WIDTHS) -> list[torch.Tensor]:
    masks = []
    for width, indices in zip(widths, kept):
        mask = torch.zeros(width, dtype=torch.bool)
        mask[indices] = True
        masks.append(mask)
    return masks


def _gated(model: SimpleConvNet, masks: list[torch.Tensor]) -> SimpleConvNet:
    gated = copy.deepcopy(model)
    gated.set_keep_masks(masks)
    return gated.eval()


MASK_CASES = {
    "random": None,
    "all_kept": [[0, 1, 2, 3], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4], list(range(8))],
    "first_layer_empty": [[], [1, 4], [0, 2, 3], [1, 5, 7]],
    "middle_layer_empty": [[0, 3], [], [1, 2], [0, 6]],
    "two_layers_empty": [[2], [], [], [3, 4]],
    "last_layer_empty": [[1, 2], [0, 5], [4], []],
    "all_empty": [[], [], [], []],
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_export_matches_gated(case: str) -> None:
    model = _random_model()
    if MASK_CASES[case] is None:
        generator = torch.Generator().manual_seed(5)
        masks = [torch.rand(width, generator=generator) < 0.5 for width in WIDTHS]
    else:
        masks = _masks(MASK_CASES[case])
    x = torch.randn(6, 3, 28, 28, generator=torch.Generator().manual_seed(1))

    pruned = export_pruned(model, masks)

    with torch.no_grad():
        expected = _gated(model, masks)(x)
        actual = pruned(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_export_random_masks(seed: int) -> None:
    model = _random_model(seed=seed)
    generator = torch.Generator().manual_seed(100 + seed)
    masks = [torch.rand(width, generator=generator) < 0.4 for width in WIDTHS]
    x = torch.randn(4, 3, 28, 28, generator=generator)

    pruned = export_pruned(model, masks)

    with torch.no_grad():
        torch.testing.assert_close(pruned(x), _gated(model, masks)(x), rtol=0, atol=1e-5)


def test_export_widths() -> None:
    masks = _masks(MASK_CASES["middle_layer_empty"])

    pruned = export_pruned(_random_model(), masks)

    # An empty layer keeps one placeholder channel with zeroed outgoing weights.
    assert pruned.widths == (2, 1, 2, 2)
    assert not pruned.training
    assert not any(gate.active for gate in pruned.gates)


def test_export_leaves_source_unchanged() -> None:
    model = _random_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    export_pruned(model, _masks(MASK_CASES["two_layers_empty"]))

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _random_model()
    masks = _masks(MASK_CASES["middle_layer_empty"])
    pruned = export_pruned(model, masks)
    path = tmp_path / "pruned.safetensors"
    x = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(2))

    save_pruned(pruned, path)
    loaded = load_pruned(path)

    assert loaded.widths == pruned.widths
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
        torch.testing.assert_close(loaded(x), _gated(model, masks)(x), rtol=0, atol=1e-5)


def test_load_pruned_state_equal(tmp_path: Path) -> None:
    pruned = export_pruned(_random_model(), _masks(MASK_CASES["first_layer_empty"]))
    path = tmp_path / "pruned.safetensors"

    save_pruned(pruned, path)
    loaded = load_pruned(path)

    expected = pruned.state_dict()
    actual = loaded.state_dict()
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_load_pruned_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_safetensors(path, _random_model().state_dict())

    with pytest.raises(ValueError, match="widths"):
        load_pruned(path)


def test_count_macs_paper_dense() -> None:
    macs = count_macs(SimpleConvNet())

    # bise/models.py gives 415 million MACs for the default widths, the dense cost the BISE paper reports.
    assert 414e6 <= macs <= 416e6


def test_count_macs_formula() -> None:
    # Convolutions with padding 3 keep 28x28 outputs: H*W*C_out*C_in*k^2 each, plus the classifier.
    widths = (16, 32, 64, 128)
    inputs = (3, *widths[:-1])
    expected = sum(PIXELS * out * inp * KERNEL**2 for out, inp in zip(widths, inputs)) + widths[-1] * 10

    assert count_macs(SimpleConvNet(widths=widths)) == expected
    assert expected == 414_894_080


def _block_weights(out: int, inp: int) -> int:
    return out * inp * KERNEL**2 + out + 2 * out  # conv weight and bias, BatchNorm weight and bias


def test_count_weights_excludes_gates() -> None:
    widths = (4, 4, 4, 8)
    inputs = (3, 4, 4, 4)
    expected = sum(_block_weights(out, inp) for out, inp in zip(widths, inputs)) + 8 * 10 + 10

    assert count_weights(SimpleConvNet(widths=widths)) == expected


def test_sparsity_report_known_mask() -> None:
    widths = (4, 4, 4, 8)
    model = _random_model(widths)
    masks = _masks([[0, 2], [0, 1, 2, 3], [3], list(range(8))], widths)

    report = sparsity_report(model, masks)

    dense_weights = sum(_block_weights(out, inp) for out, inp in zip(widths, (3, 4, 4, 4))) + 90
    pruned_weights = sum(_block_weights(out, inp) for out, inp in zip((2, 4, 1, 8), (3, 2, 4, 1))) + 90
    dense_macs = PIXELS * KERNEL**2 * (4 * 3 + 4 * 4 + 4 * 4 + 8 * 4) + 80
    pruned_macs = PIXELS * KERNEL**2 * (2 * 3 + 4 * 2 + 1 * 4 + 8 * 1) + 80
    assert report["channels_kept"] == 15
    assert report["channels_total"] == 20
    assert report["kept_per_layer"] == [2, 4, 1, 8]
    assert report["sparsity_channels"] == pytest.approx(25.0)
    assert report["sparsity_weights"] == pytest.approx(100.0 * (1 - pruned_weights / dense_weights))
    assert report["mflops_dense"] == pytest.approx(dense_macs / 1e6)
    assert report["mflops_pruned"] == pytest.approx(pruned_macs / 1e6)


def test_sparsity_report_dense_mask() -> None:
    widths = (4, 4, 4, 8)
    masks = [torch.ones(width, dtype=torch.bool) for width in widths]

    report = sparsity_report(_random_model(widths), masks)

    assert report["sparsity_channels"] == 0.0
    assert report["sparsity_weights"] == 0.0
    assert report["mflops_pruned"] == report["mflops_dense"]


def test_sparsity_report_one_input_channel() -> None:
    # in_channels is a SimpleConvNet argument, so the report must not assume RGB inputs.
    model = SimpleConvNet(widths=(4, 4, 4, 8), in_channels=1).eval()
    masks = [torch.ones(width, dtype=torch.bool) for width in model.widths]

    report = sparsity_report(model, masks)

    assert report["sparsity_weights"] == 0.0


@pytest.mark.parametrize("kept", [[3, 0, 64, 10], [16, 32, 1, 128], [0, 0, 0, 0]])
def test_random_masks_counts(kept: list[int]) -> None:
    widths = (16, 32, 64, 128)

    masks = random_masks(widths, kept, seed=0)

    assert [mask.numel() for mask in masks] == list(widths)
    assert [int(mask.sum()) for mask in masks] == kept
    assert all(mask.dtype == torch.bool for mask in masks)


def test_random_masks_seeded() -> None:
    widths = (16, 32, 64, 128)
    kept = [8, 16, 32, 64]

    first = random_masks(widths, kept, seed=3)
    second = random_masks(widths, kept, seed=3)
    other = random_masks(widths, kept, seed=4)

    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("kept", [[1, 3, 2, 5], [4, 6, 5, 8], [0, 1, 0, 1]])
def test_magnitude_masks_counts(kept: list[int]) -> None:
    masks = magnitude_masks(_random_model(), kept)

    assert [int(mask.sum()) for mask in masks] == kept


def test_magnitude_masks_largest_l1() -> None:
    model = _random_model()
    kept = [2, 3, 1, 5]

    masks = magnitude_masks(model, kept)

    for layer, (block, mask) in enumerate(zip(model.blocks, masks)):
        norms = block[0].weight.detach().abs().sum(dim=(1, 2, 3))
        smallest_kept = float(norms[mask].min())
        largest_dropped = float(norms[~mask].max())
        assert smallest_kept > largest_dropped, f"layer {layer}: kept norm {smallest_kept} <= dropped {largest_dropped}"


def test_magnitude_masks_known_filters() -> None:
    model = _random_model()
    # Filter c of every layer gets all weights equal to scale[c], so its L1 norm follows scale.
    scales = {0: [0.1, 0.4, 0.2, 0.3], 1: [0.6, 0.1, 0.5, 0.2, 0.4, 0.3]}
    with torch.no_grad():
        for layer, scale in scales.items():
            weight = model.blocks[layer][0].weight
            for channel, value in enumerate(scale):
                weight[channel].fill_(-value if channel % 2 else value)  # signs must not matter

    masks = magnitude_masks(model, [2, 3, 1, 1])

    assert masks[0].tolist() == [False, True, False, True]
    assert masks[1].tolist() == [True, False, True, False, True, False]
