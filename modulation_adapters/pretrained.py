"""Backbone checkpoints: the published ImageNet-12 ResNet-26 of the residual-adapter line, and our own.

Published weights
-----------------
The README of github.com/srebuffi/residual_adapters (Rebuffi, Bilen, Vedaldi,
NIPS 2017 and CVPR 2018) links "a ResNet 26 inspired from the original ResNet"
pre-trained on ImageNet at reduced resolution, as Google Drive file
DRIVE_FILE_ID (the README linked file 16tPH7dsdV6YfA5xCeVn3dKFGegSZS8yb until
October 2018). Their train_new_task_adapters.py reads it with
``torch.load(source)['net']``, so the file is a dict {'net', 'acc', 'epoch'}
whose 'net' is the whole pickled model (class ``models.ResNet``), written by
the PyTorch of 2017-2018 in the legacy (non-zip) format, under Python 2.7.

Their network (models.py of that repository), with our names after "->":

- ``pre_layers_conv.conv`` (3x3, 3 -> 32, stride 1) -> ``stem.conv``, and
  ``pre_layers_conv.bns.0`` -> ``stem_bn.norms.0``. No ReLU follows this BatchNorm.
- ``layer{1,2,3}.{b}.conv1.conv`` / ``.conv1.bns.0`` -> ``blocks.{i}.conv1.conv`` /
  ``blocks.{i}.bn1.norms.0``, and ``.conv2.1.conv`` / ``.conv2.1.bns.0`` ->
  ``blocks.{i}.conv2.conv`` / ``blocks.{i}.bn2.norms.0`` (``conv2.0`` is the ReLU).
  Four basic blocks per stage, widths 64, 128, 256, the first block of each
  stage with stride 2 and an average-pool shortcut padded with zero channels.
- ``end_bns.0.0`` (a BatchNorm followed by a ReLU before the global pooling)
  -> ``final_bn.norms.0``, and ``linears.0`` (1000 classes) -> ``heads.0``.

Their input: images resized to 72 px, center crop 64 (random crop and flip for
training), scaled to [0, 1] and normalised with IMAGENET12_MEAN and
IMAGENET12_STD (the "imagenet12" entries of decathlon_mean_std.pickle in
that repository).

Because of the stem without ReLU and the final BatchNorm, models.ResNet26
computes another function with these weights. RebuffiResNet26 has their layout.

Loading without running pickled code
------------------------------------
Files are read with ``torch.load(weights_only=True)``, which builds only
tensors and containers, or with safetensors. A whole model pickled by
PyTorch >= 1.6 (zip format) loads through inert stand-in classes registered
with ``torch.serialization.safe_globals`` under their class names, and only
its tensors are read. A whole model in the legacy format, like the published
file, cannot load that way. The legacy ``torch.save`` stores every nn.Module
subclass as a persistent id ("module", class, source file, source), but the
weights-only unpickler accepts only storage persistent ids (checked against
torch 2.14, torch/_weights_only_unpickler.py). Convert such a file once, on
a machine where you trust it, inside a checkout of srebuffi/residual_adapters
(so that ``import models`` works)::

    python -c "import torch; c = torch.load('FILE', map_location='cpu', weights_only=False, encoding='latin1'); torch.save(c['net'].state_dict(), 'imagenet12_resnet26_state_dict.pt')"

and pass the resulting file as ``path``. NOTE: that command was not run on the
published file, which was not downloaded while writing this module.

Our backbone checkpoints
------------------------
save_backbone writes the model's shared filters, BatchNorms and heads (not the
adapters) to safetensors, with the layout (architecture, widths, stem width,
blocks per stage, class counts) and the domain names in the metadata.
load_backbone compares that layout with the model before loading anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F

from common.checkpoint import CheckpointMismatchError, CheckpointReadError, save_safetensors
from common.download import MIRROR_ENV, ChecksumError, DownloadError, data_root, fetch, file_checksum
from modulation_adapters.models import AdaptedConv3x3, DomainBatchNorm, ResNet26

logger = logging.getLogger(__name__)

DRIVE_FILE_ID = "1y7gz_9KfjY8O4Ue3yHE7SpwA90Ua1mbR"
DRIVE_PAGE_URL = f"https://drive.google.com/open?id={DRIVE_FILE_ID}"  # the link in the residual_adapters README
# NOTE: this direct-download form (confirm=t) was not tried from this repository, because tests run offline.
CHECKPOINT_URL = f"https://drive.usercontent.google.com/download?id={DRIVE_FILE_ID}&export=download&confirm=t"
CHECKPOINT_RELPATH = "modulation_adapters/residual_adapters_imagenet12_resnet26.t7"  # under the data root and each mirror
DEFAULT_CONVERTED_DIR = Path("runs/modulation_adapters/pretrained")

IMAGENET12_MEAN = (0.485, 0.456, 0.406)  # per RGB channel, for images scaled to [0, 1]
IMAGENET12_STD = (0.229, 0.224, 0.225)
IMAGENET12_CLASSES = 1000
IMAGENET12_IMAGE_SIZE = 64  # their training and test crops of ImageNet-12 images resized to 72 px

BACKBONE_FORMAT = "modulation_adapters.backbone"
BACKBONE_FORMAT_VERSION = "1"


class BackboneMismatchError(CheckpointMismatchError):
    """A backbone checkpoint whose layout (architecture, widths, blocks, domains) differs from the model's.

    ``setting`` names what differs ("architecture", "stem_width", "widths",
    "blocks_per_stage", "num_classes" or "domains") and ``saved`` is the
    checkpoint's value, so that a caller can phrase the fix in its own terms
    (a config key, a command-line option). Both are None when not known.
    """

    def __init__(self, message: str, *, setting: str | None = None, saved: Any = None):
        super().__init__(message)
        self.setting = setting
        self.saved = saved


class UnsafeCheckpointError(CheckpointReadError):
    """A checkpoint containing pickled objects that weights-only loading rejects, so it was not loaded."""


class RebuffiResNet26(ResNet26):
    """ResNet26 with the layout of the published residual-adapter networks.

    Two differences from ResNet26: no ReLU after the stem BatchNorm, and a
    per-domain BatchNorm followed by a ReLU (``final_bn``) between the last
    block and the global average pooling. set_domain and domain_parameters
    cover ``final_bn`` because they visit every DomainBatchNorm.
    """

    def __init__(self, num_classes: list[int], widths: tuple[int, ...] = (64, 128, 256), stem_width: int = 32,
                 blocks_per_stage: int = 4, adapter: str = "none", rank: int | None = None):
        super().__init__(num_classes, widths=widths, stem_width=stem_width, blocks_per_stage=blocks_per_stage,
                         adapter=adapter, rank=rank)
        self.final_bn = DomainBatchNorm(self.widths[-1], len(self.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_bn(self.stem(x))
        x = F.relu(self.final_bn(self.blocks(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


_ARCHITECTURES = {"ResNet26": ResNet26, "RebuffiResNet26": RebuffiResNet26}


# ---------------------------------------------------------------------------
# Layout of a model or a checkpoint
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BackboneLayout:
    """The shape of a ResNet26: what a checkpoint must match to load into a model."""

    architecture: str
    widths: tuple[int, ...]
    stem_width: int
    blocks_per_stage: int
    num_classes: tuple[int, ...]

    def to_metadata(self) -> dict[str, str]:
        return {
            "architecture": self.architecture,
            "widths": json.dumps(list(self.widths)),
            "stem_width": str(self.stem_width),
            "blocks_per_stage": str(self.blocks_per_stage),
            "num_classes": json.dumps(list(self.num_classes)),
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> BackboneLayout:
        return cls(
            architecture=metadata["architecture"],
            widths=tuple(json.loads(metadata["widths"])),
            stem_width=int(metadata["stem_width"]),
            blocks_per_stage=int(metadata["blocks_per_stage"]),
            num_classes=tuple(json.loads(metadata["num_classes"])),
        )


def model_layout(model: ResNet26) -> BackboneLayout:
    architecture = type(model).__name__
    if architecture not in _ARCHITECTURES:
        raise TypeError(f"expected a ResNet26 or RebuffiResNet26 model, got {architecture}")
    return BackboneLayout(
        architecture=architecture,
        widths=tuple(model.widths),
        stem_width=model.stem.conv.out_channels,
        blocks_per_stage=len(model.blocks) // len(model.widths),
        num_classes=tuple(model.num_classes),
    )


def _mismatch_error(path: Path, field: str, argument: str, saved: Any, built: Any) -> BackboneMismatchError:
    return BackboneMismatchError(
        f"backbone checkpoint {path} has {field} {saved!r}, but the model has {field} {built!r}. Build the model "
        f"with {argument}={saved!r} to load this checkpoint, or load a checkpoint saved from a model with "
        f"{field} {built!r}.",
        setting=argument, saved=saved,
    )


def _check_layout(path: Path, saved: BackboneLayout, built: BackboneLayout) -> None:
    """Raise BackboneMismatchError naming the first field where the checkpoint and the model differ."""
    if saved.architecture != built.architecture:
        raise BackboneMismatchError(
            f"backbone checkpoint {path} was saved from a {saved.architecture}, but the model is a "
            f"{built.architecture}. Build a {saved.architecture} to load this checkpoint (RebuffiResNet26, in "
            "modulation_adapters.pretrained, has no ReLU after the stem and adds a BatchNorm before the pooling).",
            setting="architecture", saved=saved.architecture,
        )
    for field, argument in (("stem width", "stem_width"), ("widths", "widths"),
                            ("blocks per stage", "blocks_per_stage")):
        saved_value, built_value = getattr(saved, argument), getattr(built, argument)
        if saved_value != built_value:
            raise _mismatch_error(path, field, argument, saved_value, built_value)


# ---------------------------------------------------------------------------
# Reading files without running pickled code
# ---------------------------------------------------------------------------

class _PickledModule:
    """Inert stand-in for an nn.Module class in a whole pickled model: unpickling only fills its __dict__."""


# Dotted names of the classes that a whole residual_adapters model pickles.
_PICKLED_MODULE_CLASSES = (
    "models.ResNet",
    "models.BasicBlock",
    "models.conv_task",
    "models.conv1x1",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.AvgPool2d",
    "torch.nn.modules.pooling.AdaptiveAvgPool2d",
    "torch.nn.modules.linear.Linear",
    "torch.nn.parallel.data_parallel.DataParallel",
)
_STAND_INS = [(type(name.rsplit(".", 1)[1], (_PickledModule,), {}), name) for name in _PICKLED_MODULE_CLASSES]
_MAX_MODULE_DEPTH = 32


def _legacy_model_help(path: Path) -> str:
    return (
        "Convert it once on a machine where you trust the file, inside a checkout of srebuffi/residual_adapters: "
        f"python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False, "
        "encoding='latin1'); torch.save(c['net'].state_dict(), 'imagenet12_resnet26_state_dict.pt')\", then pass "
        "imagenet12_resnet26_state_dict.pt as the path."
    )


def _load_torch_file(path: Path) -> Any:
    """Load `path` with torch.load(weights_only=True) and stand-ins for their module classes, raising clear errors."""
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _unpickling_error(path, str(error)) from None
    except (RuntimeError, OSError, EOFError, ValueError, struct.error) as error:
        raise CheckpointReadError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {error}). It may be truncated or not a "
            "PyTorch file: download or convert it again."
        ) from None


def _unpickling_error(path: Path, message: str) -> CheckpointReadError:
    """Turn a weights-only UnpicklingError into UnsafeCheckpointError, or CheckpointReadError for a damaged file."""
    if "Only persistent_load of storage is allowed" in message:
        return UnsafeCheckpointError(
            f"{path} is a whole model pickled in PyTorch's legacy format (like the published residual_adapters "
            f"file), which weights-only loading cannot read. {_legacy_model_help(path)}"
        )
    global_name = re.search(r"GLOBAL (\S+)", message)
    if global_name or "unrecognized function" in message or "Can only" in message:
        detail = f"a reference to {global_name.group(1)}" if global_name else _unpickler_reason(message)
        return UnsafeCheckpointError(
            f"{path} contains pickled objects that weights-only loading rejects ({detail}), so it was not loaded. "
            "Pass a state dict of tensors (torch.save(model.state_dict(), ...)) or a safetensors file."
        )
    return CheckpointReadError(f"cannot read checkpoint {path} ({_unpickler_reason(message)}). It may be "
                               "truncated or not a PyTorch file: download or convert it again.")


def _unpickler_reason(message: str) -> str:
    """Return the unpickler's own reason from torch.load's message, without the advice torch wraps it in."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    advice = ("Weights only load failed", "Check the documentation", "(1)", "(2)", "Please file")
    reasons = [line.split("WeightsUnpickler error:")[-1].strip() for line in lines if not line.startswith(advice)]
    return reasons[-1] if reasons else "no reason given"


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return the tensors and the metadata of a safetensors file, raising CheckpointReadError if unreadable."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as file:
            metadata = dict(file.metadata() or {})
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise CheckpointReadError(
            f"cannot read {path} as a safetensors file ({error}). It may be truncated or in another format: "
            "write it again."
        ) from None
    return tensors, metadata


