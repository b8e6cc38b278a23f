"""FinerCAM and ShapleyCAM: eager and exported heatmaps against independent references written
from the formulas with autograd (tests/reference_finer_shapley.py: FinerCAM's comparison target, and
ShapleyCAM's Hessian-vector product by autograd's double backward), on real photos, at the
top-1, a class chosen at run time and the top-k, in every format."""

from __future__ import annotations

import numpy as np
import pytest
import reference_finer_shapley
import torch
import torch.nn.functional as F
from detectors import tiny_yolo

from explain_export.artifact import runtime, samples
from explain_export.builder.detect_build import build_detector
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.inspect.tap import TapSpec
from explain_export.builder.lower import lowering
from explain_export.builder.maths import methods, targets
from explain_export.errors import OptionError

import reference
from models import Block, NextBlock, head_kind, tiny_resnet, tiny_seg

SIZE = (64, 64)
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
FORMATS = ("torchscript", "onnx", "pt2")
CHOSEN = torch.tensor([3, -1, 5])  # a class per image at run time; -1: the top-1


def photos() -> np.ndarray:
    return np.stack([samples.load_rgb(samples.photo_path(n), SIZE) for n in PHOTOS])


def ref(model, images, layer, method, class_index=None) -> np.ndarray:
    spec = TapSpec.parse(layer)
    x = reference.normalize(torch.from_numpy(images))
    module = model.get_submodule(spec.module)
    return reference_finer_shapley.newer_cam(
        model, x, module, method, spec.port, spec.call or 0, class_index
    )


def top_k_ref(model, images, layer, method, k) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        classes = model(reference.normalize(torch.from_numpy(images))).topk(k, dim=1).indices
    maps = [ref(model, images, layer, method, classes[:, j]) for j in range(k)]
    return classes.numpy(), np.concatenate(maps, axis=1)


# curved heads after the tap: a NextBlock (depthwise conv, LayerNorm, GELU MLP, residual) and a
# LayerNorm head (H·A is far from 0 there); pooling, a 1x1 conv with a bias and a Hardswish
# (cheaper; H·A is 10% of g); and TinyResNet's piecewise-linear head (convs, batch norms, ReLU)
CASES = {
    "curved": ("layernorm-head", "features.1"),
    "pooled": ("conv-after-pool", "features"),
    "resnet": ("tiny-resnet", "layer2"),
}


def model_of(case: str):
    kind, layer = CASES[case]
    return (tiny_resnet(seed=3) if kind == "tiny-resnet" else head_kind(kind, seed=1)), layer


@pytest.mark.parametrize("method", ["finercam", "shapleycam"])
@pytest.mark.parametrize("case", list(CASES))
def test_eager_equals_the_reference(method, case):
    model, layer = model_of(case)
    images = photos()
    explainer = build_explainer(model, layer, method, SIZE)
    with torch.no_grad():
        eager = explainer(torch.from_numpy(images), CHOSEN)[1].numpy()
    explainer.remove()
    np.testing.assert_allclose(eager, ref(model, images, layer, method, CHOSEN), atol=1e-4)


def eager_maps(model, layer, method) -> np.ndarray:
    with build_explainer(model, layer, method, SIZE) as explainer, torch.no_grad():
        return explainer(torch.from_numpy(photos()))[1].numpy()


def test_each_method_changes_the_map_where_it_should():
    """FinerCAM's map is not Grad-CAM's; ShapleyCAM's is not where the head is curved, and is
    Grad-CAM's exactly where it is piecewise linear (TinyResNet: H·A = 0)."""
    for case, method, differs in (
        ("curved", "shapleycam", True),
        ("curved", "finercam", True),
        ("resnet", "shapleycam", False),
    ):
        model, layer = model_of(case)
        plain = eager_maps(model, layer, "gradcam")
        new = eager_maps(model, layer, method)
        assert (np.abs(new - plain).max() > 1e-2) == differs, (case, method)


def second_order_term(model, layer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, H·A)`` from the explainers: gradcam's gradient, and ``2 (g − (g − ½ H·A))``."""
    x = torch.from_numpy(photos())
    grads = []
    for method in ("gradcam", "shapleycam"):
        with build_explainer(model, layer, method, SIZE) as explainer:
            grads.append(explainer.capture(x)[2])
    return grads[0], 2 * (grads[0] - grads[1])


def test_the_hessian_vector_product_is_zero_after_a_piecewise_linear_head():
    model, layer = model_of("resnet")
    g, hvp = second_order_term(model, layer)
    assert g.abs().max() > 0 and hvp.abs().max() == 0
    model, layer = model_of("curved")
    g, hvp = second_order_term(model, layer)
    assert hvp.abs().mean() > 0.1 * g.abs().mean()


