"""Training of the source backbone and of each target domain with one method.

Methods for a target domain d (the backbone filters are shared and frozen
except by fine-tuning):

- feature: a new head only; the domain's BatchNorms keep the source statistics;
- bn: the domain's BatchNorms and head;
- modulation, series, parallel: the domain's adapters, BatchNorms and head
  (the model must have been built with that adapter);
- finetune: a copy of the whole network.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F

from modulation_adapters.models import DomainBatchNorm, ResNet26

log = logging.getLogger(__name__)
METHODS = ("feature", "bn", "modulation", "series", "parallel", "finetune")


def copy_source_batchnorm(model: ResNet26, domain: int, source: int = 0) -> None:
    """Start the BatchNorms of `domain` from those of the source domain."""
    for module in model.modules():
        if isinstance(module, DomainBatchNorm):
            module.norms[domain].load_state_dict(module.norms[source].state_dict())


def trainable_parameters(model: ResNet26, method: str, domain: int) -> list[torch.nn.Parameter]:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method in ("modulation", "series", "parallel") and model.adapter != method:
        raise ValueError(f"method {method!r} needs a model built with adapter={method!r}, got adapter={model.adapter!r}")
    if method == "finetune":
        return list(model.parameters())
    if method == "feature":
        return list(model.heads[domain].parameters())
    return model.domain_parameters(domain)


def accuracy(model: ResNet26, images: torch.Tensor, targets: torch.Tensor, domain: int, batch_size: int = 500) -> float:
    model.eval()
    model.set_domain(domain)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            correct += (model(images[start:start + batch_size]).argmax(1) == targets[start:start + batch_size]).sum().item()
    return 100.0 * correct / len(images)


def train_domain(model: ResNet26, images: torch.Tensor, targets: torch.Tensor, domain: int, method: str, *, epochs: int,
                 lr: float, batch_size: int, weight_decay: float = 5e-4, seed: int = 0) -> ResNet26:
    """Train `method` on one domain in place (fine-tuning trains and returns a copy)."""
    if method == "finetune":
        model = copy.deepcopy(model)
    parameters = trainable_parameters(model, method, domain)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * max(len(images) // batch_size, 1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    model.set_domain(domain)
    for epoch in range(epochs):
        model.train()
        if method == "feature":
            model.eval()  # the source BatchNorm statistics stay as they are
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images) - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(model(images[index]), targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log.info("domain %d %s: epoch %d/%d loss %.4f", domain, method, epoch + 1, epochs, loss.item())
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
