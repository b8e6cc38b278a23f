"""The pixel-level methods (saliency, Input×Gradient, Integrated Gradients, SmoothGrad, guided
backprop, guided Grad-CAM, FullGrad): eager and exported heatmaps against independent references
written from the formulas with plain autograd (tests/pixel_reference.py), on real photos, at
batch 3 and 1; with a class chosen at run time and with top-k; the guided rule, its refusal,
the sampling settings and the CLI's checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from explain_export.artifact import runtime, samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.maths.sampling import Sampling
from explain_export.errors import OptionError

import pixel_reference as ref
from checks import eager_and_files_match
from commands import run_module
from models import _seeded, tiny_resnet

SIZE = (64, 64)
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
SAMPLING = Sampling(steps=5, noise=0.1, seed=7)


class ModuleReLUNet(nn.Module):
    """Every activation an ``nn.ReLU`` / ``nn.ReLU6`` module (not in place), so the reference's
    module backward hooks see each one; a max-pool, biased convs and BatchNorms."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, 1, 1),
            nn.ReLU6(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, 1, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class SiLUNet(ModuleReLUNet):
    def __init__(self) -> None:
        super().__init__()
        self.features[2] = nn.SiLU()


def photos() -> np.ndarray:
    return np.stack([samples.load_rgb(samples.photo_path(n), SIZE) for n in PHOTOS])


def reference(model, method: str, x: torch.Tensor, classes=None) -> np.ndarray:
    if method == "saliency":
        return ref.saliency(model, x, classes)
    if method == "inputxgradient":
        return ref.inputxgradient(model, x, classes)
    if method == "integrated-gradients":
        return ref.integrated_gradients(model, x, SAMPLING.steps, classes)
    if method == "smoothgrad":
        return ref.smoothgrad(model, x, SAMPLING.steps, SAMPLING.noise, SAMPLING.seed, classes)
    if method == "guided-backprop":
        return ref.guided_backprop(model, x, classes)
    if method == "guided-gradcam":
        return ref.guided_gradcam(model, x, model.features[6], classes)
    if method == "fullgrad":
        return ref.fullgrad(model, x, classes)
    raise AssertionError(method)


METHODS = (
    "saliency",
    "inputxgradient",
    "integrated-gradients",
    "smoothgrad",
    "guided-backprop",
    "guided-gradcam",
    "fullgrad",
)


def model_for(method: str) -> nn.Module:
    """The guided methods on the all-module-ReLU net (the reference hooks modules); the rest on
    the TinyResNet (functional ReLUs, a residual sum) too."""
    return _seeded(ModuleReLUNet, seed=4) if "guided" in method else tiny_resnet(seed=2)


def build(model, method: str, **kwargs):
    layer = "features.6" if method == "guided-gradcam" else None
    kwargs.setdefault("sampling", SAMPLING)
    return build_explainer(model, layer, method, input_size=SIZE, **kwargs)


def check(method: str, out, formats, model=None) -> None:
    model = model_for(method) if model is None else model
    explainer = build(model, method)
    images = photos()
    expected = reference(model, method, torch.from_numpy(images))
    result = export_explainer(explainer, str(out), formats)
    assert all(r.ok for r in result.parity)
    eager_and_files_match(explainer, images, expected, result.paths, formats)
    explainer.remove()


# the rest, and every format, with the slow tests (guided-gradcam's ONNX file is checked fast by
# the top-k test below)
FAST = ("saliency",)


@pytest.mark.parametrize(
    "method", [m if m in FAST else pytest.param(m, marks=pytest.mark.slow) for m in METHODS]
)
def test_every_pixel_method_equals_its_reference_exported_to_onnx(tmp_path, method):
    check(method, tmp_path, ("onnx",))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_pixel_method_in_every_format(tmp_path, method):
    check(method, tmp_path, ("torchscript", "onnx", "pt2"))


@pytest.mark.parametrize("method", METHODS)
def test_every_pixel_method_eager_equals_its_reference(method):
    """Eager only (fast): each method on a second net, the guided ones where the reference's
    module hooks see every ReLU (the all-module net)."""
    nets = [_seeded(ModuleReLUNet, seed=5) if "guided" in method else tiny_resnet(seed=3)]
    images = torch.from_numpy(photos())
    for model in nets:
        explainer = build(model, method)
        with torch.no_grad():
            eager = explainer(images)[1].numpy()
        explainer.remove()
        np.testing.assert_allclose(eager, reference(model, method, images), atol=1e-4)


def test_the_pixel_methods_give_different_maps():
    model = _seeded(ModuleReLUNet, seed=4)
    images = torch.from_numpy(photos())
    maps = {m: reference(model, m, images) for m in METHODS}
    for i, a in enumerate(maps):
        for b in list(maps)[i + 1 :]:
            assert np.abs(maps[a] - maps[b]).max() > 1e-2, (a, b)


@pytest.mark.parametrize(
    "method",
    [
        "inputxgradient",
        pytest.param("guided-gradcam", marks=pytest.mark.slow),
        pytest.param("fullgrad", marks=pytest.mark.slow),
    ],
)
def test_a_class_chosen_at_run_time(tmp_path, method):
    model = model_for(method)
    explainer = build(model, method)
    result = export_explainer(explainer, str(tmp_path), ("onnx",), class_input=True)
    images = photos()
    chosen = np.array([3, -1, 7], dtype=np.int64)
    with torch.no_grad():
        top1 = model(ref.normalize(torch.from_numpy(images))).argmax(1)
    classes = torch.where(torch.from_numpy(chosen) >= 0, torch.from_numpy(chosen), top1)
    expected = reference(model, method, torch.from_numpy(images), classes)
    got = runtime.load(result.paths["onnx"]).outputs(images, chosen)["heatmap"]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    explainer.remove()


@pytest.mark.parametrize(
    "method",
    [
        "guided-gradcam",
        pytest.param("saliency", marks=pytest.mark.slow),
        pytest.param("integrated-gradients", marks=pytest.mark.slow),
    ],
)
def test_top_k_maps_each_class(tmp_path, method):
    model = model_for(method)
    explainer = build(model, method, top_k=2)
    result = export_explainer(explainer, str(tmp_path), ("onnx",))
    images = photos()
    out = runtime.load(result.paths["onnx"]).outputs(images)
    x = torch.from_numpy(images)
    for j in range(2):
        classes = torch.from_numpy(out["classes"][:, j])
        expected = reference(model, method, x, classes)
        np.testing.assert_allclose(out["heatmap"][:, j : j + 1], expected, atol=1e-4)
    explainer.remove()


def test_guided_backprop_refuses_a_smooth_activation_in_one_line():
    with pytest.raises(OptionError, match="SiLU") as info:
        build(_seeded(SiLUNet), "guided-backprop")
    assert "\n" not in str(info.value) and "saliency" in str(info.value)


def test_guided_rule_rectifies_relu_and_relu6_only_where_they_pass():
    """ĝ differs from g exactly where a negative gradient would have passed a ReLU."""
    model = _seeded(ModuleReLUNet, seed=4)
    x = torch.from_numpy(photos())
    plain = ref.gradient(model, x)[0]
    guided = ref.guided_gradient(model, x)
    ours = build(model, "guided-backprop")
    with torch.no_grad():
        _, _, grads = ours.capture(x)
    ours.remove()
    torch.testing.assert_close(grads[0], guided, atol=1e-6, rtol=1e-5)
    assert (grads[0] - plain).abs().max() > 0.1 * plain.abs().max()  # the rule changes much


def test_smoothgrad_noise_is_the_seeds_draw():
    """The draw captum makes for one image after ``torch.manual_seed(seed)``."""
    explainer = build(tiny_resnet(seed=2), "smoothgrad")
    torch.manual_seed(SAMPLING.seed)
    draw = torch.normal(0.0, torch.full((SAMPLING.steps, 3, *SIZE), SAMPLING.noise))
    torch.testing.assert_close(explainer.sampler.noise, draw)
    other = build(tiny_resnet(seed=2), "smoothgrad", sampling=Sampling(5, 0.1, seed=8))
    assert (other.sampler.noise - draw).abs().max() > 0.1
    explainer.remove()
    other.remove()


@pytest.mark.slow
def test_smoothgrad_with_a_free_size_tiles_its_noise(tmp_path):
    """A graph whose size is free runs at 96x80 (the 64x64 draw tiled, then cropped), equal
    to eager at that size, and to the reference run with that tiled noise."""
    model = tiny_resnet(seed=2)
    explainer = build(model, "smoothgrad")
    result = export_explainer(explainer, str(tmp_path), ("onnx",), dynamic_size=True)
    images = np.stack([samples.load_rgb(samples.photo_path(n), (96, 80)) for n in PHOTOS[:2]])
    with torch.no_grad():
        eager = explainer(torch.from_numpy(images))[1].numpy()
    got = runtime.load(result.paths["onnx"]).outputs(images)["heatmap"]
    np.testing.assert_allclose(got, eager, atol=1e-4)
    noise = explainer.sampler.noise
    tiled = noise.repeat(1, 1, 2, 2)[..., :96, :80]
    x = torch.from_numpy(images)
    c = model(ref.normalize(x)).argmax(1)
    total = torch.zeros_like(x)
    for s in range(SAMPLING.steps):
        total += ref.gradient(model, x + tiled[s], c)[0].abs()
    np.testing.assert_allclose(eager, ref.unit(total.amax(1).numpy()), atol=1e-4)
    meta = json.loads((tmp_path / "explainer.json").read_text())
    assert meta["sampling"] == {"kind": "noise", "steps": 5, "noise": 0.1, "seed": 7}
    assert meta["dynamic_size"] is True
    assert max(r.batch for r in result.parity) == 2  # N·(S+1) images: verified at 1 and 2
    explainer.remove()


def test_uint8_input_is_converted_before_the_gradient(tmp_path):
    """With a uint8 graph input, x is the image / 255 and the map the same as from floats."""
    from explain_export.builder.plan import GraphOptions

    model = tiny_resnet(seed=2)
    explainer = build(model, "inputxgradient", graph=GraphOptions(input_format="uint8-nhwc"))
    pixels = (photos() * 255).round().astype(np.uint8)
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    with torch.no_grad():
        eager = explainer(torch.from_numpy(pixels.transpose(0, 2, 3, 1).copy()))[1].numpy()
    np.testing.assert_allclose(eager, ref.inputxgradient(model, x), atol=1e-4)
    explainer.remove()


def test_a_layer_for_a_method_at_the_image_is_refused():
    with pytest.raises(OptionError, match="at the image"):
        build_explainer(tiny_resnet(), "layer2", "saliency", input_size=SIZE)
    with pytest.raises(OptionError, match="at most one"):
        build_explainer(tiny_resnet(), ["layer1", "layer2"], "guided-gradcam", input_size=SIZE)


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--method", "gradcam", "--steps", "8"], "--steps"),
        (["--method", "integrated-gradients", "--noise", "0.1"], "--noise"),
        pytest.param(
            ["--method", "smoothgrad", "--steps", "0"],
            "--steps must be 1..1024",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["--method", "smoothgrad", "--noise", "-1"],
            "--noise must be positive",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_sampling_flags_are_checked_before_the_model_loads(tmp_path, flags, says):
    result = run_module("explain_export.cli.export", *flags, "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_detector_refuses_a_pixel_method_in_one_line():
    from detectors import tiny_yolo

    from explain_export.builder.detect_build import build_detector

    with pytest.raises(OptionError, match="pixel-level") as info:
        build_detector(tiny_yolo(), (128, 160), "saliency")
    assert "\n" not in str(info.value)


def test_sampling_in_eager_mode_runs_in_chunks_with_the_same_sum(monkeypatch):
    """Eager Integrated Gradients takes its 3·5 points 8 at a time (memory does not grow with
    N·S), and gives the map of one batch of all of them."""
    from explain_export.builder import pixel_capture

    model = tiny_resnet(seed=2)
    explainer = build(model, "integrated-gradients")
    images = torch.from_numpy(photos())
    calls = []
    hook = model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        chunked = explainer(images)[1]
    assert calls == [3, 8, 7]
    monkeypatch.setattr(pixel_capture, "CHUNK", 1000)
    calls.clear()
    with torch.no_grad():
        whole = explainer(images)[1]
    hook.remove()
    assert calls == [3, 15]
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    explainer.remove()
