"""Prove that an exported artifact computes what the eager explainer computes.

For each artifact: run it and the eager :class:`~.explainer.Explainer` on the same inputs (random
images at batch 1 and 3, a real photo, other sizes where the size is dynamic) and compare.
The export fails if any ``max |logits - eager|`` exceeds 1e-3 · max(1, max |eager logits|)
(relative to their magnitude: a model whose logits reach 1e11 has float32 steps of 1e4) or
``max |heatmap - eager|`` exceeds 1e-4 (for ``gradcam``, or twice what tiny input noise moves
the eager heatmap itself, where that is more: :func:`heatmap_limits`); with ``--half`` (fp16
compute, whose kernels round differently per backend) the limits are 5e-2 (also scaled) and
1e-2. An in-graph overlay may differ by one colormap step where a heatmap value sits on a
quantization boundary (a 1e-6 change moves ``round(255·m)`` by one level):
``ceil(alpha · max|lut[i+1] - lut[i]|) + 1`` levels per channel, 3 for JET at alpha 0.4; with
``--half`` three colormap steps (:func:`overlay_limit`). ONNX
files also pass ``onnx.checker`` with ``full_check=True``. Where a case of a float32 graph fails,
its logits and heatmap are judged again against float64 eager (:mod:`.parity64`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from ..artifact import samples
from ..artifact.contract import graph_image, heatmap_unit, output_names
from . import parity64
from .explainer import Explainer
from .parity64 import Float64Reference

__all__ = [
    "CORR_MIN",
    "HALF_HEATMAP_TOL",
    "HALF_LOGITS_TOL",
    "HEATMAP_TOL",
    "LOGITS_TOL",
    "NOISE",
    "NOISE_DRAWS",
    "Case",
    "DeviceRow",
    "ParityReport",
    "ParityRow",
    "cases",
    "check_onnx",
    "correlation",
    "eager",
    "format_device_rows",
    "format_report",
    "heatmap_limits",
    "limits",
    "logits_limit",
    "on_device",
    "overlay_limit",
    "parity",
    "references",
]

LOGITS_TOL = 1e-3
HEATMAP_TOL = 1e-4
HALF_LOGITS_TOL = 5e-2
HALF_HEATMAP_TOL = 1e-2


def limits(half: bool = False) -> tuple[float, float]:
    """(logits, heatmap) tolerances for float32 or fp16 graphs."""
    return (HALF_LOGITS_TOL, HALF_HEATMAP_TOL) if half else (LOGITS_TOL, HEATMAP_TOL)


def overlay_limit(explainer: Explainer, heatmap_limit: float | None = None) -> float:
    """Largest allowed overlay difference, in levels: ``k`` colormap steps at ``alpha``, plus 1,
    where ``k = 1 + floor(255 · heatmap limit)`` is how many of the colormap's 256 entries a
    heatmap within its limit can move (1 in float32; 3 with ``--half``, whose limit is 1e-2)."""
    step = explainer.lut.diff(dim=0).abs().max().item()
    heat = limits(explainer.graph.half)[1] if heatmap_limit is None else heatmap_limit
    moves = 1 + int(np.floor(255 * heat))
    return float(np.ceil(explainer.graph.overlay_alpha * step * moves) + 1)


@dataclass(frozen=True)
class Case:
    """One verification input: a label and an image batch ``[N,3,H,W]`` in [0, 1]."""

    label: str
    image: np.ndarray
    class_index: np.ndarray | None = None


@dataclass(frozen=True)
class ParityRow:
    format: str
    input: str
    batch: int
    size: tuple[int, int]
    logits_err: float
    heatmap_err: float
    ok: bool
    overlay_err: float | None = None  # max |overlay - eager| in uint8 levels, if there is one
    logits_limit: float | None = None  # the logits' limit for this case, scaled by magnitude
    heatmap_limit: float | None = None  # the heatmap's limit for this case (see heatmap_limits)
    heatmap_levels: bool = False  # a uint8 heatmap: the limit includes one level (1/255)
    float64: dict | None = None  # where a fixed limit failed: vs float64 eager (.parity64)

    def to_dict(self) -> dict:
        """JSON-ready (the size as a list)."""
        return {**asdict(self), "size": list(self.size)}


def cases(
    input_size: tuple[int, int],
    dynamic_size: bool = False,
    class_input: bool = False,
    num_classes: int = 1,
) -> list[Case]:
    """Random batches of 1 and 3, the cat photo, and (dynamic size) two other sizes.

    With ``class_input``, batches of more than one image get ``class_index = [-1, 7, 14, ...]``
    (mod ``num_classes``): the argmax for the first image, chosen classes for the others.
    """
    rng = np.random.default_rng(0)
    h, w = input_size

    def rand(n: int, hh: int, ww: int) -> np.ndarray:
        return rng.random((n, 3, hh, ww), dtype=np.float32)

    out = [Case("random", rand(1, h, w)), Case("random", rand(3, h, w))]
    try:
        photo = samples.load_rgb(samples.photo_path("chelsea.png"), input_size)[None]
        out.append(Case("photo chelsea.png", photo))
    except FileNotFoundError:
        pass  # scikit-image missing: random inputs only
    if dynamic_size:
        for hh, ww in ((h + 32, w + 32), (h, w + 64)):
            out.append(Case("random", rand(2, hh, ww)))
    if class_input:
        out = [
            Case(c.label + ", class_index", c.image, _class_indices(c.image.shape[0], num_classes))
            if c.image.shape[0] > 1
            else c
            for c in out
        ]
    return out


def _class_indices(n: int, num_classes: int) -> np.ndarray:
    chosen = (np.arange(n, dtype=np.int64) * 7) % num_classes
    chosen[0] = -1
    return chosen


@torch.inference_mode()
def eager(
    explainer: Explainer, case: Case, noise: torch.Tensor | None = None
) -> dict[str, np.ndarray]:
    """Every output of the eager explainer for ``case`` (``noise`` added to its normalized
    input), by name."""
    device = explainer.mean.device
    image = torch.from_numpy(graph_image(case.image, explainer.graph.input_format)).to(device)
    index = None if case.class_index is None else torch.from_numpy(case.class_index).to(device)
    if noise is None:
        result = explainer(image, index)
    else:  # the same steps as forward, with the noise added between normalization and model
        x = explainer.normalize(image) + noise.to(device)
        result = explainer.finish(image, *explainer.run(x, index), index)
    names = output_names(explainer.graph.overlay, explainer.plan.names_classes)
    return {n: t.cpu().numpy() for n, t in zip(names, result, strict=True)}


def _unit(heatmap: np.ndarray | None) -> np.ndarray | None:
    return None if heatmap is None else heatmap_unit(heatmap)


def _max_diff(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None or a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


NOISE = 1e-5  # in normalized input units: 1/1700 of one 8-bit level (about 0.017)
NOISE_DRAWS = 3


def references(explainer: Explainer, all_cases: list[Case]) -> list[dict[str, np.ndarray]]:
    """The eager outputs of every case (:func:`eager`), computed once for every format."""
    return [eager(explainer, case) for case in all_cases]


def heatmap_limits(
    explainer: Explainer,
    all_cases: list[Case],
    refs: list[dict[str, np.ndarray]] | None = None,
) -> list[float]:
    """Per case, the heatmap's limit: 1e-4, or for a gradient method twice as much as the eager
    heatmap itself moves when ``NOISE`` is added to its input (the most of ``NOISE_DRAWS``
    draws), where that is larger.

    The gradient of a network with ReLU/ReLU6 after the tap jumps where an activation crosses
    0 or 6: a backend's different float rounding (1e-6 relative) flips a few such masks, and
    Grad-CAM's weights move with them. Measured on EfficientNet-Lite0 at ``_blocks.10``: input
    noise of 1e-7 moved the eager heatmap by up to 1.8e-3, and of 1e-5 by 1e-3 to 2.6e-3 on
    every verification input; ONNX Runtime differed from eager by up to 1.8e-3. A smooth head
    (pooling + linear, LayerNorm, GELU) moves by ~1e-6, so its limit stays 1e-4. An export that
    differs by more than this computes something else. ``refs``: :func:`references`.
    """
    tol = limits(explainer.graph.half)[1]
    if not explainer.method.needs_gradient:
        return [tol] * len(all_cases)
    refs = refs or references(explainer, all_cases)
    out = []
    for case, outputs in zip(all_cases, refs, strict=True):
        ref = outputs["heatmap"]
        spread = 0.0
        for seed in range(NOISE_DRAWS):
            got = eager(explainer, case, _noise(case, seed))["heatmap"]
            spread = max(spread, _max_diff(got, ref))
        out.append(max(tol, 2 * spread))
    return out


def _noise(case: Case, seed: int) -> torch.Tensor:
    n, _, h, w = case.image.shape
    gen = torch.Generator().manual_seed(seed)
    return NOISE * torch.randn(n, 3, h, w, generator=gen)


def parity(
    fmt: str,
    artifact: Any,
    explainer: Explainer,
    all_cases: list[Case],
    heat_limits: list[float] | None = None,
    refs: list[dict[str, np.ndarray]] | None = None,
    exact: Float64Reference | None = None,
) -> list[ParityRow]:
    """Compare every output of ``artifact`` with the eager explainer, on every case.

    ``heat_limits``: per case (:func:`heatmap_limits`), default the fixed limit; ``refs``: the
    eager outputs (:func:`references`), computed here if not given; ``exact``: where a case
    fails, the logits and heatmap are judged again against float64 eager (:mod:`.parity64`)."""
    logits_tol, heat_tol = limits(explainer.graph.half)
    overlay_tol = overlay_limit(explainer) if explainer.graph.overlay else 0.0
    heat_limits = heat_limits or [heat_tol] * len(all_cases)
    refs = refs or references(explainer, all_cases)
    rows = []
    for i, (case, heat_limit, ref) in enumerate(zip(all_cases, heat_limits, refs, strict=True)):
        got = artifact.outputs(case.image, case.class_index)
        le = _max_diff(got.get("logits"), ref["logits"])
        he = _max_diff(_unit(got.get("heatmap")), heatmap_unit(ref["heatmap"]))
        levels = ref["heatmap"].dtype == np.uint8
        if levels:  # a value on a rounding boundary moves one level
            heat_limit = heat_limit + 1 / 255
        oe = _max_diff(got.get("overlay"), ref["overlay"]) if "overlay" in ref else None
        limit = logits_limit(ref["logits"], logits_tol)
        same = "classes" not in ref or _max_diff(got.get("classes"), ref["classes"]) == 0
        ok = bool(le <= limit and he <= heat_limit and (oe is None or oe <= overlay_tol) and same)
        f64 = None if ok or exact is None else exact.check(i, got, limit, heat_limit)
        if f64 is not None:  # each output within its fixed limit or the float64 one
            heat_ok = he <= heat_limit or f64.heatmap_err <= f64.heatmap_limit
            over_tol = overlay_limit(explainer, max(he, heat_limit)) if oe is not None else 0
            ok = bool(
                (le <= limit or f64.logits_err <= f64.logits_limit)
                and heat_ok
                and (oe is None or oe <= over_tol)
                and same
            )
        n, _, hh, ww = case.image.shape
        row = ParityRow(fmt, case.label, n, (hh, ww), le, he, ok, oe, limit, heat_limit, levels)
        rows.append(row if f64 is None else replace(row, float64=f64.to_dict()))  # NaN fails
    return rows


def logits_limit(logits: np.ndarray, tol: float) -> float:
    """``tol · max(1, max |logits|)``: the logits' limit, relative to their magnitude."""
    peak = float(np.abs(logits).max()) if logits.size else 0.0
    return tol * max(1.0, peak) if np.isfinite(peak) else tol


