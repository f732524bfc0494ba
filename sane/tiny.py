"""Tiny randomly initialised models built from configs, for offline tests and the smoke scale.

They check that the editing and metric code paths run end to end without a
download. Their outputs mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    Dinov2Config,
    Dinov2Model,
)

START, END = "<|startoftext|>", "<|endoftext|>"


def tiny_tokenizer(folder: Path | None = None, max_length: int = 16) -> CLIPTokenizer:
    """Build a character-level CLIP tokenizer: every byte is a token, no merges."""
    characters = sorted(ByteLevel.alphabet())
    tokens = [START, END] + characters + [c + "</w>" for c in characters]
    return CLIPTokenizer(vocab={token: index for index, token in enumerate(tokens)}, merges=[], model_max_length=max_length)


def save_tiny_clip(folder: Path) -> Path:
    """Save a 2-layer CLIP with the character tokenizer and 32x32 inputs; return the folder."""
    tokenizer = tiny_tokenizer(max_length=40)
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=40, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision_config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                                     patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=16)).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return Path(folder)


def save_tiny_dino(folder: Path) -> Path:
    """Save a 2-layer DINOv2 with 28x28 inputs; return the folder."""
    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                             patch_size=14)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    return Path(folder)


def tiny_components(folder: Path | None = None) -> dict:
    """Return the components of a tiny InstructPix2Pix pipeline (UNet, VAE, text encoder, tokenizer, scheduler)."""
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
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