def test_a_head_that_ignores_the_maps_scale_has_h_a_equal_to_minus_g():
    """``y(sA) = y(A)`` (the map feeds a LayerNorm: here pooling, then LayerNorm2d) gives
    ``g(sA) = g(A)/s``, so ``H·A = d/ds g(sA) = −g`` at ``s = 1`` (up to the norm's eps), and
    ShapleyCAM's weights are ``1.5 g``: Grad-CAM's map. ConvNeXt's last stage is such a map."""
    g, hvp = second_order_term(head_kind("layernorm-head", seed=1), "avgpool:input")
    assert (hvp + g).abs().max() < 1e-3 * g.abs().max()


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, case",  # the BN path of the second-order trace with TinyResNet
    [("finercam", "curved"), ("shapleycam", "curved"), ("shapleycam", "resnet")],
)
def test_every_format_at_the_run_time_class(tmp_path, method, case):
    model, layer = model_of(case)
    explainer = build_explainer(model, layer, method, SIZE)
    result = export_explainer(explainer, str(tmp_path), FORMATS, class_input=True)
    explainer.remove()
    assert all(r.ok for r in result.parity)
    images = photos()
    chosen = ref(model, images, layer, method, CHOSEN)
    top1 = ref(model, images, layer, method)
    for fmt in FORMATS:
        artifact = runtime.load(result.paths[fmt])
        for batch in (3, 1):
            got = artifact.outputs(images[:batch], CHOSEN[:batch].numpy())["heatmap"]
            np.testing.assert_allclose(got, chosen[:batch], atol=1e-4, err_msg=fmt)
        np.testing.assert_allclose(artifact.outputs(images)["heatmap"], top1, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["finercam", "shapleycam"])
def test_top_k_in_every_format(tmp_path, method):
    """Each of the k classes gets its own map: for FinerCAM, its own nearest rivals."""
    model, layer = model_of("pooled")
    explainer = build_explainer(model, layer, method, SIZE, top_k=3)
    result = export_explainer(explainer, str(tmp_path), FORMATS)
    assert all(r.ok for r in result.parity)
    images = photos()
    classes, expected = top_k_ref(model, images, layer, method, 3)
    with torch.no_grad():
        _, eager, eager_classes = explainer(torch.from_numpy(images))
    explainer.remove()
    np.testing.assert_array_equal(eager_classes.numpy(), classes)
    np.testing.assert_allclose(eager.numpy(), expected, atol=1e-4)
    for fmt in FORMATS:
        out = runtime.load(result.paths[fmt]).outputs(images)
        np.testing.assert_array_equal(out["classes"], classes)
        np.testing.assert_allclose(out["heatmap"], expected, atol=1e-4, err_msg=fmt)


@pytest.mark.slow
def test_fixed_class_and_the_target_it_records(tmp_path):
    model, layer = model_of("resnet")
    explainer = build_explainer(model, layer, "finercam", SIZE, target=5)
    result = export_explainer(explainer, str(tmp_path), ("onnx",))
    explainer.remove()
    assert result.metadata["method"] == "finercam" and result.metadata["target"] == "class"
    assert result.metadata["target_class"] == 5
    images = photos()
    got = runtime.load(result.paths["onnx"]).outputs(images)["heatmap"]
    expected = ref(model, images, layer, "finercam", torch.full((3,), 5))
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.slow
def test_shapleycam_on_the_default_model_is_gradcam(default_model):
    """EfficientNet-Lite0 after ``_blocks.15`` is conv, BN, ReLU6, average pooling and a linear
    layer: piecewise linear, so H·A is exactly 0 and ShapleyCAM equals Grad-CAM."""
    images = np.stack([samples.load_rgb(samples.photo_path(p), (224, 224)) for p in PHOTOS])
    x = reference.normalize(torch.from_numpy(images))
    model = default_model.model
    g, hvp = reference_finer_shapley.hessian_times_map(model, x, model.get_submodule("_blocks.15"))
    assert g.abs().max() > 0 and hvp.abs().max() == 0
    maps = {}
    for method in ("gradcam", "shapleycam"):
        explainer = build_explainer(model, "_blocks.15", method)
        with torch.no_grad():
            maps[method] = explainer(torch.from_numpy(images))[1].numpy()
        explainer.remove()
    np.testing.assert_allclose(maps["shapleycam"], maps["gradcam"], atol=1e-6)


