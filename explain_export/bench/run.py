"""Run the whole bench on an explainer: build the variants, time them, profile the ORT head,
and return the JSON-ready result that :mod:`.report` writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import torch

from ..builder.explainer import Explainer
from ..builder.export.writers import versions
from ..builder.model.source import ModelSource
from .config import BenchConfig, _label
from .machine import machine
from .profile import head_profiles
from .stats import best_exported, ratios
from .targets import check_targets, load_targets
from .timing import HEAP_KEEP, keep_freed_memory, measure
from .variants import build_variants

__all__ = ["BUSY_SHARE", "busy", "load_explainer", "run_bench"]


def run_bench(
    explainer: Explainer,
    config: BenchConfig,
    *,
    model: str = "user model",
    command: str | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    tick: Callable[[int], None] = lambda _batch: None,
) -> dict[str, Any]:
    """Build every variant, time them, and return the JSON-ready result (see :mod:`.report`).

    ``tick(batch)`` is called after each round, for a progress bar:
    ``len(batch_sizes) * (warmup + iters)`` calls in all.
    """
    import onnxruntime as ort

    info = explainer.plan
    config.check()
    # the project's goals, judged only where asked (--targets); a missing or broken targets
    # file fails before any timing
    targets = load_targets() if config.targets else ()
    threads = config.threads or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    device = torch.device(config.device)
    started = datetime.now().astimezone()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    if config.models_dir:
        os.makedirs(config.models_dir, exist_ok=True)
    if config.tuned_malloc:
        keep_freed_memory()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="explain-bench-") as workdir:
            variants = build_variants(explainer, config, workdir, log)
            live = sum(v.make is not None and v.status == "ok" for v in variants)
            log(f"timing {live} variants at batch sizes {', '.join(map(str, config.batch_sizes))}")
            raw, others = measure(variants, config, info.input_size, tick)
            profile = head_profiles(variants, config, info.input_size, threads, log)
    finally:
        torch.set_num_threads(previous_threads)
    found = ratios(raw, config.method_variants())
    fastest = best_exported(raw)
    notes = [f"{_label(v.name)}: {v.status}" for v in variants if v.status != "ok"]
    return {
        "format": "explain-bench/1",
        "created": started.isoformat(timespec="seconds"),
        "created_utc": started.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": {
            "model": model,
            "method": info.method,
            "layer": info.layer,
            "head": info.head,
            "input_size": list(info.input_size),
            "num_classes": info.num_classes,
            "device": config.device,
            "batch_sizes": list(config.batch_sizes),
            "threads": threads,
            "warmup": config.warmup,
            "iters": config.iters,
            "opset": config.opset,
            "skip": sorted(config.skip),
            "methods": list(config.methods),
            "top_k": config.top_k,
            "targets": config.targets,
            "channels_last": config.channels_last,
            "malloc": f"glibc mmap and trim thresholds {HEAP_KEEP >> 20} MiB"
            if config.tuned_malloc
            else "default",
            "prime": config.prime,
            "settle_s": config.settle_s,
            "order": "round-robin; the order rotates by one variant each round",
            "timer": "time.perf_counter_ns per call"
            + ("; torch.cuda.synchronize before and after" if device.type == "cuda" else ""),
        },
        "machine": machine(config, threads),
        "loadavg": {
            "start": list(load_start) if load_start else None,
            "end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "others_cpu_share": {str(b): share for b, share in others.items()},
        "versions": versions(),
        "providers": {
            "available": ort.get_available_providers(),
            **{v.name: v.providers for v in variants if v.providers is not None},
        },
        "variants": {v.name: v.to_dict() for v in variants},
        "ratios": found,
        "best_exported": fastest,
        "head_profile": profile,
        "busy": busy(others),
        "targets": check_targets(
            {**found, "best_exported": fastest, "head_profile": profile},
            config.device,
            targets,
            busy=set(busy(others)),
        ),
        "notes": notes,
    }


BUSY_SHARE = 0.10  # other processes using more of the CPUs than this make the timings unreliable


def busy(others: dict[int, float | None]) -> dict[str, float]:
    """The batch sizes (as text) during whose timing other processes used more than
    ``BUSY_SHARE`` of the CPUs, with that share: their figures are not reliable (measured runs
    have varied 7-50x under 50-70% load)."""
    return {str(b): s for b, s in others.items() if s is not None and s > BUSY_SHARE}


def load_explainer(
    source: ModelSource,
    layer: str | None,
    method: str,
    head: str | None,
    input_size: tuple[int, int],
    loaded: Any = None,
) -> tuple[Explainer, str]:
    """The explainer the ``explain-export`` flags describe (no model flags: the embedded
    default), and the model's description; ``loaded``: the model already loaded from
    ``source``, if it was."""
    from ..builder.explainer import build_explainer

    loaded = loaded or source.load(input_size)
    layer = layer or loaded.layer
    explainer = build_explainer(loaded.model, layer, method, input_size, head=head)
    return explainer, loaded.description
