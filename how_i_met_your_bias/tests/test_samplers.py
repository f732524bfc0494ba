"""Guidance convention, every sampler on a tiny UNet, seeds and bad settings."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import UNet2DModel

from how_i_met_your_bias.config import NoiseConfig
from how_i_met_your_bias.samplers import SAMPLERS, GuidedDenoiser, SamplerSetting, build_scheduler, sample

NUM_CLASSES = 2
NULL = NUM_CLASSES
SHAPE = (3, 8, 8)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=NUM_CLASSES + 1,
    )
    # Make the class embedding matter, so that conditional and null predictions differ.
    with torch.no_grad():
        model.class_embedding.weight.normal_(0, 3)
    return model.eval()


def _inputs():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, *SHAPE, generator=generator)
    labels = torch.tensor([0, 1, 1, 0])
    t = torch.tensor(500)
    return x, t, labels


@torch.no_grad()
def test_w1_is_exactly_the_conditional_prediction(unet):
    x, t, labels = _inputs()
    expected = unet(x, t.repeat(4), class_labels=labels).sample
    assert torch.equal(GuidedDenoiser(unet, NULL, 1.0)(x, t, labels), expected)


@torch.no_grad()
def test_w0_is_exactly_the_null_class_prediction(unet):
    x, t, labels = _inputs()
    expected = unet(x, t.repeat(4), class_labels=torch.full_like(labels, NULL)).sample
    assert torch.equal(GuidedDenoiser(unet, NULL, 0.0)(x, t, labels), expected)


@torch.no_grad()
@pytest.mark.parametrize("w", [0.5, 2.0, 7.5, -1.0])
def test_other_weights_follow_the_convention(unet, w):
    x, t, labels = _inputs()
    cond = unet(x, t.repeat(4), class_labels=labels).sample
    null = unet(x, t.repeat(4), class_labels=torch.full_like(labels, NULL)).sample
    assert not torch.allclose(cond, null)
    guided = GuidedDenoiser(unet, NULL, w)(x, t, labels)
    torch.testing.assert_close(guided, null + w * (cond - null), rtol=1e-4, atol=1e-5)


class CountingUNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls, self.batch_sizes = unet, 0, []

    def forward(self, x, t, class_labels):
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        return self.unet(x, t, class_labels=class_labels)


@pytest.mark.parametrize("w,calls_per_step,batch", [(1.0, 1, 4), (0.0, 1, 4), (3.0, 1, 8)])
def test_guidance_uses_one_unet_call_per_step(unet, w, calls_per_step, batch):
    counting = CountingUNet(unet)
    setting = SamplerSetting("ddim", steps=3, w=w)
    sample(GuidedDenoiser(counting, NULL, w), setting, NoiseConfig(), torch.tensor([0, 1, 0, 1]), SHAPE, torch.Generator().manual_seed(0))
    assert counting.calls == 3 * calls_per_step
    assert set(counting.batch_sizes) == {batch}


SETTINGS = [
    SamplerSetting("ddpm", 3),
    SamplerSetting("ddim", 3, eta=0.0),
    SamplerSetting("ddim", 3, eta=0.5),
    SamplerSetting("ddim", 3, eta=1.0),
    SamplerSetting("dpmpp", 4, order=1),
    SamplerSetting("dpmpp", 4, order=2),
    SamplerSetting("dpmpp", 4, order=3),
    SamplerSetting("euler", 3),
    SamplerSetting("euler", 3, churn=40.0),
    SamplerSetting("euler_ancestral", 3),
    SamplerSetting("heun", 3),
    SamplerSetting("heun", 3, karras=True),
    SamplerSetting("dpmpp", 1, order=3, w=2.0),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_sampler_finite_and_seeded(unet, setting):
    labels = torch.tensor([0, 1, 1])
    denoiser = GuidedDenoiser(unet, NULL, setting.w)
    first = sample(denoiser, setting, NoiseConfig(), labels, SHAPE, torch.Generator().manual_seed(5))
    again = sample(denoiser, setting, NoiseConfig(), labels, SHAPE, torch.Generator().manual_seed(5))
    assert first.shape == (3, *SHAPE)
    assert torch.isfinite(first).all()
    assert first.min() >= -1
    assert first.max() <= 1
    assert torch.equal(first, again)


def test_stochastic_samplers_change_with_the_seed(unet):
    labels = torch.tensor([0, 1])
    for setting in (SamplerSetting("ddpm", 3), SamplerSetting("euler", 3, churn=40.0), SamplerSetting("ddim", 3, eta=1.0)):
        denoiser = GuidedDenoiser(unet, NULL, 1.0)
        a = sample(denoiser, setting, NoiseConfig(), labels, SHAPE, torch.Generator().manual_seed(1))
        b = sample(denoiser, setting, NoiseConfig(), labels, SHAPE, torch.Generator().manual_seed(2))
        assert not torch.equal(a, b), setting.key


def test_every_registered_sampler_is_tested():
    assert {setting.sampler for setting in SETTINGS} == set(SAMPLERS)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("train_steps", [500, 1000])
def test_timesteps_stay_on_the_training_scale(sampler, train_steps):
    """The released DPM-Solver wrapper fed the UNet timesteps scaled for T = 1000 whatever T was."""
    scheduler = build_scheduler(SamplerSetting(sampler, 50), NoiseConfig(num_train_timesteps=train_steps))
    scheduler.set_timesteps(50)
    timesteps = scheduler.timesteps.float()
    assert timesteps.max() <= train_steps - 1
    assert timesteps.max() >= 0.9 * (train_steps - 1)
    assert timesteps.min() >= 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(sampler="plms", steps=10), "unknown sampler 'plms'"),
        (dict(sampler="ddim", steps=0), "steps must be an integer of at least 1, got 0"),
        (dict(sampler="ddim", steps=10, eta=1.5), "eta must lie in [0, 1], got 1.5"),
        (dict(sampler="ddim", steps=10, eta=-0.1), "eta must lie in [0, 1], got -0.1"),
        (dict(sampler="ddim", steps=10, w=math.nan), "guidance weight w must be a finite number, got nan"),
        (dict(sampler="ddim", steps=10, w=math.inf), "guidance weight w must be a finite number, got inf"),
        (dict(sampler="euler", steps=10, eta=0.5), "eta=0.5 applies only to the ddim sampler"),
        (dict(sampler="ddim", steps=10, churn=5.0), "churn=5.0 applies only to the euler sampler"),
        (dict(sampler="dpmpp", steps=10, order=4), "order must be 1, 2 or 3, got 4"),
        (dict(sampler="ddpm", steps=10, karras=True), "karras sigmas apply to"),
        (dict(sampler="ddim", steps=10, order=3), "order=3 applies only to the dpmpp sampler"),
    ],
)
def test_bad_settings_name_the_value(kwargs, message):
    with pytest.raises(ValueError) as error:
        SamplerSetting(**kwargs).validate()
    assert message in str(error.value)


def test_denoiser_rejects_non_number_weight(unet):
    with pytest.raises(ValueError, match="finite number, got 'high'"):
        GuidedDenoiser(unet, NULL, "high")


def test_keys_are_distinct_and_ignore_unused_knobs():
    assert SamplerSetting("ddim", 50, eta=0.5).key == "ddim-s50-w1-eta0.5"
    assert SamplerSetting("dpmpp", 20, w=2, order=3).key == "dpmpp-s20-w2-o3"
    assert SamplerSetting("euler", 25, churn=40).key == "euler-s25-w1-churn40"
    keys = {s.normalised().key for s in SETTINGS}
    assert len(keys) == len(SETTINGS)


def test_unet_evaluation_count():
    assert SamplerSetting("ddim", 10, w=1).unet_evaluations(100) == 1000
    assert SamplerSetting("ddim", 10, w=2).unet_evaluations(100) == 2000
    assert SamplerSetting("heun", 10, w=0).unet_evaluations(100) == 1900
