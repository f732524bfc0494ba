"""SAMOVAR few-shot classifier: backbones, the shared inference network and the task objectives.

Per N-way task, the features of each class's labelled examples are averaged
and one amortized inference network maps that mean to a diagonal Gaussian
over the class weight vector w_c (same dimension D as the features):

- prior p(w_c | S) pools the support examples of class c.
- posterior q(w_c | S, Q) pools the support and the labelled query examples
  of class c through the same network.
- likelihood p(y | x, W) = softmax_c(scale * <f(x), w_c>), or the cosine of
  the two vectors times scale.

Objectives on the query set (all averaged per query example):

- samovar: -E_q[log p(y_Q | x_Q, W)] + beta * KL(q || p) / |Q|, with L
  reparameterised samples from q.
- versa: -log (1/L) sum_l p(y_Q | x_Q, w_l) with w_l from the prior, the
  Monte-Carlo predictive objective that the SAMOVAR paper shows collapses the
  prior variance.
- protonet: cross-entropy over negative squared Euclidean distances to the
  class means.

At test time W is sampled from the prior given the support only, and the class
probabilities are averaged over the samples.

NOTE: only the abstract of the paper (arXiv 2008.12037) was available. The
inference network layout, the residual mean, the log-variance clamp and
initial value, the cosine likelihood with a learnable scale, beta and L are
this repository's choices and constructor or function arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = ("conv4", "resnet12", "identity")
METHODS = ("samovar", "versa", "protonet")
LIKELIHOODS = ("cosine", "dot")
RESNET12_WIDTHS = (64, 160, 320, 640)


# ---------------------------------------------------------------- backbones


class Conv4(nn.Module):
    """Four blocks of 3x3 convolution, BatchNorm, ReLU and 2x2 max pooling, flattened.

    Each pooling floors the side, so 28 px inputs give hidden * 1 * 1 features
    (64 by default) and 84 px inputs give hidden * 5 * 5 (1600).
    """

    def __init__(self, in_channels: int = 3, hidden: int = 64, image_size: int = 84):
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(hidden, "hidden")
        check_positive_int(image_size, "image_size")
        if image_size < 16:
            raise ValueError(f"Conv4 needs image_size >= 16 for its four 2x2 poolings, got {image_size}")
        layers, channels = [], in_channels
        for _ in range(4):
            layers += [nn.Conv2d(channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = hidden
        self.layers = nn.Sequential(*layers)
        self.image_size = image_size
        side = image_size // 16  # four floor divisions by 2 equal one floor division by 16
        self.out_features = hidden * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.layers(x).flatten(1)
        if features.shape[1] != self.out_features:
            height, width = x.shape[-2:]
            raise ValueError(f"Conv4 was built for {self.image_size} px inputs ({self.out_features} features), "
                             f"but a {height}x{width} input gives {features.shape[1]}. Build it with image_size={height}")
        return features


class ResNet12Block(nn.Module):
    """Three 3x3 conv-BN layers with LeakyReLU(0.1), a 1x1 conv-BN shortcut, then 2x2 max pooling."""

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), self.negative_slope)
        out = F.leaky_relu(self.bn2(self.conv2(out)), self.negative_slope)
        out = self.bn3(self.conv3(out))
        out = F.leaky_relu(out + self.shortcut(x), self.negative_slope)
        return F.max_pool2d(out, 2)


class ResNet12(nn.Module):
    """The few-shot ResNet-12 of TADAM and MetaOptNet without DropBlock, ending in global average pooling."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = RESNET12_WIDTHS):
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        widths = tuple(widths)
        if len(widths) != 4:
            raise ValueError(f"ResNet12 needs four block widths, got {widths!r}")
        for width in widths:
            check_positive_int(width, "ResNet12 width")
        blocks, channels = [], in_channels
        for width in widths:
            blocks.append(ResNet12Block(channels, width))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.out_features = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"ResNet12 needs inputs of at least 16x16 for its four 2x2 poolings, got {tuple(x.shape[-2:])}")
        return F.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1)


