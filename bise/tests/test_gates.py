"""Tests for the channel gates (bise.models.ChannelGate) and the BISE schedule (bise.extract)."""

from __future__ import annotations

import pytest
import torch

from bise.config import ExperimentConfig, FinetuneConfig, GateConfig
from bise.extract import Step, build_steps, temperatures
from bise.models import ChannelGate, SimpleConvNet

pytestmark = pytest.mark.timeout(10)


def _gate(m: torch.Tensor, tau: float) -> ChannelGate:
    gate = ChannelGate(len(m))
    with torch.no_grad():
        gate.m.copy_(m)
    gate.tau = tau
    gate.active = True
    return gate


def _config(gates: GateConfig = GateConfig(), finetune: FinetuneConfig = FinetuneConfig()) -> ExperimentConfig:
    return ExperimentConfig(name="schedule", scale="paper", method="bise", vanilla_config="vanilla.yaml", gates=gates, finetune=finetune)


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.25, 0.125, 1e-3])
def test_forward_values_exact(tau: float) -> None:
    m = torch.randn(200, generator=torch.Generator().manual_seed(0))
    gate = _gate(m, tau)

    values = gate(torch.ones(1, 200))[0].detach()

    keep = (m >= 0).float()
    wrong = torch.nonzero(values != keep).flatten()
    assert len(wrong) == 0, f"{len(wrong)} gate values differ from 1[m >= 0], e.g. {values[wrong][:3].tolist()} at m = {m[wrong][:3].tolist()}"


def test_forward_feature_map() -> None:
    generator = torch.Generator().manual_seed(0)
    m = torch.tensor([1.0, -1.0, 2.0, -0.5, 0.0])
    h = torch.randn(3, 5, 4, 4, generator=generator)
    gate = _gate(m, tau=1.0)

    output = gate(h)

    keep = (m >= 0).float().view(1, -1, 1, 1)
    torch.testing.assert_close(output, h * keep, rtol=1e-6, atol=0)


def test_forward_zero_m_keeps() -> None:
    h = torch.randn(2, 5, 3, 3)
    gate = _gate(torch.zeros(5), tau=0.5)

    assert torch.equal(gate(h), h)
    assert bool(gate.keep_mask().all())


def test_keep_mask_sign_of_m() -> None:
    m = torch.tensor([-2.0, -0.1, 0.0, 0.1, 3.0])
    gate = _gate(m, tau=0.25)

    assert gate.keep_mask().tolist() == [False, False, True, True, True]


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.125])
def test_straight_through_gradient(tau: float) -> None:
    generator = torch.Generator().manual_seed(1)
    m = torch.randn(6, generator=generator)
    h = torch.randn(4, 6, 5, 5, generator=generator)
    weights = torch.randn(4, 6, 5, 5, generator=generator)
    gate = _gate(m, tau)

    (gate(h) * weights).sum().backward()

    soft_m = m.clone().requires_grad_(True)
    soft_gate = torch.sigmoid(soft_m / tau).view(1, -1, 1, 1)
    (h * soft_gate * weights).sum().backward()
    torch.testing.assert_close(gate.m.grad, soft_m.grad, rtol=1e-5, atol=1e-7)


def test_gradient_reaches_pruned_channel() -> None:
    h = torch.ones(1, 2, 2, 2)
    gate = _gate(torch.tensor([-1.0, 1.0]), tau=1.0)

    gate(h).sum().backward()

    # The soft gate's gradient also reaches a pruned channel, so gate training can bring it back.
    assert float(gate.m.grad[0]) > 0


def test_inactive_gate_identity() -> None:
    h = torch.randn(2, 3, 4, 4, requires_grad=True)
    gate = ChannelGate(3)
    with torch.no_grad():
        gate.m.fill_(-5.0)

    output = gate(h)
    output.sum().backward()

    assert torch.equal(output, h)
    assert gate.m.grad is None


def test_model_inactive_gates_unchanged() -> None:
    torch.manual_seed(0)
    model = SimpleConvNet(widths=(4, 4, 4, 8)).eval()
    x = torch.randn(2, 3, 28, 28)
    dense = model(x)

    with torch.no_grad():
        for gate in model.gates:
            gate.m.fill_(-1.0)

    assert torch.equal(model(x), dense)
    assert all(bool(mask.all()) for mask in model.keep_masks())


def test_temperatures_tiny() -> None:
    config = _config(GateConfig(tau_start=1.0, tau_min=0.3))

    assert temperatures(config) == [1.0, 0.5]


def test_temperatures_paper_scale() -> None:
    # GateConfig defaults: tau_start 1, tau_factor 0.5, tau_min 1e-3.
    taus = temperatures(_config())

    assert len(taus) == 10
    assert taus == [0.5**stage for stage in range(10)]
    assert taus[-1] > 1e-3
    assert taus[-1] * 0.5 <= 1e-3


def test_temperatures_exclude_tau_min() -> None:
    assert temperatures(_config(GateConfig(tau_min=0.25))) == [1.0, 0.5]


def test_temperatures_none_error() -> None:
    with pytest.raises(ValueError, match="tau_start"):
        temperatures(_config(GateConfig(tau_start=0.1, tau_min=0.2)))


def test_build_steps_order() -> None:
    config = _config(GateConfig(tau_min=0.2, epochs_per_tau=2), FinetuneConfig(epochs=2))

    steps = build_steps(config)

    assert steps == [
        Step("aux", 0, -1, 1.0),
        Step("gates", 0, 0, 1.0),
        Step("gates", 0, 1, 1.0),
        Step("aux", 1, -1, 0.5),
        Step("gates", 1, 2, 0.5),
        Step("gates", 1, 3, 0.5),
        Step("aux", 2, -1, 0.25),
        Step("gates", 2, 4, 0.25),
        Step("gates", 2, 5, 0.25),
        Step("finetune", 2, 0, 0.25),
        Step("finetune", 2, 1, 0.25),
    ]


def test_build_steps_no_finetune() -> None:
    steps = build_steps(_config(GateConfig(epochs_per_tau=10), FinetuneConfig(epochs=0)))

    assert len(steps) == 10 * (1 + 10)
    assert steps[-1].kind == "gates"
    assert [step.kind for step in steps].count("aux") == 10
