"""ResNet-26 of the residual-adapter line with per-domain parts, and the adapters compared on it.

The backbone: a 3x3 stem, three stages of four basic blocks (widths 64, 128,
256 by default), each stage starting with stride 2, shortcuts by 2x2 average
pooling and zero-channel padding, then global average pooling. Every
BatchNorm and the linear head exist once per domain.

Adapters of a 3x3 convolution, per domain d:

- modulation: the frozen filters W (C_out, C_in, k, k) are multiplied per
  (output, input) channel pair by M_d = 1 + A_d B_d^T (rank r) or 1 + D_d
  (full rank). A_d and D_d start at zero, so the adapted network starts equal
  to the backbone. The modulated weight is computed once per forward pass.
- series: a 1x1 convolution after the 3x3 one, y + conv1x1(y), zero-initialised
  (the block's per-domain BatchNorm follows it).
- parallel: a 1x1 convolution on the block input added to the 3x3 output.

NOTE: the exact shape and initialisation of the modulation were not in the
material available for this re-implementation; `residual` (M = 1 + A B^T) is
this repository's choice and a config option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ADAPTERS = ("none", "modulation", "series", "parallel")


class DomainBatchNorm(nn.Module):
    """One BatchNorm2d per domain; `domain` selects which one runs."""

    def __init__(self, channels: int, num_domains: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(num_domains))
        self.domain = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[self.domain](x)


class AdaptedConv3x3(nn.Module):
    """A frozen-able 3x3 convolution with per-domain adapters of one kind."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, num_domains: int, adapter: str, rank: int | None):
        super().__init__()
        if adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter {adapter!r}; expected one of {ADAPTERS}")
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.adapter, self.stride, self.domain = adapter, stride, 0
        full = min(in_channels, out_channels)
        if adapter == "modulation":
            if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full):
                raise ValueError(f"rank must be an integer in [1, {full}] for a {in_channels}->{out_channels} convolution, "
                                 f"got {rank!r}; use null for full rank")
            self.rank = rank
            if rank is None:
                self.delta = nn.ParameterList(nn.Parameter(torch.zeros(out_channels, in_channels)) for _ in range(num_domains))
            else:
                self.left = nn.ParameterList(nn.Parameter(torch.zeros(out_channels, rank)) for _ in range(num_domains))
                self.right = nn.ParameterList(nn.Parameter(torch.randn(in_channels, rank) / rank**0.5) for _ in range(num_domains))
        elif adapter == "series":
            self.series = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 1, bias=False) for _ in range(num_domains))
            for conv in self.series:
                nn.init.zeros_(conv.weight)
        elif adapter == "parallel":
            self.parallel = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False) for _ in range(num_domains))
            for conv in self.parallel:
                nn.init.zeros_(conv.weight)

    def modulation(self) -> torch.Tensor:
        """M_d of the current domain, (C_out, C_in)."""
        d = self.domain
        change = self.delta[d] if self.rank is None else self.left[d] @ self.right[d].T
        return 1.0 + change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.adapter == "modulation":
            weight = self.conv.weight * self.modulation()[:, :, None, None]
            return F.conv2d(x, weight, stride=self.stride, padding=1)
        out = self.conv(x)
        if self.adapter == "series":
            return out + self.series[self.domain](out)
        if self.adapter == "parallel":
            return out + self.parallel[self.domain](x)
        return out

    def domain_parameters(self, domain: int) -> list[nn.Parameter]:
        if self.adapter == "modulation":
            return [self.delta[domain]] if self.rank is None else [self.left[domain], self.right[domain]]
        if self.adapter == "series":
            return [self.series[domain].weight]
        if self.adapter == "parallel":
            return [self.parallel[domain].weight]
        return []


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, num_domains: int, adapter: str, rank: int | None):
        super().__init__()
        self.conv1 = AdaptedConv3x3(in_channels, out_channels, stride, num_domains, adapter, rank)
        self.bn1 = DomainBatchNorm(out_channels, num_domains)
        self.conv2 = AdaptedConv3x3(out_channels, out_channels, 1, num_domains, adapter, rank)
        self.bn2 = DomainBatchNorm(out_channels, num_domains)
        self.stride, self.extra_channels = stride, out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = F.avg_pool2d(x, 2) if self.stride == 2 else x
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))  # zero channels appended
        return F.relu(out + shortcut)


class ResNet26(nn.Module):
    """ResNet-26 with per-domain BatchNorm, per-domain heads and optional per-domain adapters."""

    def __init__(self, num_classes: list[int], widths: tuple[int, ...] = (64, 128, 256), stem_width: int = 32,
                 blocks_per_stage: int = 4, adapter: str = "none", rank: int | None = None):
        super().__init__()
        if not num_classes or min(num_classes) < 1:
            raise ValueError(f"num_classes needs one positive class count per domain, got {num_classes}")
        domains = len(num_classes)
        self.num_classes, self.widths, self.adapter, self.rank = list(num_classes), tuple(widths), adapter, rank
        self.stem = AdaptedConv3x3(3, stem_width, 1, domains, adapter, rank if rank is None else min(rank, 3))
        self.stem_bn = DomainBatchNorm(stem_width, domains)
        blocks, channels = [], stem_width
        for width in widths:
            for index in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, 2 if index == 0 else 1, domains, adapter, rank))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.heads = nn.ModuleList(nn.Linear(channels, count) for count in num_classes)
        self.domain = 0

    def set_domain(self, domain: int) -> None:
        if not 0 <= domain < len(self.heads):
            raise ValueError(f"domain index {domain} is out of range for {len(self.heads)} domains")
        self.domain = domain
        for module in self.modules():
            if isinstance(module, (DomainBatchNorm, AdaptedConv3x3)):
                module.domain = domain

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        return F.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[self.domain](self.features(x))

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The shared convolution filters (frozen by every method but fine-tuning)."""
        return [module.conv.weight for module in self.modules() if isinstance(module, AdaptedConv3x3)]

    def domain_parameters(self, domain: int, *, batchnorm: bool = True) -> list[nn.Parameter]:
        """Parameters that belong to `domain` only: adapters, its BatchNorms (optional) and its head."""
        parameters = []
        for module in self.modules():
            if isinstance(module, AdaptedConv3x3):
                parameters += module.domain_parameters(domain)
            elif isinstance(module, DomainBatchNorm) and batchnorm:
                parameters += list(module.norms[domain].parameters())
        return parameters + list(self.heads[domain].parameters())


def count(parameters: list[nn.Parameter]) -> int:
    return sum(parameter.numel() for parameter in parameters)


def parameter_report(model: ResNet26, domain: int) -> dict[str, float]:
    """Per-domain parameters of `domain` and their ratio to the shared backbone filters."""
    backbone = count(model.backbone_parameters())
    own = count(model.domain_parameters(domain))
    return {"backbone": backbone, "domain": own, "domain_over_backbone": own / backbone}
