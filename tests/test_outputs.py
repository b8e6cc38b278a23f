"""Models that return their logits inside a structure (a dict, a tuple, a list, an object with
``.logits``): the obvious output is taken, ``output=`` / ``--output`` picks another, the report
and the metadata name it, and the heatmap equals the autograd reference on that output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from explain_export.artifact import runtime, samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.model.outputs import OutputKey, choose_output
from explain_export.cli.export import main as export_main
from explain_export.errors import OptionError

import reference
from models import returns

SIZE = (64, 64)


class Logits(nn.Module):
    """The reference's view of a model: its logits, picked in the test's own way."""

    def __init__(self, model: nn.Module, pick) -> None:
        super().__init__()
        self.model, self.pick = model, pick

    def forward(self, x):
        return self.pick(self.model(x))


PICKS = {
    "tuple": (lambda out: out[1], "1", "[1]"),
    "dict": (lambda out: out["out"], None, "['out']"),
    "list": (lambda out: out[0], None, "[0]"),
    "object": (lambda out: out.logits, None, ".logits"),
}


def photos() -> np.ndarray:
    names = ("chelsea.png", "coffee.png", "rocket.jpg")
    return np.stack([samples.load_rgb(samples.photo_path(n), SIZE) for n in names])


@pytest.mark.parametrize(
    "kind",
    ["dict", *(pytest.param(k, marks=pytest.mark.slow) for k in ("tuple", "list", "object"))],
)
def test_the_logits_output_is_explained(tmp_path, kind):
    model = returns(kind, seed=2)
    pick, given, named = PICKS[kind]
    explainer = build_explainer(model, "layer2", "gradcam", SIZE, output=given)
    assert str(explainer.plan.output) == named
    formats = ("onnx", "torchscript") if kind in ("dict", "object") else ("onnx",)
    result = export_explainer(explainer, str(tmp_path), formats)
    assert all(r.ok for r in result.parity) and result.metadata["output"] == named
    images = photos()
    x = reference.normalize(torch.from_numpy(images))
    expected, logits = reference.gradcam(Logits(model, pick), x, model.layer2)
    for fmt in formats:
        out = runtime.load(result.paths[fmt]).outputs(images)
        np.testing.assert_allclose(out["logits"], logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(out["heatmap"], expected, atol=1e-4, err_msg=fmt)
    explainer.remove()


def test_the_obvious_output_and_what_cannot_be_chosen():
    t = torch.zeros(2, 3)
    assert choose_output(t) == OutputKey()
    assert choose_output({"aux": t, "out": t}) == OutputKey("key", "out")
    assert choose_output({"x": "text", "y": t}) == OutputKey("key", "y")
    assert choose_output(("text", t)) == OutputKey("index", 1)
    assert choose_output((t, t), "-1") == OutputKey("index", 1)
    for out, given, words in [
        ({"aux": t}, "out", "'out' is not a key of a dict with keys aux; choose one of aux"),
        ((t, t), "2", "is no position of a tuple of 2; give 0..1"),
        (("a", t), "0", "[0] of the model's output is a str, not a tensor"),
        ({"a": "b"}, None, "with no tensor to explain"),
    ]:
        with pytest.raises(OptionError) as info:
            choose_output(out, given)
        assert words in str(info.value) and "\n" not in str(info.value)


def test_an_output_that_is_no_logits_is_refused_with_the_flag(tmp_path, capsys):
    with pytest.raises(OptionError) as info:
        build_explainer(nn.Sequential(nn.Conv2d(3, 4, 8, 8)), input_size=SIZE)  # a map at 1/8
    assert "the model returns a tensor of shape [2, 4, 8, 8], neither logits [N,K] nor" in str(
        info.value
    )
    first = build_explainer(returns("tuple"), "layer2", input_size=SIZE)  # (pooled, logits)
    assert str(first.plan.output) == "[0]" and first.plan.num_classes == 32  # named in the report
    first.remove()
    torch.save({"model_state_dict": returns("dict").state_dict()}, tmp_path / "m.pt")
    args = [
        "--ckpt",
        str(tmp_path / "m.pt"),
        "--arch",
        "models:Returns",
        "--input-size",
        "64",
        "64",
    ]
    assert export_main([*args, "--output", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "--output 'nope' is not a key" in capsys.readouterr().err
    assert export_main([*args, "--formats", "onnx", "--out", str(tmp_path / "o")]) == 0
    assert "output: ['out'] of what the model returns" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "explainer.json").read_text())["output"] == "['out']"