def _module_tensors(root: _PickledModule) -> dict[str, torch.Tensor]:
    """Collect the parameters and buffers of an unpickled stand-in module tree, named as state_dict names them."""
    tensors: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, Any, int]] = [("", root, 0)]
    visited: set[int] = set()
    while stack:
        prefix, module, depth = stack.pop()
        if id(module) in visited or depth > _MAX_MODULE_DEPTH:
            raise CheckpointReadError(f"the pickled model reaches one module twice, or nests modules deeper than "
                                      f"{_MAX_MODULE_DEPTH} levels, at {prefix or 'its root'!r}")
        visited.add(id(module))
        state = vars(module)
        for group in ("_parameters", "_buffers"):
            for name, value in dict(state.get(group) or {}).items():
                if value is None:
                    continue
                if not isinstance(value, torch.Tensor):
                    raise CheckpointReadError(f"{prefix}{name} in the pickled model is a {type(value).__name__}, "
                                              "not a tensor")
                tensors[f"{prefix}{name}"] = value.detach()
        for name, child in dict(state.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, _PickledModule):
                raise CheckpointReadError(f"{prefix}{name} in the pickled model is a {type(child).__name__}, "
                                          "not a module")
            stack.append((f"{prefix}{name}.", child, depth + 1))
    return tensors


