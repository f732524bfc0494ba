"""Tiny randomly initialised InstructPix2Pix components built from configs, for offline tests."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def byte_characters() -> list[str]:
    """The 256 printable characters that byte-level BPE uses for the bytes 0..255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """Build a character-level CLIP tokenizer: every byte is a token, no merges."""
    characters = byte_characters()
    tokens = ["<|startoftext|>", "<|endoftext|>"] + characters + [c + "</w>" for c in characters]
    folder.mkdir(parents=True, exist_ok=True)
    return CLIPTokenizer(vocab={token: index for index, token in enumerate(tokens)}, merges=[], model_max_length=16)


def tiny_components(folder: Path) -> dict:
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(folder / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).eval()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4, sample_size=32,
    ).eval()
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
