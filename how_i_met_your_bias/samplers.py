"""Samplers from diffusers' schedulers, with classifier-free guidance in one convention.

Guidance convention, used everywhere in this package:

    eps = eps_null + w * (eps_cond - eps_null)

so w = 1 is plain conditional sampling and w = 0 is unconditional sampling
with the trained null class. The released code mixed this with the
(1 + w) * cond - w * uncond convention; a weight from there converts as
w_here = 1 + w_there. A model that predicts v instead of the noise is
combined by the same formula. At a fixed x_t the noise is an affine function
of v and the two weights sum to 1, so the guided noise is the same.

Every scheduler is built from the noise schedule the model was trained with
(same T and betas), so the timesteps it feeds the UNet are on the training
scale; the released DPM-Solver wrapper got that scale wrong for T != 1000.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from how_i_met_your_bias.config import NoiseConfig

SAMPLERS = {
    "ddpm": DDPMScheduler,  # ancestral sampling
    "ddim": DDIMScheduler,  # eta = 0 deterministic, eta = 1 DDPM-like noise
    "dpmpp": DPMSolverMultistepScheduler,  # DPM-Solver++ multistep, order 1 to 3
    "euler": EulerDiscreteScheduler,  # churn > 0: EDM's stochastic churn
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,  # two UNet evaluations per step
}
SIGMA_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpmpp")  # accept Karras sigmas


@dataclasses.dataclass(frozen=True)
class SamplerSetting:
    """One point of a sweep: sampler, number of steps and its knobs."""

    sampler: str
    steps: int
    w: float = 1.0
    eta: float = 0.0  # ddim only
    churn: float = 0.0  # euler only: EDM's S_churn
    order: int = 2  # dpmpp only: solver order 1..3
    karras: bool = False  # Karras et al. sigma spacing (euler, euler_ancestral, heun, dpmpp)

    def validate(self) -> SamplerSetting:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; expected one of {sorted(SAMPLERS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer of at least 1, got {self.steps!r}")
        if isinstance(self.w, bool) or not isinstance(self.w, (int, float)) or not math.isfinite(self.w):
            raise ValueError(f"guidance weight w must be a finite number, got {self.w!r}; w = 1 is conditional sampling, w = 0 unconditional")
        if not (isinstance(self.eta, (int, float)) and 0.0 <= self.eta <= 1.0):
            raise ValueError(f"eta must lie in [0, 1], got {self.eta!r}; 0 is deterministic DDIM, 1 adds DDPM-like noise")
        if self.eta != 0.0 and self.sampler != "ddim":
            raise ValueError(f"eta={self.eta} applies only to the ddim sampler, not {self.sampler!r}; leave eta at 0")
        if not (isinstance(self.churn, (int, float)) and math.isfinite(self.churn) and self.churn >= 0):
            raise ValueError(f"churn must be a finite number of at least 0, got {self.churn!r}")
        if self.churn != 0.0 and self.sampler != "euler":
            raise ValueError(f"churn={self.churn} applies only to the euler sampler, not {self.sampler!r}; leave churn at 0")
        if self.order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {self.order!r}")
        if self.order != 2 and self.sampler != "dpmpp":
            raise ValueError(f"order={self.order} applies only to the dpmpp sampler, not {self.sampler!r}; leave order at 2")
        if self.karras and self.sampler not in SIGMA_SAMPLERS:
            raise ValueError(f"karras sigmas apply to {SIGMA_SAMPLERS}, not {self.sampler!r}")
        return self

    def normalised(self) -> SamplerSetting:
        """Reset knobs the sampler ignores, so equal samplings compare equal."""
        order = self.order if self.sampler == "dpmpp" else 2
        return dataclasses.replace(self, w=float(self.w), eta=float(self.eta), churn=float(self.churn), order=order)

    @property
    def key(self) -> str:
        """File-name-safe identity, e.g. ddim-s50-w1-eta0.5."""
        parts = [self.sampler, f"s{self.steps}", f"w{self.w:g}"]
        if self.sampler == "ddim":
            parts.append(f"eta{self.eta:g}")
        if self.sampler == "euler" and self.churn:
            parts.append(f"churn{self.churn:g}")
        if self.sampler == "dpmpp":
            parts.append(f"o{self.order}")
        if self.karras:
            parts.append("karras")
        return "-".join(parts)

    @property
    def label(self) -> str:
        return self.key.replace("-", " ")

    def unet_evaluations(self, batch: int) -> int:
        """UNet image evaluations to sample `batch` images (guidance doubles all but w in {0, 1})."""
        per_step = 1 if self.w in (0.0, 1.0) else 2
        steps = 2 * self.steps - 1 if self.sampler == "heun" else self.steps
        return batch * per_step * steps


def build_scheduler(setting: SamplerSetting, noise: NoiseConfig) -> SchedulerMixin:
    """Build a fresh diffusers scheduler for `setting` on the training noise schedule."""
    setting.validate()
    kwargs = dict(
        num_train_timesteps=noise.num_train_timesteps,
        beta_schedule=noise.beta_schedule,
        beta_start=noise.beta_start,
        beta_end=noise.beta_end,
        prediction_type=noise.prediction_type,
    )
    if setting.sampler == "dpmpp":
        kwargs.update(algorithm_type="dpmsolver++", solver_order=setting.order)
    if setting.sampler in ("ddpm", "ddim"):
        kwargs.update(clip_sample=False)
    if setting.karras:
        kwargs.update(use_karras_sigmas=True)
    if setting.sampler != "dpmpp":
        # "trailing" makes the first step start from t = T - 1, the pure noise
        # the sampler draws, whatever the number of steps.
        kwargs.update(timestep_spacing="trailing")
    if setting.sampler == "ddim":
        kwargs.update(set_alpha_to_one=True)
    return SAMPLERS[setting.sampler](**kwargs)


def step_options(setting: SamplerSetting, generator: torch.Generator | None) -> dict:
    """Keyword arguments for scheduler.step that carry the setting's knobs."""
    if setting.sampler == "ddim":
        return {"eta": setting.eta, "generator": generator}
    if setting.sampler == "euler":
        return {"s_churn": setting.churn, "generator": generator}
    if setting.sampler == "heun":
        return {}
    return {"generator": generator}


