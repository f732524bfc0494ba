"""SAMOVAR model: backbones, the shared inference network, the three objectives, prediction and argument checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from shared_amortized_vi.model import (
    Conv4,
    ResNet12,
    SamovarModel,
    SharedInference,
    build_backbone,
    gaussian_kl,
    predict,
    protonet_loss,
    prototype_logits,
    samovar_loss,
    sample_weights,
    task_loss,
    versa_loss,
)

N_WAY, SHOT, QUERY = 3, 2, 2


def image_task(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 3-way 2-shot task of random 1x28x28 images with 2 queries per class."""
    generator = torch.Generator().manual_seed(seed)
    support_y = torch.arange(N_WAY).repeat_interleave(SHOT)
    query_y = torch.arange(N_WAY).repeat_interleave(QUERY)
    support_x = torch.randn(len(support_y), 1, 28, 28, generator=generator)
    query_x = torch.randn(len(query_y), 1, 28, 28, generator=generator)
    return support_x, support_y, query_x, query_y


def conv4_model(method: str = "samovar", **options) -> SamovarModel:
    torch.manual_seed(0)
    return SamovarModel(method=method, backbone="conv4", in_channels=1, image_size=28, conv4_hidden=8,
                        inference_hidden=(16,), **options)


def feature_task(generator: torch.Generator, n_way: int = 5, dim: int = 8, shot: int = 2, query: int = 5,
                 spread: float = 2.0, noise: float = 0.5):
    """A task of Gaussian clusters in feature space, with class centres drawn anew per task."""
    centres = spread * torch.randn(n_way, dim, generator=generator)
    support_y = torch.arange(n_way).repeat_interleave(shot)
    query_y = torch.arange(n_way).repeat_interleave(query)
    support_x = centres[support_y] + noise * torch.randn(len(support_y), dim, generator=generator)
    query_x = centres[query_y] + noise * torch.randn(len(query_y), dim, generator=generator)
    return support_x, support_y, query_x, query_y


# ---------------------------------------------------------------- backbones and shapes


def test_conv4_gives_64_features_at_28_px():
    backbone = Conv4(in_channels=1, image_size=28)
    assert backbone.out_features == 64
    assert backbone(torch.randn(2, 1, 28, 28)).shape == (2, 64)


def test_conv4_gives_1600_features_at_84_px():
    backbone = Conv4(in_channels=3, image_size=84)
    assert backbone.out_features == 1600
    assert backbone(torch.randn(1, 3, 84, 84)).shape == (1, 1600)


def test_conv4_hidden_width_sets_features():
    backbone = Conv4(in_channels=1, hidden=8, image_size=28)
    assert backbone.out_features == 8
    assert backbone(torch.randn(2, 1, 28, 28)).shape == (2, 8)


def test_conv4_rejects_other_image_size():
    backbone = Conv4(in_channels=1, image_size=28)
    with pytest.raises(ValueError, match="image_size=84"):
        backbone(torch.randn(1, 1, 84, 84))


def test_resnet12_gives_640_features():
    backbone = ResNet12(in_channels=3)
    assert backbone.out_features == 640
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 640)


def test_build_backbone_names():
    assert isinstance(build_backbone("conv4", 1, image_size=28), Conv4)
    assert isinstance(build_backbone("resnet12", 3, resnet12_widths=(4, 4, 4, 6)), ResNet12)
    assert build_backbone("identity", 7).out_features == 7


def test_build_backbone_rejects_unknown_name():
    with pytest.raises(ValueError, match="'vgg16'.*conv4"):
        build_backbone("vgg16", 3)


def test_class_gaussians_shapes():
    inference = SharedInference(features=6, hidden=(4,))
    labels = torch.tensor([0, 1, 2, 3, 0])
    mean, logvar = inference.class_gaussians(torch.randn(5, 6), labels, n_way=4)
    assert mean.shape == (4, 6)
    assert logvar.shape == (4, 6)


