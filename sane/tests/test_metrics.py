"""Edit metrics on tiny randomly initialised CLIP and DINO models saved to disk and loaded back by path."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
    Dinov2Config,
    Dinov2Model,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from sane import metrics
from sane.data import EditItem
from sane.metrics import MetricModels

START, END = "<|startoftext|>", "<|endoftext|>"


def save_tiny_clip(folder):
    """Save a 2-layer CLIP with a character-level tokenizer (every byte a token, no merges) and 32x32 inputs."""
    characters = sorted(ByteLevel.alphabet())
    tokens = characters + [character + "</w>" for character in characters] + [START, END]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    text_config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=40, bos_token_id=vocab[START], eos_token_id=vocab[END], pad_token_id=vocab[END],
    )
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
    )
    config = CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_dinov2(folder):
    torch.manual_seed(1)
    config = Dinov2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
    )
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder


def save_tiny_vit(folder):
    """A ViT saved without its pooling layer, like the facebook/dino-vit* checkpoints."""
    torch.manual_seed(2)
    config = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run this module's tiny models on one intra-op thread, then restore the previous count.

    On a 2-core VM shared with other busy processes, two threads made each tiny forward pass take
    about 0.3 s against about 1 ms with one thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("metric_models")
    return {
        "clip": save_tiny_clip(root / "clip"),
        "dinov2": save_tiny_dinov2(root / "dinov2"),
        "vit": save_tiny_vit(root / "vit"),
    }


@pytest.fixture(scope="module")
def models(model_paths):
    return MetricModels(model_paths["clip"], model_paths["dinov2"], device="cpu", batch_size=2)


def random_images(count, seed=0, size=(40, 48)):
    generator = np.random.default_rng(seed)
    return [
        PIL.Image.fromarray(generator.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)
    ]


CAPTIONS_IN = ["a cat on a sofa", "a red car", "a bowl of fruit"]
CAPTIONS_OUT = ["a cat on a sofa in the snow", "a red vintage car", "a bowl of fruit with candles"]


# ---------------------------------------------------------------- loading


def test_missing_model_path_raises(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        MetricModels(clip_model=missing, dino_model=None, device="cpu")
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        MetricModels(clip_model=None, dino_model=str(missing), device="cpu")


def test_model_path_to_file_raises(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="save_pretrained"):
        MetricModels(clip_model=weights, dino_model=None, device="cpu")


def test_folder_without_processor_raises(tmp_path):
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    Dinov2Model(config).save_pretrained(tmp_path / "weights_only")
    with pytest.raises(OSError, match="weights_only.*model and its processor"):
        MetricModels(clip_model=None, dino_model=tmp_path / "weights_only", device="cpu")


def test_hub_load_failure_names_model(monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("repository not found")

    monkeypatch.setattr(CLIPModel, "from_pretrained", fail)
    with pytest.raises(OSError, match="owner/clip-model.*repository not found"):
        MetricModels(clip_model="owner/clip-model", dino_model=None, device="cpu")


def test_vit_dino_checkpoint_loads(model_paths):
    models = MetricModels(clip_model=None, dino_model=model_paths["vit"], device="cpu")
    embeddings = models.dino_embeddings(random_images(3))
    assert embeddings.shape == (3, 32)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_missing_model_rejected_by_metric(model_paths):
    clip_only = MetricModels(clip_model=model_paths["clip"], dino_model=None, device="cpu")
    with pytest.raises(ValueError, match="DINO"):
        clip_only.dino_embeddings(random_images(1))
    item = EditItem("a", None, "edit it", image=random_images(1)[0])
    with pytest.raises(ValueError, match="'dino'"):
        metrics.evaluate_edits(clip_only, [item], [item.image], metrics=["dino"])


# ---------------------------------------------------------------- embeddings and shapes


def test_embedding_shapes(models):
    images = random_images(3)
    assert models.clip_image_embeddings(images).shape == (3, 16)
    assert models.clip_text_embeddings(CAPTIONS_IN).shape == (3, 16)
    assert models.dino_embeddings(images).shape == (3, 32)
    assert models.clip_image_embeddings([]).shape == (0, 16)
    assert models.dino_embeddings([]).shape == (0, 32)


def test_embeddings_have_unit_norm(models):
    norms = models.clip_image_embeddings(random_images(3)).norm(dim=-1)
    assert torch.allclose(norms, torch.ones(3), atol=1e-5)


def test_batch_equals_one_by_one(models):
    # batch_size=2 splits 5 images into batches of 2, 2 and 1; captions of different lengths are padded.
    outputs, inputs = random_images(5, seed=1), random_images(5, seed=2)
    captions_in = CAPTIONS_IN + ["a dog", "a long caption about a house by a lake at night"]
    captions_out = CAPTIONS_OUT + ["a dog in a hat", "a house"]

    batched = {
        "clip_i": metrics.clip_image_similarity(models, outputs, inputs),
        "clip_t": metrics.clip_text_similarity(models, outputs, captions_out),
        "clip_direction": metrics.clip_directional_similarity(models, outputs, inputs, captions_out, captions_in),
        "dino": metrics.dino_similarity(models, outputs, inputs),
        "l1": metrics.l1_distance(outputs, inputs),
    }
    single = {name: [] for name in batched}
    for i in range(5):
        single["clip_i"].append(metrics.clip_image_similarity(models, outputs[i:i + 1], inputs[i:i + 1]))
        single["clip_t"].append(metrics.clip_text_similarity(models, outputs[i:i + 1], captions_out[i:i + 1]))
        single["clip_direction"].append(metrics.clip_directional_similarity(
            models, outputs[i:i + 1], inputs[i:i + 1], captions_out[i:i + 1], captions_in[i:i + 1]
        ))
        single["dino"].append(metrics.dino_similarity(models, outputs[i:i + 1], inputs[i:i + 1]))
        single["l1"].append(metrics.l1_distance(outputs[i:i + 1], inputs[i:i + 1]))

    for name, values in batched.items():
        assert values.shape == (5,), name
        assert torch.allclose(values, torch.cat(single[name]), atol=1e-5), name


def test_mismatched_lengths_raise(models):
    with pytest.raises(ValueError, match="equal lengths"):
        metrics.clip_image_similarity(models, random_images(2), random_images(3))


# ---------------------------------------------------------------- metric values


def test_identical_images_give_perfect_scores(models):
    images = random_images(3)
    copies = [image.copy() for image in images]
    assert torch.allclose(metrics.clip_image_similarity(models, images, copies), torch.ones(3), atol=1e-5)
    assert torch.allclose(metrics.dino_similarity(models, images, copies), torch.ones(3), atol=1e-5)
    assert torch.equal(metrics.l1_distance(images, copies), torch.zeros(3))


def test_directional_similarity_flips_sign(models):
    outputs, inputs = random_images(3, seed=3), random_images(3, seed=4)
    forward = metrics.clip_directional_similarity(models, outputs, inputs, CAPTIONS_OUT, CAPTIONS_IN)
    backward = metrics.clip_directional_similarity(models, inputs, outputs, CAPTIONS_OUT, CAPTIONS_IN)
    assert torch.all(forward.abs() > 1e-4)
    assert torch.allclose(backward, -forward, atol=1e-5)


def test_directional_similarity_zero_without_change(models):
    images = random_images(2)
    values = metrics.clip_directional_similarity(models, images, images, CAPTIONS_OUT[:2], CAPTIONS_IN[:2])
    assert torch.allclose(values, torch.zeros(2), atol=1e-6)


def test_l1_known_values():
    black = PIL.Image.new("RGB", (8, 8), (0, 0, 0))
    white = PIL.Image.new("RGB", (8, 8), (255, 255, 255))
    gray_large = PIL.Image.new("RGB", (16, 12), (51, 51, 51))
    values = metrics.l1_distance([white, gray_large], [black, black])
    assert torch.allclose(values, torch.tensor([1.0, 0.2]), atol=1e-6)


def test_l1_reads_paths_and_gray_images(tmp_path):
    path = tmp_path / "gray.png"
    PIL.Image.new("L", (8, 8), 255).save(path)
    black = PIL.Image.new("RGB", (8, 8), (0, 0, 0))
    assert metrics.l1_distance([path], [black]).item() == pytest.approx(1.0)


def test_pairwise_cosine_distance_values():
    orthogonal = torch.eye(3)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert metrics.mean_pairwise_cosine_distance(orthogonal).item() == pytest.approx(1.0)
    assert metrics.mean_pairwise_cosine_distance(opposite).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.mean_pairwise_cosine_distance(torch.ones(1, 4))


@pytest.mark.parametrize("encoder", ["dino", "clip"])
def test_diversity_zero_for_identical_edits(models, encoder):
    image = random_images(1)[0]
    distinct = random_images(3, seed=5)
    values = metrics.edit_diversity(models, [[image, image.copy(), image.copy()], distinct], encoder=encoder)
    assert values.shape == (2,)
    assert values[0].item() == pytest.approx(0.0, abs=1e-5)
    assert values[1].item() > 1e-4


def test_diversity_rejects_single_edit(models):
    with pytest.raises(ValueError, match="group 1 has 1"):
        metrics.edit_diversity(models, [random_images(2), random_images(1)])
    with pytest.raises(ValueError, match="unknown diversity encoder"):
        metrics.edit_diversity(models, [random_images(2)], encoder="lpips")


# ---------------------------------------------------------------- evaluate_edits


def make_items():
    inputs = random_images(3, seed=6)
    return [
        EditItem("with_captions", None, "make it festive", CAPTIONS_IN[0], CAPTIONS_OUT[0], image=inputs[0]),
        EditItem("no_captions", None, "make it vintage", image=inputs[1]),
        EditItem("input_caption_only", None, "make it wintry", CAPTIONS_IN[2], image=inputs[2]),
    ]


def test_evaluate_rows_and_means(models):
    items = make_items()
    edits = [random_images(2, seed=7), random_images(1, seed=8)[0], random_images(3, seed=9)]
    result = metrics.evaluate_edits(models, items, edits)

    assert [(row["id"], row["sample"]) for row in result.rows] == [
        ("with_captions", 0), ("with_captions", 1), ("no_captions", 0),
        ("input_caption_only", 0), ("input_caption_only", 1), ("input_caption_only", 2),
    ]
    assert set(result.means) == {"clip_i", "clip_t", "clip_direction", "dino", "l1", "dino_diversity", "clip_diversity"}
    for name in ("clip_i", "dino", "l1"):
        values = [row[name] for row in result.rows]
        assert result.counts[name] == 6
        assert result.means[name] == pytest.approx(np.mean(values))

    # Only the first item has an output caption, which both text metrics need.
    assert [row["clip_t"] is None for row in result.rows] == [False, False, True, True, True, True]
    assert result.counts["clip_t"] == 2
    assert result.counts["clip_direction"] == 2
    assert result.means["clip_t"] == pytest.approx(np.mean([row["clip_t"] for row in result.rows[:2]]))

    # Diversity needs 2 edits, so the item with a single edit has none.
    assert set(result.diversity["dino_diversity"]) == {"with_captions", "input_caption_only"}
    assert result.counts["dino_diversity"] == 2


def test_evaluate_matches_metric_functions(models):
    items = make_items()
    edits = random_images(3, seed=10)
    inputs = [item.image for item in items]
    result = metrics.evaluate_edits(models, items, edits, metrics=["clip_i", "dino", "l1", "clip_t"])

    expected = {
        "clip_i": metrics.clip_image_similarity(models, edits, inputs),
        "dino": metrics.dino_similarity(models, edits, inputs),
        "l1": metrics.l1_distance(edits, inputs),
    }
    for name, values in expected.items():
        assert [row[name] for row in result.rows] == pytest.approx(values.tolist(), abs=1e-5), name
    clip_t = metrics.clip_text_similarity(models, edits[:1], CAPTIONS_OUT[:1])
    assert result.rows[0]["clip_t"] == pytest.approx(clip_t.item(), abs=1e-5)
    assert result.diversity == {}


def test_evaluate_chunks_match_single_chunk(model_paths, models):
    # batch_size=1 puts every item in its own chunk.
    one_per_chunk = MetricModels(model_paths["clip"], model_paths["dinov2"], device="cpu", batch_size=1)
    items = make_items()
    edits = [random_images(2, seed=11), random_images(2, seed=12), random_images(2, seed=13)]
    chunked = metrics.evaluate_edits(one_per_chunk, items, edits)
    whole = metrics.evaluate_edits(models, items, edits)
    for name, value in whole.means.items():
        assert chunked.means[name] == pytest.approx(value, abs=1e-5), name


def test_evaluate_identical_edit(models):
    items = make_items()[:1]
    result = metrics.evaluate_edits(models, items, [items[0].image.copy()], metrics=["clip_i", "dino", "l1", "clip_direction"])
    row = result.rows[0]
    assert row["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert row["dino"] == pytest.approx(1.0, abs=1e-5)
    assert row["l1"] == 0.0
    assert row["clip_direction"] == pytest.approx(0.0, abs=1e-6)


def test_evaluate_rejects_bad_arguments(models):
    items = make_items()
    with pytest.raises(ValueError, match="2 edit entries for 3 items"):
        metrics.evaluate_edits(models, items, random_images(2))
    with pytest.raises(ValueError, match="empty list of edits"):
        metrics.evaluate_edits(models, items, [[], random_images(1), random_images(1)])
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.evaluate_edits(models, items, random_images(3), metrics=["psnr"])

