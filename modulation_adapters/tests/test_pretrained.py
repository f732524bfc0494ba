"""Loading residual_adapters checkpoints without running pickled code, and our own backbone checkpoints."""

from __future__ import annotations

import os
import sys
import types
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import CheckpointReadError
from common.download import ChecksumError, file_checksum
from modulation_adapters import pretrained
from modulation_adapters.models import ResNet26
from modulation_adapters.pretrained import (
    CHECKPOINT_RELPATH,
    BackboneMismatchError,
    RebuffiResNet26,
    UnsafeCheckpointError,
    convert_residual_adapters_checkpoint,
    load_backbone,
    load_imagenet12_backbone,
    save_backbone,
)

STEM, WIDTHS, BLOCKS, CLASSES = 4, (8, 16, 32), 2, 7
SMALL = dict(widths=WIDTHS, stem_width=STEM, blocks_per_stage=BLOCKS)


# ---------------------------------------------------------------------------
# A checkpoint in the residual_adapters naming, and their forward pass by hand
# ---------------------------------------------------------------------------

def their_batchnorm(prefix: str, channels: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}weight": 1 + 0.2 * torch.randn(channels, generator=generator),
        f"{prefix}bias": 0.1 * torch.randn(channels, generator=generator),
        f"{prefix}running_mean": 0.1 * torch.randn(channels, generator=generator),
        f"{prefix}running_var": 0.5 + torch.rand(channels, generator=generator),
    }


