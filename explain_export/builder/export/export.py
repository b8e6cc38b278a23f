"""Write the explainer to TorchScript, ONNX and pt2: stage, verify, commit (:func:`_export`).

Stage: every format is written into a temporary folder inside ``out_dir``. Verify: each file is
loaded back and checked against eager (:mod:`.verify`). Commit: one metadata with a new export
id is stamped into each file and written as explainer.json, and the set replaces the previous
one together (:func:`.files.commit_set`). A failed export leaves the previous set, or nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ...artifact.contract import FILES, METADATA_FILE, ArtifactMetadata, output_names
from ...artifact.files import commit_set, ensure_out_dir
from ...artifact.runtime import ExportedProgramExplainer, OnnxExplainer, TorchScriptExplainer
from ...errors import (
    DeviceFallbackWarning,
    ExplainExportError,
    OptionError,
    ParityError,
)
from ..explainer import Explainer
from ..faithful import Faithful, check_faithfulness, scoring, with_scores
from ..lower import lowering
from ..lower.trace_state import kept_attributes
from ..plan import Plan
from . import verify
from .metadata import build_metadata
from .parity64 import TIMES, Float64Reference
from .signature import dynamic_shapes, example_args
from .writers import root_cause, stamp, to_onnx, to_pt2, to_torchscript

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_OPSET",
    "FORMATS",
    "RUNTIMES",
    "ExportResult",
    "check_formats",
    "export_explainer",
]

FORMATS = ("torchscript", "onnx", "pt2")
DEFAULT_FORMATS = ("torchscript", "onnx")
RUNTIMES = {
    "torchscript": TorchScriptExplainer,
    "onnx": OnnxExplainer,
    "pt2": ExportedProgramExplainer,
}
DEFAULT_OPSET = 18


@dataclass
class ExportResult:
    paths: dict[str, str]
    metadata: dict[str, Any]
    parity: list[verify.ParityRow] = field(default_factory=list)
    gpu: list[verify.DeviceRow] = field(default_factory=list)  # where a GPU was present


def _verify_on_gpu(
    staged: dict[str, str],
    info: Plan,
    all_cases: list[verify.Case],
    refs: list[dict[str, Any]],
    log: Callable[[str], None],
    names: list[str],
) -> list[verify.DeviceRow]:
    """Where a CUDA device is present: each file loaded there, against eager on the CPU
    (:func:`.verify.on_device`); ``names``: the graph's outputs (no metadata is stamped yet).
    An ONNX Runtime without its CUDA provider is skipped, said in the log."""
    if not torch.cuda.is_available():
        return []
    rows = []
    for fmt, path in staged.items():
        with warnings.catch_warnings():  # said in the log instead
            warnings.simplefilter("ignore", DeviceFallbackWarning)
            artifact = RUNTIMES[fmt](path, device="cuda", input_format=info.graph.input_format)
        if artifact.device != "cuda":
            log(f"not verified on the GPU: {fmt} ({artifact.note})")
            continue
        artifact.output_names = names
        try:
            rows.append(verify.on_device(fmt, artifact, all_cases, refs))
        except Exception as exc:
            raise ExplainExportError(
                f"the exported {fmt} file fails on the GPU: {root_cause(exc)}; nothing was written"
            ) from exc
    return rows


def check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """``formats``, checked: one or more of :data:`FORMATS`; else an :class:`.OptionError`."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise OptionError(
            "formats",
            "{name} takes a comma list of {known}; got {given}",
            known=", ".join(FORMATS),
            given=", ".join(formats) or "none",
        )
    return formats


