"""SimpleConvNet with a channel gate after every conv-BN-ReLU block.

Glossary (name -> symbol in the BISE paper):
    ChannelGate.m    m_i, the real gate parameter of channel i, initialised at 0
    ChannelGate.tau  tau, the temperature of sigmoid(m / tau)
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelGate(nn.Module):
    """Keep/prune gate per channel: h_i * 1[sigmoid(m_i / tau) >= 0.5].

    The hard threshold passes gradients straight through (identity), so m_i
    receives the gradient of the soft gate sigmoid(m_i / tau). An inactive gate
    is the identity, which is how the vanilla network is trained and used.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.m = nn.Parameter(torch.zeros(num_channels))
        self.tau = 1.0
        self.active = False

    def soft(self) -> torch.Tensor:
        return torch.sigmoid(self.m / self.tau)

    def keep_mask(self) -> torch.Tensor:
        """Boolean mask of kept channels, shape (C,)."""
        return self.soft() >= 0.5

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return h
        soft = self.soft()
        hard = (soft >= 0.5).to(soft.dtype)
        gate = hard + (soft - soft.detach())  # value: exactly hard; gradient: that of soft
        shape = (1, -1) + (1,) * (h.dim() - 2)
        return h * gate.view(shape).to(h.dtype)


class SimpleConvNet(nn.Module):
    """4 conv layers (kernel 7, padding 3, no pooling), BN and ReLU, global average pool, linear.

    With the default widths 16/32/64/128 on 3x28x28 inputs this is 415 million
    multiply-accumulates per image, the dense cost the BISE paper reports.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64, 128), kernel_size: int = 7, in_channels: int = 3):
        super().__init__()
        self.widths = tuple(widths)
        self.kernel_size = kernel_size
        self.in_channels = in_channels
        blocks = []
        for width in self.widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, width, kernel_size, padding=kernel_size // 2),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
            )
            in_channels = width
        self.blocks = nn.ModuleList(blocks)
        self.gates = nn.ModuleList(ChannelGate(width) for width in self.widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.widths[-1], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the bottleneck features z (the input of the final classifier), (B, C_last)."""
        for block, gate in zip(self.blocks, self.gates):
            x = gate(block(x))
        return self.pool(x).flatten(1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        z = self.features(x)
        logits = self.fc(z)
        return (logits, z) if return_features else logits

    # ---------------------------------------------------------------- gates

    def set_gates_active(self, active: bool) -> None:
        for gate in self.gates:
            gate.active = active

    def set_tau(self, tau: float) -> None:
        for gate in self.gates:
            gate.tau = tau

    def gate_parameters(self) -> list[nn.Parameter]:
        return [gate.m for gate in self.gates]

    def weight_parameters(self) -> list[nn.Parameter]:
        gate_ids = {id(parameter) for parameter in self.gate_parameters()}
        return [parameter for parameter in self.parameters() if id(parameter) not in gate_ids]

    def keep_masks(self) -> list[torch.Tensor]:
        """Kept-channel masks of every gated layer; all True while gates are inactive."""
        if not self.gates[0].active:
            return [torch.ones(width, dtype=torch.bool) for width in self.widths]
        return [gate.keep_mask().detach().cpu() for gate in self.gates]

    def set_keep_masks(self, masks: list[torch.Tensor]) -> None:
        """Fix the gates to `masks` (m = +1 kept, -1 pruned) and activate them."""
        with torch.no_grad():
            for gate, mask in zip(self.gates, masks):
                gate.m.copy_(torch.where(mask.to(gate.m.device), 1.0, -1.0))
        self.set_gates_active(True)


class BiasClassifier(nn.Module):
    """C_aux: predicts the bias label from bottleneck features.

    NOTE: the head's shape is not stated in the sources we could read;
    hidden=0 (the default) makes it linear, hidden>0 an MLP with one hidden layer.
    """

    def __init__(self, in_features: int, num_bias: int, hidden: int = 0):
        super().__init__()
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_bias))
        else:
            self.net = nn.Linear(in_features, num_bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