def test_logvar_is_clamped():
    inference = SharedInference(features=3, hidden=(), logvar_clamp=(-1.0, 1.0))
    with torch.no_grad():
        inference.logvar_head.bias.fill_(50.0)
    _, logvar = inference(torch.randn(2, 3))
    assert torch.all(logvar == 1.0)


def test_untrained_mean_is_the_class_mean():
    inference = SharedInference(features=4, hidden=(8,), residual_mean=True)
    features = torch.randn(4, 4)
    labels = torch.tensor([0, 0, 1, 1])
    mean, logvar = inference.class_gaussians(features, labels, n_way=2)
    torch.testing.assert_close(mean, torch.stack([features[:2].mean(0), features[2:].mean(0)]))
    torch.testing.assert_close(logvar, torch.zeros(2, 4))


def test_logits_shape_and_values():
    model = SamovarModel(backbone="identity", in_channels=5)
    features = torch.randn(7, 5)
    weights = torch.randn(4, 3, 5)
    logits = model.logits(features, weights)
    assert logits.shape == (4, 7, 3)
    expected = model.scale * F.normalize(features, dim=-1) @ F.normalize(weights[2], dim=-1).T
    torch.testing.assert_close(logits[2], expected)


def test_dot_likelihood_scales_raw_products():
    model = SamovarModel(backbone="identity", in_channels=5, likelihood="dot", scale=0.5, learn_scale=False)
    features = torch.randn(7, 5)
    weights = torch.randn(2, 3, 5)
    torch.testing.assert_close(model.logits(features, weights)[1], 0.5 * features @ weights[1].T)
    assert "log_scale" not in dict(model.named_parameters())


def test_loss_dicts_have_logged_keys():
    model = conv4_model()
    task = image_task()
    samovar = samovar_loss(model, *task, N_WAY, beta=1.0, samples=3)
    versa = versa_loss(model, *task, N_WAY, samples=3)
    assert set(samovar) == {"loss", "accuracy", "prior_variance", "prior_mean_square", "nll", "kl"}
    assert set(versa) == {"loss", "accuracy", "prior_variance", "prior_mean_square"}
    for result in (samovar, versa):
        assert result["loss"].dim() == 0
        assert result["loss"].requires_grad
        assert 0.0 <= result["accuracy"].item() <= 1.0
        assert result["prior_variance"].item() > 0


def test_samovar_loss_is_nll_plus_scaled_kl():
    model = conv4_model()
    task = image_task()
    beta = 0.3
    result = samovar_loss(model, *task, N_WAY, beta=beta, samples=2)
    queries = task[2].shape[0]
    torch.testing.assert_close(result["loss"].detach(), result["nll"] + beta * result["kl"] / queries)


def test_prior_variance_is_mean_of_exp_logvar():
    model = SamovarModel(backbone="identity", in_channels=4, inference_hidden=(), initial_logvar=-1.5)
    support_x, support_y, query_x, query_y = feature_task(torch.Generator().manual_seed(0), n_way=3, dim=4)
    result = versa_loss(model, support_x, support_y, query_x, query_y, 3, samples=2)
    torch.testing.assert_close(result["prior_variance"], torch.tensor(math.exp(-1.5)))


# ---------------------------------------------------------------- KL


def test_kl_is_zero_for_equal_gaussians():
    mean = torch.randn(3, 5)
    logvar = torch.randn(3, 5)
    assert gaussian_kl(mean, logvar, mean, logvar).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(3)
    mean_q, logvar_q, mean_p, logvar_p = (torch.randn(4, 6, generator=generator, dtype=torch.float64) for _ in range(4))
    q = Normal(mean_q, torch.exp(0.5 * logvar_q))
    p = Normal(mean_p, torch.exp(0.5 * logvar_p))
    expected = kl_divergence(q, p).sum()
    torch.testing.assert_close(gaussian_kl(mean_q, logvar_q, mean_p, logvar_p), expected)


