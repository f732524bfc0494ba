"""SANE guidance: equal to InstructPix2Pix at s_A = 0, the selection rule, batches and bad input."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline

from sane.pipeline import SanePipeline, sane_guidance, select_specific
from sane.tiny import tiny_components


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    return tiny_components(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pipe(components):
    pipeline = SanePipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def photo(seed: int, size: int = 32) -> PIL.Image.Image:
    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8")
    return PIL.Image.fromarray(pixels)


def edit(pipe, image, instruction, specific, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 3)
    return pipe.edit(image, instruction, specific, generator=torch.Generator().manual_seed(seed), output_type="pt", **kwargs)


@pytest.mark.parametrize("specific", [["add old cars", "sepia tones"], []])
def test_zero_additional_scale_equals_instruct_pix2pix(components, pipe, specific):
    reference = StableDiffusionInstructPix2PixPipeline(**components)
    reference.set_progress_bar_config(disable=True)
    expected = reference(prompt="make it vintage", image=photo(0), num_inference_steps=3, guidance_scale=7.5, image_guidance_scale=1.5,
                         generator=torch.Generator().manual_seed(0), output_type="pt").images
    result = edit(pipe, photo(0), "make it vintage", specific, s_additional=0.0)
    torch.testing.assert_close(result.images, expected, rtol=0, atol=1e-5)


def test_sane_changes_the_edit(pipe):
    plain = edit(pipe, photo(0), "make it vintage", ["add old cars", "sepia tones"], s_additional=0.0)
    guided = edit(pipe, photo(0), "make it vintage", ["add old cars", "sepia tones"])
    assert (plain.images - guided.images).abs().max() > 1e-3


def test_one_specific_instruction_is_selected_everywhere():
    eps_image = torch.randn(4, 3, 3)
    eps_specific = torch.randn(1, 4, 3, 3)
    selected, one_hot = select_specific(eps_image, eps_specific)
    assert torch.equal(selected, eps_specific[0])
    assert torch.equal(one_hot, torch.ones(1, 4, 3, 3))


def test_guidance_matches_a_hand_computation():
    generator = torch.Generator().manual_seed(3)
    eps_text, eps_image, eps_uncond = (torch.randn(2, 2, 2, generator=generator) for _ in range(3))
    eps_specific = torch.randn(3, 2, 2, 2, generator=generator)
    s_text, s_image, s_additional = 7.5, 1.5, 2.0
    expected = torch.empty(2, 2, 2)
    for c in range(2):
        for y in range(2):
            for x in range(2):
                distances = [abs(eps_specific[k, c, y, x].item() - eps_image[c, y, x].item()) for k in range(3)]
                winner = distances.index(max(distances))
                selected = eps_specific[winner, c, y, x].item()
                expected[c, y, x] = (eps_uncond[c, y, x] + s_text * (eps_text[c, y, x] - eps_image[c, y, x])
                                     + s_image * (eps_image[c, y, x] - eps_uncond[c, y, x]) + s_additional * (selected - eps_image[c, y, x]))
    guided, one_hot = sane_guidance(eps_text, eps_image, eps_uncond, eps_specific, s_text, s_image, s_additional)
    torch.testing.assert_close(guided, expected, rtol=1e-6, atol=1e-6)
    assert one_hot.shape == (3, 2, 2, 2)
    assert torch.equal(one_hot.sum(dim=0), torch.ones(2, 2, 2))


def test_one_hot_keeps_unused_class():
    eps_image = torch.zeros(1, 2, 2)
    eps_specific = torch.stack([torch.full((1, 2, 2), 5.0), torch.full((1, 2, 2), 0.1), torch.full((1, 2, 2), 0.2)])
    _, one_hot = select_specific(eps_image, eps_specific)
    assert one_hot.shape == (3, 1, 2, 2)
    assert one_hot[1:].sum() == 0


def test_duplicate_specific_instructions_work(pipe):
    result = edit(pipe, photo(1), "make it festive", ["add lights", "add lights"])
    assert torch.isfinite(result.images).all()
    share = result.selection_share[0]
    assert math.isclose(sum(share), 1.0, rel_tol=1e-5)


def test_batch_with_different_instruction_counts_equals_single_edits(pipe):
    images = [photo(1), photo(2)]
    specific = [["add lights", "add snow"], ["add a hat"]]
    generators = [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]
    batch = pipe.edit(images, ["make it festive", "make it fancy"], specific, num_inference_steps=3, generator=generators, output_type="pt")
    for index in range(2):
        single = edit(pipe, images[index], ["make it festive", "make it fancy"][index], specific[index], seed=10 + index)
        torch.testing.assert_close(batch.images[index], single.images[0], rtol=0, atol=1e-5)
    assert [len(share) for share in batch.selection_share] == [2, 1]


def test_split_unet_batch_gives_the_same_edit(pipe):
    whole = edit(pipe, photo(0), "make it vintage", ["add old cars", "sepia tones", "film grain"])
    split = edit(pipe, photo(0), "make it vintage", ["add old cars", "sepia tones", "film grain"], max_unet_batch=2)
    torch.testing.assert_close(whole.images, split.images, rtol=0, atol=1e-5)


def test_same_seed_same_edit(pipe):
    first = edit(pipe, photo(0), "make it vintage", ["add old cars"], seed=4)
    second = edit(pipe, photo(0), "make it vintage", ["add old cars"], seed=4)
    assert torch.equal(first.images, second.images)


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "dpmpp", "lms"])
def test_other_schedulers_run(components, scheduler):
    pipeline = SanePipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.set_scheduler(scheduler)
    result = edit(pipeline, photo(0), "make it vintage", ["add old cars"])
    assert torch.isfinite(result.images).all()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(s_text=math.nan), "s_T must be a finite number, got nan"),
        (dict(s_additional=math.inf), "s_A must be a finite number, got inf"),
        (dict(num_inference_steps=0), "num_inference_steps must be an integer of at least 1, got 0"),
        (dict(max_unet_batch=0), "max_unet_batch must be at least 1 or None, got 0"),
    ],
)
def test_bad_arguments_name_the_value(pipe, kwargs, message):
    with pytest.raises(ValueError) as error:
        edit(pipe, photo(0), "make it vintage", ["add old cars"], **kwargs)
    assert message in str(error.value)


def test_bad_inputs_name_the_value(pipe):
    with pytest.raises(ValueError, match="image size 30x30 is not a multiple of 8"):
        edit(pipe, photo(0, size=30), "make it vintage", ["add old cars"])
    with pytest.raises(ValueError, match="instructions must be non-empty strings, got ' '"):
        edit(pipe, photo(0), " ", ["add old cars"])
    with pytest.raises(ValueError, match="unknown scheduler 'plms'"):
        pipe.set_scheduler("plms")
