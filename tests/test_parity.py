"""Parity sweep of the exported graphs against eager: batch sizes, image sizes, edge images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explain_export.artifact import runtime
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export import verify
from explain_export.builder.export.export import export_explainer

from models import tiny_resnet

BATCHES = (1, 2, 3, 8, 17, 64)
SIZE = (40, 56)


@pytest.fixture(scope="module", params=["cam", pytest.param("sum", marks=pytest.mark.slow)])
def tiny(request, tmp_path_factory):
    """TinyResNet exported with a dynamic size (ONNX) and a fixed one (TorchScript)."""
    out = tmp_path_factory.mktemp(f"sweep_{request.param}")
    explainer = build_explainer(tiny_resnet(seed=7), method=request.param, input_size=SIZE)
    export_explainer(explainer, str(out), dynamic_size=True)
    return explainer, out


def edge_images(n: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    shape = (n, 3, *size)
    return {
        "zeros": np.zeros(shape, np.float32),
        "constant": np.full(shape, 0.5, np.float32),
        "saturated": np.ones(shape, np.float32),
    }


def _compare(art: runtime.Artifact, explainer, x: np.ndarray) -> None:
    logits, heat = art(x)
    with torch.inference_mode():
        ref_logits, ref_heat = explainer(torch.from_numpy(x))
    assert heat.shape == (x.shape[0], 1, *x.shape[2:])
    assert np.isfinite(logits).all() and np.isfinite(heat).all()
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=verify.LOGITS_TOL, rtol=0)
    np.testing.assert_allclose(heat, ref_heat.numpy(), atol=verify.HEATMAP_TOL, rtol=0)


@pytest.mark.parametrize("fmt", ["explainer.onnx", "explainer.torchscript.pt"])
def test_batch_sweep(tiny, fmt):
    explainer, out = tiny
    art = runtime.load(str(out / fmt))
    rng = np.random.default_rng(3)
    for n in BATCHES:
        _compare(art, explainer, rng.random((n, 3, *SIZE), dtype=np.float32))


@pytest.mark.parametrize("size", [(40, 56), (32, 32), (64, 40), (33, 47), (96, 128)])
def test_dynamic_size_sweep(tiny, size):
    explainer, out = tiny
    art = runtime.load(str(out / "explainer.onnx"))
    _compare(art, explainer, np.random.default_rng(4).random((3, 3, *size), dtype=np.float32))


@pytest.mark.parametrize("fmt", ["explainer.onnx", "explainer.torchscript.pt"])
def test_edge_images_small_model(tiny, fmt):
    explainer, out = tiny
    art = runtime.load(str(out / fmt))
    for x in edge_images(2, SIZE).values():
        _compare(art, explainer, x)


@pytest.fixture(scope="module")
def default_explainer(default_model):
    return build_explainer(default_model.model, default_model.layer, "cam")


@pytest.mark.parametrize("fmt", ["explainer.onnx", "explainer.torchscript.pt"])
def test_default_model_narrow_sweep(default_export, default_explainer, fmt):
    art = runtime.load(str(default_export / fmt))
    rng = np.random.default_rng(5)
    for n in (1, 3, 17):
        _compare(art, default_explainer, rng.random((n, 3, 224, 224), dtype=np.float32))
    for x in edge_images(1, (224, 224)).values():
        _compare(art, default_explainer, x)