class GuidedDenoiser:
    """Noise prediction with classifier-free guidance around a class-conditional UNet.

    Conditional and null-class inputs go through the UNet as one batch. At
    w = 1 only the conditional branch runs and at w = 0 only the null branch,
    which makes those two cases exactly the plain predictions.
    """

    def __init__(self, unet: torch.nn.Module, null_class: int, w: float, autocast: Callable | None = None):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"guidance weight w must be a finite number, got {w!r}")
        self.unet = unet
        self.null_class = null_class
        self.w = float(w)
        self.autocast = autocast

    def _unet(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = t.expand(x.shape[0]) if t.ndim else t.repeat(x.shape[0])
        if self.autocast is None:
            return self.unet(x, t, class_labels=labels).sample.float()
        with self.autocast():
            return self.unet(x, t, class_labels=labels).sample.float()

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(labels, self.null_class)
        if self.w == 1.0:
            return self._unet(x, t, labels)
        if self.w == 0.0:
            return self._unet(x, t, null)
        both = self._unet(torch.cat([x, x]), t, torch.cat([labels, null]))
        cond, uncond = both.chunk(2)
        return uncond + self.w * (cond - uncond)


@torch.no_grad()
def sample(
    denoiser: GuidedDenoiser,
    setting: SamplerSetting,
    noise: NoiseConfig,
    labels: torch.Tensor,
    image_shape: tuple[int, int, int],
    generator: torch.Generator,
) -> torch.Tensor:
    """Draw one image per label, in [-1, 1], on the labels' device.

    The starting noise and every stochastic step draw from `generator` (a CPU
    generator), so the same seed gives the same images on any device.
    """
    scheduler = build_scheduler(setting, noise)
    device = labels.device
    scheduler.set_timesteps(setting.steps, device=device)
    x = torch.randn((len(labels), *image_shape), generator=generator).to(device) * scheduler.init_noise_sigma
    options = step_options(setting, generator)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        eps = denoiser(model_input, t.to(device), labels)
        x = scheduler.step(eps, t, x, **options).prev_sample
    return x.clamp_(-1.0, 1.0)
