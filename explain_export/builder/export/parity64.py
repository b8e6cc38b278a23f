"""Parity judged against float64 eager, where float32 rounding is the question.

The fixed limits (:mod:`.verify`) compare a file with eager float32: two float32 computations
that round differently (kernels, summation order, BatchNorm folded into a convolution). Where a
network's values grow large, eager float32 is itself that far from the exact result:
``visformer_tiny`` at random init has maps up to 1.7e3 and logits up to 700, and its eager
float32 heatmap differs from float64 eager's by up to 5e-3, fifty times the fixed 1e-4.

So where a case of a float32 graph fails a fixed limit, the model runs once more in float64, on
every verification case, and the yardstick ``Y`` is eager float32's own largest error against
that over the cases (for the logits and the heatmap each). An output that failed passes if

    max |file - float64 eager| <= max(fixed limit, TIMES · Y),    TIMES = 4

(the most a file differed from float64, over three seeds of visformer_tiny with both formats,
was 3.2 · Y). A wrong file still fails: its error against float64 is at least its error
against eager float32 less ``Y``. Nothing runs in float64 while every case passes, so the
common case is as fast as before. ``--half`` graphs keep their own limits.

A gradient method's heatmap limit may grow with eager's own spread under input noise
(:func:`.verify.heatmap_limits`), but for a float32 graph only to ``SPREAD_MAX`` = 1e-2: a file
further from eager than that is judged here, so a wide spread counts only where the file is
also within ``max(1e-2, TIMES · Y)`` of float64 eager (the README's fused-layer example had a
spread limit of 6.4e-2, and an input-gradient map 0.58 at batch 3: limits that verify little).

The float64 run is the eager explainer as it is, with its model and head converted to float64
in place (:func:`in_float64`, which puts every tensor back after) and its casts of float64
tensors to float32 skipped (:class:`_StayFloat64`): normalization, model, gradient and head all
in float64. The head must be: a map on a large common value (a channel sum of 1e4 + signal)
keeps its signal only in float64, and a head in float32 would round it away the same way in
eager and in the reference, hiding the error the files are judged by.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ...artifact.contract import graph_image, heatmap_unit
from ..lower.trace_state import kept_attributes
from .writers import root_cause

__all__ = [
    "LEGEND",
    "RULE",
    "TIMES",
    "Float64Check",
    "Float64Reference",
    "float64_mode",
    "float64_outputs",
    "in_float64",
    "note",
]

TIMES = 4.0
RULE = (
    "where a case fails its limit (fixed, or 2x eager's spread up to 1e-2): "
    f"max |file - float64 eager| <= max(limit, {TIMES:g}·Y), "
    "Y = eager float32's largest max |diff| against float64 eager over the cases"
)
LEGEND = f"  float64: {RULE}"


def note(check: dict[str, float]) -> str:
    """The parity table's note for a row judged against float64 (:meth:`Float64Check.to_dict`)."""
    c = check
    return (
        f"  (vs float64: logits {c['logits_err']:.1e}/{c['logits_limit']:.1e}, heatmap "
        f"{c['heatmap_err']:.1e}/{c['heatmap_limit']:.1e}; Y {c['eager_logits_err']:.1e}, "
        f"{c['eager_heatmap_err']:.1e})"
    )


@dataclass(frozen=True)
class Float64Check:
    """One case of one file against float64 eager: its errors, the yardstick ``Y`` (eager
    float32's largest error against float64 over the cases) and the limits it gives."""

    logits_err: float
    heatmap_err: float
    eager_logits_err: float
    eager_heatmap_err: float
    logits_limit: float
    heatmap_limit: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@contextlib.contextmanager
def in_float64(model: nn.Module) -> Iterator[nn.Module]:
    """Within: ``model`` in float64. After: every parameter, gradient, buffer and plain
    attribute (a cache :meth:`nn.Module._apply` cleared) is back, the same objects."""
    params = [
        (m, k, p, p.data, p.grad)
        for m in model.modules()
        for k, p in m._parameters.items()
        if p is not None
    ]
    buffers = [(m, k, b) for m in model.modules() for k, b in m._buffers.items() if b is not None]
    with kept_attributes(model):
        try:
            yield model.double()
        finally:
            for m, k, p, data, grad in params:
                m._parameters[k] = p
                p.data = data
                p.grad = grad
            for m, k, b in buffers:
                m._buffers[k] = b


