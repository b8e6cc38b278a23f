"""The statistics of the samples: per variant (:func:`summarize`), between two variants
(:func:`time_ratio`), and every ratio of a run (:func:`ratios`, :func:`best_exported`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import EXPORTED, ON_EXPLAINER_ONNX, REFERENCE, _method_variant

_CAM = _method_variant("cam")  # what time_vs_cam divides by
_TOP_K = re.compile(r"_top\d+$")  # a --top-k variant's suffix

__all__ = ["best_exported", "ratios", "summarize", "time_ratio"]


def summarize(samples: Sequence[float], batch: int) -> dict[str, Any]:
    """Median, p90, p99, min, mean of ``samples`` (ms per batch); images/s = batch / median."""
    a = np.asarray(samples, dtype=np.float64)
    median, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "median_ms": round(float(median), 4),
        "p90_ms": round(float(p90), 4),
        "p99_ms": round(float(p99), 4),
        "min_ms": round(float(a.min()), 4),
        "mean_ms": round(float(a.mean()), 4),
        "images_per_s": round(batch * 1000.0 / float(median), 2),
        "n": int(a.size),
    }


def time_ratio(slow: Sequence[float], fast: Sequence[float]) -> dict[str, float]:
    """``median(slow) / median(fast)``, and the same ratio taken round by round (the samples are
    paired: both ran in the same round), as its median and quartiles."""
    s, f = np.asarray(slow, dtype=np.float64), np.asarray(fast, dtype=np.float64)
    n = min(s.size, f.size)
    paired = s[:n] / f[:n]
    q25, q50, q75 = np.percentile(paired, [25, 50, 75])
    return {
        "value": round(float(np.median(s) / np.median(f)), 4),
        "paired_median": round(float(q50), 4),
        "paired_p25": round(float(q25), 4),
        "paired_p75": round(float(q75), 4),
    }


def ratios(
    raw: dict[int, dict[str, list[float]]], methods: Sequence[str] = ()
) -> dict[str, dict[str, dict[str, Any]]]:
    """All ratios, from samples of one run; ``methods``: the ``--methods`` variants' names.

    - ``speedup_vs_eager[v][batch]``: eager explainer time / ``v`` time, for every explainer
      (the ``methods`` variants included);
    - ``time_vs_cam[v][batch]``: ``v`` time / ``ort_cam`` time, for the other ``methods``
      variants, where ``ort_cam`` is one of them (what each method costs over ``cam``);
    - ``time_vs_top1[v][batch]``: a ``--top-k`` variant's time / its method's top-1 time
      (``ort_<method>_top<K>`` / ``ort_<method>``: what K maps cost over one);
    - ``heatmap_overhead[backend][batch]``: explainer time / logits-only time − 1, on ``eager``
      and ``ort``;
    - ``ort_vs_autograd[batch]``: heatmaps/s of the ORT explainer / heatmaps/s of autograd
      Grad-CAM (the same batch, so autograd time / ORT time);
    - ``gradcam_overhead[backend][batch]``: gradcam explainer time / explainer time − 1, on
      ``eager`` and ``ort`` (what the in-graph gradient costs over ``cam``);
    - ``ort_gradcam_vs_autograd[batch]``: autograd Grad-CAM time / ORT gradcam time;
    - ``vs_gradcam_numpy[v][batch]``: heatmaps/s of ``v`` / heatmaps/s of the pytorch-grad-cam
      style Grad-CAM (``gradcam_numpy`` time / ``v`` time), for ``ort``, ``ort_numpy`` and
      ``ort_cudagraph``;
    - ``best_exported_vs_gradcam_numpy[batch]``: the same for the fastest exported explainer of
      the batch (:func:`best_exported`).
    """
    out: dict[str, dict[str, Any]] = {
        "speedup_vs_eager": {},
        "heatmap_overhead": {},
        "ort_vs_autograd": {},
        "gradcam_overhead": {},
        "ort_gradcam_vs_autograd": {},
        "vs_gradcam_numpy": {},
        "best_exported_vs_gradcam_numpy": {},
        "time_vs_cam": {},
        "time_vs_top1": {},
    }
    fastest = best_exported(raw)
    for batch, t in raw.items():
        key = str(batch)
        for name in dict.fromkeys(("torchscript", "ort", "compile", *methods)):
            if REFERENCE in t and name in t:
                out["speedup_vs_eager"].setdefault(name, {})[key] = time_ratio(
                    t[REFERENCE], t[name]
                )
        for expl, logits in (("eager", "eager_logits"), ("ort", "ort_logits")):
            if expl in t and logits in t:
                out["heatmap_overhead"].setdefault(expl, {})[key] = _overhead(t[expl], t[logits])
        if "ort" in t and "autograd" in t:
            out["ort_vs_autograd"][key] = time_ratio(t["autograd"], t["ort"])
        for expl, grad in (("eager", "eager_gradcam"), ("ort", "ort_gradcam")):
            if expl in t and grad in t:
                out["gradcam_overhead"].setdefault(expl, {})[key] = _overhead(t[grad], t[expl])
        if "ort_gradcam" in t and "autograd" in t:
            out["ort_gradcam_vs_autograd"][key] = time_ratio(t["autograd"], t["ort_gradcam"])
        if "gradcam_numpy" in t:
            for name in ON_EXPLAINER_ONNX:
                if name in t:
                    out["vs_gradcam_numpy"].setdefault(name, {})[key] = time_ratio(
                        t["gradcam_numpy"], t[name]
                    )
            if key in fastest:
                best = fastest[key]["variant"]
                out["best_exported_vs_gradcam_numpy"][key] = time_ratio(t["gradcam_numpy"], t[best])
        if _CAM in methods and _CAM in t:
            for name in methods:
                if name != _CAM and name in t and not _TOP_K.search(name):
                    out["time_vs_cam"].setdefault(name, {})[key] = time_ratio(t[name], t[_CAM])
        for name in methods:
            top1 = _TOP_K.sub("", name)
            if top1 != name and name in t and top1 in t:
                out["time_vs_top1"].setdefault(name, {})[key] = time_ratio(t[name], t[top1])
    return out


def best_exported(raw: dict[int, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """Per batch, the exported explainer (of ``ort``, ``ort_cudagraph``, ``torchscript``) with
    the lowest median: its name, median ms per batch and images/s = N / median."""
    out: dict[str, dict[str, Any]] = {}
    for batch, t in raw.items():
        medians = {n: float(np.median(t[n])) for n in EXPORTED if t.get(n)}
        if medians:
            name = min(medians, key=medians.__getitem__)
            out[str(batch)] = {
                "variant": name,
                "median_ms": round(medians[name], 4),
                "images_per_s": round(batch * 1000.0 / medians[name], 2),
            }
    return out


def _overhead(slow: Sequence[float], fast: Sequence[float]) -> dict[str, float]:
    """:func:`time_ratio` − 1: the extra time of ``slow`` over ``fast``, as a fraction."""
    return {k: round(v - 1, 4) for k, v in time_ratio(slow, fast).items()}
