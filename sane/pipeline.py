"""SANE guidance on top of diffusers' InstructPix2Pix pipeline.

At every denoising step the UNet receives, for each image, 3 + N inputs
that share the noisy latent:

    eps_T  the ambiguous instruction and the image
    eps_I  empty text and the image
    eps_0  empty text and a zero image latent
    eps_k  specific instruction k and the image, k = 1..N

For every latent element j (channel and position) the specific instruction
that moves the prediction most wins, k*(j) = argmax_k |eps_k[j] - eps_I[j]|,
and eps_S[j] = eps_{k*(j)}[j]. The guided prediction is

    eps = eps_0 + s_T (eps_T - eps_I) + s_I (eps_I - eps_0) + s_A (eps_S - eps_I)

which is InstructPix2Pix's guidance when s_A = 0. All inputs of a step go
through the UNet as one batch, or in chunks of `max_unet_batch` inputs to
bound memory.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    StableDiffusionInstructPix2PixPipeline,
)

SCHEDULERS = {
    "euler_ancestral": EulerAncestralDiscreteScheduler,  # the released default
    "euler": EulerDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpmpp": DPMSolverMultistepScheduler,
    "heun": HeunDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
}


def check_scale(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}; the released defaults are s_T = 7.5, s_I = 1.5, s_A = 7.5")
    return float(value)


def select_specific(eps_image: torch.Tensor, eps_specific: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick, per element, the specific prediction farthest from eps_I.

    eps_image: (C, H, W); eps_specific: (N, C, H, W), N >= 1.
    Returns eps_S (C, H, W) and the one-hot selection (N, C, H, W) over exactly N classes.
    """
    count = eps_specific.shape[0]
    winner = (eps_specific - eps_image.unsqueeze(0)).abs().argmax(dim=0)  # (C, H, W), ties go to the first
    one_hot = F.one_hot(winner, num_classes=count).permute(3, 0, 1, 2).to(eps_specific.dtype)
    return (one_hot * eps_specific).sum(dim=0), one_hot