def their_conv(in_channels: int, out_channels: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(out_channels, in_channels, 3, 3, generator=generator) * (2 / (9 * in_channels)) ** 0.5


def their_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Random tensors under the names and shapes of residual_adapters' ResNet (one task, PyTorch 0.3 BatchNorms)."""
    generator = torch.Generator().manual_seed(seed)
    state = OrderedDict(
        [("pre_layers_conv.conv.weight", their_conv(3, STEM, generator))]
    )
    state.update(their_batchnorm("pre_layers_conv.bns.0.", STEM, generator))
    channels = STEM
    for stage, width in enumerate(WIDTHS, start=1):
        for block in range(BLOCKS):
            prefix = f"layer{stage}.{block}."
            state[f"{prefix}conv1.conv.weight"] = their_conv(channels, width, generator)
            state.update(their_batchnorm(f"{prefix}conv1.bns.0.", width, generator))
            state[f"{prefix}conv2.1.conv.weight"] = their_conv(width, width, generator)
            state.update(their_batchnorm(f"{prefix}conv2.1.bns.0.", width, generator))
            channels = width
    state.update(their_batchnorm("end_bns.0.0.", channels, generator))
    state["linears.0.weight"] = 0.1 * torch.randn(CLASSES, channels, generator=generator)
    state["linears.0.bias"] = 0.1 * torch.randn(CLASSES, generator=generator)
    return state


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Their ResNet's forward in evaluation mode, written from models.py of residual_adapters."""
    def batchnorm(prefix: str, y: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(y, state[f"{prefix}running_mean"], state[f"{prefix}running_var"], state[f"{prefix}weight"],
                            state[f"{prefix}bias"], training=False, eps=1e-5)

    y = batchnorm("pre_layers_conv.bns.0.", F.conv2d(x, state["pre_layers_conv.conv.weight"], padding=1))
    for stage in (1, 2, 3):
        for block in range(BLOCKS):
            prefix = f"layer{stage}.{block}."
            stride = 2 if block == 0 else 1
            out = F.conv2d(y, state[f"{prefix}conv1.conv.weight"], stride=stride, padding=1)
            out = F.relu(batchnorm(f"{prefix}conv1.bns.0.", out))
            out = batchnorm(f"{prefix}conv2.1.bns.0.", F.conv2d(out, state[f"{prefix}conv2.1.conv.weight"], padding=1))
            shortcut = y
            if block == 0:
                pooled = F.avg_pool2d(y, 2)
                shortcut = torch.cat((pooled, pooled * 0), 1)
            y = F.relu(out + shortcut)
    y = F.relu(batchnorm("end_bns.0.0.", y)).mean((2, 3))
    return F.linear(y, state["linears.0.weight"], state["linears.0.bias"])


def fixed_input() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def loaded_model(path: Path, converted_dir: Path, num_classes: tuple[int, ...] = (CLASSES, 3)) -> RebuffiResNet26:
    torch.manual_seed(0)
    model = RebuffiResNet26(list(num_classes), **SMALL).eval()
    load_imagenet12_backbone(model, path, converted_dir=converted_dir)
    return model


# Whole-model pickles: classes named as residual_adapters' models.py names them, under the module name "models".

class conv_task(nn.Module):  # noqa: N801 (the pickled name must match theirs)
    __module__ = "models"

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bns = nn.ModuleList([nn.BatchNorm2d(out_channels)])


class BasicBlock(nn.Module):
    __module__ = "models"

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_task(in_channels, out_channels, stride)
        self.conv2 = nn.Sequential(nn.ReLU(True), conv_task(out_channels, out_channels))
        if stride != 1:
            self.avgpool = nn.AvgPool2d(2)


class ResNet(nn.Module):
    __module__ = "models"

    def __init__(self):
        super().__init__()
        self.pre_layers_conv = conv_task(3, STEM)
        channels = STEM
        for stage, width in enumerate(WIDTHS, start=1):
            blocks = [BasicBlock(channels if index == 0 else width, width, 2 if index == 0 else 1) for index in range(BLOCKS)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            channels = width
        self.end_bns = nn.ModuleList([nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(True))])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linears = nn.ModuleList([nn.Linear(channels, CLASSES)])


@pytest.fixture
def their_network(monkeypatch) -> ResNet:
    """Their network with the weights of their_state_dict(), its classes importable as models.*."""
    module = types.ModuleType("models")
    for cls in (conv_task, BasicBlock, ResNet):
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "models", module)
    network = ResNet()
    missing, unexpected = network.load_state_dict(their_state_dict(), strict=False)
    assert not unexpected
    assert all(name.endswith("num_batches_tracked") for name in missing)
    return network


# ---------------------------------------------------------------------------
# Conversion of the residual_adapters checkpoint
# ---------------------------------------------------------------------------

def write_their_checkpoint(path: Path, form: str) -> Path:
    state = their_state_dict()
    if form == "flat":
        torch.save(state, path)
    elif form == "under_net":
        torch.save({"net": state, "acc": 71.2, "epoch": 119}, path)
    elif form == "data_parallel":
        torch.save(OrderedDict((f"module.{name}", value) for name, value in state.items()), path)
    elif form == "legacy_format":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif form == "safetensors":
        path = path.with_suffix(".safetensors")
        safetensors.torch.save_file(dict(state), str(path))
    return path


@pytest.mark.parametrize("form", ["flat", "under_net", "data_parallel", "legacy_format", "safetensors"])
def test_state_dict_loads_to_reference_output(tmp_path, form):
    path = write_their_checkpoint(tmp_path / "imagenet.t7", form)
    model = loaded_model(path, tmp_path / "converted")
    x = fixed_input()
    model.set_domain(0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(their_state_dict(), x), rtol=1e-5, atol=1e-5)


def test_other_domains_stay_untouched(tmp_path):
    path = write_their_checkpoint(tmp_path / "imagenet.t7", "flat")
    model = loaded_model(path, tmp_path / "converted")
    for norm in (model.stem_bn.norms[1], model.final_bn.norms[1], model.blocks[0].bn1.norms[1]):
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))


def test_final_batchnorm_follows_domain():
    model = RebuffiResNet26([5, 3], **SMALL)
    model.set_domain(1)
    assert model.final_bn.domain == 1
    domain_parameters = {id(parameter) for parameter in model.domain_parameters(1)}
    assert id(model.final_bn.norms[1].weight) in domain_parameters
    assert id(model.final_bn.norms[0].weight) not in domain_parameters


def test_converted_names_match_rebuffi_resnet26(tmp_path):
    path = write_their_checkpoint(tmp_path / "imagenet.t7", "flat")
    converted = convert_residual_adapters_checkpoint(path)
    domain0 = {name for name in RebuffiResNet26([CLASSES], **SMALL).state_dict()}
    assert set(converted) == domain0
    assert torch.equal(converted["blocks.2.conv1.conv.weight"], their_state_dict()["layer2.0.conv1.conv.weight"])
    assert torch.equal(converted["final_bn.norms.0.running_var"], their_state_dict()["end_bns.0.0.running_var"])


