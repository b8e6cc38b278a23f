"""The machine a run was timed on: CPU model, cores, threads, PyTorch's SIMD level, the GPU."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from .config import BenchConfig

__all__ = ["machine"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(config: BenchConfig, threads: int) -> dict[str, Any]:
    """CPU model, cores, the threads used, the SIMD level PyTorch picked; the GPU if one is used."""
    get_capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)
    affinity = getattr(os, "sched_getaffinity", None)
    out: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(affinity(0)) if affinity else os.cpu_count(),
        "torch_threads": threads,
        "ort_intra_op_threads": threads,
        "cpu_capability": get_capability(),
        "platform": platform.platform(),
        "gpu": None,
    }
    if config.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(torch.device("cuda"))
    return out