class _StayFloat64(TorchFunctionMode):
    """Within: a float64 tensor cast to float32 (``.float()``, ``.to(torch.float32)``) stays
    float64; the explainer's casts after the model and in its head, and a model's own, would
    otherwise round the reference to float32 where the head's sums need float64."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        wide = bool(args) and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float64
        if wide and func is torch.Tensor.float:
            func = torch.Tensor.double
        elif wide and func is torch.Tensor.to:
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
            if kwargs.get("dtype") is torch.float32:
                kwargs = {**kwargs, "dtype": torch.float64}
        return func(*args, **kwargs)


@contextlib.contextmanager
def float64_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within: ``model`` in float64 (:func:`in_float64`), and float64 tensors stay float64
    through casts to float32 (:class:`_StayFloat64`)."""
    with in_float64(model) as wide, _StayFloat64():
        yield wide


def float64_outputs(explainer: Any, all_cases: list[Any], names: list[str]) -> list[dict]:
    """Every case's outputs (``names``, in the explainer's order), the explainer run as it is
    with its model and head in float64 (:func:`in_float64`, :class:`_StayFloat64`)."""
    fmt = explainer.graph.input_format
    device = explainer.mean.device
    out = []
    with float64_mode(explainer), torch.inference_mode():
        for case in all_cases:
            image = torch.from_numpy(graph_image(case.image, fmt)).to(device)
            if image.is_floating_point():
                image = image.double()
            index = case.class_index
            index = None if index is None else torch.from_numpy(index).to(device)
            result = explainer(image, index)
            out.append({n: t.cpu().numpy() for n, t in zip(names, result, strict=True)})
    return out


def _max_diff(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None or a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


class Float64Reference:
    """The float64 side of one export's verification, computed on first use and once for
    every format. ``refs``: eager float32's outputs per case (:func:`.verify.references`).
    If the model cannot run in float64, :attr:`error` says why and nothing is relaxed."""

    def __init__(self, explainer: Any, all_cases: list[Any], refs: list[dict]) -> None:
        self.explainer, self.cases, self.refs = explainer, all_cases, refs
        self.outputs: list[dict] | None = None
        self.error: str | None = None
        self.yardstick = (0.0, 0.0)  # Y: (logits, heatmap)
        self.seconds: float | None = None  # how long the float64 run took
        self._tried = False

    def _compute(self) -> None:
        self._tried = True
        start = time.perf_counter()
        try:
            names = list(self.refs[0]) if self.refs else []
            self.outputs = float64_outputs(self.explainer, self.cases, names)
        except Exception as exc:  # a model that cannot run in float64: the fixed limits stand
            self.error = root_cause(exc)
            return
        finally:
            self.seconds = time.perf_counter() - start
        pairs = list(zip(self.refs, self.outputs, strict=True))
        unit = heatmap_unit
        self.yardstick = (
            max(_max_diff(r["logits"], o["logits"]) for r, o in pairs),
            max(_max_diff(unit(r["heatmap"]), unit(o["heatmap"])) for r, o in pairs),
        )

    def check(
        self, i: int, got: dict[str, np.ndarray], logits_limit: float, heatmap_limit: float
    ) -> Float64Check | None:
        """Case ``i`` of a file (its outputs ``got``) against float64 eager, with the limits
        ``max(fixed limit, TIMES · Y)``; None for an fp16 graph or without a float64 run."""
        if self.explainer.graph.half:
            return None
        if not self._tried:
            self._compute()
        if self.outputs is None:
            return None
        ref = self.outputs[i]
        heat = got.get("heatmap")
        y_logits, y_heat = self.yardstick
        return Float64Check(
            _max_diff(got.get("logits"), ref["logits"]),
            _max_diff(None if heat is None else heatmap_unit(heat), heatmap_unit(ref["heatmap"])),
            y_logits,
            y_heat,
            max(logits_limit, TIMES * y_logits),
            max(heatmap_limit, TIMES * y_heat),
        )
