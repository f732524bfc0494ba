"""A dataset-level SANE run: decompose, edit with InstructPix2Pix and with SANE, measure.

A run writes runs/sane/<scale>/<name>/:

    config.yaml               the resolved config
    decompositions/           cached language-model outputs
    items/<id>.json           per image: instruction, caption, specific instructions, timings
    images/<id>/              input.png, baseline_seed<k>.png, sane_seed<k>.png
    sheets/<id>.png           contact sheet: input, baseline, SANE, the specific instructions
    metrics.json              metric means for the baseline and for SANE

Images with an items/<id>.json of the same config are skipped, so a run
stopped midway resumes without redoing finished images.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import torch
import yaml
from tqdm import tqdm

from common.config import ConfigError, to_dict
from common.device import choose_device, describe_device
from common.results import atomic_write_json, atomic_write_text, read_json, run_metadata
from sane import data as sane_data
from sane.config import TINY, RunConfig
from sane.decompose import OpenAIChatBackend, TransformersBackend, run_decomposition
from sane.metrics import MetricModels, evaluate_edits
from sane.pipeline import SanePipeline

log = logging.getLogger(__name__)
DEFAULT_RUNS_ROOT = Path("runs")


def run_dir_for(config: RunConfig, runs_root: Path) -> Path:
    return Path(runs_root) / "sane" / config.scale / config.name


def load_items(config: RunConfig) -> list:
    data = config.data
    if data.source == "smoke_photos":
        items = sane_data.smoke_items()
    elif data.source == "folder":
        items = sane_data.load_folder(data.path)
    elif data.source == "emu_edit":
        kwargs = {"split": data.split} if data.split else {}
        items = sane_data.load_emu_edit(data.path or "facebook/emu_edit_test_set", **kwargs)
    else:
        kwargs = {"split": data.split} if data.split else {}
        items = sane_data.load_magicbrush(data.path or "osunlp/MagicBrush", **kwargs)
    items = list(items[: data.limit] if data.limit else items)
    if not items:
        raise ConfigError(f"{config.path}: data source {data.source!r} has no images")
    return items


def build_backend(config: RunConfig):
    settings = config.decompose
    if settings.backend == "embedded":
        return TransformersBackend.embedded()
    if settings.backend == "transformers":
        if not settings.model:
            raise ConfigError(f"{config.path}: decompose.backend transformers needs decompose.model, a hub id or a local path")
        return TransformersBackend(settings.model, gguf_file=settings.gguf_file)
    if not settings.model or not settings.base_url:
        raise ConfigError(f"{config.path}: decompose.backend openai needs decompose.model and decompose.base_url")
    return OpenAIChatBackend(settings.base_url, settings.model, api_key_env=settings.api_key_env)


def build_pipeline(config: RunConfig, device: torch.device) -> SanePipeline:
    if config.editor.model == TINY:
        from sane.tiny import tiny_components

        pipeline = SanePipeline(**tiny_components())
    else:
        dtype = torch.float16 if config.editor.precision == "fp16" else torch.float32
        pipeline = SanePipeline.from_pretrained(config.editor.model, torch_dtype=dtype, safety_checker=None)
    pipeline.set_scheduler(config.editor.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def build_metric_models(config: RunConfig, run_dir: Path, device: torch.device) -> MetricModels:
    clip, dino = config.metrics.clip_model, config.metrics.dino_model
    if TINY in (clip, dino):
        from sane.tiny import save_tiny_clip, save_tiny_dino

        folder = run_dir / "tiny_models"
        clip = str(save_tiny_clip(folder / "clip")) if clip == TINY else clip
        dino = str(save_tiny_dino(folder / "dino")) if dino == TINY else dino
    return MetricModels(clip, dino, device=str(device))


def contact_sheet(path: Path, image: PIL.Image.Image, baseline: PIL.Image.Image, edited: PIL.Image.Image,
                  instruction: str, specific: list[str]) -> None:
    """Save input, InstructPix2Pix and SANE side by side, with the instructions below."""
    size = 256
    lines = [f"instruction: {instruction}"] + [f"{k + 1}. {text}" for k, text in enumerate(specific)]
    sheet = PIL.Image.new("RGB", (3 * size, size + 14 * (len(lines) + 1) + 8), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    for column, (label, picture) in enumerate((("input", image), ("InstructPix2Pix", baseline), ("SANE", edited))):
        sheet.paste(picture.resize((size, size)), (column * size, 0))
        draw.text((column * size + 4, 4), label, fill="white", stroke_width=2, stroke_fill="black")
    for row, line in enumerate(lines):
        draw.text((4, size + 6 + 14 * row), line[:120], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def edit_item(pipeline: SanePipeline, config: RunConfig, image: PIL.Image.Image, instruction: str, specific: list[str],
              folder: Path) -> dict:
    editor = config.editor
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / "input.png")
    timings, shares = {"baseline_s": 0.0, "sane_s": 0.0}, []
    for seed in editor.seeds:
        started = time.perf_counter()
        baseline = pipeline(prompt=instruction, image=image, num_inference_steps=editor.steps, guidance_scale=editor.s_text,
                            image_guidance_scale=editor.s_image, generator=torch.Generator().manual_seed(seed)).images[0]
        timings["baseline_s"] += time.perf_counter() - started
        started = time.perf_counter()
        result = pipeline.edit(image, instruction, specific, num_inference_steps=editor.steps, s_text=editor.s_text,
                               s_image=editor.s_image, s_additional=editor.s_additional, generator=torch.Generator().manual_seed(seed),
                               max_unet_batch=editor.max_unet_batch)
        timings["sane_s"] += time.perf_counter() - started
        baseline.save(folder / f"baseline_seed{seed}.png")
        result.images[0].save(folder / f"sane_seed{seed}.png")
        shares.append(result.selection_share[0])
    return {"timings": timings, "selection_share": shares}


def input_key(item) -> str:
    """Return a digest of what an item's edit depends on: image bytes, instruction and captions."""
    digest = hashlib.sha256()
    if item.image_path is not None:
        digest.update(Path(item.image_path).read_bytes())
    else:
        digest.update(item.load_image().tobytes())
    for text in (item.instruction, item.input_caption or "", item.output_caption or ""):
        digest.update(b"\0" + text.encode())
    return digest.hexdigest()[:16]


