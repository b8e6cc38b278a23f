"""Timing a detector's variants (:mod:`.detection`): the photos they run on, one first call each
compared with the eager explainer's outputs, then the rounds of :func:`.timing.time_rounds`."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ExplainExportError, first_line
from .config import REFERENCE, BenchConfig, Variant
from .stats import summarize
from .timing import cpu_snapshot, others_cpu_share, time_rounds

__all__ = ["bench_images", "measure_detection", "parity"]

Outputs = tuple[Tensor, ...]


def bench_images(batch: int, input_size: tuple[int, int]) -> Tensor:
    """``[batch, 3, H, W]`` in [0, 1]: the scikit-image photos in turn (random where none)."""
    from ..builder.export.detection import detection_cases

    photos = [c.image[0] for c in detection_cases(input_size) if c.label.startswith("photo")]
    if not photos:
        gen = torch.Generator().manual_seed(batch)
        return torch.rand(batch, 3, *input_size, generator=gen)
    return torch.from_numpy(np.stack([photos[i % len(photos)] for i in range(batch)]))


def parity(got: Outputs, ref: Outputs, maps: bool) -> dict[str, Any]:
    """``got`` against eager's ``ref``: the same ``count`` and ``classes``, and the largest
    difference of the boxes, the scores, (``maps``: the same method) the maps, and a Mask
    R-CNN's masks (the last output; the baseline's outputs are eager's less the heatmap)."""

    def diff(a: Tensor, b: Tensor) -> float:
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0

    out = {
        "detections": int(ref[3].sum()),
        "same_detections": bool(torch.equal(got[3], ref[3]) and torch.equal(got[2], ref[2])),
        "boxes_max_abs_diff": diff(got[0], ref[0]),
        "scores_max_abs_diff": diff(got[1], ref[1]),
    }
    if maps:
        out["heatmap_max_abs_diff"] = diff(got[4], ref[4])
    if len(ref) > 5:  # masks, after the heatmap
        out["masks_max_abs_diff"] = diff(got[-1], ref[5])
    return out


def measure_detection(
    variants: list[Variant],
    config: BenchConfig,
    input_size: tuple[int, int],
    tick: Callable[[int], None] = lambda _batch: None,
) -> tuple[dict[int, dict[str, list[float]]], dict[int, float | None]]:
    """Per batch size: one first call per variant (its outputs compared with eager's), the
    warm-up rounds, then the timed rounds; each variant's ``batches`` filled. Returns the raw
    samples ``{batch: {variant: [ms, ...]}}`` and the CPU share other processes used."""
    by_name = {v.name: v for v in variants}
    raw: dict[int, dict[str, list[float]]] = {}
    others: dict[int, float | None] = {}

    def fail(name: str, exc: BaseException) -> None:
        by_name[name].status = f"failed: {first_line(exc)}"

    for batch in config.batch_sizes:
        image = bench_images(batch, input_size)
        calls: dict[str, Any] = {}
        ref: Outputs | None = None
        for v in variants:
            if v.make is None or v.status != "ok":
                continue
            try:
                t0 = time.perf_counter()
                call = v.make(image)
                got = tuple(t.clone() for t in call())  # type: ignore[attr-defined]
                first_ms = (time.perf_counter() - t0) * 1000
            except Exception as exc:
                if v.name == REFERENCE:
                    raise ExplainExportError(
                        f"the eager detection explainer failed at batch {batch}: {first_line(exc)}"
                    ) from exc
                fail(v.name, exc)
                continue
            ref = got if v.name == REFERENCE else ref
            assert ref is not None  # eager is built and run first
            v.batches[batch] = {
                "first_call_ms": round(first_ms, 3),
                "vs_eager": parity(got, ref, v.name == "ort_gradcam"),
            }
            calls[v.name] = call
        step = functools.partial(tick, batch)
        time_rounds(calls, config.warmup, lambda: None, step, fail)
        before = cpu_snapshot()
        times, _ = time_rounds(
            calls, config.iters, lambda: None, step, fail, config.prime, config.settle_s
        )
        others[batch] = others_cpu_share(before, cpu_snapshot())
        raw[batch] = {}
        for name, samples in times.items():
            v = by_name[name]
            if v.status != "ok":
                v.batches.pop(batch, None)
                continue
            v.batches[batch].update(summarize(samples, batch))
            v.batches[batch]["samples_ms"] = [round(t, 4) for t in samples]
            raw[batch][name] = samples
    return raw, others