# ---------------------------------------------------------------- one shared inference network


def test_model_holds_one_inference_network():
    model = conv4_model()
    networks = [module for module in model.modules() if isinstance(module, SharedInference)]
    assert len(networks) == 1
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert names == {"backbone", "inference", "log_scale"}


def capture_inference_outputs(model: SamovarModel) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    outputs = []

    def keep(module, inputs, output):
        for tensor in output:
            tensor.retain_grad()
        outputs.append(output)

    return outputs, model.inference.register_forward_hook(keep)


def test_samovar_gradient_reaches_prior_and_posterior():
    model = conv4_model()
    with torch.no_grad():  # the heads start at zero weights, which would block the trunk's gradient
        model.inference.mean_head.weight.normal_(0.0, 0.1)
        model.inference.logvar_head.weight.normal_(0.0, 0.1)
    outputs, handle = capture_inference_outputs(model)
    samovar_loss(model, *image_task(), N_WAY, beta=1.0, samples=3)["loss"].backward()
    handle.remove()

    assert len(outputs) == 2  # prior (support only), then posterior (support + query)
    prior_mean, prior_logvar = outputs[0]
    posterior_mean, posterior_logvar = outputs[1]
    assert prior_mean.grad.abs().sum() > 0
    assert prior_logvar.grad.abs().sum() > 0
    assert posterior_mean.grad.abs().sum() > 0
    assert posterior_logvar.grad.abs().sum() > 0
    for name, parameter in model.inference.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_prior_gets_no_gradient_without_kl():
    model = conv4_model()
    outputs, handle = capture_inference_outputs(model)
    samovar_loss(model, *image_task(), N_WAY, beta=0.0, samples=3)["loss"].backward()
    handle.remove()

    prior_mean, prior_logvar = outputs[0]
    assert prior_mean.grad is None or prior_mean.grad.abs().sum() == 0
    assert outputs[1][0].grad.abs().sum() > 0


# ---------------------------------------------------------------- objectives against hand computations


def test_predict_averages_probabilities_over_samples():
    model = conv4_model().eval()
    support_x, support_y, query_x, _ = image_task()
    samples = 4
    probabilities = predict(model, support_x, support_y, query_x, N_WAY, samples=samples,
                            generator=torch.Generator().manual_seed(5))

    with torch.no_grad():
        support_features = model.features(support_x)
        query_features = model.features(query_x)
        mean, logvar = model.inference.class_gaussians(support_features, support_y, N_WAY)
        noise = torch.randn((samples, *mean.shape), generator=torch.Generator().manual_seed(5))
        per_sample, per_sample_logits = [], []
        for index in range(samples):
            weights = mean + torch.exp(0.5 * logvar) * noise[index]
            logits = model.logits(query_features, weights.unsqueeze(0))[0]
            per_sample.append(torch.softmax(logits, dim=-1))
            per_sample_logits.append(logits)
    expected = torch.stack(per_sample).mean(0)

    assert probabilities.shape == (len(query_x), N_WAY)
    torch.testing.assert_close(probabilities, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(len(query_x)))
    averaged_logits = torch.softmax(torch.stack(per_sample_logits).mean(0), dim=-1)
    assert (probabilities - averaged_logits).abs().max() > 1e-4


def test_sample_weights_uses_generator_noise():
    mean = torch.randn(3, 4)
    logvar = torch.randn(3, 4)
    weights = sample_weights(mean, logvar, 5, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(1))
    assert weights.shape == (5, 3, 4)
    torch.testing.assert_close(weights, mean + torch.exp(0.5 * logvar) * noise)


