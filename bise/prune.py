"""Physical pruning, sparsity and compute of gated SimpleConvNets, and the baseline masks.

A pruned channel's output is multiplied by 0 after its ReLU, so removing the
conv filter, its BatchNorm entry and the next layer's input slice changes
nothing. A layer whose channels are all pruned keeps one channel whose
outgoing weights are zeroed, which is again exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bise.models import SimpleConvNet
from common.checkpoint import load_safetensors, save_safetensors


def _kept_indices(mask: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Indices to keep, and whether the layer is empty (one placeholder channel kept)."""
    kept = torch.nonzero(mask, as_tuple=False).flatten()
    if len(kept) == 0:
        return torch.zeros(1, dtype=torch.long), True
    return kept, False


@torch.no_grad()
def export_pruned(model: SimpleConvNet, masks: list[torch.Tensor]) -> SimpleConvNet:
    """Return a smaller SimpleConvNet without the channels that `masks` prune; gates inactive."""
    kept = [_kept_indices(mask.cpu()) for mask in masks]
    widths = tuple(len(indices) for indices, _ in kept)
    pruned = SimpleConvNet(num_classes=model.fc.out_features, widths=widths, kernel_size=model.kernel_size, in_channels=model.in_channels)
    source = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    previous = torch.arange(model.in_channels)
    previous_empty = False
    for layer, ((indices, empty), block) in enumerate(zip(kept, pruned.blocks)):
        conv, bn = block[0], block[1]
        weight = source[f"blocks.{layer}.0.weight"][indices][:, previous].clone()
        if previous_empty:
            weight.zero_()  # the previous layer contributes nothing
        conv.weight.copy_(weight)
        conv.bias.copy_(source[f"blocks.{layer}.0.bias"][indices])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(source[f"blocks.{layer}.1.{name}"][indices])
        bn.num_batches_tracked.copy_(source[f"blocks.{layer}.1.num_batches_tracked"])
        previous, previous_empty = indices, empty
    fc_weight = source["fc.weight"][:, previous].clone()
    if previous_empty:
        fc_weight.zero_()
    pruned.fc.weight.copy_(fc_weight)
    pruned.fc.bias.copy_(source["fc.bias"])
    return pruned.eval()


def count_macs(model: SimpleConvNet, input_shape: tuple[int, ...] | None = None) -> int:
    """Multiply-accumulates of one forward pass, counted by torch.utils.flop_counter (FLOPs / 2).

    The default input is one 28x28 image with the model's number of input channels.
    """
    if input_shape is None:
        input_shape = (1, model.in_channels, 28, 28)
    counter = FlopCounterMode(display=False)
    device = next(model.parameters()).device
    with torch.no_grad(), counter:
        model(torch.zeros(input_shape, device=device))
    return counter.get_total_flops() // 2 // input_shape[0]


def count_weights(model: torch.nn.Module) -> int:
    """Parameters of the convolutions, BatchNorms and the classifier (gate parameters excluded)."""
    return sum(parameter.numel() for name, parameter in model.named_parameters() if not name.startswith("gates."))


def sparsity_report(model: SimpleConvNet, masks: list[torch.Tensor]) -> dict[str, float]:
    """Share of channels and of weights removed (%), and MMACs of the dense and the pruned network."""
    dense = SimpleConvNet(num_classes=model.fc.out_features, widths=model.widths, kernel_size=model.kernel_size, in_channels=model.in_channels)
    pruned = export_pruned(model, masks)
    channels_total = sum(mask.numel() for mask in masks)
    channels_kept = sum(int(mask.sum()) for mask in masks)
    return {
        "channels_kept": channels_kept,
        "channels_total": channels_total,
        "sparsity_channels": 100.0 * (1 - channels_kept / channels_total),
        "sparsity_weights": 100.0 * (1 - count_weights(pruned) / count_weights(dense)),
        "mflops_dense": count_macs(dense) / 1e6,
        "mflops_pruned": count_macs(pruned) / 1e6,
        "kept_per_layer": [int(mask.sum()) for mask in masks],
    }


def save_pruned(model: SimpleConvNet, path: Path, extra_metadata: dict[str, str] | None = None) -> None:
    """Save a pruned network as safetensors with the widths needed to rebuild it.

    `extra_metadata` records how to evaluate it (data source, data seed, precision).
    """
    metadata = {
        **(extra_metadata or {}),
        "widths": json.dumps(list(model.widths)),
        "kernel_size": str(model.kernel_size),
        "num_classes": str(model.fc.out_features),
        "in_channels": str(model.in_channels),
    }
    save_safetensors(path, model.state_dict(), metadata)


def read_pruned_metadata(path: Path) -> dict[str, str]:
    """Return the safetensors metadata of `path`; ValueError if it is not a pruned network file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error}); pass a pruned.safetensors from a BISE run") from None
    if "widths" not in metadata:
        raise ValueError(f"{path} has no 'widths' metadata, so it is not a pruned network; pass pruned.safetensors or pruned_ft.safetensors")
    return metadata


def load_pruned(path: Path) -> SimpleConvNet:
    """Rebuild a network saved by save_pruned, on the CPU, in eval mode."""
    metadata = read_pruned_metadata(path)
    model = SimpleConvNet(
        num_classes=int(metadata["num_classes"]),
        widths=tuple(json.loads(metadata["widths"])),
        kernel_size=int(metadata["kernel_size"]),
        in_channels=int(metadata["in_channels"]),
    )
    model.load_state_dict(load_safetensors(path), strict=True)
    return model.eval()


# ------------------------------------------------------------ baselines


def random_masks(widths: tuple[int, ...], kept_per_layer: list[int], seed: int) -> list[torch.Tensor]:
    """Keep `kept_per_layer[l]` channels of layer l chosen uniformly at random."""
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for width, kept in zip(widths, kept_per_layer):
        mask = torch.zeros(width, dtype=torch.bool)
        mask[torch.randperm(width, generator=generator)[:kept]] = True
        masks.append(mask)
    return masks


def magnitude_masks(model: SimpleConvNet, kept_per_layer: list[int]) -> list[torch.Tensor]:
    """Keep the `kept_per_layer[l]` filters of layer l with the largest L1 norm."""
    masks = []
    for block, kept in zip(model.blocks, kept_per_layer):
        norms = block[0].weight.detach().abs().flatten(1).sum(dim=1)
        mask = torch.zeros(len(norms), dtype=torch.bool)
        mask[torch.topk(norms, kept).indices.cpu()] = True
        masks.append(mask)
    return masks