def _state_dict_from(path: Path, loaded: Any) -> dict[str, torch.Tensor]:
    """Find the state dict in a loaded file: flat, under 'net' or 'state_dict', or a whole stand-in model."""
    if isinstance(loaded, Mapping):
        for key in ("net", "state_dict"):
            if key in loaded:
                loaded = loaded[key]
                break
    if isinstance(loaded, _PickledModule):
        return _module_tensors(loaded)
    if isinstance(loaded, Mapping) and loaded and all(isinstance(value, torch.Tensor) for value in loaded.values()):
        return {str(name): value for name, value in loaded.items()}
    raise CheckpointReadError(
        f"{path} contains a {type(loaded).__name__} that is neither a state dict of tensors, a dict with one under "
        "'net' or 'state_dict', nor a pickled residual_adapters model"
    )


# ---------------------------------------------------------------------------
# Conversion from the residual_adapters naming
# ---------------------------------------------------------------------------

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_THEIR_KEYS = (
    (re.compile(r"pre_layers_conv\.conv\.weight"), "stem_conv"),
    (re.compile(rf"pre_layers_conv\.bns\.0\.{_BN}"), "stem_bn"),
    (re.compile(r"layer([123])\.(\d+)\.conv1\.conv\.weight"), "conv1"),
    (re.compile(rf"layer([123])\.(\d+)\.conv1\.bns\.0\.{_BN}"), "bn1"),
    (re.compile(r"layer([123])\.(\d+)\.conv2\.1\.conv\.weight"), "conv2"),
    (re.compile(rf"layer([123])\.(\d+)\.conv2\.1\.bns\.0\.{_BN}"), "bn2"),
    (re.compile(rf"end_bns\.0\.0\.{_BN}"), "final_bn"),
    (re.compile(r"linears\.0\.(weight|bias)"), "head"),
)


