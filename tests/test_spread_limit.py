"""Issue 26, 9: a heatmap limit that eager's own spread widens past ``SPREAD_MAX`` (1e-2)
counts only where the file is also within the float64 rule; each row names its rule."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from explain_export.builder.explainer import build_explainer
from explain_export.builder.export import parity64, verify
from explain_export.builder.export.export import export_explainer

SIZE = (32, 32)


class Steep(nn.Module):
    """Maps ``relu(conv2(sin(g · conv(x))))`` with ``g = 1e4``: 1e-5 of input noise turns the
    sines by ~0.1 rad, so eager's heatmap spread is ~5e-2 and its limit ~0.1; float32 rounds
    ``g · conv(x)`` (up to ~1e4) to ~1e-3 rad, so eager float32 is only ~1e-3 from float64."""

    def __init__(self, gain: float = 1e4, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.gain = gain
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        a = torch.relu(self.conv2(torch.sin(self.gain * self.conv(x))))
        return self.fc(self.pool(a).flatten(1))


class Outputs:
    """An artifact whose outputs are eager's, the heatmap made by ``heat(case index, eager's)``."""

    def __init__(self, cases, refs, heat) -> None:
        self.by_image = {id(c.image): i for i, c in enumerate(cases)}
        self.refs, self.heat = refs, heat

    def outputs(self, image, class_index=None):
        i = self.by_image[id(image)]
        return {"logits": self.refs[i]["logits"], "heatmap": self.heat(i, self.refs[i]["heatmap"])}


def _perturbed(heatmap: np.ndarray, by: float = 0.03) -> np.ndarray:
    """``heatmap`` moved by ±``by`` in a checkerboard (kept in [0, 1]): wrong by 0.03."""
    sign = np.indices(heatmap.shape[-2:]).sum(0) % 2 * 2 - 1
    return np.clip(heatmap + by * sign, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def steep():
    torch.manual_seed(0)
    explainer = build_explainer(Steep().eval(), method="gradcam", input_size=SIZE)
    cases = verify.cases(SIZE)
    refs = verify.references(explainer, cases)
    wide = verify.heatmap_limits(explainer, cases, refs)
    return explainer, cases, refs, wide


def test_a_file_wrong_within_a_wide_spread_limit_fails_the_float64_rule(steep):
    explainer, cases, refs, wide = steep
    exact = parity64.Float64Reference(explainer, cases, refs)
    artifact = Outputs(cases, refs, lambda _, heatmap: _perturbed(heatmap))
    errors = [
        verify._max_diff(artifact.outputs(c.image)["heatmap"], r["heatmap"])
        for c, r in zip(cases, refs, strict=True)
    ]
    assert min(wide) > 2 * max(errors) > 2 * 0.025  # premise: within the spread-derived limit
    rows = verify.parity("onnx", artifact, explainer, cases, wide, refs, exact)
    assert not any(r.ok for r in rows)
    assert exact.yardstick[1] < 0.03 / (parity64.TIMES + 1)  # float32 is close to float64 here
    for r, limit in zip(rows, wide, strict=True):
        assert r.rule == "float64" and r.spread_limit == limit
        assert r.heatmap_limit == verify.SPREAD_MAX
        assert r.float64["heatmap_err"] > r.float64["heatmap_limit"]


def test_a_correct_file_passes_with_a_wide_spread_limit(steep):
    explainer, cases, refs, wide = steep
    exact = parity64.Float64Reference(explainer, cases, refs)
    exact._compute()
    # the float64 answer, rounded to float32: a right file, not rounded as eager is
    exact64 = Outputs(cases, refs, lambda i, _: exact.outputs[i]["heatmap"].astype(np.float32))
    rows = verify.parity("onnx", exact64, explainer, cases, wide, refs, exact)
    assert all(r.ok for r in rows)
    assert {r.rule for r in rows} == {"spread"}  # within 1e-2 of eager: float64 not needed


@pytest.mark.slow
def test_export_of_a_steep_model_names_the_rule_of_each_row(tmp_path):
    torch.manual_seed(0)
    explainer = build_explainer(Steep().eval(), method="gradcam", input_size=SIZE)
    result = export_explainer(explainer, str(tmp_path), formats=("torchscript",))
    assert all(r.ok for r in result.parity)
    parity = json.loads((tmp_path / "explainer.json").read_text())["parity"]
    assert parity["spread_max"] == verify.SPREAD_MAX and set(parity["rules"]) == set(verify.RULES)
    for row in parity["rows"]:
        assert row["rule"] == "spread" and row["spread_limit"] > verify.SPREAD_MAX
        assert row["heatmap_limit"] == verify.SPREAD_MAX
    lines = str(result.parity).splitlines()
    assert lines[1].split()[-1] == "rule"
    assert all(" spread   ok  (2x eager's own spread" in line for line in lines[2:-1])


def test_the_report_names_the_rule_of_each_row():
    row = verify.ParityRow(
        "onnx", "random", 1, SIZE, 1e-6, 2e-6, True, logits_limit=1e-3, heatmap_limit=1e-4
    )
    rows = [
        row,
        dataclasses.replace(
            row, heatmap_err=5e-3, heatmap_limit=1e-2, rule="spread", spread_limit=6.4e-2
        ),
    ]
    lines = verify.format_report(rows).splitlines()
    assert lines[1].split()[-1] == "rule"
    assert "fixed" in lines[2].split() and "spread" in lines[3].split()
    assert "2x eager's own spread 6.4e-02, capped at 0.01" in lines[3]
    assert lines[-1].startswith("  rules: fixed: ") and "spread: " in lines[-1]
    assert rows[1].to_dict()["rule"] == "spread"
