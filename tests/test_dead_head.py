"""Issue 26, 2d: where the classifier cannot tell images apart (an all-zero head, or logits that
do not depend on the image), the error says so and names the classifier, instead of "flat on
every probe image ... pick another --layer or --method", which no layer or method can fix."""

from __future__ import annotations

import pytest
import torch

from explain_export.builder.explainer import build_explainer
from explain_export.builder.inspect import dead_head, probe
from explain_export.cli.export import main
from explain_export.errors import UsageError

from models import IgnoresInput, _zeroed, head_kind, tiny_resnet, zero_head_resnet

ZERO = r"classifier '{}' has all-zero weights \(an untrained head\?\).*load trained weights"


def test_a_zero_head_token_model_is_named_by_the_cli_with_exit_2(tmp_path, capsys):
    code = main(["--arch", "models:zero_head_vit", "--input-size", "64", "64",
                 "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1  # one line (after the note that --arch built the weights)
    assert "the classifier 'head' has all-zero weights (an untrained head?)" in err
    assert "flat on every probe image" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method", ["auto", "gradcam"])
def test_a_zero_head_cnn_is_named_at_the_default_layer(method):
    with pytest.raises(UsageError, match=ZERO.format("fc")):
        build_explainer(zero_head_resnet(), method=method, input_size=(32, 32))


def test_a_zero_1x1_conv_classifier_is_named():
    model = _zeroed(head_kind("conv-classifier"), "classifier.1")  # no nn.Linear: a 1x1 conv
    with pytest.raises(UsageError, match=ZERO.format(r"classifier\.1")):
        build_explainer(model, input_size=(64, 64))


def test_logits_that_ignore_the_image_are_named():
    torch.manual_seed(0)
    model = IgnoresInput().eval()
    assert model.fc.weight.abs().min() > 0  # premise: not a zero head
    with pytest.raises(
        UsageError,
        match=r"the logits do not depend on the image \(the "
        r"classifier 'fc' gives the same scores for all 3 distinct probe images",
    ):
        build_explainer(model, method="gradcam", input_size=(32, 32))


def test_a_flat_map_of_a_working_classifier_keeps_its_advice():
    """The logits vary, so the map itself is at fault: pick another layer or method."""
    model = head_kind("layernorm-head")
    with pytest.raises(UsageError, match=r"flat on every probe image.*pick another layer"):
        build_explainer(model, layer="features.1", method="sum", input_size=(32, 32))


def test_a_working_classifier_is_found_and_passes():
    model = tiny_resnet()
    result = probe.probe_at_size(model, (32, 32), (0.5,) * 3, (0.25,) * 3)
    assert dead_head.classifier(result, model)[0] == "fc"
    assert dead_head.diagnose(model, result, [result.logits]) is None
    build_explainer(model, input_size=(32, 32))  # the default layer and method still build
