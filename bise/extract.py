"""BISE: learn channel gates on a frozen vanilla network, then optionally fine-tune (+FT).

Glossary (name -> symbol):
    gamma               weight of I(b_hat; b) in J = L_r + gamma * I(b_hat; b)
    tau                 gate temperature, halved after each stage
    aux                 C_aux, the adversarial bias classifier on the bottleneck features z

The whole procedure is a fixed list of steps (C_aux pre-training, gate
epochs, C_aux refinements, fine-tuning epochs). After each step the state is
checkpointed, and a restarted run continues at the next step. Every step's
randomness is a function of (seed, step), so a resumed run ends with the same
numbers as an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import torch

from bise.aux import train_aux
from bise.config import ExperimentConfig
from bise.engine import classification_loss, evaluate_accuracy, progress
from bise.losses import batch_mutual_information
from bise.models import BiasClassifier, SimpleConvNet
from common.checkpoint import load_checkpoint, save_checkpoint
from common.data.biased_mnist import NUM_CLASSES, BiasedMNISTSplits
from common.device import autocast
from common.distributed import (
    DistContext,
    all_gather_tensor,
    all_gather_with_grad,
    barrier,
    make_loader,
    unwrap,
    wrap_ddp,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Step:
    kind: str  # "aux", "gates" or "finetune"
    stage: int  # index of the temperature stage (aux and gates)
    epoch: int  # gate epoch counted over all stages, or fine-tuning epoch
    tau: float


def temperatures(config: ExperimentConfig) -> list[float]:
    """tau_start, tau_start * factor, ... while tau stays above tau_min."""
    gates = config.gates
    taus, tau = [], gates.tau_start
    while tau > gates.tau_min:
        taus.append(tau)
        tau *= gates.tau_factor
    if not taus:
        raise ValueError(f"gates.tau_start={gates.tau_start} is not above gates.tau_min={gates.tau_min}; no gate epoch would run")
    return taus


def build_steps(config: ExperimentConfig) -> list[Step]:
    taus = temperatures(config)
    steps = []
    gate_epoch = 0
    for stage, tau in enumerate(taus):
        steps.append(Step("aux", stage, -1, tau))  # pre-training before stage 0, refinement after each halving
        for _ in range(config.gates.epochs_per_tau):
            steps.append(Step("gates", stage, gate_epoch, tau))
            gate_epoch += 1
    steps.extend(Step("finetune", len(taus) - 1, epoch, taus[-1]) for epoch in range(config.finetune.epochs))
    return steps


class BiseRun:
    """State and steps of one BISE run on a frozen vanilla model."""

    def __init__(
        self,
        config: ExperimentConfig,
        vanilla: SimpleConvNet,
        splits: BiasedMNISTSplits,
        run_dir: Path,
        device: torch.device,
        ctx: DistContext,
    ):
        self.config = config
        self.splits = splits
        self.run_dir = run_dir
        self.device = device
        self.ctx = ctx
        self.steps = build_steps(config)

        self.model = copy.deepcopy(vanilla).to(device).eval()
        self.model.set_gates_active(True)
        for parameter in self.model.weight_parameters():
            parameter.requires_grad_(False)
        # Wrapped once: each DistributedDataParallel registers its own gradient hooks on the parameters.
        self.gate_network = wrap_ddp(self.model, device, ctx)
        self.gate_optimizer = torch.optim.SGD(
            self.model.gate_parameters(), lr=config.gates.lr, momentum=config.gates.momentum, weight_decay=config.gates.weight_decay
        )
        torch.manual_seed(config.seed + 1)
        self.aux = BiasClassifier(self.model.widths[-1], NUM_CLASSES, config.aux.hidden).to(device)
        # C_aux reads at most aux.max_samples training images, a fixed seeded subset.
        order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(config.seed))
        self.aux_indices = order[: config.aux.max_samples] if config.aux.max_samples else order

        self.finetuned: SimpleConvNet | None = None
        self.finetune_network: torch.nn.Module | None = None
        self.finetune_optimizer = None
        self.next_step = 0
        self.history: list[dict] = []
        self.best = {"gates": None, "finetune": None}  # selected states with their validation accuracy

    # ------------------------------------------------------------ checkpoint

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def state_dict(self) -> dict:
        return {
            "config_hash": self.config.hash(),
            "next_step": self.next_step,
            "model": self.model.state_dict(),
            "gate_optimizer": self.gate_optimizer.state_dict(),
            "aux": self.aux.state_dict(),
            "finetuned": None if self.finetuned is None else self.finetuned.state_dict(),
            "finetune_optimizer": None if self.finetune_optimizer is None else self.finetune_optimizer.state_dict(),
            "history": self.history,
            "best": self.best,
        }

    def load_state_dict(self, state: dict) -> None:
        self.next_step = state["next_step"]
        self.model.load_state_dict(state["model"])
        if self.next_step > 0:
            self.model.set_tau(self.steps[self.next_step - 1].tau)  # tau is not part of the state dict
        self.gate_optimizer.load_state_dict(state["gate_optimizer"])
        self.aux.load_state_dict(state["aux"])
        if state["finetuned"] is not None:
            self._start_finetune(masks=None)
            self.finetuned.load_state_dict(state["finetuned"])
            self.finetune_optimizer.load_state_dict(state["finetune_optimizer"])
        self.history = state["history"]
        self.best = state["best"]

    def resume(self) -> None:
        if self.checkpoint_path.exists():
            self.load_state_dict(load_checkpoint(self.checkpoint_path, self.config.hash()))
            log.info("resuming BISE at step %d of %d (%s)", self.next_step, len(self.steps), self.checkpoint_path)

    def save(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.checkpoint_path, self.state_dict())
        barrier(self.ctx)

    # ------------------------------------------------------------------ run

    def run(self) -> None:
        self.resume()
        while self.next_step < len(self.steps):
            step = self.steps[self.next_step]
            self.model.set_tau(step.tau)
            if step.kind == "aux":
                self.train_aux_step(step)
            elif step.kind == "gates":
                self.gate_epoch(step)
            else:
                self.finetune_epoch(step)
            self.next_step += 1
            self.save()

    def train_aux_step(self, step: Step) -> None:
        cfg = self.config.aux
        epochs = cfg.pretrain_epochs if step.stage == 0 else cfg.refine_epochs
        loss = train_aux(
            self.aux, self.model, self.splits.train, self.aux_indices,
            epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            seed=self.config.seed * 1000 + self.next_step, device=self.device, precision=self.config.precision,
            feature_batch_size=self.config.eval_batch_size, cache_features=cfg.cache_features,
        )
        if self.ctx.is_main:
            log.info("C_aux %s at tau %.4g: %d epochs, loss %.4f", "pre-training" if step.stage == 0 else "refinement", step.tau, epochs, loss)

    def gate_epoch(self, step: Step) -> None:
        cfg, data = self.config.gates, self.config.data
        network = self.gate_network
        network.eval()  # BatchNorm statistics stay those of the vanilla model
        self.aux.eval()
        for parameter in self.aux.parameters():
            parameter.requires_grad_(False)
        loader = make_loader(self.splits.train, cfg.batch_size, shuffle=True, seed=self.config.seed + 7, epoch=step.epoch, ctx=self.ctx)
        totals = {"loss_ce": 0.0, "mi": 0.0, "batches": 0}
        for index, (images, targets, bias) in enumerate(progress(loader, self.ctx, desc=f"gates epoch {step.epoch + 1}")):
            if cfg.max_steps_per_epoch is not None and index >= cfg.max_steps_per_epoch:
                break
            images, targets, bias = (tensor.to(self.device, non_blocking=True) for tensor in (images, targets, bias))
            with autocast(self.device, self.config.precision):
                logits, z = network(images, return_features=True)
            loss_ce = classification_loss(logits, targets, bias, data.rho, cfg.reweight)
            loss = loss_ce
            mi = torch.zeros((), device=self.device)
            if cfg.gamma > 0:
                # Under DDP the MI is estimated on the global batch, as on one device.
                bias_logits = all_gather_with_grad(self.aux(z.float()), self.ctx)
                batch_bias = all_gather_tensor(bias, self.ctx)
                batch_targets = all_gather_tensor(targets, self.ctx)
                if cfg.mi_conflicting_only:
                    selected = batch_bias != batch_targets
                else:
                    selected = torch.ones_like(batch_bias, dtype=torch.bool)
                mi = batch_mutual_information(bias_logits[selected], batch_bias[selected], NUM_CLASSES)
                loss = loss + cfg.gamma * mi
            self.gate_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.gate_optimizer.step()
            totals["loss_ce"] += loss_ce.item()
            totals["mi"] += mi.item()
            totals["batches"] += 1
        for parameter in self.aux.parameters():
            parameter.requires_grad_(True)

        masks = self.model.keep_masks()
        kept = sum(int(mask.sum()) for mask in masks)
        total = sum(mask.numel() for mask in masks)
        record = {
            "kind": "gates",
            "epoch": step.epoch + 1,
            "tau": step.tau,
            "loss_ce": totals["loss_ce"] / max(totals["batches"], 1),
            "mi": totals["mi"] / max(totals["batches"], 1),
            "channels_kept": kept,
            "channels_total": total,
        }
        if self.splits.val is not None:
            record["val"] = evaluate_accuracy(self.model, self.splits.val, self.device, self.config.precision, self.config.eval_batch_size)
        self._select("gates", record, {"masks": [mask.clone() for mask in masks]})
        self.history.append(record)
        if self.ctx.is_main:
            val_text = f", val unbiased {record['val']['unbiased']:.2f}%" if "val" in record else ""
            log.info(
                "gate epoch %d (tau %.4g): L %.4f, MI %.4f, channels kept %d/%d%s",
                step.epoch + 1, step.tau, record["loss_ce"], record["mi"], kept, total, val_text,
            )

    def _select(self, phase: str, record: dict, payload: dict) -> None:
        """Keep the best-on-validation state of `phase`, or the last one without a validation set."""
        score = record["val"]["unbiased"] if "val" in record else None
        current = self.best[phase]
        if current is None or score is None or score > current["val_unbiased"]:
            self.best[phase] = {"val_unbiased": score, "epoch": record["epoch"], **payload}

    # ------------------------------------------------------------- finetune

    def selected_masks(self) -> list[torch.Tensor]:
        return self.best["gates"]["masks"]

    def _start_finetune(self, masks: list[torch.Tensor] | None) -> None:
        cfg = self.config.finetune
        self.finetuned = copy.deepcopy(self.model)
        if masks is not None:
            self.finetuned.set_keep_masks(masks)
        for parameter in self.finetuned.gate_parameters():
            parameter.requires_grad_(False)
        for parameter in self.finetuned.weight_parameters():
            parameter.requires_grad_(True)
        self.finetune_network = wrap_ddp(self.finetuned, self.device, self.ctx)
        self.finetune_optimizer = torch.optim.SGD(
            self.finetuned.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )

    def finetune_epoch(self, step: Step) -> None:
        cfg = self.config.finetune
        if self.finetuned is None:
            self._start_finetune(self.selected_masks())
        network = self.finetune_network
        # NOTE: BatchNorm statistics stay frozen while fine-tuning, as during gate training.
        network.eval()
        loader = make_loader(self.splits.train, cfg.batch_size, shuffle=True, seed=self.config.seed + 11, epoch=step.epoch, ctx=self.ctx)
        loss_sum, batches = 0.0, 0
        for index, (images, targets, bias) in enumerate(progress(loader, self.ctx, desc=f"finetune epoch {step.epoch + 1}")):
            if cfg.max_steps_per_epoch is not None and index >= cfg.max_steps_per_epoch:
                break
            images, targets, bias = (tensor.to(self.device, non_blocking=True) for tensor in (images, targets, bias))
            with autocast(self.device, self.config.precision):
                logits = network(images)
            loss = classification_loss(logits, targets, bias, self.config.data.rho, reweight=True)
            self.finetune_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.finetune_optimizer.step()
            loss_sum += loss.item()
            batches += 1
        record = {"kind": "finetune", "epoch": step.epoch + 1, "loss_ce": loss_sum / max(batches, 1)}
        if self.splits.val is not None:
            record["val"] = evaluate_accuracy(self.finetuned, self.splits.val, self.device, self.config.precision, self.config.eval_batch_size)
        state = {name: tensor.detach().cpu().clone() for name, tensor in unwrap(network).state_dict().items()}
        self._select("finetune", record, {"state": state})
        self.history.append(record)
        if self.ctx.is_main:
            val_text = f", val unbiased {record['val']['unbiased']:.2f}%" if "val" in record else ""
            log.info("fine-tuning epoch %d: L_r %.4f%s", step.epoch + 1, record["loss_ce"], val_text)

    # -------------------------------------------------------------- results

    def selected_gated_model(self) -> SimpleConvNet:
        """Return a copy of the frozen vanilla network with the selected gates fixed."""
        model = copy.deepcopy(self.model)
        model.set_keep_masks(self.selected_masks())
        return model.eval()

    def selected_finetuned_model(self) -> SimpleConvNet | None:
        if self.best["finetune"] is None:
            return None
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.best["finetune"]["state"])
        model.set_keep_masks(self.selected_masks())
        return model.eval()