def test_versa_loss_matches_hand_logsumexp():
    torch.manual_seed(0)
    model = SamovarModel(method="versa", backbone="identity", in_channels=3, inference_hidden=(4,), scale=3.0).double()
    support_x = torch.randn(4, 3, dtype=torch.float64)
    support_y = torch.tensor([0, 1, 0, 1])
    query_x = torch.randn(3, 3, dtype=torch.float64)
    query_y = torch.tensor([1, 0, 1])
    samples = 3
    result = versa_loss(model, support_x, support_y, query_x, query_y, 2, samples=samples,
                        generator=torch.Generator().manual_seed(2))

    with torch.no_grad():
        mean, logvar = model.inference.class_gaussians(support_x, support_y, 2)
        noise = torch.randn((samples, 2, 3), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        total = 0.0
        for query, label in zip(query_x, query_y):
            likelihoods = []
            for index in range(samples):
                weights = mean + torch.exp(0.5 * logvar) * noise[index]
                cosines = F.normalize(weights, dim=-1) @ (query / query.norm())
                likelihoods.append(torch.softmax(model.scale * cosines, dim=0)[label].item())
            total += -math.log(sum(likelihoods) / samples)
    assert result["loss"].item() == pytest.approx(total / len(query_x), rel=1e-9)


def test_prototype_logits_are_negative_squared_distances():
    features = torch.randn(6, 4, dtype=torch.float64)
    prototypes = torch.randn(3, 4, dtype=torch.float64)
    expected = -torch.cdist(features, prototypes).pow(2)
    torch.testing.assert_close(prototype_logits(features, prototypes), expected)


def test_protonet_loss_uses_class_means():
    model = SamovarModel(method="protonet", backbone="identity", in_channels=4)
    support_x, support_y, query_x, query_y = feature_task(torch.Generator().manual_seed(0), n_way=3, dim=4)
    result = protonet_loss(model, support_x, support_y, query_x, query_y, 3)
    prototypes = torch.stack([support_x[support_y == label].mean(0) for label in range(3)])
    logits = -torch.cdist(query_x, prototypes).pow(2)
    torch.testing.assert_close(result["loss"], F.cross_entropy(logits, query_y))
    assert result["accuracy"].item() == pytest.approx((logits.argmax(1) == query_y).float().mean().item())
    assert math.isnan(result["prior_variance"].item())


def test_protonet_model_has_no_inference_network():
    model = SamovarModel(method="protonet", backbone="identity", in_channels=4)
    assert model.inference is None
    support_x, support_y, query_x, query_y = feature_task(torch.Generator().manual_seed(0), n_way=3, dim=4)
    with pytest.raises(ValueError, match="method='protonet'"):
        samovar_loss(model, support_x, support_y, query_x, query_y, 3, beta=1.0, samples=2)
    probabilities = predict(model, support_x, support_y, query_x, 3, samples=1)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(len(query_x)))


@pytest.mark.parametrize("method,keys", [("samovar", {"prior_mean_square", "nll", "kl"}), ("versa", {"prior_mean_square"}),
                                         ("protonet", set())])
def test_task_loss_dispatches_on_method(method, keys):
    model = SamovarModel(method=method, backbone="identity", in_channels=4)
    task = feature_task(torch.Generator().manual_seed(0), n_way=3, dim=4)
    result = task_loss(model, *task, 3, beta=1.0, samples=2)
    assert set(result) == {"loss", "accuracy", "prior_variance"} | keys


# ---------------------------------------------------------------- argument checks


def bad_argument_cases():
    support_y = torch.arange(N_WAY).repeat_interleave(SHOT)
    return [
        ("beta", dict(beta=-0.5), "-0.5"),
        ("samples", dict(samples=0), "got 0"),
        ("n_way", dict(n_way=1), "got 1"),
        ("support label", dict(support_y=torch.where(support_y == 2, 7, support_y)), r"\[7\]"),
        ("query label", dict(query_y=torch.tensor([0, 0, 1, 1, 2, -1])), r"\[-1\]"),
        ("empty class", dict(support_y=torch.where(support_y == 2, 0, support_y)), r"classes \[2\] have no support"),
        ("float labels", dict(support_y=support_y.float()), "integer dtype"),
        ("label count", dict(support_y=support_y[:-1]), "5 labels"),
    ]


