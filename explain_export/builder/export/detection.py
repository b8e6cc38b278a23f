"""Export a detection explainer: stage every format, verify each against eager, commit.

The whole forward (detector, NMS, the per-detection gradients and maps) is traced once to forward
ops (:func:`.lowering.trace`), then written as TorchScript (scripted), ONNX and pt2 as the
classifier graphs are. Each file is checked against the eager
:class:`~..detect_explainer.DetectionExplainer` on the scikit-image photos, one by one and
as a batch of 3 (:func:`detection_cases`):

the same detections and maps, by the rule of :mod:`.detection_parity`.

Then the metadata (``"task": "detection"``) is stamped into each file and the set is committed
as one (:func:`.export.commit`); a failed check writes nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone

import numpy as np
import torch
from torch import Tensor, nn

from ...artifact import samples
from ...artifact.contract import FILES, ArtifactMetadata, TensorSpec
from ...artifact.files import ensure_out_dir
from ...errors import ExplainExportError, OptionError, ParityError
from ..detect_explainer import DetectionExplainer
from ..faithful_detect import MATCH_IOU, detector_scoring
from ..lower import lowering
from ..lower.trace_state import kept_attributes
from .detection64 import Float64Detections
from .detection_parity import (
    BOX_ATOL,
    BOX_IOU_MIN,
    FLOAT64_RULE,
    SCORE_TIE,
    SCORE_TOL,
    DetectionRow,
    compare,
)
from .export import DEFAULT_FORMATS, DEFAULT_OPSET, RUNTIMES, ExportResult, check_formats, commit
from .verify import HEATMAP_TOL, Case
from .writers import quiet, root_cause, to_onnx, to_pt2, versions

__all__ = [
    "detection_cases",
    "detection_metadata",
    "export_detector",
    "stage_files",
    "unfix_cached_batch",
]

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


def detection_cases(input_size: tuple[int, int]) -> list[Case]:
    """Each scikit-image photo, and the first three as one batch of 3; random batches of 1 and 3
    only where scikit-image is missing.

    Random noise is a poor case for a detector: a random-init head scores thousands of noise
    anchors within a rounding step of each other, and whether two equal boxes' IoU is just over
    the NMS threshold can differ between backends. Both are right, but the detections part
    there, and the comparison says nothing of the export (YOLO11n with its class bias at 0 did
    this). Photos have objects, and scores apart."""
    h, w = input_size
    photos = []
    for name in PHOTOS:
        try:
            photos.append((name, samples.load_rgb(samples.photo_path(name), (h, w))))
        except FileNotFoundError:
            continue
    if not photos:  # scikit-image missing
        rng = np.random.default_rng(0)
        return [Case("random", rng.random((n, 3, h, w), dtype=np.float32)) for n in (1, 3)]
    out = [Case(f"photo {name}", image[None]) for name, image in photos]
    if len(photos) >= 3:
        out.append(Case("photos, batch of 3", np.stack([image for _, image in photos[:3]])))
    return out


class _Graph(nn.Module):
    """A traced graph as a module whose outputs are a tuple (the exporters want one)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph_module = graph

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.graph_module(image))


def _eager(explainer: DetectionExplainer, case: Case) -> dict[str, np.ndarray]:
    from ...artifact.contract import graph_image

    image = torch.from_numpy(graph_image(case.image, explainer.input_format))
    with torch.no_grad():
        out = explainer(image)
    names = explainer.output_names
    return {n: t.detach().cpu().numpy() for n, t in zip(names, out, strict=True)}


