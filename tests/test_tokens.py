"""Token models explained as maps: a tiny ViT (class + register tokens, attention by
``F.scaled_dot_product_attention``), one in torchvision's layout (``nn.MultiheadAttention``) and
a conv-stem token hybrid (Mixer + attention blocks, no prefix tokens), against a reference
written here: autograd Grad-CAM with a cloning hook on the token tensor, the prefix dropped and
the rest laid on the grid by hand, then tests/reference.py's resize and min-max. On photos, at
batch 3 and 1; ONNX here, every format in the slow test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explain_export.artifact import runtime, samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.lower.lowering import check_lowered
from explain_export.cli.export import main
from explain_export.errors import UsageError

import reference
from models import mha_vit, pooled_tokens, tiny_levit, tiny_vit, token_hybrid

SIZE = (64, 64)
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
# model, default layer, prefix tokens, grid
CASES = {
    "vit": (tiny_vit, "blocks.1", 3, (8, 8)),
    "hybrid": (token_hybrid, "blocks.1", 0, (16, 16)),
    "pooled": (pooled_tokens, "blocks.1", 0, (4, 4)),  # a square grid with no map: inferred
    # torchvision's layout: nn.MultiheadAttention, which reads the tokens sequence-first
    "torchvision-vit": (mha_vit, "encoder.layers.encoder_layer_1", 1, (8, 8)),
}


def photos() -> np.ndarray:
    return np.stack([samples.load_rgb(samples.photo_path(n), SIZE) for n in PHOTOS])


def token_map(model, images: np.ndarray, block: str, prefix: int, grid, port="input") -> tuple:
    """``(A, ∂y/∂A)`` ``[N,C,h,w]`` at the input of ``block`` (a pre-hook hands the block a
    clone, the original keeps its gradient) or at its output; the prefix is dropped and the rest
    reshaped here."""
    store = {}

    def keep(module, args):
        store["a"] = args[0]
        args[0].retain_grad()
        return (args[0].clone(), *args[1:])

    def keep_output(module, args, out):
        store["a"] = out
        out.retain_grad()

    module = model.get_submodule(block)
    if port == "input":
        handle = module.register_forward_pre_hook(keep)
    else:
        handle = module.register_forward_hook(keep_output)
    try:
        with torch.enable_grad():
            x = reference.normalize(torch.from_numpy(images)).requires_grad_(True)
            logits = model(x)
            logits.gather(1, logits.argmax(1)[:, None]).sum().backward()
    finally:
        handle.remove()
    h, w = grid

    def lay(t):
        return t[:, prefix:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    return lay(store["a"].detach()).double(), lay(store["a"].grad).double()


def expected(model, images: np.ndarray, case: str, method: str) -> np.ndarray:
    _, block, prefix, grid = CASES[case]
    a, g = token_map(model, images, block, prefix, grid)
    if method == "gradcam":
        m = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).numpy()
    elif method == "sum":
        m = a.sum(1).numpy()
    else:  # eigencam
        m = np.maximum(reference.projection(a.numpy()), 0)
    return reference.numpy_finish(m, SIZE)


def check(case: str, method: str, tmp_path, formats) -> None:
    make, block, prefix, (h, w) = CASES[case]
    model = make()
    explainer = build_explainer(
        model, method=method if method != "gradcam" else "auto", input_size=SIZE
    )
    plan = explainer.plan
    assert plan.layer == f"{block}:input" and plan.method == method
    assert plan.layout == f"tokens:{prefix}+{h}x{w}" and plan.feature_shape[1:] == (h, w)
    images = photos()
    ref = expected(model, images, case, method)
    with torch.no_grad():
        eager = explainer(torch.from_numpy(images))[1].numpy()
    np.testing.assert_allclose(eager, ref, atol=1e-4)
    result = export_explainer(explainer, str(tmp_path), formats)
    assert all(r.ok for r in result.parity)
    assert result.metadata["layout"] == plan.layout
    for fmt in formats:
        artifact = runtime.load(result.paths[fmt])
        for batch in (3, 1):
            got = artifact.outputs(images[:batch])["heatmap"]
            np.testing.assert_allclose(got, ref[:batch], atol=1e-4, err_msg=fmt)
    explainer.remove()


def test_gradcam_on_a_vit_equals_the_reference_in_onnx(tmp_path):
    check("vit", "gradcam", tmp_path, ("onnx",))


@pytest.mark.slow
def test_gradcam_on_a_torchvision_style_vit_equals_the_reference_in_onnx(tmp_path):
    check("torchvision-vit", "gradcam", tmp_path, ("onnx",))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "sum", "eigencam"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_format_and_gradient_free_methods_on_tokens(tmp_path, case, method):
    check(case, method, tmp_path, ("torchscript", "onnx", "pt2"))


def test_sum_and_eigencam_on_a_token_map_eagerly():
    images = photos()
    for method in ("sum", "eigencam"):
        model = tiny_vit()
        explainer = build_explainer(model, method=method, input_size=SIZE)
        with explainer, torch.no_grad():
            got = explainer(torch.from_numpy(images))[1].numpy()
        np.testing.assert_allclose(got, expected(model, images, "vit", method), atol=1e-4)


def test_the_prefix_count_comes_from_the_model_or_tokens():
    model = tiny_vit(registers=4)
    with build_explainer(model, input_size=SIZE) as explainer:
        assert explainer.plan.layout == "tokens:5+8x8"  # cls_token + reg_token [1,4,C]
    with build_explainer(model, input_size=SIZE, tokens=5) as explainer:
        assert explainer.plan.layout == "tokens:5+8x8"
    with pytest.raises(UsageError, match=r"the 69 tokens of 'blocks.1'.*fit no patch grid"):
        build_explainer(model, input_size=SIZE, tokens=1)


def test_attention_backward_is_lowered_to_forward_ops():
    """The lowering traces F.scaled_dot_product_attention on its math path: no backward op is
    left (check_lowered passes), and the lowered gradient equals eager autograd."""
    from explain_export.builder.lower.lowering import lower

    explainer = build_explainer(tiny_vit(), input_size=SIZE)
    image = torch.from_numpy(photos())
    lowered = lower(explainer, (image,), {0: (0,)})
    check_lowered(lowered.graph_module)
    with torch.no_grad():
        np.testing.assert_allclose(
            lowered(image)[1].numpy(), explainer(image)[1].numpy(), atol=1e-5
        )
    explainer.remove()


def test_cli_lists_and_marks_token_layers_and_words_tokens(capsys):
    arch = ["--arch", "models:TokenHybrid", "--input-size", "64", "64"]
    assert main([*arch, "--list-layers"]) == 0
    out = capsys.readouterr().out
    assert "blocks.1:input" in out and "tokens 256x24  <- default" in out
    assert main([*arch, "--tokens", "300", "--out", "unused", "--formats", "onnx"]) == 2
    assert "--tokens 300 leaves no patch tokens" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_explains_a_token_layer(tmp_path, capsys):
    arch = ["--arch", "models:TokenHybrid", "--input-size", "64", "64", "--tokens", "0"]
    code = main([*arch, "--out", str(tmp_path), "--formats", "onnx"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 prefix tokens dropped, the rest laid on 16x16" in out


def test_tokens_pooled_without_a_map_lie_on_a_square_grid():
    images = photos()
    model = pooled_tokens()
    with build_explainer(model, input_size=SIZE) as explainer:
        assert explainer.plan.layer == "blocks.1:input"
        assert explainer.plan.layout == "tokens:0+4x4"
        with torch.no_grad():
            got = explainer(torch.from_numpy(images))[1].numpy()
    np.testing.assert_allclose(got, expected(model, images, "pooled", "gradcam"), atol=1e-4)


def test_levit_defaults_to_the_tokens_its_head_pools(tmp_path):
    """LeViT's LinearNorm (a linear layer, then BatchNorm) is no norm, so its MLP is no block:
    tapping ``mlp:input`` would hand the leaf to the MLP alone and miss the residual path's
    gradient. With no block the default is the last token sequence on a grid, the 4x4 tokens
    that the head pools, and its map is Grad-CAM's there, in ONNX too."""
    images = photos()
    model = tiny_levit()
    explainer = build_explainer(model, input_size=SIZE)
    assert (explainer.plan.layer, explainer.plan.layout) == ("stages", "tokens:0+4x4")
    a, g = token_map(model, images, "stages", 0, (4, 4), port="output")
    m = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).numpy()
    ref = reference.numpy_finish(m, SIZE)
    with torch.no_grad():
        np.testing.assert_allclose(explainer(torch.from_numpy(images))[1].numpy(), ref, atol=1e-4)
    result = export_explainer(explainer, str(tmp_path), ("onnx",))
    got = runtime.load(result.paths["onnx"]).outputs(images)["heatmap"]
    np.testing.assert_allclose(got, ref, atol=1e-4)
    explainer.remove()