def test_whole_model_zip_pickle_loads(tmp_path, their_network):
    path = tmp_path / "whole.t7"
    torch.save({"net": their_network, "acc": 71.2, "epoch": 119}, path)
    model = loaded_model(path, tmp_path / "converted")
    x = fixed_input()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(their_state_dict(), x), rtol=1e-5, atol=1e-5)


def test_whole_model_legacy_pickle_gets_conversion_help(tmp_path, their_network):
    path = tmp_path / "legacy_whole.t7"
    with warnings.catch_warnings():  # the legacy writer warns that it cannot find the source of the test's classes
        warnings.simplefilter("ignore", UserWarning)
        torch.save({"net": their_network}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError) as raised:
        convert_residual_adapters_checkpoint(path)
    assert str(path) in str(raised.value)
    assert "legacy format" in str(raised.value)
    assert "torch.save(c['net'].state_dict()" in str(raised.value)


class SystemCall:
    """Unpickling this object would run a shell command: the classic malicious pickle."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pickled_os_system_reference_is_rejected(tmp_path):
    path = tmp_path / "reference.t7"
    torch.save({"net": os.system}, path)
    with pytest.raises(UnsafeCheckpointError) as raised:
        convert_residual_adapters_checkpoint(path)
    assert str(path) in str(raised.value)
    assert "system" in str(raised.value)


def test_pickled_os_system_call_is_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "payload.t7"
    torch.save({"net": SystemCall(f"touch {marker}")}, path)
    with pytest.raises(UnsafeCheckpointError):
        convert_residual_adapters_checkpoint(path)
    assert not marker.exists()


def test_pickled_other_callable_is_rejected(tmp_path):
    path = tmp_path / "callable.t7"
    torch.save({"net": print}, path)
    with pytest.raises(UnsafeCheckpointError, match="print"):
        convert_residual_adapters_checkpoint(path)


@pytest.mark.parametrize("form", ["flat", "legacy_format"])
def test_truncated_checkpoint_names_file(tmp_path, form):
    path = write_their_checkpoint(tmp_path / "imagenet.t7", form)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError) as raised:
        convert_residual_adapters_checkpoint(path)
    assert str(path) in str(raised.value)


def test_adapter_tensors_are_rejected(tmp_path):
    state = their_state_dict()
    state["layer1.0.parallel_conv.0.conv.weight"] = torch.zeros(WIDTHS[0], STEM, 1, 1)
    path = tmp_path / "parallel.t7"
    torch.save(state, path)
    with pytest.raises(CheckpointReadError, match="layer1.0.parallel_conv.0.conv.weight"):
        convert_residual_adapters_checkpoint(path)


def test_missing_tensor_is_named(tmp_path):
    state = their_state_dict()
    del state["layer3.1.conv2.1.bns.0.running_var"]
    path = tmp_path / "missing.t7"
    torch.save(state, path)
    with pytest.raises(CheckpointReadError, match="blocks.5.bn2.norms.0.running_var"):
        convert_residual_adapters_checkpoint(path)


# ---------------------------------------------------------------------------
# load_imagenet12_backbone: model checks, conversion cache, download
# ---------------------------------------------------------------------------

def test_imagenet_loader_rejects_plain_resnet26(tmp_path):
    path = write_their_checkpoint(tmp_path / "imagenet.t7", "flat")
    with pytest.raises(BackboneMismatchError, match="needs a RebuffiResNet26, got a ResNet26"):
        load_imagenet12_backbone(ResNet26([CLASSES], **SMALL), path, converted_dir=tmp_path / "converted")


@pytest.mark.parametrize("change,expected", [
    (dict(stem_width=8, widths=(16, 32, 64)), "stem width 4, but the model has stem width 8"),
    (dict(widths=(8, 16, 64)), "widths (8, 16, 32), but the model has widths (8, 16, 64)"),
    (dict(blocks_per_stage=1), "blocks per stage 2, but the model has blocks per stage 1"),
])
def test_imagenet_loader_layout_mismatch(tmp_path, change, expected):
    path = write_their_checkpoint(tmp_path / "imagenet.t7", "flat")
    model = RebuffiResNet26([CLASSES], **{**SMALL, **change})
    with pytest.raises(BackboneMismatchError) as raised:
        load_imagenet12_backbone(model, path, converted_dir=tmp_path / "converted")
    assert expected in str(raised.value)


def test_imagenet_loader_class_count_mismatch(tmp_path):
    path = write_their_checkpoint(tmp_path / "imagenet.t7", "flat")
    with pytest.raises(BackboneMismatchError, match=f"has {CLASSES} classes, but domain 0 of the model has 5"):
        load_imagenet12_backbone(RebuffiResNet26([5], **SMALL), path, converted_dir=tmp_path / "converted")


def test_conversion_runs_once(tmp_path, monkeypatch):
    path = write_their_checkpoint(tmp_path / "imagenet.t7", "flat")
    first = load_imagenet12_backbone(RebuffiResNet26([CLASSES], **SMALL), path, converted_dir=tmp_path / "converted")
    assert first.suffix == ".safetensors"
    assert first.name.startswith("imagenet12_resnet26_")

    def fail(source):
        raise AssertionError(f"converted {source} again")

    monkeypatch.setattr(pretrained, "_convert", fail)
    model = RebuffiResNet26([CLASSES], **SMALL).eval()
    second = load_imagenet12_backbone(model, path, converted_dir=tmp_path / "converted")
    assert second == first
    x = fixed_input()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(their_state_dict(), x), rtol=1e-5, atol=1e-5)


def test_converted_file_loads_as_our_backbone(tmp_path):
    path = write_their_checkpoint(tmp_path / "imagenet.t7", "flat")
    converted = load_imagenet12_backbone(RebuffiResNet26([CLASSES], **SMALL), path, converted_dir=tmp_path / "converted")
    meta = load_backbone(converted, RebuffiResNet26([CLASSES], **SMALL), domains=["imagenet12"])
    assert meta["source_sha256"] == file_checksum(path, "sha256")


def test_download_needs_sha256(tmp_path):
    with pytest.raises(ValueError, match="needs sha256="):
        load_imagenet12_backbone(RebuffiResNet26([CLASSES], **SMALL), None, cache_dir=tmp_path / "cache")


def test_download_copies_from_mirror_folder(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    source = mirror / CHECKPOINT_RELPATH
    source.parent.mkdir(parents=True)
    write_their_checkpoint(source, "flat")
    monkeypatch.setenv("REPRO_MIRROR", str(mirror))
    model = RebuffiResNet26([CLASSES], **SMALL).eval()
    load_imagenet12_backbone(model, None, sha256=file_checksum(source, "sha256"), cache_dir=tmp_path / "cache",
                             converted_dir=tmp_path / "converted")
    assert (tmp_path / "cache" / CHECKPOINT_RELPATH).is_file()
    x = fixed_input()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(their_state_dict(), x), rtol=1e-5, atol=1e-5)


def test_local_file_with_wrong_sha256(tmp_path):
    path = write_their_checkpoint(tmp_path / "imagenet.t7", "flat")
    with pytest.raises(ChecksumError, match="expected " + "0" * 64):
        load_imagenet12_backbone(RebuffiResNet26([CLASSES], **SMALL), path, sha256="0" * 64,
                                 converted_dir=tmp_path / "converted")


# ---------------------------------------------------------------------------
# Our backbone checkpoints
# ---------------------------------------------------------------------------

DOMAINS = ["source", "target"]


def trained_like(model: ResNet26, seed: int = 0) -> ResNet26:
    """Give every parameter and BatchNorm statistic a non-default value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
                if name.endswith("running_var"):
                    tensor.abs_()
    return model.eval()


