"""Image editing metrics: CLIP-I, CLIP-T, CLIP directional similarity, DINO similarity, L1 and diversity.

Every metric compares an edited (output) image with its input image or with
captions of the input and the expected output:

- clip_i: cosine of the CLIP image embeddings of output and input;
- clip_t: cosine of the output's CLIP image embedding and the output caption's text embedding;
- clip_direction: cosine of E_img(out) - E_img(in) and E_txt(output caption) - E_txt(input caption),
  from unit-norm embeddings; 0 when either difference is zero;
- dino: cosine of the DINO CLS embeddings of output and input;
- l1: mean absolute pixel difference in [0, 1], with the output resized to the input's size;
- dino_diversity / clip_diversity: mean over pairs of edits of one input of 1 - cosine of their
  embeddings (0 for identical edits, at most 2).

Model passes run on batches of `MetricModels.batch_size` images or texts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common.device import choose_device
from sane.data import HUB_ID_PATTERN, EditItem, load_image

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_DINO_MODEL",
    "DIVERSITY_METRICS",
    "PAIR_METRICS",
    "EditEvaluation",
    "MetricModels",
    "clip_directional_similarity",
    "clip_image_similarity",
    "clip_text_similarity",
    "cosine_similarity",
    "dino_similarity",
    "directional_similarity",
    "edit_diversity",
    "evaluate_edits",
    "l1_distance",
    "mean_pairwise_cosine_distance",
]

logger = logging.getLogger(__name__)

# CLIP ViT-B/32 and DINO ViT-S/16 are the models of MagicBrush's evaluation script
# (github.com/OSU-NLP-Group/MagicBrush, evaluation/image_eval.py), here as Hugging Face checkpoints.
# NOTE: images go through each checkpoint's Hugging Face image processor. That script resizes to 256
# and center-crops 224 for DINO, so scores can differ slightly from the ones it reports.
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_DINO_MODEL = "facebook/dino-vits16"

# Metrics with one value per (input, output) pair, and metrics with one value per input with several outputs.
PAIR_METRICS = ("clip_i", "clip_t", "clip_direction", "dino", "l1")
DIVERSITY_METRICS = ("dino_diversity", "clip_diversity")
_CLIP_METRICS = {"clip_i", "clip_t", "clip_direction", "clip_diversity"}
_DINO_METRICS = {"dino", "dino_diversity"}

ImageLike = PIL.Image.Image | str | Path


# ---------------------------------------------------------------- models


def _check_model_source(source: str | Path, kind: str) -> str:
    """Return `source` as a string for from_pretrained, raising FileNotFoundError for a missing local path.

    A string of the form owner/name that is not an existing path is taken as a Hub id.
    """
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{kind} model path {path} is a file; pass the folder written by save_pretrained")
        return str(path)
    if isinstance(source, Path) or not HUB_ID_PATTERN.match(str(source)):
        raise FileNotFoundError(f"{kind} model folder not found: {path}; pass a folder written by save_pretrained or a Hub id")
    return str(source)


def _load_failed(kind: str, source: str, error: Exception) -> OSError:
    if Path(source).is_dir():
        return OSError(
            f"cannot load the {kind} model from {source}: {error}. The folder needs the files that save_pretrained "
            f"writes for both the model and its processor"
        )
    return OSError(
        f"cannot load the {kind} model {source!r}: {error}. It is not a local folder, so it was looked up as a "
        f"Hugging Face Hub id; check the id, or download the model first when HF_HUB_OFFLINE=1 is set"
    )


def _pooled(output: Any) -> torch.Tensor:
    """Return the projected embedding from get_image_features/get_text_features.

    transformers 5.23 returns a model output with the projection in `pooler_output`, and 4.x returned the tensor itself.
    """
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class MetricModels:
    """The CLIP and DINO models behind the metrics, each loaded once.

    `clip_model` and `dino_model` are Hub ids or folders written by
    save_pretrained; None skips that model, and the metrics that need it.
    The DINO embedding is the CLS token of the last hidden state (after the
    final layer norm), for ViT (DINO) and Dinov2 checkpoints alike.
    """

    def __init__(
        self,
        clip_model: str | Path | None = DEFAULT_CLIP_MODEL,
        dino_model: str | Path | None = DEFAULT_DINO_MODEL,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = choose_device(device) if isinstance(device, str) else device
        self.dtype = dtype
        self.batch_size = batch_size
        self.clip = self.clip_processor = None
        self.dino = self.dino_processor = None
        if clip_model is not None:
            self.clip, self.clip_processor = self._load_clip(clip_model)
        if dino_model is not None:
            self.dino, self.dino_processor = self._load_dino(dino_model)

    def _load_clip(self, source: str | Path):
        from transformers import CLIPModel, CLIPProcessor

        source = _check_model_source(source, "CLIP")
        try:
            model = CLIPModel.from_pretrained(source, dtype=self.dtype)
            processor = CLIPProcessor.from_pretrained(source)
        except OSError as error:
            raise _load_failed("CLIP", source, error) from error
        logger.info("loaded CLIP model %s on %s", source, self.device)
        return model.to(self.device).eval(), processor

    def _load_dino(self, source: str | Path):
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        source = _check_model_source(source, "DINO")
        try:
            config = AutoConfig.from_pretrained(source)
            # DINO does not train the dense + tanh pooler that ViTModel adds by default, so leave it out.
            # The embedding is the CLS token instead.
            extra = {"add_pooling_layer": False} if config.model_type == "vit" else {}
            model = AutoModel.from_pretrained(source, dtype=self.dtype, **extra)
            processor = AutoImageProcessor.from_pretrained(source)
        except OSError as error:
            raise _load_failed("DINO", source, error) from error
        logger.info("loaded DINO model %s (%s) on %s", source, config.model_type, self.device)
        return model.to(self.device).eval(), processor

    def _require(self, model: Any, kind: str) -> None:
        if model is None:
            raise ValueError(f"this metric needs a {kind} model, but MetricModels was built with {kind.lower()}_model=None")

    def _pixel_values(self, processor: Any, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        pixel_values = processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixel_values.to(self.device, self.dtype)  # (B, 3, H, W)

    def _batches(self, values: Sequence[Any]):
        for start in range(0, len(values), self.batch_size):
            yield values[start:start + self.batch_size]

    @torch.inference_mode()
    def clip_image_embeddings(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Embed images with CLIP; returns unit-norm float32 rows on the CPU, shape (N, D)."""
        self._require(self.clip, "CLIP")
        images = _as_rgb_images(images)
        embeddings = [torch.empty(0, self.clip.config.projection_dim)]
        for batch in self._batches(images):
            features = _pooled(self.clip.get_image_features(pixel_values=self._pixel_values(self.clip_processor, batch)))
            embeddings.append(features.float().cpu())
        return F.normalize(torch.cat(embeddings), dim=-1)

    @torch.inference_mode()
    def clip_text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts with CLIP, truncated to the text model's context length; unit-norm float32 rows on the CPU, (N, D)."""
        self._require(self.clip, "CLIP")
        max_length = self.clip.config.text_config.max_position_embeddings
        embeddings = [torch.empty(0, self.clip.config.projection_dim)]
        for batch in self._batches(list(texts)):
            tokens = self.clip_processor.tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            features = _pooled(self.clip.get_text_features(**tokens.to(self.device)))
            embeddings.append(features.float().cpu())
        return F.normalize(torch.cat(embeddings), dim=-1)

    @torch.inference_mode()
    def dino_embeddings(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Embed images with DINO (CLS token); unit-norm float32 rows on the CPU, (N, D)."""
        self._require(self.dino, "DINO")
        images = _as_rgb_images(images)
        embeddings = [torch.empty(0, self.dino.config.hidden_size)]
        for batch in self._batches(images):
            hidden = self.dino(pixel_values=self._pixel_values(self.dino_processor, batch)).last_hidden_state  # (B, 1 + patches, D)
            embeddings.append(hidden[:, 0].float().cpu())
        return F.normalize(torch.cat(embeddings), dim=-1)


def _as_rgb_image(image: ImageLike) -> PIL.Image.Image:
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if isinstance(image, str | Path):
        return load_image(image)
    raise TypeError(f"expected a PIL image or an image path, got {type(image).__name__}")


def _as_rgb_images(images: Sequence[ImageLike]) -> list[PIL.Image.Image]:
    return [_as_rgb_image(image) for image in images]


# ---------------------------------------------------------------- metrics on embeddings


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows of (N, D) tensors, shape (N,)."""
    if a.shape != b.shape:
        raise ValueError(f"embeddings must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return F.cosine_similarity(a, b, dim=-1)


def directional_similarity(
    image_out: torch.Tensor, image_in: torch.Tensor, text_out: torch.Tensor, text_in: torch.Tensor
) -> torch.Tensor:
    """Cosine of the image change and the text change, row by row, from (N, D) embeddings; 0 where a change is zero."""
    image_change = image_out - image_in
    text_change = text_out - text_in
    # F.cosine_similarity divides by norms clamped to at least eps, so a zero change gives 0 and not NaN.
    return cosine_similarity(image_change, text_change)


def mean_pairwise_cosine_distance(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cosine over the K * (K - 1) / 2 unordered pairs of rows of a (K, D) tensor, K >= 2."""
    count = embeddings.shape[0]
    if count < 2:
        raise ValueError(f"diversity needs at least 2 edits of one input, got {count}")
    unit = F.normalize(embeddings, dim=-1)
    similarity = unit @ unit.T  # (K, K)
    upper = torch.triu_indices(count, count, offset=1)
    return (1 - similarity[upper[0], upper[1]]).mean()


# ---------------------------------------------------------------- metrics on images


def _check_lengths(**sequences: Sequence[Any]) -> int:
    lengths = {name: len(values) for name, values in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"expected equal lengths, got {lengths}")
    return next(iter(lengths.values()))


def clip_image_similarity(models: MetricModels, outputs: Sequence[ImageLike], inputs: Sequence[ImageLike]) -> torch.Tensor:
    """CLIP-I of each (output, input) pair, shape (N,)."""
    count = _check_lengths(outputs=outputs, inputs=inputs)
    embeddings = models.clip_image_embeddings([*outputs, *inputs])
    return cosine_similarity(embeddings[:count], embeddings[count:])


def clip_text_similarity(models: MetricModels, outputs: Sequence[ImageLike], output_captions: Sequence[str]) -> torch.Tensor:
    """CLIP-T of each output image and its output caption, shape (N,)."""
    _check_lengths(outputs=outputs, output_captions=output_captions)
    return cosine_similarity(models.clip_image_embeddings(outputs), models.clip_text_embeddings(output_captions))


def clip_directional_similarity(
    models: MetricModels,
    outputs: Sequence[ImageLike],
    inputs: Sequence[ImageLike],
    output_captions: Sequence[str],
    input_captions: Sequence[str],
) -> torch.Tensor:
    """CLIP directional similarity of each edit, shape (N,); swapping outputs and inputs with the captions fixed negates it."""
    count = _check_lengths(outputs=outputs, inputs=inputs, output_captions=output_captions, input_captions=input_captions)
    images = models.clip_image_embeddings([*outputs, *inputs])
    texts = models.clip_text_embeddings([*output_captions, *input_captions])
    return directional_similarity(images[:count], images[count:], texts[:count], texts[count:])


def dino_similarity(models: MetricModels, outputs: Sequence[ImageLike], inputs: Sequence[ImageLike]) -> torch.Tensor:
    """DINO similarity of each (output, input) pair, shape (N,)."""
    count = _check_lengths(outputs=outputs, inputs=inputs)
    embeddings = models.dino_embeddings([*outputs, *inputs])
    return cosine_similarity(embeddings[:count], embeddings[count:])


def l1_distance(outputs: Sequence[ImageLike], inputs: Sequence[ImageLike]) -> torch.Tensor:
    """Mean absolute RGB difference in [0, 1] of each pair, shape (N,); each output is resized (bicubic) to its input's size."""
    _check_lengths(outputs=outputs, inputs=inputs)
    distances = []
    for output, source in zip(_as_rgb_images(outputs), _as_rgb_images(inputs)):
        if output.size != source.size:
            output = output.resize(source.size, PIL.Image.Resampling.BICUBIC)
        output_pixels = np.asarray(output, dtype=np.float32) / 255.0
        input_pixels = np.asarray(source, dtype=np.float32) / 255.0
        distances.append(float(np.abs(output_pixels - input_pixels).mean()))
    return torch.tensor(distances, dtype=torch.float32)


def edit_diversity(models: MetricModels, edit_groups: Sequence[Sequence[ImageLike]], encoder: str = "dino") -> torch.Tensor:
    """Diversity of each group of edits of one input: mean pairwise 1 - cosine of `encoder` embeddings, shape (G,).

    `encoder` is "dino" or "clip". Every group needs at least 2 edits.
    """
    if encoder not in ("dino", "clip"):
        raise ValueError(f"unknown diversity encoder {encoder!r}; use 'dino' or 'clip'")
    for index, group in enumerate(edit_groups):
        if len(group) < 2:
            raise ValueError(f"diversity needs at least 2 edits per input, but group {index} has {len(group)}")
    flat = [image for group in edit_groups for image in group]
    embeddings = models.dino_embeddings(flat) if encoder == "dino" else models.clip_image_embeddings(flat)
    sizes = [len(group) for group in edit_groups]
    return torch.stack([mean_pairwise_cosine_distance(block) for block in embeddings.split(sizes)]) if sizes else torch.empty(0)


# ---------------------------------------------------------------- evaluation


@dataclasses.dataclass
class EditEvaluation:
    """Metric values of a set of edits.

    `rows` has one dict per edited image: id (the item's), sample (index
    among that item's edits) and one value per pair metric, None where the
    item lacks a caption the metric needs. `diversity` maps each diversity
    metric to {item id: value}, for items with at least 2 edits. `means`
    averages each metric over the rows (or items, for diversity) that have a
    value, and `counts` gives how many that is. A metric with no value has
    mean None.
    """

    rows: list[dict[str, Any]]
    diversity: dict[str, dict[str, float]]
    means: dict[str, float | None]
    counts: dict[str, int]


def _check_metrics(models: MetricModels, metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        available = [*PAIR_METRICS, *DIVERSITY_METRICS]
        return [
            name for name in available
            if not (name in _CLIP_METRICS and models.clip is None) and not (name in _DINO_METRICS and models.dino is None)
        ]
    metrics = list(metrics)
    unknown = [name for name in metrics if name not in (*PAIR_METRICS, *DIVERSITY_METRICS)]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {[*PAIR_METRICS, *DIVERSITY_METRICS]}")
    for name in metrics:
        if name in _CLIP_METRICS and models.clip is None:
            raise ValueError(f"metric {name!r} needs a CLIP model; pass clip_model to MetricModels or drop {name!r}")
        if name in _DINO_METRICS and models.dino is None:
            raise ValueError(f"metric {name!r} needs a DINO model; pass dino_model to MetricModels or drop {name!r}")
    return metrics


def _edit_groups(items: Sequence[EditItem], edits: Sequence[ImageLike | Sequence[ImageLike]]) -> list[list[ImageLike]]:
    if len(items) != len(edits):
        raise ValueError(f"got {len(edits)} edit entries for {len(items)} items; pass one image or list of images per item")
    groups = []
    for item, entry in zip(items, edits):
        group = [entry] if isinstance(entry, PIL.Image.Image | str | Path) else list(entry)
        if not group:
            raise ValueError(f"item {item.id!r} has an empty list of edits")
        groups.append(group)
    return groups


def evaluate_edits(
    models: MetricModels,
    items: Sequence[EditItem],
    edits: Sequence[ImageLike | Sequence[ImageLike]],
    *,
    metrics: Sequence[str] | None = None,
) -> EditEvaluation:
    """Compute the metrics of each edit of `items`; `edits[i]` is one image (or path) or a list of them for item i.

    `metrics` names metrics from PAIR_METRICS and DIVERSITY_METRICS; None
    takes every metric that the loaded models allow. Items are processed in
    chunks of `models.batch_size`, so input images stored as files or dataset
    rows are decoded one chunk at a time.
    """
    metrics = _check_metrics(models, metrics)
    groups = _edit_groups(items, edits)
    rows: list[dict[str, Any]] = []
    diversity: dict[str, dict[str, float]] = {name: {} for name in metrics if name in DIVERSITY_METRICS}
    chunk_size = models.batch_size
    for start in tqdm(range(0, len(items), chunk_size), desc="edit metrics", unit="chunk", disable=None):
        chunk_items = [items[index] for index in range(start, min(start + chunk_size, len(items)))]
        chunk_rows, chunk_diversity = _evaluate_chunk(models, chunk_items, groups[start:start + chunk_size], metrics)
        rows.extend(chunk_rows)
        for name, values in chunk_diversity.items():
            diversity[name].update(values)

    means, counts = {}, {}
    for name in metrics:
        if name in DIVERSITY_METRICS:
            values = list(diversity[name].values())
        else:
            values = [row[name] for row in rows if row[name] is not None]
        counts[name] = len(values)
        means[name] = float(np.mean(values)) if values else None
    skipped = {name: len(rows) - counts[name] for name in metrics if name in PAIR_METRICS and counts[name] < len(rows)}
    if skipped:
        logger.warning("edits left out of a metric because their item lacks a caption: %s", skipped)
    logger.info("evaluated %d edits of %d items: %s", len(rows), len(items), means)
    return EditEvaluation(rows=rows, diversity=diversity, means=means, counts=counts)


def _evaluate_chunk(
    models: MetricModels, items: list[EditItem], groups: list[list[ImageLike]], metrics: list[str]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Compute the metrics of the edits of a few items with one batched embedding call per model."""
    inputs = [item.load_image() for item in items]
    outputs = _as_rgb_images([image for group in groups for image in group])
    owners = [position for position, group in enumerate(groups) for _ in group]  # item position of each output
    samples = [sample for group in groups for sample in range(len(group))]
    owner_index = torch.tensor(owners, dtype=torch.long)
    requested = set(metrics)

    # One value tensor of shape (outputs,) per pair metric; NaN marks a missing caption.
    values: dict[str, torch.Tensor] = {}
    clip_outputs = dino_outputs = None
    if requested & {"clip_i", "clip_direction", "clip_t", "clip_diversity"}:
        needs_inputs = bool(requested & {"clip_i", "clip_direction"})
        embeddings = models.clip_image_embeddings([*outputs, *inputs] if needs_inputs else outputs)
        clip_outputs, clip_inputs = embeddings[: len(outputs)], embeddings[len(outputs):]
        if "clip_i" in requested:
            values["clip_i"] = cosine_similarity(clip_outputs, clip_inputs[owner_index])
        if requested & {"clip_t", "clip_direction"}:
            values.update(_clip_text_metrics(models, items, requested, clip_outputs, clip_inputs, owner_index))
    if requested & {"dino", "dino_diversity"}:
        embeddings = models.dino_embeddings([*outputs, *inputs] if "dino" in requested else outputs)
        dino_outputs, dino_inputs = embeddings[: len(outputs)], embeddings[len(outputs):]
        if "dino" in requested:
            values["dino"] = cosine_similarity(dino_outputs, dino_inputs[owner_index])
    if "l1" in requested:
        values["l1"] = l1_distance(outputs, [inputs[owner] for owner in owners])

    rows = []
    for position, (owner, sample) in enumerate(zip(owners, samples)):
        row: dict[str, Any] = {"id": items[owner].id, "sample": sample}
        for name in metrics:
            if name in PAIR_METRICS:
                value = float(values[name][position])
                row[name] = None if math.isnan(value) else value
        rows.append(row)

    diversity: dict[str, dict[str, float]] = {}
    encoder_outputs = {"dino_diversity": dino_outputs, "clip_diversity": clip_outputs}
    sizes = [len(group) for group in groups]
    for name in requested & set(DIVERSITY_METRICS):
        blocks = encoder_outputs[name].split(sizes)
        diversity[name] = {
            item.id: float(mean_pairwise_cosine_distance(block)) for item, block in zip(items, blocks) if block.shape[0] >= 2
        }
    return rows, diversity


def _clip_text_metrics(
    models: MetricModels,
    items: list[EditItem],
    requested: set[str],
    clip_outputs: torch.Tensor,
    clip_inputs: torch.Tensor,
    owner_index: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Compute clip_t and clip_direction for every output, NaN where the item lacks the captions they need."""
    captions = sorted({caption for item in items for caption in (item.input_caption, item.output_caption) if caption is not None})
    text_embeddings = models.clip_text_embeddings(captions)
    row_of = {caption: row for row, caption in enumerate(captions)}
    dimension = clip_outputs.shape[1]

    def caption_embeddings(attribute: str) -> torch.Tensor:
        """Stack the embeddings of one caption field into (items, D), with NaN rows for items without it."""
        rows = []
        for item in items:
            caption = getattr(item, attribute)
            rows.append(torch.full((dimension,), float("nan")) if caption is None else text_embeddings[row_of[caption]])
        return torch.stack(rows)

    output_text = caption_embeddings("output_caption")[owner_index]
    values = {}
    if "clip_t" in requested:
        values["clip_t"] = cosine_similarity(clip_outputs, output_text)
    if "clip_direction" in requested:
        input_text = caption_embeddings("input_caption")[owner_index]
        values["clip_direction"] = directional_similarity(clip_outputs, clip_inputs[owner_index], output_text, input_text)
    return values
