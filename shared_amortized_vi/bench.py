"""Measure the few-shot task throughput of SAMOVAR and its baselines, and write benchmarks/samovar.md and .json.

    python -m shared_amortized_vi.bench                      # Conv-4 at 28 px; ResNet-12 at 84 px when it fits the budget
    python -m shared_amortized_vi.bench --tiny --out /tmp/samovar.md   # a few-second check of the script itself

Training: one forward and backward pass of a 5-way task (1 and 5 shots,
15 queries per class, 10 weight samples) for each method. Evaluation:
`shared_amortized_vi.model.predict` with 100 prior samples drawn in one batch, beside the same
prediction written as a Python loop over the samples. Inputs are random
tensors of Omniglot's shape (1x28x28) for Conv-4 and miniImageNet's
(3x84x84) for ResNet-12, which is measured only when an estimate from one
timed forward pass fits --resnet12-budget. Each time is the median over
repeats after one warm-up call (common.benchmark.median_time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from common.benchmark import median_time
from common.device import choose_device, describe_device
from shared_amortized_vi.config import ExperimentConfig, ModelOptions
from shared_amortized_vi.model import SamovarModel, mean_probabilities, predict, sample_weights, split_features, task_loss
from shared_amortized_vi.train import IMAGE_SIZES, build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ("samovar", "versa", "protonet")
# Backbone -> dataset whose image shape it is measured on.
BACKBONE_DATASETS = {"conv4": "omniglot", "resnet12": "mini-imagenet"}


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15  # per class, in training and test tasks
    samples: int = 10  # weight samples per training task
    test_samples: int = 100  # prior samples per prediction
    repeats: int = 5
    model: ModelOptions = ModelOptions()


TINY = BenchSettings(ways=3, shots=(1,), queries=2, samples=2, test_samples=4, repeats=1,
                     model=ModelOptions(conv4_hidden=16, inference_hidden=(16,)))


def random_task(settings: BenchSettings, shots: int, dataset: str, device: torch.device,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Make a task of random images with the benchmark's shape: (support_x, support_y, query_x, query_y)."""
    channels, size = IMAGE_SIZES[dataset]
    generator = torch.Generator().manual_seed(seed)
    support_y = torch.arange(settings.ways).repeat_interleave(shots)
    query_y = torch.arange(settings.ways).repeat_interleave(settings.queries)
    support_x = torch.rand(len(support_y), channels, size, size, generator=generator)
    query_x = torch.rand(len(query_y), channels, size, size, generator=generator)
    return support_x.to(device), support_y.to(device), query_x.to(device), query_y.to(device)


def make_model(settings: BenchSettings, method: str, backbone: str, device: torch.device) -> SamovarModel:
    config = ExperimentConfig(name=f"bench_{method}_{backbone}", dataset=BACKBONE_DATASETS[backbone], backbone=backbone,
                              method=method, model=settings.model)
    torch.manual_seed(0)
    return build_model(config).to(device)