@pytest.mark.parametrize("architecture", [ResNet26, RebuffiResNet26])
def test_backbone_round_trip(tmp_path, architecture):
    saved = trained_like(architecture([5, 3], **SMALL))
    path = tmp_path / "backbone.safetensors"
    save_backbone(path, saved, {"domains": DOMAINS, "source_accuracy": 91.5})
    loaded = architecture([5, 3], **SMALL).eval()
    meta = load_backbone(path, loaded, domains=DOMAINS)
    assert meta == {"domains": DOMAINS, "source_accuracy": 91.5}
    x = fixed_input()
    with torch.no_grad():
        for domain in (0, 1):
            saved.set_domain(domain)
            loaded.set_domain(domain)
            torch.testing.assert_close(loaded(x), saved(x))


def test_backbone_leaves_adapters_alone(tmp_path):
    path = tmp_path / "backbone.safetensors"
    save_backbone(path, trained_like(ResNet26([5, 3], adapter="modulation", rank=2, **SMALL)), {"domains": DOMAINS})
    assert not any(".left." in name or ".right." in name for name in safetensors.torch.load_file(str(path)))

    torch.manual_seed(1)
    adapted = ResNet26([5, 3], adapter="series", **SMALL)
    series_before = adapted.blocks[0].conv1.series[1].weight.detach().clone()
    load_backbone(path, adapted)
    assert torch.equal(adapted.blocks[0].conv1.series[1].weight, series_before)


