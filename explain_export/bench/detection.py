"""explain-bench for a detector (one-stage, or a torchvision R-CNN): what its per-detection
maps cost over the detector with NMS alone, all on ONNX Runtime (CPU), beside the eager explainer.

Each variant maps an image batch ``[N,3,H,W]`` in [0,1] to the detection outputs
(:data:`~..artifact.contract.DETECTION_OUTPUTS`, and a Mask R-CNN's ``masks``), all with the
same ``D`` rows:

- ``eager``: the :class:`~..builder.detect_explainer.DetectionExplainer` (or
  :class:`~..builder.rcnn_explainer.TwoStageExplainer`), gradcam, in PyTorch, under
  ``inference_mode``; every other variant is compared with it;
- ``ort_nms``: :class:`NmsOnly`, the detector with its NMS in the graph and no maps
  (``boxes, scores, classes, count``, and a Mask R-CNN's ``masks``: the model's own outputs),
  exported as explain-export writes ONNX: the baseline;
- ``ort_gradcam``: the detection explainer with ``D`` per-detection Grad-CAM maps, exported as
  explain-export does (:func:`..builder.export.detection.stage_files`);
- ``ort_eigencam``: the same with ``eigencam`` (one class-agnostic map per image).

The inputs are the scikit-image photos (repeated to the batch size; random where scikit-image is
missing), so the detections are those of real images. Timing is the classifier bench's
(:func:`.timing.time_rounds`: rounds, each variant one turn in a rotating order, settle, prime,
one timed call). Ratios: ``time_vs_nms[v][batch]`` = ``t_v / t_ort_nms`` (``ort_gradcam``,
``ort_eigencam``), ``speedup_vs_eager[v][batch]`` = ``t_eager / t_v``; each as the ratio of the
medians (``value``) and the median of the round-by-round ratios (``paired_median``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..artifact.runtime import ort_session
from ..builder.detect_explainer import DetectionExplainer, HeadInputs
from ..builder.export.writers import versions
from ..errors import first_line
from .config import REFERENCE, BenchConfig, Variant
from .detection_timing import measure_detection
from .machine import machine
from .ort import export_onnx
from .run import busy
from .stats import time_ratio
from .targets import check_targets, load_targets
from .timing import HEAP_KEEP, keep_freed_memory

__all__ = [
    "BASELINE",
    "DETECTION_VARIANTS",
    "NmsOnly",
    "baseline_outputs",
    "build_detection_variants",
    "detection_ratios",
    "run_detection_bench",
]

DETECTION_VARIANTS: dict[str, str] = {
    "eager": "eager detection explainer, gradcam",
    "ort_nms": "ORT detector + NMS, no maps",
    "ort_gradcam": "ORT detection explainer, gradcam",
    "ort_eigencam": "ORT detection explainer, eigencam",
}
BASELINE = "ort_nms"  # what the maps' cost is measured against
WITH_MAPS = ("ort_gradcam", "ort_eigencam")
_NUMPY = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
_TORCH = {"tensor(float)": torch.float32, "tensor(int64)": torch.int64}

Outputs = tuple[Tensor, ...]


class NmsOnly(nn.Module):
    """``image -> (boxes, scores, classes, count[, masks])``: ``explainer``'s detections alone
    (:meth:`.DetectionExplainer.detections`: its normalization, detector, candidates and greedy
    NMS, and a Mask R-CNN's masks), exactly as its forward has them, and no taps' gradients or
    maps."""

    def __init__(self, explainer: DetectionExplainer) -> None:
        super().__init__()
        self.explainer = explainer

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return self.explainer.detections(image)


def baseline_outputs(explainer: DetectionExplainer) -> list[str]:
    """The baseline's output names: the explainer's, less ``heatmap``."""
    return [name for name in explainer.output_names if name != "heatmap"]


def _ort_call(session: Any, image: Tensor) -> Callable[[], Outputs]:
    """``session`` through IO binding: the input is ``image``'s buffer, each output goes into a
    tensor preallocated with its dtype and its shape (the batch dimension set to ``N``)."""
    image = image.contiguous()
    n = image.shape[0]
    binding = session.io_binding()
    binding.bind_input("image", "cpu", 0, np.float32, list(image.shape), image.data_ptr())
    outputs = []
    for o in session.get_outputs():
        shape = [n, *o.shape[1:]]
        buf = torch.empty(shape, dtype=_TORCH[o.type])
        binding.bind_output(o.name, "cpu", 0, _NUMPY[o.type], shape, buf.data_ptr())
        outputs.append(buf)

    def call(bound: Tensor = image) -> Outputs:  # holds the bound input
        session.run_with_iobinding(binding)
        return tuple(outputs)

    return call


def _eager_call(explainer: nn.Module, image: Tensor) -> Callable[[], Outputs]:
    def call() -> Outputs:
        with torch.inference_mode():
            return tuple(explainer(image))

    return call


def _ort_variant(name: str, path: str, threads: int, setup_s: float) -> Variant:
    t0 = time.perf_counter()
    try:
        session = ort_session(path, "cpu", threads)
    except Exception as exc:
        return Variant(name, "onnxruntime", None, f"failed: {first_line(exc)}")
    return Variant(
        name,
        "onnxruntime CPU",
        lambda x: _ort_call(session, x),  # type: ignore[arg-type,return-value]
        note="IO binding: the input is the torch buffer itself; outputs preallocated",
        providers=list(session.get_providers()),
        setup_s=setup_s + time.perf_counter() - t0,
        path=path,
    )


def _eigencam(explainer: DetectionExplainer) -> DetectionExplainer:
    """The same detector, taps, ``D`` and thresholds, with ``eigencam``."""
    from ..builder.maths import methods
    from ..builder.rcnn_explainer import TwoStageExplainer

    if isinstance(explainer, TwoStageExplainer):
        return TwoStageExplainer(
            explainer.model,
            explainer.detector,
            methods.get("eigencam"),
            explainer.max_detections,
            explainer.score_threshold,
            explainer.iou_threshold,
            explainer.input_format,
            explainer.input_size,
            explainer.target,
        )
    default = isinstance(explainer.taps[0], HeadInputs)
    return DetectionExplainer(
        explainer.model,
        explainer.detector,
        methods.get("eigencam"),
        explainer.output,
        None if default else explainer.layers,
        explainer.max_detections,
        explainer.score_threshold,
        explainer.iou_threshold,
        explainer.input_format,
        explainer.input_size,
    )


def build_detection_variants(
    explainer: DetectionExplainer, config: BenchConfig, workdir: str, log: Callable[[str], None]
) -> list[Variant]:
    """``eager``, then the three ONNX files (each exported here, into ``config.models_dir``
    where set, else ``workdir``) opened on ONNX Runtime's CPU provider."""
    from ..builder.export.detection import stage_files, unfix_cached_batch
    from ..builder.lower.trace_state import kept_attributes

    where = config.models_dir or workdir
    threads = config.threads or torch.get_num_threads()
    variants = [Variant(REFERENCE, "torch", lambda x: _eager_call(explainer, x))]  # type: ignore[arg-type,return-value]
    h, w = explainer.input_size
    example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    path = os.path.join(where, "ort_nms.onnx")
    t0 = time.perf_counter()
    try:
        unfix_cached_batch(explainer)  # else Ultralytics' Detect fixes the file's batch to 2
        export_onnx(
            NmsOnly(explainer).eval(), example, path, config.opset, baseline_outputs(explainer)
        )
    except Exception as exc:
        variants.append(Variant(BASELINE, "onnxruntime", None, f"failed: {first_line(exc)}"))
    else:
        log(f"exported the detector + NMS (no maps) in {time.perf_counter() - t0:4.1f}s")
        variants.append(_ort_variant(BASELINE, path, threads, time.perf_counter() - t0))
    eigencam = _eigencam(explainer)
    try:
        for name, expl in (("ort_gradcam", explainer), ("ort_eigencam", eigencam)):
            folder = os.path.join(where, name)
            os.makedirs(folder, exist_ok=True)
            t0 = time.perf_counter()
            try:
                with kept_attributes(expl):
                    path = stage_files(expl, folder, ("onnx",), config.opset, log)["onnx"]
            except Exception as exc:
                variants.append(Variant(name, "onnxruntime", None, f"failed: {first_line(exc)}"))
                continue
            variants.append(_ort_variant(name, path, threads, time.perf_counter() - t0))
    finally:
        eigencam.remove()
    return variants


def detection_ratios(raw: dict[int, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """``time_vs_nms[v][batch]``: ``v``'s time over ``ort_nms``'s (what the maps cost), for
    ``ort_gradcam`` and ``ort_eigencam``; ``speedup_vs_eager[v][batch]``: eager's time over
    ``v``'s, for every ORT variant (:func:`.stats.time_ratio`: of the medians and paired)."""
    out: dict[str, dict[str, Any]] = {"time_vs_nms": {}, "speedup_vs_eager": {}}
    for batch, t in raw.items():
        key = str(batch)
        for name in WITH_MAPS:
            if name in t and BASELINE in t:
                out["time_vs_nms"].setdefault(name, {})[key] = time_ratio(t[name], t[BASELINE])
        for name in (BASELINE, *WITH_MAPS):
            if name in t and REFERENCE in t:
                out["speedup_vs_eager"].setdefault(name, {})[key] = time_ratio(
                    t[REFERENCE], t[name]
                )
    return out


def _judged(found: dict[str, Any], explainer: DetectionExplainer) -> dict[str, Any]:
    """The ratios as the targets read them: a two-stage detector's ``time_vs_nms`` under
    ``two_stage_time_vs_nms`` (its goals are its own: the box head runs again, the backbone
    does not)."""
    from ..builder.rcnn_explainer import TwoStageExplainer

    if not isinstance(explainer, TwoStageExplainer):
        return found
    return {"two_stage_time_vs_nms": found["time_vs_nms"]}


def run_detection_bench(
    explainer: DetectionExplainer,
    config: BenchConfig,
    *,
    model: str = "user model",
    command: str | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    tick: Callable[[int], None] = lambda _batch: None,
) -> dict[str, Any]:
    """Build the four variants, time them, and return the JSON-ready result (the classifier
    bench's top-level keys, ``"task": "detection"`` in its config)."""
    import onnxruntime as ort

    config.check()
    targets = load_targets() if config.targets else ()
    threads = config.threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    started = datetime.now().astimezone()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    if config.models_dir:
        os.makedirs(config.models_dir, exist_ok=True)
    if config.tuned_malloc:
        keep_freed_memory()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="explain-bench-") as workdir:
            variants = build_detection_variants(explainer, config, workdir, log)
            live = sum(v.make is not None and v.status == "ok" for v in variants)
            log(f"timing {live} variants at batch sizes {', '.join(map(str, config.batch_sizes))}")
            raw, others = measure_detection(variants, config, explainer.input_size, tick)
    finally:
        torch.set_num_threads(previous)
    found = detection_ratios(raw)
    det = explainer.detector
    notes = [f"{DETECTION_VARIANTS[v.name]}: {v.status}" for v in variants if v.status != "ok"]
    return {
        "format": "explain-bench/1",
        "created": started.isoformat(timespec="seconds"),
        "created_utc": started.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": {
            "task": "detection",
            "model": model,
            "family": det.family,
            "num_classes": det.num_classes,
            "layers": list(explainer.layers),
            "methods": ["gradcam", "eigencam"],
            "max_detections": explainer.max_detections,
            "score_threshold": explainer.score_threshold,
            "iou_threshold": explainer.iou_threshold,
            "input_size": list(explainer.input_size),
            "inputs": "the scikit-image photos in turn (random where scikit-image is missing)",
            "device": config.device,
            "batch_sizes": list(config.batch_sizes),
            "threads": threads,
            "warmup": config.warmup,
            "iters": config.iters,
            "opset": config.opset,
            "targets": config.targets,
            "malloc": f"glibc mmap and trim thresholds {HEAP_KEEP >> 20} MiB"
            if config.tuned_malloc
            else "default",
            "prime": config.prime,
            "settle_s": config.settle_s,
            "order": "round-robin; the order rotates by one variant each round",
            "timer": "time.perf_counter_ns per call",
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
        "variants": {
            v.name: {**v.to_dict(), "label": DETECTION_VARIANTS[v.name]} for v in variants
        },
        "ratios": found,
        "busy": busy(others),
        "targets": check_targets(
            _judged(found, explainer), config.device, targets, busy=set(busy(others))
        ),
        "notes": notes,
    }
