"""Timing: the rounds (settle, prime, one timed call per variant, the order rotated), page
faults, the CPU other processes use meanwhile, glibc's malloc tuning, and :func:`measure`, which
times every variant at every batch size.

In a round every variant takes one turn, in an order rotated by one each round, so drift
(clocks, other processes) hits all alike. A turn is an idle pause (``settle_s``: ONNX Runtime's
threads spin for 20-50 ms after a run and would slow whichever variant came next), ``prime``
untimed calls (the variant's own weights back in cache), then one timed call. On CUDA the device
is synchronized before and after, which also covers ONNX Runtime's own stream.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

from ..errors import ExplainExportError, OptionError, first_line
from .config import REFERENCE, BenchConfig, Call, Variant
from .stats import summarize

__all__ = [
    "HEAP_KEEP",
    "M_MMAP_THRESHOLD",
    "M_TRIM_THRESHOLD",
    "cpu_snapshot",
    "keep_freed_memory",
    "measure",
    "others_cpu_share",
    "time_rounds",
]


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_rounds(
    calls: dict[str, Call],
    rounds: int,
    sync: Callable[[], None],
    tick: Callable[[], None] = lambda: None,
    failed: Callable[[str, BaseException], None] | None = None,
    prime: int = 0,
    settle_s: float = 0.0,
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Run ``rounds`` rounds; in each, every variant takes one turn, in an order rotated by one
    per round. A turn is an idle pause of ``settle_s``, ``prime`` untimed calls, then one timed
    call. Returns each variant's wall times in ms, and the page faults (minor, whole process)
    of each timed call. A call that raises drops its variant (``failed(name, exc)``)."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    faults: dict[str, list[int]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            if name not in calls:
                continue
            try:
                if settle_s:
                    time.sleep(settle_s)
                for _ in range(prime):
                    calls[name]()
                sync()
                f0 = _minor_faults()
                t0 = time.perf_counter_ns()
                calls[name]()
                sync()
                times[name].append((time.perf_counter_ns() - t0) / 1e6)
                faults[name].append(_minor_faults() - f0)
            except Exception as exc:
                del calls[name]
                if failed is not None:
                    failed(name, exc)
        tick()
    return times, faults


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def _max_diff(a: Tensor | None, b: Tensor | None) -> float | None:
    """Max abs difference, on the host (the numpy variants return CPU tensors)."""
    if a is None or b is None:
        return None
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
HEAP_KEEP = 1 << 30


def keep_freed_memory() -> None:
    """glibc only: ``mallopt(M_MMAP_THRESHOLD, 1 GiB)`` and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``.

    By default glibc serves large blocks with ``mmap`` and returns them on ``free``, so every
    call of an eager PyTorch model that allocates big activations page-faults them in again (on
    the 2-core test machine: 115 000 faults and 240 ms of system time per batch of 8). With both
    thresholds raised, freed blocks stay in the heap and are reused, as with jemalloc/tcmalloc.
    ONNX Runtime has its own arena either way. This lasts for the rest of the process.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, HEAP_KEEP) and libc.mallopt(M_TRIM_THRESHOLD, HEAP_KEEP)
    except (OSError, AttributeError):
        ok = False
    if not ok:
        raise OptionError("tuned_malloc", "{name} needs glibc (mallopt); it is not available here")


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy seconds of all CPUs from /proc/stat, this process's CPU seconds, wall seconds)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    own = os.times()
    return busy, own.user + own.system, time.monotonic()


def others_cpu_share(
    start: tuple[float, float, float] | None, end: tuple[float, float, float] | None
) -> float | None:
    """The share of all CPUs that other processes (and the hypervisor's steal) used between two
    snapshots: ``(Δbusy − Δown) / (Δwall · cores)``. A noisy machine shows here, not in ratios."""
    if start is None or end is None or end[2] <= start[2]:
        return None
    other = (end[0] - start[0]) - (end[1] - start[1])
    return round(min(max(other / ((end[2] - start[2]) * (os.cpu_count() or 1)), 0.0), 1.0), 4)


def measure(
    variants: list[Variant],
    config: BenchConfig,
    input_size: tuple[int, int],
    tick: Callable[[int], None] = lambda _batch: None,
) -> tuple[dict[int, dict[str, list[float]]], dict[int, float | None]]:
    """Time every live variant at every batch size; fill each variant's ``batches``.

    Per batch: one first call per variant (it compiles, where it compiles; its output is compared
    with the eager explainer's), ``config.warmup`` rounds, then ``config.iters`` timed rounds.
    Returns the raw samples, ``{batch: {variant: [ms, ...]}}``, and per batch the share of the
    CPUs that other processes used during the timed rounds.
    """
    device = torch.device(config.device)
    sync = _sync(device)
    by_name = {v.name: v for v in variants}
    raw: dict[int, dict[str, list[float]]] = {}
    others: dict[int, float | None] = {}

    def fail(name: str, exc: BaseException) -> None:
        by_name[name].status = f"failed: {first_line(exc)}"

    for batch in config.batch_sizes:
        gen = torch.Generator().manual_seed(config.seed + batch)
        image = torch.rand(batch, 3, *input_size, generator=gen).to(device)
        if config.channels_last:  # for the torch variants; ONNX Runtime binds an NCHW copy
            image = image.contiguous(memory_format=torch.channels_last)
        calls: dict[str, Call] = {}
        reference: tuple[Tensor, Tensor | None] | None = None
        for v in variants:
            if v.make is None or v.status != "ok":
                continue
            try:
                sync()
                t0 = time.perf_counter()
                call = v.make(image)
                logits, heatmap = call()
                sync()
                first_ms = (time.perf_counter() - t0) * 1000
            except Exception as exc:
                if v.name == REFERENCE:
                    raise ExplainExportError(
                        f"the eager explainer failed at batch {batch}: {first_line(exc)}"
                    ) from exc
                fail(v.name, exc)
                continue
            if v.name == REFERENCE:
                reference = (logits.clone(), heatmap.clone() if heatmap is not None else None)
            assert reference is not None  # the reference variant is built and run first
            v.batches[batch] = {
                "first_call_ms": round(first_ms, 3),
                "max_abs_diff_vs_eager": {
                    "logits": _max_diff(logits, reference[0]),
                    "heatmap": _max_diff(heatmap, reference[1]),
                },
            }
            calls[v.name] = call
        step = functools.partial(tick, batch)
        time_rounds(calls, config.warmup, sync, step, fail)
        before = cpu_snapshot()
        times, faults = time_rounds(
            calls, config.iters, sync, step, fail, config.prime, config.settle_s
        )
        others[batch] = others_cpu_share(before, cpu_snapshot())
        raw[batch] = {}
        for name, samples in times.items():
            v = by_name[name]
            if v.status != "ok":
                v.batches.pop(batch, None)
                continue
            v.batches[batch].update(summarize(samples, batch))
            v.batches[batch]["page_faults_per_call"] = float(np.median(faults[name]))
            v.batches[batch]["samples_ms"] = [round(t, 4) for t in samples]
            raw[batch][name] = samples
    return raw, others