@pytest.mark.parametrize("built,expected", [
    (dict(widths=(8, 16, 64)), "widths (8, 16, 32), but the model has widths (8, 16, 64)"),
    (dict(stem_width=2), "stem width 4, but the model has stem width 2"),
    (dict(blocks_per_stage=1), "blocks per stage 2, but the model has blocks per stage 1"),
    (dict(num_classes=[5, 3, 4]), "class counts per domain [5, 3], but the model has class counts per domain [5, 3, 4]"),
    (dict(num_classes=[5, 7]), "class counts per domain [5, 3], but the model has class counts per domain [5, 7]"),
])
def test_backbone_layout_mismatch(tmp_path, built, expected):
    path = tmp_path / "backbone.safetensors"
    save_backbone(path, ResNet26([5, 3], **SMALL), {"domains": DOMAINS})
    arguments = {**SMALL, **built}
    num_classes = arguments.pop("num_classes", [5, 3])
    with pytest.raises(BackboneMismatchError) as raised:
        load_backbone(path, ResNet26(num_classes, **arguments))
    assert expected in str(raised.value)
    assert "Build the model with" in str(raised.value)


def test_backbone_architecture_mismatch(tmp_path):
    path = tmp_path / "backbone.safetensors"
    save_backbone(path, ResNet26([5, 3], **SMALL), {"domains": DOMAINS})
    with pytest.raises(BackboneMismatchError, match="saved from a ResNet26, but the model is a RebuffiResNet26"):
        load_backbone(path, RebuffiResNet26([5, 3], **SMALL))


def test_backbone_domain_names_mismatch(tmp_path):
    path = tmp_path / "backbone.safetensors"
    save_backbone(path, ResNet26([5, 3], **SMALL), {"domains": DOMAINS})
    with pytest.raises(BackboneMismatchError, match=r"has domains \['source', 'target'\], but \['source', 'svhn'\]"):
        load_backbone(path, ResNet26([5, 3], **SMALL), domains=["source", "svhn"])


def test_backbone_truncated_file_names_file(tmp_path):
    path = tmp_path / "backbone.safetensors"
    save_backbone(path, ResNet26([5, 3], **SMALL), {"domains": DOMAINS})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError) as raised:
        load_backbone(path, ResNet26([5, 3], **SMALL))
    assert str(path) in str(raised.value)


def test_backbone_torch_file_is_not_safetensors(tmp_path):
    path = tmp_path / "backbone.pt"
    torch.save(ResNet26([5, 3], **SMALL).state_dict(), path)
    with pytest.raises(CheckpointReadError, match="cannot read .*backbone.pt as a safetensors file"):
        load_backbone(path, ResNet26([5, 3], **SMALL))


def test_backbone_needs_format_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(ResNet26([5, 3], **SMALL).state_dict(), str(path))
    with pytest.raises(CheckpointReadError, match="not a backbone checkpoint written by save_backbone"):
        load_backbone(path, ResNet26([5, 3], **SMALL))


def test_save_backbone_needs_domain_names(tmp_path):
    model = ResNet26([5, 3], **SMALL)
    with pytest.raises(ValueError, match="must list 2 distinct domain names"):
        save_backbone(tmp_path / "backbone.safetensors", model, {"domains": ["source"]})
    with pytest.raises(ValueError, match="must list 2 distinct domain names"):
        save_backbone(tmp_path / "backbone.safetensors", model, {})