def _parse_their_keys(path: Path, state: Mapping[str, torch.Tensor]) -> dict[tuple, torch.Tensor]:
    """Map each residual_adapters name to a tuple (part, [stage, block,] field), rejecting unknown names."""
    names = list(state)
    if names and all(name.startswith("module.") for name in names):  # saved from an nn.DataParallel wrapper
        state = {name[len("module."):]: value for name, value in state.items()}
    parsed, unknown = {}, []
    for name, value in state.items():
        for pattern, part in _THEIR_KEYS:
            match = pattern.fullmatch(name)
            if match:
                groups = match.groups()
                if part in ("conv1", "bn1", "conv2", "bn2"):
                    parsed[(part, int(groups[0]) - 1, int(groups[1]), *groups[2:])] = value
                else:
                    parsed[(part, *groups)] = value
                break
        else:
            unknown.append(name)
    if unknown:
        raise CheckpointReadError(
            f"{path} has tensors that the plain residual_adapters ResNet-26 (one task, no adapters) does not have: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}. Only that network can be converted."
        )
    return parsed


def _their_layout(path: Path, parsed: Mapping[tuple, torch.Tensor]) -> BackboneLayout:
    """Read stem width, stage widths and blocks per stage from the tensor shapes, checking their consistency."""
    blocks = [sorted({key[2] for key in parsed if key[0] == "conv1" and key[1] == stage}) for stage in range(3)]
    if not blocks[0] or any(indices != list(range(len(blocks[0]))) for indices in blocks):
        raise CheckpointReadError(f"{path} does not have the same number of blocks, numbered from 0, in layer1, "
                                  f"layer2 and layer3: found block indices {blocks}")
    if ("stem_conv",) not in parsed or ("head", "weight") not in parsed:
        raise CheckpointReadError(f"{path} is missing pre_layers_conv.conv.weight or linears.0.weight")
    stem_width = parsed[("stem_conv",)].shape[0]
    widths = tuple(parsed[("conv1", stage, 0)].shape[0] for stage in range(3))
    for previous, width in zip((stem_width, *widths[:-1]), widths):
        if width != 2 * previous:  # their shortcut appends as many zero channels as it has
            raise CheckpointReadError(f"{path} has a stage of width {width} after one of width {previous}, but the "
                                      "residual_adapters shortcut needs each stage to double the width")
    return BackboneLayout("RebuffiResNet26", widths, stem_width, len(blocks[0]),
                          (parsed[("head", "weight")].shape[0],))


