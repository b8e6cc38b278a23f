"""Detection parity against float64 eager where float32 rounding is the question (issue 27): a
file whose detections agree and whose maps are as far from float64 as eager float32's passes; a
wrong map still fails; nothing runs in float64 while every case passes."""

from __future__ import annotations

import numpy as np
import pytest
from detectors import tiny_yolo
from torch import Tensor, nn

from explain_export.builder.detect_build import build_detector
from explain_export.builder.export import detection as detection_export
from explain_export.builder.export.detection import detection_cases
from explain_export.builder.export.detection64 import Float64Detections
from explain_export.builder.export.detection_parity import compare, format_rows
from explain_export.builder.export.parity64 import TIMES
from explain_export.builder.export.verify import HEATMAP_TOL

SIZE = (128, 160)
OFFSET = 4e3
METHOD = "sum"  # Σ_k (A_k + 4e3): no class weights whose sign a ReLU could zero the map with


class Shift(nn.Module):
    def __init__(self, by: float) -> None:
        super().__init__()
        self.by = by

    def forward(self, x: Tensor) -> Tensor:
        return x + self.by


def on_an_offset() -> nn.Module:
    """The tiny YOLO with the maps its head reads on ``+4e3`` (each branch takes it off first):
    ``sum``'s channel sums of ~1e5 keep the maps' signal (~5) to ulp(1e5) ~ 8e-3, so eager
    float32's heatmap is far from float64's (more than ten times the fixed 1e-4) while its
    detections stay the same."""
    model = tiny_yolo()
    head = model.detect
    head.register_forward_pre_hook(lambda _m, args: ([a + OFFSET for a in args[0]],))
    for branches in (head.box, head.cls):
        for i, branch in enumerate(branches):
            branches[i] = nn.Sequential(Shift(-OFFSET), *branch)
    return model.eval()


@pytest.fixture(scope="module")
def offset():
    explainer = build_detector(on_an_offset(), SIZE, METHOD)
    cases = detection_cases(SIZE)
    refs = [detection_export._eager(explainer, case) for case in cases]
    exact = Float64Detections.of(explainer, cases, refs)
    exact._compute()
    return explainer, cases, refs, exact


def _judged(explainer, cases, refs, exact, make):
    rows = []
    for i, (case, ref) in enumerate(zip(cases, refs, strict=True)):
        got = make(ref, exact.outputs[i])
        row = compare("onnx", case, got, ref, explainer.score_threshold)
        rows.append((row, exact.judge(row, i, got)))
    return rows


def _mirror(ref, ref64):
    """A file as far from float64 as eager float32 is, the other way: 2·float64 − eager."""
    heat = np.clip(2 * ref64["heatmap"] - ref["heatmap"], 0, 1).astype(np.float32)
    return {**ref, "heatmap": heat}


def test_float64_rule_accepts_maps_as_exact_as_eager(offset):
    explainer, cases, refs, exact = offset
    assert exact.error is None and exact.yardstick > 10 * HEATMAP_TOL
    assert all(int(r["count"].sum()) > 0 for r in refs)
    assert all(r["heatmap"].max() == 1 for r in refs)  # no flat map
    rows = _judged(explainer, cases, refs, exact, _mirror)
    assert all(not fixed.ok for fixed, _ in rows)  # the fixed limit fails every case
    for _, judged in rows:
        assert judged.ok, judged
        assert judged.float64["heatmap_limit"] == pytest.approx(TIMES * exact.yardstick)
        assert judged.float64["heatmap_err"] <= 1.01 * exact.yardstick
    text = format_rows([judged.to_dict() for _, judged in rows])
    assert "vs float64" in text and "float64:" in text


def test_float64_rule_still_fails_a_wrong_map(offset):
    explainer, cases, refs, exact = offset

    def flipped(ref, _ref64):  # each map mirrored left to right: wrong, not rounded
        return {**ref, "heatmap": ref["heatmap"][..., ::-1].copy()}

    for _, judged in _judged(explainer, cases, refs, exact, flipped):
        assert not judged.ok
        assert judged.float64["heatmap_err"] > judged.float64["heatmap_limit"]


def test_float64_rule_leaves_wrong_detections_to_the_fixed_limits(offset):
    explainer, cases, refs, exact = offset

    def other_class(ref, ref64):
        got = _mirror(ref, ref64)
        got["classes"] = np.where(ref["classes"] >= 0, (ref["classes"] + 1) % 3, -1)
        return got

    for fixed, judged in _judged(explainer, cases, refs, exact, other_class):
        assert not fixed.same_detections and judged is fixed


def test_nothing_runs_in_float64_while_every_case_passes(offset):
    explainer, cases, refs, _ = offset
    exact = Float64Detections.of(explainer, cases, refs)
    for i, (case, ref) in enumerate(zip(cases, refs, strict=True)):
        row = compare("onnx", case, ref, ref, explainer.score_threshold)
        assert exact.judge(row, i, ref) is row and row.ok
    assert exact.outputs is None


def test_the_float64_run_takes_a_uint8_input():
    # a uint8 image becomes float32 in the graph; with YOLO's mean 0, std 1 skipped, nothing
    # promoted it to the float64 model's dtype, and the float64 check failed to run at all
    explainer = build_detector(tiny_yolo(), SIZE, input_format="uint8-nhwc")
    cases = detection_cases(SIZE)
    refs = [detection_export._eager(explainer, case) for case in cases]
    exact = Float64Detections.of(explainer, cases, refs)
    exact._compute()
    assert exact.error is None and exact.outputs[0]["heatmap"].dtype == np.float64
