"""Device choice, mixed precision, TF32, seeding and deterministic algorithms."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def choose_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """Return the torch device for `name` ("auto", "cpu", "cuda", "cuda:N", "mps").

    "auto" picks the GPU of this process's local rank when CUDA is available,
    else the CPU.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use device: auto or cpu")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Return an autocast context for `precision` ("fp32" disables autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def enable_tf32(enabled: bool = True) -> None:
    """Allow TF32 matmuls and convolutions on Ampere and newer GPUs."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool = True) -> None:
    """Ask torch for deterministic kernels (slower on GPU, free on CPU)."""
    if enabled:
        # cuBLAS needs this workspace setting for deterministic matmuls.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled


def describe_device(device: torch.device) -> str:
    """Return a human-readable hardware name for run records."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}"
    return f"CPU {cpu_model_name()}, {torch.get_num_threads()} threads"


def cpu_model_name() -> str:
    """Return the CPU model from /proc/cpuinfo on Linux, else the platform's processor string."""
    import platform

    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
