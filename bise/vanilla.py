"""Vanilla training: plain cross-entropy on the biased training set."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from bise.config import ExperimentConfig
from bise.engine import build_model, evaluate_accuracy, progress
from bise.models import SimpleConvNet
from common.checkpoint import load_checkpoint, save_checkpoint
from common.data.biased_mnist import BiasedMNIST
from common.device import autocast
from common.distributed import DistContext, barrier, make_loader, unwrap, wrap_ddp

log = logging.getLogger(__name__)


def train_vanilla(
    config: ExperimentConfig,
    train_set: BiasedMNIST,
    run_dir: Path,
    device: torch.device,
    ctx: DistContext,
    val_set: BiasedMNIST | None = None,
) -> SimpleConvNet:
    """Train SimpleConvNet with SGD and step decay, resuming from run_dir/checkpoint.pt.

    The last epoch's model is returned; `val_set` is only evaluated for the log.
    """
    recipe = config.train
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    for parameter in model.gate_parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(recipe.milestones), gamma=recipe.lr_decay)

    checkpoint_path = run_dir / "checkpoint.pt"
    start_epoch = 0
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, config.hash())
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"]
        log.info("resuming vanilla training from epoch %d (%s)", start_epoch, checkpoint_path)

    network = wrap_ddp(model, device, ctx)
    for epoch in range(start_epoch, recipe.epochs):
        network.train()
        loader = make_loader(train_set, recipe.batch_size, shuffle=True, seed=config.seed, epoch=epoch, ctx=ctx)
        loss_sum, correct, seen = 0.0, 0, 0
        for step, (images, targets, _) in enumerate(progress(loader, ctx, desc=f"vanilla epoch {epoch + 1}")):
            if recipe.max_steps_per_epoch is not None and step >= recipe.max_steps_per_epoch:
                break
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with autocast(device, config.precision):
                logits = network(images)
            loss = F.cross_entropy(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(targets)
        scheduler.step()
        if ctx.is_main:
            val_text = ""
            if val_set is not None:
                val = evaluate_accuracy(model, val_set, device, config.precision, config.eval_batch_size)
                val_text = f", val unbiased {val['unbiased']:.2f}%"
            log.info(
                "vanilla epoch %d/%d: loss %.4f, train accuracy %.2f%%, lr %.4g%s",
                epoch + 1, recipe.epochs, loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), scheduler.get_last_lr()[0], val_text,
            )
            save_checkpoint(
                checkpoint_path,
                {
                    "config_hash": config.hash(),
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                },
            )
        barrier(ctx)
    return unwrap(network)
