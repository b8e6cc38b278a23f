"""Prove that an exported artifact computes what the eager explainer computes.

For each artifact: run it and the eager :class:`~.explainer.Explainer` on the same inputs (random
images at batch 1 and 3, a real photo, other sizes where the size is dynamic) and compare.
The export fails if any ``max |logits - eager|`` exceeds 1e-3 · max(1, max |eager logits|)
(relative to their magnitude: a model whose logits reach 1e11 has float32 steps of 1e4) or
``max |heatmap - eager|`` exceeds 1e-4 (for ``gradcam``, or twice what tiny input noise moves
the eager heatmap itself, where that is more, up to ``SPREAD_MAX`` = 1e-2:
:func:`heatmap_limits`); with ``--half`` (fp16
compute, whose kernels round differently per backend) the limits are 5e-2 (also scaled) and
1e-2. An in-graph overlay may differ by one colormap step where a heatmap value sits on a
quantization boundary (a 1e-6 change moves ``round(255·m)`` by one level):
``ceil(alpha · max|lut[i+1] - lut[i]|) + 1`` levels per channel, 3 for JET at alpha 0.4; with
``--half`` three colormap steps (:func:`overlay_limit`). ONNX
files also pass ``onnx.checker`` with ``full_check=True``. Where a case of a float32 graph fails,
its logits and heatmap are judged again against float64 eager (:mod:`.parity64`); so a spread
that would allow more than ``SPREAD_MAX`` counts only through that rule. Each row names the rule
that judged it (:data:`RULES`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from ...artifact import samples
from ...artifact.contract import FAITHFULNESS_OUTPUTS, graph_image, heatmap_unit, output_names
from ..explainer import Explainer
from . import parity64
from .device_parity import CORR_MIN, DeviceRow, correlation, format_device_rows, on_device
from .parity64 import Float64Reference

__all__ = [
    "CORR_MIN",
    "HALF_HEATMAP_TOL",
    "HALF_LOGITS_TOL",
    "HEATMAP_TOL",
    "LOGITS_TOL",
    "NOISE",
    "NOISE_DRAWS",
    "RULES",
    "SCORES_TIMES",
    "SCORES_TOL",
    "SPREAD_MAX",
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
    "scores_limit",
]

LOGITS_TOL = 1e-3
HEATMAP_TOL = 1e-4
HALF_LOGITS_TOL = 5e-2
HALF_HEATMAP_TOL = 1e-2
SPREAD_MAX = 1e-2  # the most eager's own spread may widen a float32 heatmap limit to
# the faithfulness scores (probabilities, a mean and a correlation, all in [0, 1]): within
# max(SCORES_TOL, SCORES_TIMES · the case's heatmap limit), as they follow the map
SCORES_TOL = 1e-3
SCORES_TIMES = 10
RULES = {
    "fixed": "the fixed limits",
    "spread": f"heatmap within 2x eager's own spread under input noise (at most {SPREAD_MAX:g})",
    "float64": "failed against eager float32; judged against float64 eager",
}


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
    rule: str = "fixed"  # which rule judged the row (RULES): fixed, spread or float64
    spread_limit: float | None = None  # 2x eager's own spread, where more than the fixed limit
    scores_err: float | None = None  # --faithfulness: max |diff| of the four scores
    scores_limit: float | None = None  # their limit (scores_limit)

    def to_dict(self) -> dict:
        """JSON-ready (the size as a list)."""
        return {**asdict(self), "size": list(self.size)}


def cases(
    input_size: tuple[int, int],
    dynamic_size: bool = False,
    class_input: bool = False,
    num_classes: int = 1,
    largest_batch: int = 3,
) -> list[Case]:
    """Random batches of 1 and ``largest_batch`` (3; 2 for a sampling method, whose graph runs
    ``N·(S+1)`` images), the cat photo, and (dynamic size) two other sizes.

    With ``class_input``, batches of more than one image get ``class_index = [-1, 7, 14, ...]``
    (mod ``num_classes``): the argmax for the first image, chosen classes for the others.
    """
    rng = np.random.default_rng(0)
    h, w = input_size

    def rand(n: int, hh: int, ww: int) -> np.ndarray:
        return rng.random((n, 3, hh, ww), dtype=np.float32)

    out = [Case("random", rand(1, h, w)), Case("random", rand(largest_batch, h, w))]
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
    explainer: Explainer,
    case: Case,
    noise: torch.Tensor | None = None,
    scored: torch.nn.Module | None = None,
) -> dict[str, np.ndarray]:
    """Every output of the eager explainer for ``case`` (``noise`` added to its normalized
    input), by name; ``scored`` (:class:`..faithful.Faithful` around ``explainer``) adds the
    faithfulness scores."""
    device = explainer.mean.device
    image = torch.from_numpy(graph_image(case.image, explainer.graph.input_format)).to(device)
    index = None if case.class_index is None else torch.from_numpy(case.class_index).to(device)
    names = output_names(
        explainer.graph.overlay, explainer.plan.names_classes, faithfulness=scored is not None
    )
    if scored is not None:
        result = scored(image, index)
    elif noise is None:
        result = explainer(image, index)
    else:  # the same steps as forward, with the noise added between normalization and model
        x = explainer.normalize(image) + noise.to(device)
        result = explainer.finish(image, *explainer.run(x, index), index)
    return {n: t.cpu().numpy() for n, t in zip(names, result, strict=True)}


def _unit(heatmap: np.ndarray | None) -> np.ndarray | None:
    return None if heatmap is None else heatmap_unit(heatmap)


def _max_diff(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None or a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


NOISE = 1e-5  # in normalized input units: 1/1700 of one 8-bit level (about 0.017)
NOISE_DRAWS = 3


def references(
    explainer: Explainer, all_cases: list[Case], scored: torch.nn.Module | None = None
) -> list[dict[str, np.ndarray]]:
    """The eager outputs of every case (:func:`eager`, with ``scored``'s faithfulness scores),
    computed once for every format."""
    return [eager(explainer, case, scored=scored) for case in all_cases]


def scores_limit(heat_limit: float) -> float:
    """The faithfulness scores' limit for a case whose heatmap limit is ``heat_limit``."""
    return max(SCORES_TOL, SCORES_TIMES * heat_limit)


def _scores_err(got: dict[str, Any], ref: dict[str, np.ndarray]) -> float | None:
    """The largest ``|file − eager|`` of the faithfulness scores; None without them."""
    if FAITHFULNESS_OUTPUTS[0] not in ref:
        return None
    return max(_max_diff(got.get(name), ref[name]) for name in FAITHFULNESS_OUTPUTS)


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

    ``heat_limits``: per case (:func:`heatmap_limits`), default the fixed limit; for a float32
    graph at most ``SPREAD_MAX``. ``refs``: the eager outputs (:func:`references`), computed here
    if not given; ``exact``: where a case fails, the logits and heatmap are judged again against
    float64 eager (:mod:`.parity64`), with the heatmap's limit ``max(limit, 4·Y)``: a spread
    wider than ``SPREAD_MAX`` counts only where the file is that close to float64. Each row's
    ``rule`` (:data:`RULES`) says which judged it."""
    logits_tol, heat_tol = limits(explainer.graph.half)
    overlay_tol = overlay_limit(explainer) if explainer.graph.overlay else 0.0
    heat_limits = heat_limits or [heat_tol] * len(all_cases)
    refs = refs or references(explainer, all_cases)
    rows = []
    for i, (case, heat_limit, ref) in enumerate(zip(all_cases, heat_limits, refs, strict=True)):
        got = artifact.outputs(case.image, case.class_index)
        le = _max_diff(got.get("logits"), ref["logits"])
        he = _max_diff(_unit(got.get("heatmap")), heatmap_unit(ref["heatmap"]))
        spread = heat_limit if heat_limit > heat_tol * (1 + 1e-6) else None
        if spread is not None and not explainer.graph.half:  # wider: only by the float64 rule
            heat_limit = min(heat_limit, SPREAD_MAX)
        levels = ref["heatmap"].dtype == np.uint8
        if levels:  # a value on a rounding boundary moves one level
            heat_limit = heat_limit + 1 / 255
        oe = _max_diff(got.get("overlay"), ref["overlay"]) if "overlay" in ref else None
        limit = logits_limit(ref["logits"], logits_tol)
        same = "classes" not in ref or _max_diff(got.get("classes"), ref["classes"]) == 0
        se, s_limit = _scores_err(got, ref), scores_limit(heat_limit)
        same = same and (se is None or se <= s_limit)
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
        rule = "float64" if f64 is not None else "fixed" if spread is None else "spread"
        row = ParityRow(fmt, case.label, n, (hh, ww), le, he, ok, oe, limit, heat_limit, levels)
        row = replace(row, rule=rule, spread_limit=spread)
        if se is not None:
            row = replace(row, scores_err=se, scores_limit=s_limit)
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
    """The parity table printed after export: per row the errors, the heatmap's limit against
    eager float32 and the rule that judged it (:data:`RULES`), with a legend of the rules where
    any row's is not ``fixed``."""
    logits_tol, heat_tol = limits(half)
    overlay = any(r.overlay_err is not None for r in rows)
    scores = any(r.scores_err is not None for r in rows)
    head = f"logits {logits_tol:g}·max(1, max|logits|), heatmap {heat_tol:g}" + (
        f", overlay {overlay_tol:g} levels" if overlay else ""
    )
    if scores:
        head += f", scores max({SCORES_TOL:g}, {SCORES_TIMES}x the heatmap's limit)"
    lines = [
        f"parity vs eager (max |diff|; limits: {head})",
        f"  {'format':<12} {'input':<28} {'batch':>5} {'size':>9} {'logits':>9} {'heatmap':>9}"
        + (f" {'overlay':>7}" if overlay else "")
        + (f" {'scores':>9}" if scores else "")
        + f" {'limit':>8}  rule",
    ]
    for r in rows:
        size = f"{r.size[0]}x{r.size[1]}"
        extra = f" {r.overlay_err:>7.0f}" if r.overlay_err is not None else ""
        extra += f" {r.scores_err:>9.2e}" if r.scores_err is not None else ""
        limit = f"{r.heatmap_limit:.1e}" if r.heatmap_limit is not None else "-"
        notes = []
        base = (r.heatmap_limit or 0) - (1 / 255 if r.heatmap_levels else 0)
        if r.spread_limit is not None and r.spread_limit > base * (1 + 1e-6):
            notes.append(f"2x eager's own spread {r.spread_limit:.1e}, capped at {base:g}")
        if r.heatmap_levels:
            notes.append("limit + one uint8 level")
        note = f"  ({'; '.join(notes)})" if notes else ""
        lines.append(
            f"  {r.format:<12} {r.input:<28} {r.batch:>5} {size:>9} {r.logits_err:>9.2e} "
            f"{r.heatmap_err:>9.2e}{extra} {limit:>8}  {r.rule:<7}  {'ok' if r.ok else 'FAIL'}"
            + note
            + (parity64.note(r.float64) if r.float64 else "")
        )
    used = [k for k in RULES if any(r.rule == k for r in rows)]
    if used != ["fixed"]:  # a legend where some row was judged by another rule
        lines.append("  rules: " + "; ".join(f"{k}: {RULES[k]}" for k in used))
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