def check_onnx(path: str) -> None:
    """``onnx.checker`` with the full check (shape inference included)."""
    import onnx

    onnx.checker.check_model(path, full_check=True)


def format_report(rows: list[ParityRow], half: bool = False, overlay_tol: float = 0) -> str:
    """The parity table printed after export."""
    logits_tol, heat_tol = limits(half)
    overlay = any(r.overlay_err is not None for r in rows)
    head = f"logits {logits_tol:g}·max(1, max|logits|), heatmap {heat_tol:g}" + (
        f", overlay {overlay_tol:g} levels" if overlay else ""
    )
    lines = [
        f"parity vs eager (max |diff|; limits: {head})",
        f"  {'format':<12} {'input':<28} {'batch':>5} {'size':>9} {'logits':>9} {'heatmap':>9}"
        + (f" {'overlay':>7}" if overlay else ""),
    ]
    for r in rows:
        size = f"{r.size[0]}x{r.size[1]}"
        extra = f" {r.overlay_err:>7.0f}" if r.overlay_err is not None else ""
        note = ""
        base = (r.heatmap_limit or 0) - (1 / 255 if r.heatmap_levels else 0)
        if r.heatmap_limit is not None and base > heat_tol * (1 + 1e-6):
            note = f"  (heatmap limit {r.heatmap_limit:.1e}: 2x eager's own spread"
            note += " + one uint8 level)" if r.heatmap_levels else ")"
        elif r.heatmap_levels:
            note = f"  (heatmap limit {r.heatmap_limit:.1e}: {heat_tol:g} + one uint8 level)"
        lines.append(
            f"  {r.format:<12} {r.input:<28} {r.batch:>5} {size:>9} "
            f"{r.logits_err:>9.2e} {r.heatmap_err:>9.2e}{extra}  {'ok' if r.ok else 'FAIL'}{note}"
            + (parity64.note(r.float64) if r.float64 else "")
        )
    if any(r.float64 for r in rows):
        lines.append(parity64.LEGEND)
    return "\n".join(lines)


class ParityReport(list[ParityRow]):
    """The parity rows of an export; prints as the table ``explain-export`` prints."""

    def __init__(self, rows: list[ParityRow], half: bool = False, overlay_tol: float = 0) -> None:
        super().__init__(rows)
        self.half, self.overlay_tol = half, overlay_tol

    def __str__(self) -> str:
        return format_report(list(self), self.half, self.overlay_tol)


CORR_MIN = 0.99  # heatmap correlation a device's rows must reach, per image


@dataclass(frozen=True)
class DeviceRow:
    """An artifact run on another device, judged as a user judges it: the same top-1 class
    and a heatmap that correlates with eager's on the photos; the max |diff| is reported."""

    format: str
    device: str
    backend: str
    images: int
    top1_agree: int
    min_corr: float
    logits_err: float
    heatmap_err: float
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps (1 where both are constant and equal)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def on_device(
    fmt: str, artifact: Any, all_cases: list[Case], refs: list[dict[str, np.ndarray]]
) -> DeviceRow:
    """``artifact`` (loaded on a device) against the eager outputs ``refs`` on the photo cases
    (every case if there is no photo): top-1 agreement, the lowest heatmap correlation, the
    max |diff|. OK if every top-1 agrees and every correlation is at least ``CORR_MIN``."""
    chosen = [i for i, c in enumerate(all_cases) if c.label.startswith("photo")] or list(
        range(len(all_cases))
    )
    agree = images = 0
    corr, le, he = 1.0, 0.0, 0.0
    for i in chosen:
        case, ref = all_cases[i], refs[i]
        logits, heat = artifact(case.image, case.class_index)
        agree += int((logits.argmax(1) == ref["logits"].argmax(1)).sum())
        images += logits.shape[0]
        ref_heat = heatmap_unit(ref["heatmap"])
        corr = min([corr] + [correlation(h, r) for h, r in zip(heat, ref_heat, strict=True)])
        le = max(le, _max_diff(logits, ref["logits"]))
        he = max(he, _max_diff(heat, ref_heat))
    ok = bool(agree == images and corr >= CORR_MIN)
    return DeviceRow(fmt, artifact.device, artifact.backend, images, agree, corr, le, he, ok)


def format_device_rows(rows: list[DeviceRow]) -> str:
    """The table of :func:`on_device` rows."""
    lines = [
        f"on the GPU vs eager on the CPU (photos; limits: same top-1, heatmap corr >= {CORR_MIN})",
        f"  {'format':<12} {'backend':<34} {'top-1':>7} {'corr':>9} {'logits':>9} {'heatmap':>9}",
    ]
    for r in rows:
        lines.append(
            f"  {r.format:<12} {r.backend:<34} {r.top1_agree:>3}/{r.images:<3} {r.min_corr:>9.6f} "
            f"{r.logits_err:>9.2e} {r.heatmap_err:>9.2e}  {'ok' if r.ok else 'FAIL'}"
        )
    return "\n".join(lines)