def sane_guidance(
    eps_text: torch.Tensor,
    eps_image: torch.Tensor,
    eps_uncond: torch.Tensor,
    eps_specific: torch.Tensor,
    s_text: float,
    s_image: float,
    s_additional: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Combine the predictions of one image; returns (guided prediction, one-hot selection or None when N = 0)."""
    guided = eps_uncond + s_text * (eps_text - eps_image) + s_image * (eps_image - eps_uncond)
    if eps_specific.shape[0] == 0:
        return guided, None
    eps_selected, one_hot = select_specific(eps_image, eps_specific)
    return guided + s_additional * (eps_selected - eps_image), one_hot


@dataclasses.dataclass
class SaneOutput:
    images: list  # PIL images, or a tensor for output_type="pt"/"latent"
    selection_share: list[list[float]]  # per image: share of latent elements each specific instruction won, averaged over steps


class SanePipeline(StableDiffusionInstructPix2PixPipeline):
    """InstructPix2Pix with SANE guidance; `__call__` stays diffusers' own InstructPix2Pix."""

    def set_scheduler(self, name: str) -> None:
        """Replace the scheduler by one of SCHEDULERS, built from the current scheduler's config."""
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)}")
        self.scheduler = SCHEDULERS[name].from_config(self.scheduler.config)

    @torch.no_grad()
    def edit(
        self,
        images: PIL.Image.Image | Sequence[PIL.Image.Image] | torch.Tensor,
        instructions: str | Sequence[str],
        specific_instructions: Sequence[str] | Sequence[Sequence[str]],
        *,
        num_inference_steps: int = 30,
        s_text: float = 7.5,
        s_image: float = 1.5,
        s_additional: float = 7.5,
        generator: torch.Generator | list[torch.Generator] | None = None,
        max_unet_batch: int | None = None,
        output_type: str = "pil",
    ) -> SaneOutput:
        """Edit each image with its instruction and its own list of specific instructions.

        With one image, `specific_instructions` may be a flat list of strings.
        `max_unet_batch` splits each step's 3 + N inputs per image into UNet
        calls of at most that many inputs (None: one call per step).
        """
        if isinstance(instructions, str):
            instructions = [instructions]
        if isinstance(images, (PIL.Image.Image, torch.Tensor)) and not (isinstance(images, torch.Tensor) and images.ndim == 4):
            images = [images]
        if len(specific_instructions) == 0 or isinstance(specific_instructions[0], str):
            specific_instructions = [list(specific_instructions)]
        specific_instructions = [list(items) for items in specific_instructions]
        batch = len(instructions)
        if len(images) != batch or len(specific_instructions) != batch:
            raise ValueError(f"got {len(images)} images, {batch} instructions and {len(specific_instructions)} lists of "
                             f"specific instructions; pass one of each per image")
        for text in list(instructions) + [s for items in specific_instructions for s in items]:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"instructions must be non-empty strings, got {text!r}")
        s_text, s_image, s_additional = (check_scale(n, v) for n, v in (("s_T", s_text), ("s_I", s_image), ("s_A", s_additional)))
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer of at least 1, got {num_inference_steps!r}")
        if max_unet_batch is not None and max_unet_batch < 1:
            raise ValueError(f"max_unet_batch must be at least 1 or None, got {max_unet_batch}")
        device = self._execution_device

        # Text: per image [instruction, "", "", specific_1..N], encoded in one pass.
        texts, layout = [], []
        for instruction, specific in zip(instructions, specific_instructions):
            layout.append((len(texts), len(specific)))
            texts += [instruction, "", ""] + specific
        prompt_embeds = self._encode_prompt(texts, device, 1, False)

        for image in images:
            width, height = image.size if isinstance(image, PIL.Image.Image) else (image.shape[-1], image.shape[-2])
            if height % 8 or width % 8:
                raise ValueError(f"image size {width}x{height} is not a multiple of 8; resize or crop the image first "
                                 f"(sane.data rounds sizes to multiples of 8)")
        pixels = self.image_processor.preprocess(images)
        height, width = pixels.shape[-2:]
        image_latents = self.prepare_image_latents(pixels, batch, 1, prompt_embeds.dtype, device, False)
        zeros = torch.zeros_like(image_latents[:1])
        conditioning = torch.cat([
            torch.cat([image_latents[b:b + 1], image_latents[b:b + 1], zeros] + [image_latents[b:b + 1]] * count)
            for b, (_, count) in enumerate(layout)
        ])
        repeats = torch.tensor([3 + count for _, count in layout], device=device)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(batch, self.vae.config.latent_channels, height, width, prompt_embeds.dtype, device, generator)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, 0.0)
        shares = [torch.zeros(count, device=device) for _, count in layout]
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(torch.repeat_interleave(latents, repeats, dim=0), t)
            model_input = torch.cat([model_input, conditioning], dim=1)
            noise = self._unet_in_chunks(model_input, t, prompt_embeds, max_unet_batch)
            guided = []
            for b, (start, count) in enumerate(layout):
                eps = noise[start:start + 3 + count]
                combined, one_hot = sane_guidance(eps[0], eps[1], eps[2], eps[3:], s_text, s_image, s_additional)
                guided.append(combined)
                if one_hot is not None:
                    shares[b] += one_hot.flatten(1).float().mean(dim=1)
            latents = self.scheduler.step(torch.stack(guided), t, latents, **extra_step_kwargs, return_dict=False)[0]

        steps = len(self.scheduler.timesteps)
        selection_share = [(share / steps).tolist() for share in shares]
        if output_type == "latent":
            return SaneOutput(latents, selection_share)
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        decoded, nsfw = self.run_safety_checker(decoded, device, prompt_embeds.dtype)
        denormalize = [True] * decoded.shape[0] if nsfw is None else [not flagged for flagged in nsfw]
        result = self.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=denormalize)
        self.maybe_free_model_hooks()
        return SaneOutput(result, selection_share)

    def _unet_in_chunks(self, model_input: torch.Tensor, t, prompt_embeds: torch.Tensor, max_unet_batch: int | None) -> torch.Tensor:
        size = model_input.shape[0] if max_unet_batch is None else max_unet_batch
        outputs = [
            self.unet(model_input[start:start + size], t, encoder_hidden_states=prompt_embeds[start:start + size], return_dict=False)[0]
            for start in range(0, model_input.shape[0], size)
        ]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