def run(config: RunConfig, runs_root: Path = DEFAULT_RUNS_ROOT) -> dict:
    """Run (or resume) `config` and return its metrics."""
    run_dir = run_dir_for(config, runs_root)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    device = choose_device(config.device)
    items = load_items(config)
    started = time.perf_counter()
    backend, pipeline = None, None
    for item in tqdm(items, desc=f"sane {config.name}", disable=not sys.stderr.isatty()):
        record_path = run_dir / "items" / f"{item.id}.json"
        key = input_key(item)
        if record_path.exists():
            record = read_json(record_path)
            if record.get("config_hash") == config.hash() and record.get("input_key") == key:
                log.info("%s: %s already edited, skipping", config.name, item.id)
                continue
            log.info("%s: %s changed since its last edit (image, instruction, caption or config); editing it again", config.name, item.id)
        caption = item.input_caption
        if caption is None:
            raise ConfigError(f"image {item.id!r} has no caption; add <stem>.caption.txt or caption the set with sane.decompose")
        if backend is None and config.decompose.n:
            backend = build_backend(config)
            if hasattr(backend, "load"):
                backend.load()  # so that the timing below is per instruction, without loading
        decomposition_started = time.perf_counter()
        decomposition = run_decomposition(caption, item.instruction, config.decompose.n, backend, max_attempts=config.decompose.max_attempts,
                                          on_shortfall=config.decompose.on_shortfall, cache_dir=run_dir / "decompositions",
                                          image_id=item.id) if config.decompose.n else None
        decomposition_s = time.perf_counter() - decomposition_started
        specific = decomposition.instructions if decomposition else []
        pipeline = pipeline or build_pipeline(config, device)
        image = item.load_image(size=config.data.image_size)
        edits = edit_item(pipeline, config, image, item.instruction, specific, run_dir / "images" / item.id)
        folder = run_dir / "images" / item.id
        contact_sheet(run_dir / "sheets" / f"{item.id}.png", image, PIL.Image.open(folder / f"baseline_seed{config.editor.seeds[0]}.png"),
                      PIL.Image.open(folder / f"sane_seed{config.editor.seeds[0]}.png"), item.instruction, specific)
        atomic_write_json(record_path, {
            "id": item.id, "instruction": item.instruction, "caption": caption, "specific": specific,
            "decomposition_s": round(decomposition_s, 2), "decomposition_from_cache": bool(decomposition and decomposition.from_cache),
            "decomposition_padded": bool(decomposition and decomposition.padded), **edits, "config_hash": config.hash(),
            "input_key": key,
        })
        log.info("%s: %s edited (%d specific instructions)", config.name, item.id, len(specific))
    return measure(config, items, run_dir, device, time.perf_counter() - started)


def measure(config: RunConfig, items: list, run_dir: Path, device: torch.device, wall_time_s: float) -> dict:
    models = build_metric_models(config, run_dir, device)
    results = {}
    for method in ("baseline", "sane"):
        edits = [[run_dir / "images" / item.id / f"{method}_seed{seed}.png" for seed in config.editor.seeds] for item in items]
        evaluation = evaluate_edits(models, items, edits)
        results[method] = {"means": evaluation.means, "counts": evaluation.counts}
    records = [read_json(run_dir / "items" / f"{item.id}.json") for item in items]
    decomposition_times = [r["decomposition_s"] for r in records if not r["decomposition_from_cache"] and r["specific"]]
    metrics = {
        "run": config.name, "dataset": config.data.source, "images": len(items), "n": config.decompose.n,
        "seeds": list(config.editor.seeds), "editor": config.editor.model, "steps": config.editor.steps,
        "decomposition_s_per_instruction": (sum(decomposition_times) / len(decomposition_times)) if decomposition_times else None,
        "padded_decompositions": sum(r["decomposition_padded"] for r in records),
        "results": results,
        **run_metadata(config_hash=config.hash(), seed=config.editor.seeds[0], scale=config.scale, hardware=describe_device(device),
                       wall_time_s=wall_time_s),
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics
