"""Methods and targets as plug-ins: a record from outside the registry goes through planning,
building and export with no name compared anywhere, and its heatmap is checked against an
independent reference (a plain forward hook, autograd Grad-CAM)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from explain_export.artifact import runtime, samples
from explain_export.builder.explainer import Explainer, build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.inspect import probe
from explain_export.builder.maths import heads, methods
from explain_export.builder.maths.targets import ClassLogit
from explain_export.builder.plan import make_plan
from explain_export.cli.export import main as export_main

import reference
from models import tiny_resnet

SIZE = (64, 48)


def _abs_sum(needs: methods.Needs) -> methods.Terms:
    return methods.Terms(*heads.channel_terms(needs.features.abs(), None))


ABS_SUM = methods.Method(
    "abs-sum",
    "m = Σ_k |A_k|",
    "a test's method: any map",
    needs_linear=False,
    needs_gradient=False,
    has_class=False,
    terms=_abs_sum,
)


@dataclasses.dataclass(frozen=True)
class RunnerUp:
    """A test's target: the second-best class of each image."""

    fixed: int | None = None
    name: str = "runner-up"
    top_k: None = None  # one map per image

    def classes(self, logits, class_index=None, keepdim=False):
        second = logits.topk(2, dim=1).indices[:, 1:]
        return second if keepdim else second[:, 0]

    def scores(self, logits, classes):
        return ClassLogit().scores(logits, classes)


def _images(n: int = 3) -> np.ndarray:
    photo = samples.load_rgb(samples.photo_path("coffee.png"), SIZE)[None]
    noise = np.random.default_rng(0).random((n - 1, 3, *SIZE), dtype=np.float32)
    return np.concatenate([photo, noise])


def _hooked(model, x: torch.Tensor) -> torch.Tensor:
    """layer3.bn2's output (signed: before the block's ReLU) through a plain forward hook."""
    store = {}
    handle = model.layer3.bn2.register_forward_hook(lambda m, i, out: store.update(a=out.clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["a"]


def test_a_method_record_from_outside_the_registry_is_built_and_exported(tmp_path):
    model = tiny_resnet()
    explainer = build_explainer(model, "layer3.bn2", ABS_SUM, input_size=SIZE)
    assert explainer.plan.method == "abs-sum" and explainer.plan.method_spec is ABS_SUM
    result = export_explainer(explainer, str(tmp_path), ("onnx",))
    assert all(r.ok for r in result.parity)
    assert result.metadata["method"] == "abs-sum"
    images = _images()
    heat = runtime.load(result.paths["onnx"]).outputs(images)["heatmap"]
    a = _hooked(model, reference.normalize(torch.from_numpy(images)))
    expected = reference.numpy_finish(a.abs().sum(1).numpy(), SIZE)
    np.testing.assert_allclose(heat, expected, atol=2e-5)
    plain = reference.numpy_finish(a.sum(1).numpy(), SIZE)
    assert np.abs(plain - expected).max() > 0.1  # the record's own function ran, not a sum


@pytest.mark.slow
def test_a_target_record_from_outside_explains_its_class(tmp_path):
    model = tiny_resnet(seed=1)
    built = build_explainer(model, "layer3", "gradcam", input_size=SIZE)
    plan = dataclasses.replace(built.plan, target_spec=RunnerUp())
    built.remove()
    explainer = Explainer(model, plan)
    images = _images()
    x = torch.from_numpy(images)
    logits = model(reference.normalize(x)).detach()
    second = logits.topk(2, dim=1).indices[:, 1]
    expected, _ = reference.gradcam(model, reference.normalize(x), model.layer3, class_index=second)
    with torch.no_grad():
        _, heat = explainer(x)
    np.testing.assert_allclose(heat.numpy(), expected, atol=1e-4)
    top1, _ = reference.gradcam(model, reference.normalize(x), model.layer3)
    assert np.abs(top1 - expected).max() > 0.1  # the runner-up's map is another map
    result = export_explainer(explainer, str(tmp_path), ("onnx",))
    assert all(r.ok for r in result.parity)
    exported = runtime.load(result.paths["onnx"]).outputs(images)["heatmap"]
    np.testing.assert_allclose(exported, expected, atol=1e-4)


def test_planning_changes_nothing_and_says_why():
    model = tiny_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    result = probe.probe_at_size(model.eval(), SIZE, (0.5,) * 3, (0.25,) * 3)
    plan = make_plan(model, result, method="gradcam", target=3)
    assert (plan.layer, plan.layer_reason) == (
        "avgpool:input",
        "the map whose global average the classifier reads",
    )
    assert plan.method_spec is methods.GRADCAM and plan.target_spec == ClassLogit(3)
    assert make_plan(model, result, "layer2").layer_reason == "as given"
    auto = make_plan(model, result)
    assert auto.method_spec is methods.CAM and auto.head == "fc" and "fc" in auto.reason
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_list_layers_says_why_the_default(capsys):
    assert export_main(["--arch", "models:tiny_resnet", "--list-layers"]) == 0
    out = capsys.readouterr().out
    assert "default: avgpool:input (the map whose global average the classifier reads)" in out


def test_list_layers_says_why_the_embedded_models_default(capsys):
    assert export_main(["--list-layers"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (
        "default: _avg_pooling:input (the embedded model's default: the map its global average "
        "pooling reads)"
    )