class IdentityBackbone(nn.Module):
    """Pass-through for inputs that already are feature vectors (cached features, feature-space tests)."""

    def __init__(self, in_channels: int):
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        self.out_features = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.out_features:
            raise ValueError(f"the identity backbone expects inputs of shape (N, {self.out_features}), got {tuple(x.shape)}")
        return x


def build_backbone(name: str, in_channels: int, *, image_size: int = 84, conv4_hidden: int = 64,
                   resnet12_widths: Sequence[int] = RESNET12_WIDTHS) -> nn.Module:
    """Build the feature extractor `name`, which has an `out_features` attribute like every backbone here.

    `image_size` is used by conv4 only. For "identity", `in_channels` is the
    feature dimension.
    """
    if name == "conv4":
        return Conv4(in_channels, conv4_hidden, image_size)
    if name == "resnet12":
        return ResNet12(in_channels, resnet12_widths)
    if name == "identity":
        return IdentityBackbone(in_channels)
    raise ValueError(f"unknown backbone {name!r}, expected one of {BACKBONES}")


# ---------------------------------------------------------------- shared inference network


def class_means(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Average the feature vectors of each class: (N, D) features and (N,) labels give (n_way, D).

    Raises ValueError when a class has no example.
    """
    check_labels(labels, n_way, "labels")
    if features.dim() != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"expected features of shape (N, D) with N = {labels.shape[0]} labels, got {tuple(features.shape)}")
    counts = torch.bincount(labels, minlength=n_way)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(f"classes {empty} have no support example, but each of the {n_way} classes needs at least one")
    sums = features.new_zeros(n_way, features.shape[1]).index_add(0, labels, features)
    return sums / counts.unsqueeze(1).to(features.dtype)


class SharedInference(nn.Module):
    """Amortized inference network: a class's mean feature -> (mean, log-variance) of a Gaussian over w_c.

    The same instance serves the prior (support examples pooled) and the
    posterior (support plus labelled query examples pooled). Layout: an MLP
    trunk with ReLU over `hidden` widths (none when empty), then two linear
    heads of width D. With `residual_mean`, mean = pooled + head(trunk(pooled)),
    and the mean head starts at zero, so the untrained mean is the class mean
    (a prototype). The log-variance head starts at the constant
    `initial_logvar` (default 0, unit variance, like a freshly initialised VAE
    encoder), and its output is clamped to `logvar_clamp`, which stops the
    gradient outside that range and bounds how far the variance can collapse.
    """

    def __init__(self, features: int, hidden: Sequence[int] = (512,), logvar_clamp: Sequence[float] = (-10.0, 4.0),
                 residual_mean: bool = True, initial_logvar: float = 0.0):
        super().__init__()
        check_positive_int(features, "features")
        hidden = tuple(hidden)
        for width in hidden:
            check_positive_int(width, "inference hidden width")
        if len(logvar_clamp) != 2:
            raise ValueError(f"logvar_clamp must be a (min, max) pair, got {logvar_clamp!r}")
        low, high = (float(value) for value in logvar_clamp)
        if not low < high:
            raise ValueError(f"logvar_clamp must be (min, max) with min < max, got {tuple(logvar_clamp)!r}")
        if not low <= initial_logvar <= high:
            raise ValueError(f"initial_logvar {initial_logvar} lies outside logvar_clamp ({low}, {high})")

        layers, width_in = [], features
        for width in hidden:
            layers += [nn.Linear(width_in, width), nn.ReLU(inplace=True)]
            width_in = width
        self.trunk = nn.Sequential(*layers)
        self.mean_head = nn.Linear(width_in, features)
        self.logvar_head = nn.Linear(width_in, features)
        if residual_mean:
            nn.init.zeros_(self.mean_head.weight)
            nn.init.zeros_(self.mean_head.bias)
        nn.init.zeros_(self.logvar_head.weight)
        nn.init.constant_(self.logvar_head.bias, initial_logvar)

        self.features = features
        self.logvar_clamp = (low, high)
        self.residual_mean = residual_mean

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(pooled)
        mean = self.mean_head(hidden)
        if self.residual_mean:
            mean = pooled + mean
        logvar = self.logvar_head(hidden).clamp(*self.logvar_clamp)
        return mean, logvar

    def class_gaussians(self, features: torch.Tensor, labels: torch.Tensor, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool `features` per class and return (mean, logvar), each of shape (n_way, D)."""
        return self(class_means(features, labels, n_way))


def sample_weights(mean: torch.Tensor, logvar: torch.Tensor, samples: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw `samples` reparameterised class weight matrices: (n_way, D) -> (samples, n_way, D).

    A `generator` must live on the device of `mean`.
    """
    check_samples(samples)
    noise = torch.randn((samples, *mean.shape), generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise


def gaussian_kl(mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) between diagonal Gaussians, summed over every element (classes and dimensions)."""
    variance_ratio = torch.exp(logvar_q - logvar_p)
    mean_term = (mean_q - mean_p).pow(2) * torch.exp(-logvar_p)
    return 0.5 * (variance_ratio + mean_term - 1.0 - (logvar_q - logvar_p)).sum()


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Negative squared Euclidean distances, (M, D) and (n_way, D) -> (M, n_way)."""
    return -(features.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(-1)


# ---------------------------------------------------------------- model


class SamovarModel(nn.Module):
    """Backbone, shared inference network and likelihood scale of one few-shot method.

    `method` names the objective a trainer should use ("samovar", "versa" or
    "protonet"). A protonet model has no inference network and no scale.
    `likelihood` "cosine" compares L2-normalised features and weights, "dot"
    the raw vectors. Both are multiplied by `scale` (learnable when
    `learn_scale`). The default is cosine with a learnable scale starting at
    10. With "dot", pick a smaller scale, for example 1 / out_features,
    because 10 suits cosines in [-1, 1].

    `SamovarModel(**model.config_dict())` rebuilds the same architecture.
    """

    def __init__(self, method: str = "samovar", backbone: str = "conv4", in_channels: int = 3, image_size: int = 84,
                 conv4_hidden: int = 64, resnet12_widths: Sequence[int] = RESNET12_WIDTHS,
                 inference_hidden: Sequence[int] = (512,), logvar_clamp: Sequence[float] = (-10.0, 4.0),
                 residual_mean: bool = True, initial_logvar: float = 0.0, likelihood: str = "cosine",
                 scale: float = 10.0, learn_scale: bool = True):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}, expected one of {METHODS}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}, expected one of {LIKELIHOODS}")
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")

        self.method = method
        self.backbone_name = backbone
        self.backbone = build_backbone(backbone, in_channels, image_size=image_size, conv4_hidden=conv4_hidden,
                                       resnet12_widths=resnet12_widths)
        self.out_features = self.backbone.out_features
        self.inference: SharedInference | None = None
        if method != "protonet":
            self.inference = SharedInference(self.out_features, inference_hidden, logvar_clamp, residual_mean, initial_logvar)
            log_scale = torch.tensor(math.log(scale))
            if learn_scale:
                self.log_scale = nn.Parameter(log_scale)
            else:
                self.register_buffer("log_scale", log_scale)

        self._config = {
            "method": method, "backbone": backbone, "in_channels": in_channels, "image_size": image_size,
            "conv4_hidden": conv4_hidden, "resnet12_widths": list(resnet12_widths),
            "inference_hidden": list(inference_hidden), "logvar_clamp": [float(value) for value in logvar_clamp],
            "residual_mean": residual_mean, "initial_logvar": float(initial_logvar), "likelihood": likelihood,
            "scale": float(scale), "learn_scale": learn_scale,
        }

    def config_dict(self) -> dict:
        """Constructor arguments (JSON-ready) that fix the architecture, to compare with a checkpoint's."""
        return {key: list(value) if isinstance(value, list) else value for key, value in self._config.items()}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def logits(self, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Class scores of (M, D) features under (L, n_way, D) sampled weights, as (L, M, n_way), in one einsum."""
        if self.likelihood == "cosine":
            features = F.normalize(features, dim=-1)
            weights = F.normalize(weights, dim=-1)
        return self.scale * torch.einsum("md,lnd->lmn", features, weights)

    @property
    def likelihood(self) -> str:
        return self._config["likelihood"]

    def require_inference(self, objective: str) -> SharedInference:
        if self.inference is None:
            raise ValueError(f"{objective} needs an inference network, but this model was built with method={self.method!r}. "
                             "Build it with method='samovar' or 'versa'")
        return self.inference


# ---------------------------------------------------------------- argument checks


def check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_samples(samples) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1 (the number of weight samples L), got {samples!r}")


def check_labels(labels: torch.Tensor, n_way: int, name: str) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of class indices, got {labels!r}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"{name} must have an integer dtype, got {labels.dtype}. Convert them with .long()")
    outside = labels[(labels < 0) | (labels >= n_way)]
    if outside.numel():
        raise ValueError(f"{name} contains labels outside [0, {n_way}): {sorted(set(outside.tolist()))}. "
                         f"Relabel each task's classes as 0..{n_way - 1}")


def check_task(support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor | None,
               n_way: int, samples: int | None = None, beta: float | None = None) -> None:
    """Raise ValueError naming the first invalid task argument."""
    if isinstance(n_way, bool) or not isinstance(n_way, int) or n_way < 2:
        raise ValueError(f"n_way must be an integer >= 2, got {n_way!r}")
    if samples is not None:
        check_samples(samples)
    if beta is not None and not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0 (the KL weight), got {beta!r}")
    check_labels(support_y, n_way, "support_y")
    if support_x.shape[0] != support_y.shape[0]:
        raise ValueError(f"support_x has {support_x.shape[0]} examples but support_y has {support_y.shape[0]} labels")
    if query_x.shape[0] == 0:
        raise ValueError("query_x is empty, but each task needs at least one query example")
    if support_x.shape[1:] != query_x.shape[1:]:
        raise ValueError(f"support_x examples have shape {tuple(support_x.shape[1:])} but query_x examples "
                         f"have {tuple(query_x.shape[1:])}")
    if query_y is not None:
        check_labels(query_y, n_way, "query_y")
        if query_x.shape[0] != query_y.shape[0]:
            raise ValueError(f"query_x has {query_x.shape[0]} examples but query_y has {query_y.shape[0]} labels")


# ---------------------------------------------------------------- objectives


def split_features(model: SamovarModel, support_x: torch.Tensor, query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the backbone once on support and query together, so in training mode BatchNorm normalises over the whole task."""
    features = model.features(torch.cat([support_x, query_x]))
    return features[: support_x.shape[0]], features[support_x.shape[0]:]


def mean_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities averaged over the sample axis: (L, M, n_way) -> (M, n_way)."""
    return torch.softmax(logits, dim=-1).mean(0)


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (scores.argmax(-1) == labels).float().mean()


def samovar_loss(model: SamovarModel, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                 query_y: torch.Tensor, n_way: int, beta: float = 1.0, samples: int = 10,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Compute the negative ELBO on the query labels, per query example.

    loss = mean over L posterior samples and M query examples of
    -log p(y | x, w) + beta * KL(q || p) / M, where the KL is summed over
    classes and dimensions, so the loss is the task ELBO divided by M.
    `accuracy` is measured as at test time: probabilities averaged over L
    samples from the prior, which saw the support only. Returned keys: loss
    (with gradient), then detached: accuracy, prior_variance (mean of
    exp(prior logvar)), prior_mean_square (mean of the squared prior means,
    the scale the variance compares with), nll and kl (the unweighted sum).
    """
    check_task(support_x, support_y, query_x, query_y, n_way, samples, beta)
    inference = model.require_inference("samovar_loss")
    support_features, query_features = split_features(model, support_x, query_x)

    prior_mean, prior_logvar = inference.class_gaussians(support_features, support_y, n_way)
    posterior_mean, posterior_logvar = inference.class_gaussians(
        torch.cat([support_features, query_features]), torch.cat([support_y, query_y]), n_way)

    weights = sample_weights(posterior_mean, posterior_logvar, samples, generator)
    logits = model.logits(query_features, weights)
    nll = F.cross_entropy(logits.reshape(-1, n_way), query_y.repeat(samples))  # rows are sample-major
    kl = gaussian_kl(posterior_mean, posterior_logvar, prior_mean, prior_logvar)
    loss = nll + beta * kl / query_x.shape[0]

    with torch.no_grad():
        prior_weights = sample_weights(prior_mean, prior_logvar, samples, generator)
        probabilities = mean_probabilities(model.logits(query_features, prior_weights))
    return {
        "loss": loss,
        "accuracy": accuracy(probabilities, query_y),
        "prior_variance": prior_logvar.detach().exp().mean(),
        "prior_mean_square": prior_mean.detach().pow(2).mean(),
        "nll": nll.detach(),
        "kl": kl.detach(),
    }


def versa_loss(model: SamovarModel, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
               query_y: torch.Tensor, n_way: int, samples: int = 10,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Compute the VERSA-style Monte-Carlo predictive loss with weights sampled from the prior, without a KL term.

    loss = -mean over query of log((1/L) sum_l p(y | x, w_l)), evaluated as
    logsumexp over samples minus log L. Returned keys: loss, then detached:
    accuracy (argmax of the same sample-averaged probabilities) and
    prior_variance.
    """
    check_task(support_x, support_y, query_x, query_y, n_way, samples)
    inference = model.require_inference("versa_loss")
    support_features, query_features = split_features(model, support_x, query_x)

    prior_mean, prior_logvar = inference.class_gaussians(support_features, support_y, n_way)
    weights = sample_weights(prior_mean, prior_logvar, samples, generator)
    log_probabilities = torch.log_softmax(model.logits(query_features, weights), dim=-1)
    log_predictive = torch.logsumexp(log_probabilities, dim=0) - math.log(samples)  # (M, n_way)
    loss = -log_predictive.gather(1, query_y.unsqueeze(1)).mean()
    return {
        "loss": loss,
        "accuracy": accuracy(log_predictive.detach(), query_y),
        "prior_variance": prior_logvar.detach().exp().mean(),
        "prior_mean_square": prior_mean.detach().pow(2).mean(),
    }


def protonet_loss(model: SamovarModel, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                  query_y: torch.Tensor, n_way: int) -> dict[str, torch.Tensor]:
    """Compute the prototypical-network cross-entropy over negative squared Euclidean distances to the class means.

    Returned keys: loss, accuracy and prior_variance, which is NaN because
    this method has no prior.
    """
    check_task(support_x, support_y, query_x, query_y, n_way)
    support_features, query_features = split_features(model, support_x, query_x)
    logits = prototype_logits(query_features, class_means(support_features, support_y, n_way))
    return {
        "loss": F.cross_entropy(logits, query_y),
        "accuracy": accuracy(logits.detach(), query_y),
        "prior_variance": torch.tensor(float("nan"), device=logits.device),
    }


def task_loss(model: SamovarModel, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
              query_y: torch.Tensor, n_way: int, beta: float = 1.0, samples: int = 10,
              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Call the objective named by `model.method`. versa ignores beta, and protonet ignores beta and samples."""
    if model.method == "samovar":
        return samovar_loss(model, support_x, support_y, query_x, query_y, n_way, beta, samples, generator)
    if model.method == "versa":
        return versa_loss(model, support_x, support_y, query_x, query_y, n_way, samples, generator)
    return protonet_loss(model, support_x, support_y, query_x, query_y, n_way)


@torch.no_grad()
def predict(model: SamovarModel, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, n_way: int,
            samples: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Predict query class probabilities, (M, n_way), from the support set only.

    For samovar and versa models, `samples` weight matrices are drawn from the
    prior in one batch and the class probabilities are averaged over them. A
    protonet model returns the softmax over negative squared distances. The
    caller sets train or eval mode, which decides BatchNorm's statistics.
    """
    check_task(support_x, support_y, query_x, None, n_way, samples)
    support_features, query_features = split_features(model, support_x, query_x)
    if model.method == "protonet":
        return torch.softmax(prototype_logits(query_features, class_means(support_features, support_y, n_way)), dim=-1)

    prior_mean, prior_logvar = model.require_inference("predict").class_gaussians(support_features, support_y, n_way)
    weights = sample_weights(prior_mean, prior_logvar, samples, generator)
    return mean_probabilities(model.logits(query_features, weights))