# the second-order trace: each head op's H·A, traced at batch 2 with the batch symbolic, then
# run at batch 3, equals autograd's double backward (a convolution's and a batch norm's own
# double backward bake the batch in: lower/second_order.py)
_C = 8


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def _ops() -> dict:
    torch.manual_seed(0)
    block, dw = _frozen(NextBlock(_C)), _frozen(torch.nn.Conv2d(_C, _C, 3, padding=1, groups=_C))
    residual = _frozen(Block(_C, _C, 1))
    for bn in (residual.bn1, residual.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    conv = _frozen(torch.nn.Conv2d(_C, _C, 3, padding=1))
    norm = _frozen(torch.nn.GroupNorm(2, _C))
    return {
        "nextblock": block,
        "resnet-block-silu": lambda a: F.silu(residual(a)),  # SiLU's ones: no empty_permuted
        "conv-silu": lambda a: F.silu(conv(a)),
        "depthwise-gelu": lambda a: F.gelu(dw(a)),
        "groupnorm-softmax": lambda a: norm(a).softmax(1),
        "maxpool-square": lambda a: F.interpolate(F.max_pool2d(a, 2).pow(2), scale_factor=2),
    }


def _hvp_of(op, weight: torch.Tensor):
    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad((op(a) * weight).sum(), a, create_graph=True)
            (hvp,) = torch.autograd.grad(g, a, grad_outputs=a.detach())
        return g.detach(), hvp.detach()

    return fn


@pytest.mark.parametrize("name", list(_ops()))
def test_the_traced_hessian_vector_product_is_autograds_at_another_batch(name):
    op = _ops()[name]
    weight = torch.randn(_C, 6, 6, generator=torch.Generator().manual_seed(1))
    fn = _hvp_of(op, weight)
    graph = lowering.trace(fn, (torch.randn(2, _C, 6, 6),), {0: [0]}, torch.nn.Module(), True)
    x = torch.randn(3, _C, 6, 6, generator=torch.Generator().manual_seed(2))
    (g, hvp), (g_ref, hvp_ref) = graph(x), fn(x)
    assert hvp_ref.abs().max() > 0.1
    assert not [n for n in graph.graph.nodes if "empty_permuted" in str(n.target)]  # no ONNX op
    torch.testing.assert_close(hvp, hvp_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-5)


def test_finer_score_is_pytorch_grad_cams_target():
    """:func:`.targets.finer_score` against FinerWeightedTarget's formula with numpy's argsort
    choosing the rivals, value and gradient, for random logits and classes."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, generator=gen, dtype=torch.float64) * 3
    classes = torch.tensor([0, 9, 4, 4])
    ours = logits.clone().requires_grad_(True)
    theirs = logits.clone().requires_grad_(True)
    y = targets.finer_score(ours, classes)
    expected = reference_finer_shapley._finer_loss(theirs, classes.tolist())
    torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=1e-6)
    y.backward()
    expected.backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-6)


def test_the_records_say_what_they_need():
    assert methods.SHAPLEYCAM.second_order and methods.SHAPLEYCAM.target_kind is None
    assert methods.FINERCAM.target_kind is not None and not methods.FINERCAM.second_order
    assert isinstance(methods.FINERCAM.target_kind(targets.TopK(2)), targets.Finer)
    assert list(methods.METHODS)[-2:] == ["finercam", "shapleycam"]


def test_an_op_with_no_second_derivative_is_refused_in_one_line():
    """PyTorch has no double backward of hardsigmoid (MobileNetV3's squeeze-excite gate)."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 2, 1),
        torch.nn.Hardsigmoid(),
        torch.nn.Conv2d(8, 8, 1),
        torch.nn.Hardsigmoid(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    )
    with pytest.raises(OptionError) as info:
        build_explainer(model, "1", "shapleycam", SIZE)
    text = str(info.value)
    assert "no derivative of aten::hardsigmoid_backward" in text and "\n" not in text


def test_what_cannot_take_them_is_refused_in_one_line():
    with pytest.raises(OptionError) as info:
        build_explainer(tiny_seg(), None, "finercam", SIZE)
    assert "finercam compares a class's logit" in str(info.value)
    assert "\n" not in str(info.value)
    for method in ("finercam", "shapleycam"):
        with pytest.raises(OptionError, match=f"{method} needs a classifier's logits"):
            build_detector(tiny_yolo(), (128, 160), method)


def test_bench_variants_explain_what_each_method_explains():
    """explain-bench's ``--methods finercam`` variant (and its top-k) differentiates FinerCAM's
    target, and the Grad-CAM beside a finercam explainer the class logit."""
    from explain_export.bench.variants import _method_explainer, gradcam_explainer

    model, layer = model_of("resnet")
    images = torch.from_numpy(photos())
    finer = build_explainer(model, layer, "finercam", SIZE)
    gradcam = gradcam_explainer(finer)
    assert gradcam is not None and isinstance(gradcam.plan.target_spec, targets.ClassLogit)
    variant = _method_explainer(gradcam, "finercam")
    top2 = _method_explainer(gradcam, "finercam", 2)
    assert top2.plan.target_spec == targets.Finer(targets.TopK(2))
    with torch.no_grad():
        want = finer(images)[1]
        torch.testing.assert_close(variant(images)[1], want)
        torch.testing.assert_close(top2(images)[1][:, :1], want)
        assert (gradcam(images)[1] - want).abs().max() > 1e-2
    for explainer in (finer, gradcam, variant, top2):
        explainer.remove()