def _our_name(key: tuple, blocks_per_stage: int) -> str:
    part = key[0]
    if part in ("conv1", "bn1", "conv2", "bn2"):
        index = key[1] * blocks_per_stage + key[2]
        if part.startswith("conv"):
            return f"blocks.{index}.{part}.conv.weight"
        return f"blocks.{index}.{part}.norms.0.{key[3]}"
    return {"stem_conv": "stem.conv.weight", "stem_bn": f"stem_bn.norms.0.{key[-1]}",
            "final_bn": f"final_bn.norms.0.{key[-1]}", "head": f"heads.0.{key[-1]}"}[part]


def _expected_their_keys(layout: BackboneLayout) -> list[tuple]:
    keys: list[tuple] = [("stem_conv",), ("head", "weight"), ("head", "bias")]
    keys += [(part, field) for part in ("stem_bn", "final_bn") for field in _BN_FIELDS]
    for stage in range(3):
        for block in range(layout.blocks_per_stage):
            keys += [("conv1", stage, block), ("conv2", stage, block)]
            keys += [(part, stage, block, field) for part in ("bn1", "bn2") for field in _BN_FIELDS]
    return keys


def _convert(path: Path) -> tuple[dict[str, torch.Tensor], BackboneLayout]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"residual_adapters checkpoint {path} not found")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)[0]
    else:
        state = _state_dict_from(path, _load_torch_file(path))
    parsed = _parse_their_keys(path, state)
    layout = _their_layout(path, parsed)
    missing = [key for key in _expected_their_keys(layout) if key not in parsed]
    if missing:
        names = ", ".join(_our_name(key, layout.blocks_per_stage) for key in missing[:5])
        raise CheckpointReadError(f"{path} is missing {len(missing)} tensors of the residual_adapters ResNet-26 "
                                  f"(named here as this repository names them: {names})")

    converted = {_our_name(key, layout.blocks_per_stage): value.detach().clone() for key, value in parsed.items()}
    for name in [name for name in converted if name.endswith(".running_var")]:
        counter = name.replace(".running_var", ".num_batches_tracked")
        converted.setdefault(counter, torch.tensor(0, dtype=torch.long))  # PyTorch < 0.4.1 did not store it
    return converted, layout


def convert_residual_adapters_checkpoint(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a residual_adapters ResNet-26 checkpoint and return its tensors under RebuffiResNet26 names.

    Accepted files: a state dict saved with torch.save (also under 'net' or
    'state_dict', and with DataParallel's 'module.' prefix), a whole model
    pickled by PyTorch >= 1.6, or a safetensors file with their names. The
    task's BatchNorms and head become domain 0 (``*.norms.0.*``, ``heads.0.*``).

    Raises:
        UnsafeCheckpointError: the file contains pickled objects other than
            tensors and containers, including a whole model in the legacy
            format (the message gives the one-line conversion).
        CheckpointReadError: the file is truncated, or its tensors are not
            those of the plain one-task ResNet-26.
    """
    return _convert(Path(path))[0]


# ---------------------------------------------------------------------------
# The published ImageNet-12 backbone
# ---------------------------------------------------------------------------

def _manual_download_help(cache_dir: Path | None) -> str:
    destination = (data_root() if cache_dir is None else Path(cache_dir)) / CHECKPOINT_RELPATH
    return (
        f"To use the published weights without this download, open {DRIVE_PAGE_URL} in a browser and download the "
        f"file. Then save it as {destination}, or put it at <folder>/{CHECKPOINT_RELPATH} and set "
        f"{MIRROR_ENV}=<folder>, or pass its path (or a state dict converted from it) as path."
    )


def download_imagenet12_checkpoint(*, sha256: str | None, cache_dir: Path | None = None) -> Path:
    """Download the published ImageNet-12 ResNet-26 file (or copy it from a mirror) and return its path.

    ``sha256`` is required because no checksum of the file is published.
    Compute it once on a copy you trust (``sha256sum FILE``) and keep it in
    your config.
    """
    if sha256 is None:
        raise ValueError(
            "downloading the residual_adapters ImageNet-12 weights needs sha256= because no checksum of the file is "
            "published. Compute it on a copy you trust (sha256sum FILE) and pass it, or pass path= a local file. "
            f"{_manual_download_help(cache_dir)}"
        )
    try:
        return fetch(CHECKPOINT_URL, CHECKPOINT_RELPATH, sha256=sha256, root=cache_dir)
    except ChecksumError:
        raise
    except DownloadError as error:
        raise type(error)(f"{error}\n{_manual_download_help(cache_dir)}") from error


def _converted_imagenet12(source: Path, digest: str, converted_dir: Path) -> tuple[dict[str, torch.Tensor], BackboneLayout, Path]:
    """Return the converted tensors of `source`, converting it once into `converted_dir`."""
    converted_path = Path(converted_dir) / f"imagenet12_resnet26_{digest[:16]}.safetensors"
    if converted_path.exists():
        tensors, layout, _ = _read_backbone_file(converted_path)
        return tensors, layout, converted_path

    tensors, layout = _convert(source)
    metadata = {"format": BACKBONE_FORMAT, "format_version": BACKBONE_FORMAT_VERSION, **layout.to_metadata(),
                "meta": json.dumps({"domains": ["imagenet12"], "source_file": source.name, "source_sha256": digest,
                                    "mean": IMAGENET12_MEAN, "std": IMAGENET12_STD})}
    save_safetensors(converted_path, tensors, metadata)
    logger.info("Converted %s to %s", source, converted_path)
    return tensors, layout, converted_path


def load_imagenet12_backbone(model: RebuffiResNet26, path: Path | str | None = None, *, sha256: str | None = None,
                             cache_dir: Path | None = None, converted_dir: Path = DEFAULT_CONVERTED_DIR) -> Path:
    """Load the ImageNet-12 ResNet-26 of residual_adapters into domain 0 of `model`, and return the converted file.

    `path` is a local checkpoint (see convert_residual_adapters_checkpoint);
    None downloads the published file, which needs ``sha256``. A local file is
    checked against ``sha256`` when one is given. The file is converted once to
    ``<converted_dir>/imagenet12_resnet26_<sha256 prefix>.safetensors`` and
    read from there afterwards. Domain 0 must have IMAGENET12_CLASSES classes.
    The BatchNorms and heads of the other domains are not touched
    (training.copy_source_batchnorm starts a domain from domain 0).

    Raises:
        BackboneMismatchError: the model is not a RebuffiResNet26, or its
            stem width, widths, blocks per stage or domain-0 class count differ
            from the checkpoint's.
        UnsafeCheckpointError: the file is a whole model in the legacy format
            (as published) or contains other pickled objects. The message
            gives the one-line conversion to a state dict.
    """
    if not isinstance(model, RebuffiResNet26):
        raise BackboneMismatchError(
            f"load_imagenet12_backbone needs a RebuffiResNet26, got a {type(model).__name__}. The published network "
            "has no ReLU after the stem BatchNorm and a BatchNorm and ReLU before the pooling, so a ResNet26 would "
            "compute another function with its weights."
        )
    if path is None:
        source = download_imagenet12_checkpoint(sha256=sha256, cache_dir=cache_dir)
    else:
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"residual_adapters checkpoint {source} not found. {_manual_download_help(cache_dir)}")
    digest = file_checksum(source, "sha256")
    if sha256 is not None and digest != sha256.strip().lower():
        raise ChecksumError(f"{source} has sha256 {digest}, expected {sha256}. Check the file, or the sha256 you passed.")

    tensors, saved, converted_path = _converted_imagenet12(source, digest, converted_dir)
    built = model_layout(model)
    _check_layout(converted_path, saved, built)
    if saved.num_classes[0] != built.num_classes[0]:
        raise BackboneMismatchError(
            f"the ImageNet-12 head in {converted_path} has {saved.num_classes[0]} classes, but domain 0 of the model "
            f"has {built.num_classes[0]}. Build the model with num_classes[0] = {saved.num_classes[0]} "
            "(ImageNet-12 as domain 0)."
        )
    _copy_into(model, tensors, converted_path)
    return converted_path


def _copy_into(model: ResNet26, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Copy `tensors` into the model's parameters and buffers of the same names, checking every shape."""
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise CheckpointReadError(f"{path} has tensors that the model does not have: {', '.join(unknown[:5])}")
    for name, value in tensors.items():
        if value.shape != state[name].shape:
            raise CheckpointReadError(f"{path}: tensor {name} has shape {tuple(value.shape)}, but the model expects "
                                      f"{tuple(state[name].shape)}")
    with torch.no_grad():
        for name, value in tensors.items():
            state[name].copy_(value)


# ---------------------------------------------------------------------------
# Our own backbone checkpoints
# ---------------------------------------------------------------------------

def backbone_state(model: ResNet26) -> dict[str, torch.Tensor]:
    """Return the model's state dict without adapter tensors: shared filters, every BatchNorm and every head."""
    adapter_names = set()
    for name, module in model.named_modules():
        if isinstance(module, AdaptedConv3x3):
            adapter_names |= {f"{name}.{key}" for key in module.state_dict() if key != "conv.weight"}
    return {name: tensor for name, tensor in model.state_dict().items() if name not in adapter_names}


def save_backbone(path: Path | str, model: ResNet26, meta: Mapping[str, Any]) -> None:
    """Write the backbone of `model` (backbone_state) to a safetensors file with its layout and `meta`.

    `meta` is a JSON-serialisable dict that must contain "domains", one name
    per head. The layout stored beside it (architecture, widths, stem width,
    blocks per stage, class counts) comes from the model.
    """
    layout = model_layout(model)
    domains = meta.get("domains") if isinstance(meta, Mapping) else None
    if (not isinstance(domains, list) or len(domains) != len(layout.num_classes)
            or not all(isinstance(name, str) for name in domains) or len(set(domains)) != len(domains)):
        raise ValueError(f"meta['domains'] must list {len(layout.num_classes)} distinct domain names, one per head "
                         f"of the model, got {domains!r}")
    try:
        encoded_meta = json.dumps(dict(meta))
    except (TypeError, ValueError) as error:
        raise ValueError(f"meta must be JSON-serialisable: {error}") from None
    metadata = {"format": BACKBONE_FORMAT, "format_version": BACKBONE_FORMAT_VERSION, **layout.to_metadata(),
                "meta": encoded_meta}
    save_safetensors(Path(path), backbone_state(model), metadata)


def _read_backbone_file(path: Path) -> tuple[dict[str, torch.Tensor], BackboneLayout, dict[str, Any]]:
    """Return the tensors, layout and meta dict of a file written by save_backbone or by the ImageNet-12 conversion."""
    tensors, metadata = _read_safetensors(path)
    if metadata.get("format") != BACKBONE_FORMAT:
        raise CheckpointReadError(f"{path} is a safetensors file but not a backbone checkpoint written by "
                                  f"save_backbone (its metadata has no format entry {BACKBONE_FORMAT!r})")
    try:
        layout = BackboneLayout.from_metadata(metadata)
        meta = json.loads(metadata["meta"])
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointReadError(f"{path} has invalid backbone metadata ({error!r}). Write it again.") from None
    return tensors, layout, meta


def read_backbone_meta(path: Path | str) -> dict[str, Any]:
    """Return the meta dict of a file written by save_backbone, reading only the file's header.

    Raises:
        FileNotFoundError: path does not exist.
        CheckpointReadError: the file is truncated, not safetensors, or not
            written by save_backbone.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} not found")
    try:
        with safetensors.safe_open(str(path), framework="pt") as file:
            metadata = dict(file.metadata() or {})
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise CheckpointReadError(
            f"cannot read {path} as a safetensors file ({error}). It may be truncated or in another format: "
            "write it again."
        ) from None
    if metadata.get("format") != BACKBONE_FORMAT:
        raise CheckpointReadError(f"{path} is a safetensors file but not a backbone checkpoint written by "
                                  f"save_backbone (its metadata has no format entry {BACKBONE_FORMAT!r})")
    try:
        meta = json.loads(metadata["meta"])
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointReadError(f"{path} has invalid backbone metadata ({error!r}). Write it again.") from None
    if not isinstance(meta, dict):
        raise CheckpointReadError(f"{path} has invalid backbone metadata (meta is not a JSON object). Write it again.")
    return meta


def load_backbone(path: Path | str, model: ResNet26, *, domains: list[str] | None = None) -> dict[str, Any]:
    """Load a checkpoint written by save_backbone into `model` and return the meta dict saved with it.

    The stored layout must equal the model's, and the stored domain names must
    equal `domains` when it is given. Adapters of the model keep their values.

    Raises:
        FileNotFoundError: path does not exist.
        CheckpointReadError: the file is truncated, not safetensors, or not
            written by save_backbone.
        BackboneMismatchError: architecture, stem width, widths, blocks per
            stage, class counts or domain names differ. The message names both
            values and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} not found")
    tensors, saved, meta = _read_backbone_file(path)
    built = model_layout(model)
    _check_layout(path, saved, built)
    if saved.num_classes != built.num_classes:
        raise _mismatch_error(path, "class counts per domain", "num_classes", list(saved.num_classes),
                              list(built.num_classes))
    if domains is not None and list(domains) != meta.get("domains"):
        raise BackboneMismatchError(
            f"backbone checkpoint {path} has domains {meta.get('domains')!r}, but {list(domains)!r} were requested. "
            "Pass the domain list the checkpoint was saved with, or load a checkpoint saved for these domains.",
            setting="domains", saved=meta.get("domains"),
        )

    expected = backbone_state(model)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointReadError(f"{path} is missing tensors that its layout implies: {', '.join(missing[:5])}")
    _copy_into(model, tensors, path)
    return meta
