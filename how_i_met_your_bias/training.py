"""Training of the class-conditional diffusion model (epsilon prediction, EMA, CFG label dropout).

The loop counts optimiser steps, not epochs. Every step draws its batch
indices, timesteps, noise and dropped labels from a generator seeded by
(seed, step), so a run resumed from a checkpoint follows exactly the path of
an uninterrupted one. Under torchrun each process takes its share of the
global batch.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from common.checkpoint import load_checkpoint, save_checkpoint
from common.device import autocast
from common.distributed import DistContext, all_reduce_sum, barrier, unwrap, wrap_ddp
from common.results import atomic_write_json, run_metadata
from how_i_met_your_bias.config import ExperimentConfig
from how_i_met_your_bias.model import build_unet, count_parameters, save_weights

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "ema.safetensors"
TRAIN_RECORD = "train.json"


def noise_scheduler(config: ExperimentConfig) -> DDPMScheduler:
    noise = config.noise
    return DDPMScheduler(
        num_train_timesteps=noise.num_train_timesteps,
        beta_schedule=noise.beta_schedule,
        beta_start=noise.beta_start,
        beta_end=noise.beta_end,
        prediction_type=noise.prediction_type,
    )


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the global batch of `step`: consecutive slices of one permutation per pass over the data."""
    per_pass = max(num_items // batch_size, 1)
    data_pass, position = divmod(step, per_pass)
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 7919 + data_pass))
    if batch_size > num_items:  # tiny sets: repeat the permutation
        order = order.repeat(math.ceil(batch_size / num_items))
    return order[position * batch_size:(position + 1) * batch_size]


def diffusion_loss(
    model: torch.nn.Module,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    null_class: int,
    label_dropout: float,
    generator: torch.Generator,
    precision: str,
) -> torch.Tensor:
    """MSE to the noise (or to v) with per-sample label dropout to the null class."""
    device = images.device
    n = images.shape[0]
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator).to(device)
    noise = torch.randn(images.shape, generator=generator).to(device)
    drop = (torch.rand(n, generator=generator) < label_dropout).to(device)
    labels = torch.where(drop, torch.full_like(labels, null_class), labels)
    noisy = scheduler.add_noise(images, noise, timesteps)
    with autocast(device, precision):
        prediction = model(noisy, timesteps, class_labels=labels).sample
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(images, noise, timesteps)
    else:
        target = noise
    return F.mse_loss(prediction.float(), target)


def train_diffusion(
    config: ExperimentConfig,
    dataset,
    run_dir: Path,
    device: torch.device,
    ctx: DistContext = DistContext(),
) -> dict:
    """Train (or resume) the model of `config` on `dataset`; write ema.safetensors and train.json."""
    train = config.train
    if train.batch_size % ctx.world_size:
        raise ValueError(f"train.batch_size={train.batch_size} must be divisible by the {ctx.world_size} processes")
    local_batch = train.batch_size // ctx.world_size
    scheduler = noise_scheduler(config)
    torch.manual_seed(config.seed)  # same initial weights in every process and every attempt
    unet = build_unet(config).to(device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, train.warmup_steps, train.steps)
    ema = EMAModel(unet.parameters(), decay=train.ema_decay, use_ema_warmup=True, power=2 / 3)
    start_step, elapsed, loss_sum, loss_count = 0, 0.0, 0.0, 0
    checkpoint_path = run_dir / CHECKPOINT
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, expected_hash=config.hash())
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        ema.load_state_dict(state["ema"])
        ema.to(device)
        start_step, elapsed = state["step"], state["elapsed_s"]
        log.info("%s: resuming diffusion training at step %d of %d", config.name, start_step, train.steps)
    model = wrap_ddp(unet, device, ctx)
    null_class = config.num_classes
    window_loss, window_count = 0.0, 0
    started = time.perf_counter() - elapsed
    bar = tqdm(range(start_step, train.steps), initial=start_step, total=train.steps, desc=f"train {config.name}",
               disable=not (ctx.is_main and sys.stderr.isatty()), dynamic_ncols=True)
    for step in bar:
        generator = step_generator(config.seed, step)
        torch.manual_seed(config.seed * 1_000_003 + step)  # UNet dropout
        indices = batch_indices(len(dataset), train.batch_size, config.seed, step)
        local = indices[ctx.rank * local_batch:(ctx.rank + 1) * local_batch].tolist()
        images, labels, _ = dataset.__getitems__(local)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        # Draw the global batch's randomness on every process and keep this process's share.
        sub = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)) + ctx.rank)
        loss = diffusion_loss(model, scheduler, images, labels, null_class=null_class, label_dropout=train.label_dropout,
                              generator=sub, precision=config.precision)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"diffusion loss became {loss.item()} at step {step}; lower train.lr or use precision fp32")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        window_loss += loss.item()
        window_count += 1
        done = step + 1
        if done % train.log_every == 0 or done == train.steps:
            mean = torch.tensor([window_loss, window_count], dtype=torch.float64)
            mean = all_reduce_sum(mean, ctx)
            window_mean = (mean[0] / mean[1]).item()
            loss_sum += window_mean * window_count
            loss_count += window_count
            bar.set_postfix(loss=f"{window_mean:.4f}")
            if ctx.is_main:
                log.info("%s: step %d/%d loss %.4f lr %.2e", config.name, done, train.steps, window_mean, lr_schedule.get_last_lr()[0])
            window_loss, window_count = 0.0, 0
        if done % train.checkpoint_every == 0 or done == train.steps:
            if ctx.is_main:
                save_checkpoint(checkpoint_path, {
                    "config_hash": config.hash(),
                    "step": done,
                    "elapsed_s": time.perf_counter() - started,
                    "unet": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_schedule": lr_schedule.state_dict(),
                    "ema": ema.state_dict(),
                })
            barrier(ctx)
    bar.close()
    wall_time = time.perf_counter() - started
    record = {}
    if ctx.is_main:
        ema_unet = build_unet(config)
        ema.copy_to(ema_unet.parameters())
        save_weights(run_dir / WEIGHTS, ema_unet, config)
        record = {
            "steps": train.steps,
            "images_seen": train.steps * train.batch_size,
            "final_window_loss": window_mean if train.steps else None,
            "parameters": count_parameters(unet),
            "block_out_channels": list(config.model.block_out_channels),
            "prediction_type": config.noise.prediction_type,
            "num_train_timesteps": config.noise.num_train_timesteps,
            "train_images": len(dataset),
            "train_images_per_s": train.steps * train.batch_size / max(wall_time, 1e-9),
            **run_metadata(config_hash=config.hash(), seed=config.seed, scale=config.scale,
                           hardware=_hardware(device, ctx), wall_time_s=wall_time),
        }
        atomic_write_json(run_dir / TRAIN_RECORD, record)
    barrier(ctx)
    return record


def _hardware(device: torch.device, ctx: DistContext) -> str:
    from common.device import describe_device

    text = describe_device(device)
    return f"{ctx.world_size} x {text}" if ctx.world_size > 1 else text