@torch.no_grad()
def score_with_loop(model: SamovarModel, prior_mean: torch.Tensor, prior_logvar: torch.Tensor, query_features: torch.Tensor,
                    samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Average the class probabilities of the queries over `samples` prior draws, one draw per Python loop iteration."""
    total = query_features.new_zeros(query_features.shape[0], prior_mean.shape[0])
    for _ in range(samples):
        weights = sample_weights(prior_mean, prior_logvar, 1, generator)
        total += torch.softmax(model.logits(query_features, weights)[0], dim=-1)
    return total / samples


@torch.no_grad()
def score_batched(model: SamovarModel, prior_mean: torch.Tensor, prior_logvar: torch.Tensor, query_features: torch.Tensor,
                  samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Average the class probabilities of the queries over `samples` prior draws taken in one batch, as `predict` does."""
    return mean_probabilities(model.logits(query_features, sample_weights(prior_mean, prior_logvar, samples, generator)))


@torch.no_grad()
def predict_with_loop(model: SamovarModel, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                      n_way: int, samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Compute what `predict` computes for a samovar or versa model, drawing and scoring one weight sample per loop iteration.

    This exists only as the baseline for timing the batched pass. The backbone
    and the prior run once, as in `predict`.
    """
    support_features, query_features = split_features(model, support_x, query_x)
    prior_mean, prior_logvar = model.require_inference("predict_with_loop").class_gaussians(support_features, support_y, n_way)
    return score_with_loop(model, prior_mean, prior_logvar, query_features, samples, generator)


def time_training(model: SamovarModel, task, settings: BenchSettings, device: torch.device) -> float:
    """Measure the median seconds of one forward and backward pass of `task` under the model's objective."""
    model.train()
    generator = torch.Generator(device=device).manual_seed(0)

    def step():
        model.zero_grad(set_to_none=True)
        task_loss(model, *task, settings.ways, 1.0, settings.samples, generator)["loss"].backward()

    return median_time(step, settings.repeats)


def time_evaluation(model: SamovarModel, task, settings: BenchSettings, device: torch.device) -> dict[str, float | None]:
    """Measure the median seconds of evaluating one task, batched and with a loop over the prior samples.

    Returned keys: predict_s (`predict`, backbone included), predict_loop_s
    (`predict_with_loop`), scoring_s and scoring_loop_s (drawing and scoring
    the samples only, from precomputed features and prior). All but
    predict_s are None for protonet, which draws no samples.
    """
    model.eval()
    support_x, support_y, query_x, _ = task
    generator = torch.Generator(device=device).manual_seed(0)
    times: dict[str, float | None] = {"predict_s": None, "predict_loop_s": None, "scoring_s": None, "scoring_loop_s": None}
    times["predict_s"] = median_time(
        lambda: predict(model, support_x, support_y, query_x, settings.ways, settings.test_samples, generator), settings.repeats)
    if model.method == "protonet":
        return times
    times["predict_loop_s"] = median_time(
        lambda: predict_with_loop(model, support_x, support_y, query_x, settings.ways, settings.test_samples, generator),
        settings.repeats)

    with torch.no_grad():
        support_features, query_features = split_features(model, support_x, query_x)
        prior_mean, prior_logvar = model.require_inference("time_evaluation").class_gaussians(support_features, support_y, settings.ways)
    arguments = (model, prior_mean, prior_logvar, query_features, settings.test_samples, generator)
    times["scoring_s"] = median_time(lambda: score_batched(*arguments), settings.repeats)
    times["scoring_loop_s"] = median_time(lambda: score_with_loop(*arguments), settings.repeats)
    return times


def milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def ratio(numerator: float | None, denominator: float | None) -> str:
    return "-" if numerator is None or denominator is None else f"{numerator / denominator:.2f}"


def bench_backbone(backbone: str, settings: BenchSettings, device: torch.device) -> list[dict]:
    rows = []
    dataset = BACKBONE_DATASETS[backbone]
    channels, size = IMAGE_SIZES[dataset]
    for shots in settings.shots:
        task = random_task(settings, shots, dataset, device)
        for method in METHODS:
            model = make_model(settings, method, backbone, device)
            train_s = time_training(model, task, settings, device)
            times = time_evaluation(model, task, settings, device)
            row = {"backbone": backbone, "input": f"{channels}x{size}x{size}", "method": method, "ways": settings.ways,
                   "shots": shots, "queries": settings.queries, "train_samples": 0 if method == "protonet" else settings.samples,
                   "test_samples": 0 if method == "protonet" else settings.test_samples, "train_step_s": train_s, **times}
            rows.append(row)
            print(f"{backbone:<8} {method:<8} {shots}-shot: train {milliseconds(train_s)}, predict {milliseconds(times['predict_s'])}, "
                  f"loop {milliseconds(times['predict_loop_s'])}, scoring {milliseconds(times['scoring_s'])}, "
                  f"scoring loop {milliseconds(times['scoring_loop_s'])} ms", flush=True)
    return rows


def estimate_resnet12(settings: BenchSettings, device: torch.device, probe_images: int = 2) -> tuple[float, float]:
    """Time a ResNet-12 forward pass at 84 px and return its seconds per image and the estimated seconds of the ResNet-12 section.

    The forward pass is timed once after a warm-up call. The estimate is
    rough. It counts a training pass as three forward passes over the task's
    images, because a backward pass costs about two. A `predict` call and a
    loop call count as one forward pass each. The sum covers every method,
    shot setting, and timed or warm-up call.
    """
    model = make_model(settings, "samovar", "resnet12", device).eval()
    channels, size = IMAGE_SIZES[BACKBONE_DATASETS["resnet12"]]
    images = torch.rand(probe_images, channels, size, size, device=device)
    with torch.no_grad():
        per_image_s = median_time(lambda: model.features(images), 1) / probe_images
    task_images = sum(settings.ways * (shots + settings.queries) for shots in settings.shots)
    forward_passes = 3 + 1 + 1
    estimate_s = per_image_s * task_images * forward_passes * len(METHODS) * (settings.repeats + 1)
    return per_image_s, estimate_s


def render(results: dict) -> str:
    settings = results["settings"]
    lines = [
        "# SAMOVAR benchmarks", "",
        f"Command: `{results['command']}`. Machine: {results['machine']}; torch {results['torch']}; 1-minute load "
        f"average {results['load_average']} at the start (other processes on the same cores slow every number down). "
        f"Random input tensors, {settings['ways']}-way tasks with {settings['queries']} queries per class, "
        f"median of {settings['repeats']} calls after one warm-up call. Each method runs its own objective from "
        "shared_amortized_vi/model.py with the default ModelOptions.", "",
        "## Training", "",
        f"One forward and backward pass of one task ({settings['samples']} weight samples for SAMOVAR and VERSA-style; "
        "no optimiser step, no data loading).", "",
        "| backbone | input | method | shots | step (ms) | tasks/s |", "|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(f"| {row['backbone']} | {row['input']} | {row['method']} | {row['shots']} | {milliseconds(row['train_step_s'])} "
                     f"| {1 / row['train_step_s']:.1f} |")
    lines += [
        "", "## Evaluation", "",
        f"`predict` draws {settings['test_samples']} weight matrices from the prior in one batch and scores every query "
        "under all of them with one einsum. The loop columns compute the same average with one sample per Python "
        "iteration. \"Whole\" includes the backbone and the prior, which run once either way; \"sampling and scoring\" "
        "starts from precomputed features and prior. ProtoNets draws no samples.", "",
        "| backbone | input | method | shots | whole, batched (ms) | tasks/s | whole, loop (ms) | loop / batched "
        "| sampling and scoring, batched (ms) | sampling and scoring, loop (ms) | loop / batched |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(f"| {row['backbone']} | {row['input']} | {row['method']} | {row['shots']} | {milliseconds(row['predict_s'])} "
                     f"| {1 / row['predict_s']:.1f} | {milliseconds(row['predict_loop_s'])} "
                     f"| {ratio(row['predict_loop_s'], row['predict_s'])} | {milliseconds(row['scoring_s'])} "
                     f"| {milliseconds(row['scoring_loop_s'])} | {ratio(row['scoring_loop_s'], row['scoring_s'])} |")
    lines += ["", f"ResNet-12 at 84 px: {results['resnet12']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m shared_amortized_vi.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "samovar.md",
                        help="markdown page to write; a .json with the raw numbers is written beside it")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); 1 gives steadier numbers when other processes share the cores")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 5, or 1 with --tiny)")
    parser.add_argument("--resnet12-budget", type=float, default=30.0,
                        help="seconds the ResNet-12 section may take, estimated from one timed forward pass; 0 skips it (default 30)")
    parser.add_argument("--tiny", action="store_true",
                        help="3-way 1-shot tasks, a 16-channel Conv-4, 2 queries and 4 prior samples, no ResNet-12: checks the script")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    settings = TINY if args.tiny else BenchSettings()
    if args.repeats is not None:
        settings = dataclasses.replace(settings, repeats=args.repeats)
    device = choose_device(args.device)
    load_at_start = round(os.getloadavg()[0], 2)
    rows = bench_backbone("conv4", settings, device)

    if args.tiny or args.resnet12_budget <= 0:
        resnet12 = "not measured (--tiny or --resnet12-budget 0)."
    else:
        per_image_s, estimate_s = estimate_resnet12(settings, device)
        probe = f"a forward pass took {1000 * per_image_s:.1f} ms per image, so the section would take about {estimate_s:.0f} s"
        if estimate_s <= args.resnet12_budget:
            rows += bench_backbone("resnet12", settings, device)
            resnet12 = f"measured ({probe})."
        else:
            resnet12 = f"skipped: {probe}, over the {args.resnet12_budget:g} s budget (--resnet12-budget)."
        print(f"ResNet-12: {resnet12}", flush=True)

    results = {
        "command": shlex.join(["python", "-m", "shared_amortized_vi.bench", *argv]),
        "machine": f"{describe_device(device)}, {platform.machine()}",
        "load_average": load_at_start,
        "torch": torch.__version__,
        "settings": {**dataclasses.asdict(settings), "model": dataclasses.asdict(settings.model)},
        "resnet12": resnet12,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