def export_explainer(
    explainer: Explainer,
    out_dir: str,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    *,
    model: str = "user model",
    labels: list[str] | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_size: bool = False,
    class_input: bool = False,
    faithfulness: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> ExportResult:
    """Export to ``formats``, verify each file against eager, then move them into ``out_dir``.
    ``faithfulness`` adds the four scores of each map (:mod:`..faithful`).

    Raises :class:`~.errors.ParityError` (nothing moved into place) if any check fails.
    """
    check_formats(formats)
    info = explainer.plan
    if faithfulness:
        check_faithfulness(explainer)
    if class_input and not info.method_spec.has_class:
        raise OptionError(
            "class_input",
            "{name} needs a method that explains a class (cam, gradcam); {m} has none",
            m=info.method,
        )
    if class_input and info.top_k is not None:
        raise OptionError(
            "class_input",
            "{name} picks one class per image; a top-{k} export explains the "
            "{k} best, so drop {top_k} or {name}",
            k=info.top_k,
        )
    if labels is not None and len(labels) != info.num_classes:
        raise OptionError(
            "labels",
            "{name} has {k} entries for a model with {n} classes; pass one label per class, "
            "in class order, or none",
            k=len(labels),
            n=info.num_classes,
        )
    ensure_out_dir(out_dir)
    free = explainer.heatmap_head.free_size() if dynamic_size else contextlib.nullcontext()
    with free, _on_cpu(explainer, log), scoring(explainer, faithfulness, dynamic_size) as second:
        result = _export(
            explainer,
            info,
            out_dir,
            formats,
            model,
            labels,
            opset,
            dynamic_size,
            class_input,
            log,
            second,
        )
    return result


@contextlib.contextmanager
def _on_cpu(explainer: Explainer, log: Callable[[str], None]) -> Iterator[None]:
    """Export and verify on the CPU (the files then load on any device, :mod:`.runtime`); a
    model on a GPU moves to the CPU for that and back after, and the log says so."""
    device = explainer.mean.device
    if device.type == "cpu":
        yield
        return
    log(f"the model is on {device}: exporting and verifying on the CPU, then moving it back")
    explainer.to("cpu")
    try:
        yield
    finally:
        explainer.to(device)


def _export(
    explainer: Explainer,
    info: Plan,
    out_dir: str,
    formats: tuple[str, ...],
    model: str,
    labels: list[str] | None,
    opset: int,
    dynamic_size: bool,
    class_input: bool,
    log: Callable[[str], None],
    second: Explainer | None = None,
) -> ExportResult:
    """:func:`export_explainer` after its argument checks: stage, verify, commit."""
    tmp = tempfile.mkdtemp(prefix=".explainer-tmp-", dir=out_dir)
    scored = None if second is None else Faithful(explainer, second, explainer)
    try:
        with kept_attributes(explainer):  # a trace's fake tensors leave no cache behind
            staged = _stage(
                explainer, info, tmp, formats, opset, dynamic_size, class_input, log, second
            )
        report, gpu_rows, overlay = _verify(
            explainer, info, staged, dynamic_size, class_input, log, scored
        )
        metadata = build_metadata(
            info,
            model=model,
            labels=labels,
            dynamic_size=dynamic_size,
            class_input=class_input,
            faithfulness=second is not None,
            opset=opset,
            parity=report,
            overlay_tol=overlay,
            gpu_rows=gpu_rows,
        )
        paths, written = commit(staged, metadata, out_dir, tmp, log)
        return ExportResult(paths, written, report, gpu_rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stage(
    explainer: Explainer,
    info: Plan,
    tmp: str,
    formats: tuple[str, ...],
    opset: int,
    dynamic_size: bool,
    class_input: bool,
    log: Callable[[str], None],
    second: Explainer | None = None,
) -> dict[str, str]:
    """Write every format into the staging folder ``tmp``; the file of each format by name;
    with ``second`` (the masked images' explainer), the faithfulness scores too."""
    args = example_args(info, class_input)
    shapes = dynamic_shapes(info, dynamic_size, class_input)
    module: torch.nn.Module = explainer
    if explainer.method.needs_gradient:
        t0 = time.perf_counter()
        dims = {i: list(spec) for i, spec in enumerate(shapes.values())}  # as _dynamic_shapes
        module = lowering.lower(explainer, args, dims)
        log(f"lowered the gradient to forward ops in {time.perf_counter() - t0:4.1f}s")
    if second is not None:
        module = with_scores(explainer, module, second, dynamic_size)
    names = output_names(info.graph.overlay, info.names_classes, faithfulness=second is not None)
    staged = {fmt: os.path.join(tmp, FILES[fmt]) for fmt in formats}
    for fmt, path in staged.items():
        t0 = time.perf_counter()
        if fmt == "onnx":
            to_onnx(
                module,
                args,
                path,
                opset,
                shapes,
                names,
            )
        elif fmt == "pt2":
            to_pt2(module, args, path, dynamic_shapes(info, dynamic_size, class_input, True))
        else:
            to_torchscript(module, args, path)
        log(f"exported {fmt:<11} in {time.perf_counter() - t0:5.1f}s")
    return staged


def _verify(
    explainer: Explainer,
    info: Plan,
    staged: dict[str, str],
    dynamic_size: bool,
    class_input: bool,
    log: Callable[[str], None],
    scored: Faithful | None = None,
) -> tuple[verify.ParityReport, list[verify.DeviceRow], float | None]:
    """Check every staged file against eager (:mod:`.verify`), on the CPU and where there is
    one on a GPU: ``(parity report, GPU rows, overlay limit)``, or an error saying what failed.
    ``scored``: the eager explainer with the faithfulness scores, whose files have them."""
    largest = 2 if info.method_spec.samples else 3
    all_cases = verify.cases(info.input_size, dynamic_size, class_input, info.num_classes, largest)
    overlay_tol = verify.overlay_limit(explainer) if info.graph.overlay else None
    names = output_names(info.graph.overlay, info.names_classes, faithfulness=scored is not None)
    refs = verify.references(explainer, all_cases, scored)
    heat_limits = verify.heatmap_limits(explainer, all_cases, refs)
    exact = Float64Reference(explainer, all_cases, refs)  # runs only where a case fails
    rows: list[verify.ParityRow] = []
    for fmt, path in staged.items():
        try:
            if fmt == "onnx":
                verify.check_onnx(path)
        except Exception as exc:
            raise ExplainExportError(
                f"the exported ONNX file fails onnx.checker: {root_cause(exc)}; nothing was written"
            ) from exc
        artifact = RUNTIMES[fmt](path, input_format=info.graph.input_format)
        artifact.output_names = names  # the contract's: no metadata is stamped yet
        try:
            rows += verify.parity(fmt, artifact, explainer, all_cases, heat_limits, refs, exact)
        except Exception as exc:
            raise ExplainExportError(
                f"the exported {fmt} file fails to run: {root_cause(exc)}; nothing was written"
            ) from exc
        finally:
            del artifact  # one loaded file at a time: each holds a copy of the weights
    if exact.seconds is not None:
        log(f"float64 eager reference in {exact.seconds:5.1f}s (some case failed a limit)")
    report = verify.ParityReport(rows, info.graph.half, overlay_tol or 0)
    failed = [r for r in rows if not r.ok]
    if failed:
        raise ParityError(
            f"exported {', '.join(sorted({r.format for r in failed}))} differs from eager "
            f"(worst: logits {max(r.logits_err for r in failed):.2e}, heatmap "
            f"{max(r.heatmap_err for r in failed):.2e}){_float64_said(exact)}; nothing was "
            "written\n" + str(report)
        )
    gpu_rows = _verify_on_gpu(staged, info, all_cases, refs, log, names)
    failed_gpu = [r for r in gpu_rows if not r.ok]
    if failed_gpu:
        raise ParityError(
            f"exported {', '.join(r.format for r in failed_gpu)} on the GPU disagrees with "
            "eager (top-1 or heatmap correlation); nothing was written\n"
            + verify.format_device_rows(gpu_rows)
        )
    return report, gpu_rows, overlay_tol


def _float64_said(exact: Float64Reference) -> str:
    """What the failure message says of the float64 check (:mod:`.parity64`)."""
    if exact.error is not None:
        return f", and the model cannot run in float64 to judge it there ({exact.error})"
    if exact.outputs is not None:
        return f" and from float64 eager by more than {TIMES:g}x eager float32's own error"
    return ""


def commit(
    staged: dict[str, str],
    metadata: ArtifactMetadata,
    out_dir: str,
    tmp: str,
    log: Callable[[str], None],
) -> tuple[dict[str, str], dict[str, Any]]:
    """Stamp ``metadata`` and a new export id into every staged file, write explainer.json
    beside them, and move the set into ``out_dir`` together (:func:`.files.commit_set`,
    explainer.json last); files of formats not exported now leave with the old set."""
    written = dataclasses.replace(metadata, export_id=uuid.uuid4().hex).to_json()
    for fmt, path in staged.items():
        stamp(path, fmt, written)
    files = {**staged, "metadata": os.path.join(tmp, METADATA_FILE)}
    with open(files["metadata"], "w") as f:
        json.dump(written, f, indent=2)
    final = {fmt: os.path.join(out_dir, FILES.get(fmt, METADATA_FILE)) for fmt in files}
    stale = {os.path.join(out_dir, FILES[fmt]): None for fmt in FILES if fmt not in staged}
    for path in filter(os.path.exists, stale):
        log(f"removing {path} of the earlier export: this export replaces the whole set")
    commit_set({**stale, **{final[fmt]: path for fmt, path in files.items()}}, out_dir)
    return final, written