@pytest.mark.parametrize("case,override,message", bad_argument_cases(), ids=[case[0] for case in bad_argument_cases()])
def test_samovar_loss_rejects_bad_argument(case, override, message):
    model = conv4_model()
    support_x, support_y, query_x, query_y = image_task()
    arguments = dict(support_x=support_x, support_y=support_y, query_x=query_x, query_y=query_y,
                     n_way=N_WAY, beta=1.0, samples=2)
    arguments.update(override)
    with pytest.raises(ValueError, match=message):
        samovar_loss(model, **arguments)


@pytest.mark.parametrize("objective", ["versa", "predict"])
def test_other_objectives_reject_bad_samples(objective):
    model = conv4_model()
    support_x, support_y, query_x, query_y = image_task()
    with pytest.raises(ValueError, match="got 0"):
        if objective == "versa":
            versa_loss(model, support_x, support_y, query_x, query_y, N_WAY, samples=0)
        else:
            predict(model, support_x, support_y, query_x, N_WAY, samples=0)


def test_predict_rejects_empty_class():
    model = conv4_model()
    support_x, support_y, query_x, _ = image_task()
    with pytest.raises(ValueError, match=r"classes \[3\]"):
        predict(model, support_x, support_y, query_x, N_WAY + 1, samples=2)


@pytest.mark.parametrize("options,message", [
    (dict(method="maml"), "'maml'"),
    (dict(likelihood="euclid"), "'euclid'"),
    (dict(scale=0.0), "got 0.0"),
    (dict(logvar_clamp=(2.0, -2.0)), r"\(2.0, -2.0\)"),
    (dict(initial_logvar=9.0), "9.0"),
    (dict(conv4_hidden=0), "got 0"),
])
def test_model_rejects_bad_option(options, message):
    with pytest.raises(ValueError, match=message):
        SamovarModel(backbone="conv4", in_channels=1, image_size=28, **options)


# ---------------------------------------------------------------- config and training


def test_config_dict_rebuilds_the_model():
    model = SamovarModel(backbone="resnet12", in_channels=3, resnet12_widths=(4, 4, 8, 8), inference_hidden=(6,),
                         likelihood="dot", scale=0.1, learn_scale=False, method="versa")
    config = json.loads(json.dumps(model.config_dict()))
    assert config["backbone"] == "resnet12"
    assert config["resnet12_widths"] == [4, 4, 8, 8]
    rebuilt = SamovarModel(**config)
    assert rebuilt.config_dict() == config
    assert rebuilt.out_features == 8
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    assert shapes == {name: tensor.shape for name, tensor in rebuilt.state_dict().items()}


def test_samovar_training_learns_toy_tasks():
    torch.manual_seed(0)
    model = SamovarModel(backbone="identity", in_channels=8, inference_hidden=(), residual_mean=False,
                         initial_logvar=-2.0)

    def held_out_accuracy() -> float:
        generator = torch.Generator().manual_seed(123)
        correct = []
        for _ in range(20):
            support_x, support_y, query_x, query_y = feature_task(generator)
            probabilities = predict(model, support_x, support_y, query_x, 5, samples=5)
            correct.append((probabilities.argmax(1) == query_y).float().mean())
        return torch.stack(correct).mean().item()

    before = held_out_accuracy()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(150):
        result = samovar_loss(model, *feature_task(generator), 5, beta=1.0, samples=4)
        optimizer.zero_grad()
        result["loss"].backward()
        optimizer.step()
    after = held_out_accuracy()

    assert before < 0.6  # the untrained random mean head is near chance (0.2)
    assert after > 0.8
    assert after - before > 0.3
    assert math.isfinite(result["prior_variance"].item())