def export_detector(
    explainer: DetectionExplainer,
    out_dir: str,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    *,
    model: str = "user model",
    labels: list[str] | None = None,
    label_set: str | None = None,
    opset: int = DEFAULT_OPSET,
    faithfulness: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> ExportResult:
    """Export ``explainer`` to ``formats``, verify each file against eager, then move the set
    into ``out_dir``; ``faithfulness`` adds each detection's four scores
    (:mod:`..faithful_detect`). Raises :class:`~.errors.ParityError` (nothing written) if a
    check fails."""
    check_formats(formats)
    k = explainer.detector.num_classes
    if labels is not None and len(labels) != k:
        raise OptionError(
            "labels",
            "{name} has {n} entries for a detector with {k} classes; pass one label per class",
            n=len(labels),
            k=k,
        )
    scoring = detector_scoring(explainer, faithfulness)  # its refusals before any folder
    with scoring:
        ensure_out_dir(out_dir)
        return _export(explainer, out_dir, formats, model, labels, label_set, opset, log)


def _export(
    explainer: DetectionExplainer,
    out_dir: str,
    formats: tuple[str, ...],
    model: str,
    labels: list[str] | None,
    label_set: str | None,
    opset: int,
    log: Callable[[str], None],
) -> ExportResult:
    """:func:`export_detector` after its checks: stage, verify, commit."""
    tmp = tempfile.mkdtemp(prefix=".explainer-tmp-", dir=out_dir)
    try:
        with kept_attributes(explainer):
            staged = stage_files(explainer, tmp, formats, opset, log)
        rows = _verify(explainer, staged)
        metadata = detection_metadata(explainer, model, labels, label_set, opset, rows)
        paths, written = commit(staged, metadata, out_dir, tmp, log)
        return ExportResult(paths, written)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unfix_cached_batch(explainer: DetectionExplainer) -> None:
    """Run the model once eagerly on a batch of 1, before a trace or an export at batch 2.

    A head that caches on its input's shape (Ultralytics' Detect: ``if self.shape != shape``)
    compares the cache with the traced shape. Were the cached batch the trace's (2), that
    comparison would fix the batch to 2 in the file."""
    h, w = explainer.input_size
    with torch.no_grad():
        explainer.model(torch.zeros(1, 3, h, w, device=explainer.mean.device))


def stage_files(
    explainer: DetectionExplainer,
    tmp: str,
    formats: tuple[str, ...],
    opset: int,
    log: Callable[[str], None],
) -> dict[str, str]:
    """Write ``explainer`` in every format into the folder ``tmp`` (traced once to forward ops,
    :func:`.lowering.trace`); the file of each format by name. Nothing is verified here."""
    h, w = explainer.input_size
    g = torch.Generator().manual_seed(1)
    if explainer.input_format == "uint8-nhwc":
        image = torch.randint(0, 256, (2, h, w, 3), generator=g, dtype=torch.uint8)
    else:
        image = torch.rand(2, 3, h, w, generator=g)  # batch 2: a batch of 1 would be baked in
    unfix_cached_batch(explainer)
    t0 = time.perf_counter()
    graph = lowering.trace(explainer, (image,), {0: [0]}, explainer)
    log(f"traced the detector, NMS and maps to forward ops in {time.perf_counter() - t0:4.1f}s")
    module = _Graph(graph).eval()
    batch = torch.export.Dim("batch")
    staged = {fmt: os.path.join(tmp, FILES[fmt]) for fmt in formats}
    for fmt, path in staged.items():
        t0 = time.perf_counter()
        if fmt == "onnx":
            names = list(explainer.output_names)
            to_onnx(module, (image,), path, opset, {"image": {0: batch}}, names)
        elif fmt == "pt2":
            to_pt2(module, (image,), path, {"image": {0: batch}})
        else:
            with quiet():
                torch.jit.save(lowering.script_graph(graph), path)
        log(f"exported {fmt:<11} in {time.perf_counter() - t0:5.1f}s")
    return staged


def _verify(explainer: DetectionExplainer, staged: dict[str, str]) -> list[DetectionRow]:
    cases = detection_cases(explainer.input_size)
    refs = [_eager(explainer, case) for case in cases]
    exact = Float64Detections.of(explainer, cases, refs)  # runs only if a heatmap fails
    rows: list[DetectionRow] = []
    for fmt, path in staged.items():
        artifact = RUNTIMES[fmt](path, input_format=explainer.input_format)
        artifact.output_names = list(explainer.output_names)  # no metadata is stamped yet
        try:
            for i, (case, ref) in enumerate(zip(cases, refs, strict=True)):
                got = artifact.outputs(case.image)
                row = compare(fmt, case, got, ref, explainer.score_threshold)
                rows.append(exact.judge(row, i, got))
        except Exception as exc:
            raise ExplainExportError(
                f"the exported {fmt} file fails to run: {root_cause(exc)}; nothing was written"
            ) from exc
        finally:
            del artifact
    failed = [r for r in rows if not r.ok]
    if failed:
        worst = min(failed, key=lambda r: (r.same_detections, r.box_iou_min))
        raise ParityError(
            f"exported {', '.join(sorted({r.format for r in failed}))} differs from eager "
            f"(worst: {worst.input}, same detections {worst.same_detections}, box IoU "
            f"{worst.box_iou_min:.4f}, score {worst.score_err:.2e}, heatmap "
            f"{worst.heatmap_err:.2e}); nothing was written"
        )
    return rows


DETECTION_SCORES = {  # --faithfulness, per detection j (class c_j, box b_j, map m_j) of image x
    "score": "detection j's score on x",
    "masked_score": f"on x * m_j, the score of the class-c_j detection whose box overlaps b_j "
    f"most, if its IoU >= {MATCH_IOU}; else 0",
    "complexity": "mean(m_j)",
    "coherency": "(pearson(m_j, m') + 1) / 2, m' that detection's map on x * m_j (0.5 where "
    "none; 0 on padding rows)",
}


def detection_metadata(
    explainer: DetectionExplainer,
    model: str,
    labels: list[str] | None,
    label_set: str | None,
    opset: int,
    rows: list[DetectionRow],
) -> ArtifactMetadata:
    """The metadata of a detection export (the contract's ``task: detection``)."""
    h, w = explainer.input_size
    d = explainer.max_detections
    det = explainer.detector
    if explainer.input_format == "uint8-nhwc":
        image = TensorSpec("image", "uint8", ("N", h, w, 3), {"layout": "NHWC", "color": "RGB"})
    else:
        image = TensorSpec(
            "image",
            "float32",
            ("N", 3, h, w),
            {"layout": "NCHW", "range": [0.0, 1.0], "color": "RGB"},
        )
    maps = d if explainer.per_detection else 1
    outputs = (
        TensorSpec("boxes", "float32", ("N", d, 4), {"meaning": "x1, y1, x2, y2 in input pixels"}),
        TensorSpec("scores", "float32", ("N", d), {"meaning": det.score_kind}),
        TensorSpec("classes", "int64", ("N", d), {"meaning": "class per detection; -1 pads"}),
        TensorSpec("count", "int64", ("N",), {"meaning": "real detections per image"}),
        TensorSpec("heatmap", "float32", ("N", maps, h, w), {"range": [0.0, 1.0]}),
    )
    if "masks" in explainer.output_names:
        meaning = "each detection's mask probability at input size; 0 on padding rows"
        outputs += (TensorSpec("masks", "float32", ("N", d, h, w), {"meaning": meaning}),)
    if explainer.scorer is not None:  # --faithfulness
        outputs += tuple(
            TensorSpec(name, "float32", ("N", d), {"meaning": meaning, "range": [0.0, 1.0]})
            for name, meaning in DETECTION_SCORES.items()
        )
    return ArtifactMetadata(
        input_size=(h, w),
        inputs=(image,),
        outputs=outputs,
        model=model,
        output=None if explainer.output.kind == "tensor" else str(explainer.output),
        method=explainer.method.name,
        method_requested=explainer.method.name,
        layer=explainer.layers[0],
        layers=tuple(explainer.layers),
        target="detection" if explainer.per_detection else "none",
        task="detection",
        detection={
            "max_detections": d,
            "score_threshold": explainer.score_threshold,
            "iou_threshold": explainer.iou_threshold,
            "score": det.score_kind,
            "family": det.family,
            "maps": "per-detection" if explainer.per_detection else "per-image",
            "label_set": label_set,
            "strides": list(det.strides),
            **({"target": explainer.target} if hasattr(explainer, "target") else {}),
            **({"masks": True} if "masks" in explainer.output_names else {}),
        },
        num_classes=det.num_classes,
        mean=tuple(det.mean),
        std=tuple(det.std),
        input_format=explainer.input_format,
        labels=None if labels is None else tuple(labels),
        opset=opset,
        versions=versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        parity={
            "rule": f"same classes; box IoU >= {BOX_IOU_MIN} (or corners within {BOX_ATOL:g} "
            f"px); score within {SCORE_TOL:g}; heatmap within {HEATMAP_TOL:g}; an image whose "
            f"detections part at a tie (scores within {SCORE_TIE:g}) is compared up to it; "
            f"{FLOAT64_RULE}",
            "rows": [r.to_dict() for r in rows],
        },
    )
