"""Detection parity judged against float64 eager, where float32 rounding is the question.

The classifier's rule (:mod:`.parity64`) for the detection graph. A ResNet-50 FPN detector at
random init (torchvision's RetinaNet, FCOS) has maps whose eager float32 heatmap is itself
4.6e-2 to 1.5e-1 from float64 eager's, and its ONNX file is 1.9e-2 to 7.7e-2 from eager float32:
the fixed 1e-4 then judges rounding, not the export.

So where a file's case agrees with eager on every detection (classes, boxes, scores) and fails
only the heatmap limit, the detector runs once more in float64 on every case (the eager
explainer as it is, in float64: :func:`.parity64.float64_mode`). The yardstick ``Y`` is eager
float32's largest heatmap error against that, over the cases and the detections both agree on;
the case passes if, over the detections all three agree on,

    max |file heatmap - float64 eager heatmap| <= max(limit, TIMES · Y),    TIMES = 4

A wrong map still fails: its error against float64 is at least its error against eager float32
less ``Y``. Nothing runs in float64 while every case passes. Detections themselves (classes,
boxes, scores) keep their fixed limits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from ...artifact.contract import graph_image
from .detection_parity import DetectionRow, compared_rows
from .parity64 import TIMES, float64_mode
from .verify import HEATMAP_TOL, SCORES_TOL, Case
from .writers import root_cause

__all__ = ["Float64Detections", "only_the_heatmap_fails"]

Outputs = dict[str, np.ndarray]


def only_the_heatmap_fails(row: DetectionRow) -> bool:
    """Whether ``row`` agrees with eager on every detection and fails the heatmap limit only
    (its faithfulness scores, where it has them, within theirs)."""
    scores_ok = row.scores_err is None or row.scores_err <= SCORES_TOL
    return not row.ok and row.same_detections and row.heatmap_err > HEATMAP_TOL and scores_ok


def _heatmap_err(a: Outputs, b: Outputs, rows: np.ndarray) -> float:
    """``max |a - b|`` of the heatmaps over ``rows`` ``[N, D]`` (all of a per-image map)."""
    heat = np.abs(a["heatmap"].astype(np.float64) - b["heatmap"].astype(np.float64))
    if heat.shape[1] == rows.shape[1]:
        heat = heat[rows]
    return float(heat.max()) if heat.size else 0.0


class Float64Detections:
    """The float64 side of one detection export's verification, computed on first use.

    ``run(image) -> outputs`` is eager float64 (:func:`.parity64.float64_mode` around the
    explainer); ``cases`` and eager float32's ``refs`` are the verification's. If the model
    cannot run in float64, :attr:`error` says why and nothing is relaxed."""

    def __init__(
        self,
        run: Callable[[np.ndarray], Outputs],
        cases: list[Case],
        refs: list[Outputs],
        threshold: float,
    ) -> None:
        self.run, self.cases, self.refs, self.threshold = run, cases, refs, threshold
        self.outputs: list[Outputs] | None = None
        self.error: str | None = None
        self.yardstick = 0.0
        self._tried = False

    @classmethod
    def of(cls, explainer: torch.nn.Module, cases: list[Case], refs: list[Outputs]):
        """The float64 reference of a :class:`~..detect_explainer.DetectionExplainer`."""

        def run(image: np.ndarray) -> Outputs:
            x = torch.from_numpy(graph_image(image, explainer.input_format))
            with float64_mode(explainer), torch.no_grad():
                out = explainer(x.double() if x.is_floating_point() else x)
            names = explainer.output_names
            return {n: t.detach().cpu().numpy() for n, t in zip(names, out, strict=True)}

        return cls(run, cases, refs, explainer.score_threshold)

    def _compute(self) -> None:
        self._tried = True
        try:
            self.outputs = [self.run(case.image) for case in self.cases]
        except Exception as exc:  # a model that cannot run in float64: the fixed limits stand
            self.error = root_cause(exc)
            return
        errs = [
            _heatmap_err(ref, exact, compared_rows(exact, ref, self.threshold)[0])
            for ref, exact in zip(self.refs, self.outputs, strict=True)
        ]
        self.yardstick = max(errs, default=0.0)

    def judge(self, row: DetectionRow, i: int, got: Outputs) -> DetectionRow:
        """Case ``i``'s ``row`` (a file's outputs ``got``) judged again where only its heatmap
        failed: ``ok`` if within ``max(limit, TIMES · Y)`` of float64 eager (module docstring),
        with the numbers in ``row.float64``; other rows as they are."""
        if not only_the_heatmap_fails(row):
            return row
        if not self._tried:
            self._compute()
        if self.outputs is None:
            return row
        exact, ref = self.outputs[i], self.refs[i]
        rows = (
            compared_rows(got, ref, self.threshold)[0]
            & compared_rows(exact, ref, self.threshold)[0]
        )
        err = _heatmap_err(got, exact, rows)
        limit = max(HEATMAP_TOL, TIMES * self.yardstick)
        check = {"heatmap_err": err, "eager_heatmap_err": self.yardstick, "heatmap_limit": limit}
        return replace(row, ok=err <= limit, float64=check)
