"""Only maps on the image are explained: an attention matrix ``[N, heads, T, T]`` or the keys
``[N, heads, T, d]`` inside an attention are never the default layer, are left out of
``--list-layers``, and are refused by ``--layer`` (issue 26, item 1). Token tensors count their
prefix tokens per tensor (a CaiT adds its class token late), and 5-D attention exports to ONNX
(item 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explain_export.artifact import runtime, samples
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.builder.inspect.layers import choose_layer, layer_rows, left_out
from explain_export.builder.inspect.maps import stride_fits
from explain_export.builder.inspect.probe import probe_at_size
from explain_export.cli._layers import layout_line
from explain_export.cli.export import main
from explain_export.errors import UsageError

import reference
from models import (
    blocked,
    explicit_vit,
    late_class_token,
    parallel_streams,
    tiny_resnet,
    unfold_vit,
)

SIZE = (64, 64)
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
ATTENTION = ("attn.attn_drop", "attn.k_norm", "attn.q_norm")


def photos() -> np.ndarray:
    return np.stack([samples.load_rgb(samples.photo_path(n), SIZE) for n in PHOTOS])


def _probe(model):
    return probe_at_size(model, SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize(
    ("h", "w", "size", "fits"),
    [
        (7, 7, (224, 224), True),  # stride 32
        (8, 8, (299, 299), True),  # Inception-v3's valid convolutions: 299/32 = 9.3
        (7, 10, (224, 320), True),
        (114, 114, (224, 224), True),  # an explicit 3x3 padding of a 112x112 map
        (225, 225, (224, 224), True),  # the padded image itself
        (197, 197, (224, 224), False),  # a ViT's attention over 197 tokens
        (50, 64, (224, 224), False),  # keys: 50 tokens x 64 per head
        (7, 14, (224, 224), False),  # two strides
    ],
)
def test_a_map_is_the_input_divided_by_one_stride(h, w, size, fits):
    assert stride_fits(h, w, size) is fits


def test_attention_tensors_are_never_the_default_nor_listed():
    """The explicit attention's probabilities (through ``attn_drop``) and keys (``k_norm``) have
    sides a stride could give (65x65, 65x48 at 64x64); before, the last of them was the
    default. Now the default is the last block's input, and they are left out of the list."""
    model = explicit_vit()
    result = _probe(model)
    spec, why = choose_layer(result)
    assert (str(spec), why) == ("blocks.1:input", "the input of the last transformer block")
    listed = [row.name for row in layer_rows(result, spec)]
    assert not [n for n in listed if n.endswith(ATTENTION)], listed
    hidden = dict(left_out(result))
    assert set(hidden) == {f"blocks.{i}.{a}" for i in (0, 1) for a in ATTENTION}
    assert "probabilities" in hidden["blocks.1.attn.attn_drop"]
    assert "65 is the number of tokens 'blocks.1.attn' takes" in hidden["blocks.1.attn.k_norm"]


def test_attention_with_sides_a_stride_could_give_is_no_map():
    """At 224x224 a 7x7 grid and a class token make 50 tokens: the keys ``[N,2,50,48]`` and
    the attention ``[N,2,50,50]`` fit one stride of the image (about 4.5); they are told apart
    by their side of 50, the tokens their attention takes. A key norm shared by both blocks is
    judged by the block that called it."""
    model = explicit_vit(patch=32, size=224, shared=True)
    result = probe_at_size(model, (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert str(choose_layer(result)[0]) == "blocks.1:input"
    hidden = dict(left_out(result))
    assert "50 is the number of tokens 'blocks.1.attn' takes" in hidden["blocks.0.attn.k_norm@1"]
    assert "probabilities" in hidden["blocks.1.attn.attn_drop"]
    with pytest.raises(UsageError, match="is not a map on the image"):
        build_explainer(model, layer="blocks.0.attn.k_norm@1", input_size=(224, 224))


@pytest.mark.parametrize(
    ("layer", "why"),
    [
        ("blocks.1.attn.attn_drop", "its rows are probabilities"),
        ("blocks.1.attn.attn_drop:input", "its rows are probabilities"),
        ("blocks.0.attn.k_norm", "its side 65 is the number of tokens 'blocks.0.attn' takes"),
        ("blocks.1.attn.q_norm", "its side 65 is the number of tokens 'blocks.1.attn' takes"),
    ],
)
def test_layer_naming_an_attention_tensor_is_refused(layer, why):
    with pytest.raises(UsageError, match="is not a map on the image: " + why):
        build_explainer(explicit_vit(), layer=layer, input_size=SIZE)


def test_cli_refuses_an_attention_layer_and_lists_what_it_leaves_out(capsys):
    arch = ["--arch", "models:ExplicitViT", "--input-size", "64", "64"]
    assert main([*arch, "--list-layers", "all"]) == 0
    out = capsys.readouterr().out
    assert "attn_drop" not in out.split("not listed:")[0]
    assert "not listed: 6 tensors that are not a map on the image" in out
    assert "blocks.1:input" in out and "<- default" in out
    code = main([*arch, "--layer", "blocks.1.attn.attn_drop", "--out", "unused"])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "layer 'blocks.1.attn.attn_drop' (2x65x65) is not a map on the image" in errors[0]


def input_gradcam(model, module: str, images: np.ndarray, prefix: int, grid: int) -> np.ndarray:
    """Autograd Grad-CAM at the input of ``module``, written here: a pre-hook hands the module a
    clone of its input and keeps the input's gradient; the prefix tokens are dropped and the
    rest laid on the ``grid x grid`` patch grid by hand; then reference.py's resize and
    min-max."""
    store = {}

    def keep(_, args):
        store["a"] = args[0]
        args[0].retain_grad()
        return (args[0].clone(), *args[1:])

    handle = model.get_submodule(module).register_forward_pre_hook(keep)
    try:
        logits = model(reference.normalize(torch.from_numpy(images)))
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    finally:
        handle.remove()
    a, g = (
        t[:, prefix:].reshape(-1, grid, grid, t.shape[2]).permute(0, 3, 1, 2)
        for t in (store["a"], store["a"].grad)
    )
    m = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach().numpy()
    return reference.numpy_finish(m, SIZE)


@pytest.mark.parametrize(
    ("make", "layer", "why"),
    [
        (explicit_vit, "blocks.1:input", "the input of the last transformer block"),
        # CoaT-like: the block's first input is another stream, and a convolution runs inside
        # it; the default was its MLP norm's input, whose patch tokens no later op reads (flat)
        (
            parallel_streams,
            "parallel_blocks.0.norm1:input",
            "the input of the last block's first norm",
        ),
        # TNT-like: patches cut by unfold, so no map of the image is recorded at all; the
        # tokens' own 8x8 grid (65 = 1 + 8²) fits the image (the default was a key tensor)
        (unfold_vit, "blocks.1:input", "the input of the last transformer block"),
    ],
)
def test_token_defaults_equal_autograd_gradcam(make, layer, why):
    model = make()
    images = photos()
    with build_explainer(model, input_size=SIZE) as explainer, torch.no_grad():
        assert (explainer.plan.layer, explainer.plan.layer_reason) == (layer, why)
        assert explainer.plan.layout == "tokens:1+8x8"
        got = explainer(torch.from_numpy(images))[1].numpy()
    want = input_gradcam(make(), layer.removesuffix(":input"), images, 1, 8)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_prefix_tokens_are_counted_per_tensor():
    """A CaiT-like model says it has a class token, but joins it before its last block only:
    the earlier blocks' 64 tokens are the 8x8 grid with no prefix (refused before as fitting no
    patch grid); the last block's 65 hold the class token."""
    model = late_class_token()
    with build_explainer(model, layer="blocks.1", input_size=SIZE) as explainer:
        assert explainer.plan.layout == "tokens:0+8x8"
    with build_explainer(model, input_size=SIZE) as explainer:
        assert explainer.plan.layer == "blocks_token_only.0:input"
        assert explainer.plan.layout == "tokens:1+8x8"


def test_one_prefix_token_is_worded_in_the_singular():
    assert layout_line("tokens:1+8x8") == (
        "a token sequence: 1 prefix token dropped, the rest laid on 8x8"
    )
    assert layout_line("tokens:0+8x8").startswith("a token sequence: 0 prefix tokens dropped")


@pytest.mark.slow
def test_blocked_5d_attention_exports_to_onnx(tmp_path):
    """NesT's attention on 5-D queries failed in the ONNX export with the exporter's
    ``only 4D query, key, and value are supported``; the export folds the leading dims into
    one around the attention, and the file equals eager (cam at the pooled map, and gradcam)."""
    images = photos()
    for method in ("cam", "gradcam"):
        model = blocked()
        explainer = build_explainer(model, method=method, input_size=SIZE)
        with torch.no_grad():
            want = explainer(torch.from_numpy(images))[1].numpy()
        result = export_explainer(explainer, str(tmp_path / method), ("onnx",))
        got = runtime.load(result.paths["onnx"]).outputs(images)["heatmap"]
        np.testing.assert_allclose(got, want, atol=1e-4)
        explainer.remove()


def test_an_input_too_small_for_the_pooled_map_is_refused_with_the_size_that_works(capsys):
    """At 8x8 the TinyResNet (stride 8) pools a 1x1 map. Before, a 2x2 map of an earlier stage
    was taken silently; now it is refused, as the embedded model's fixed layer is, with the
    smallest size (by steps of a quarter) whose pooled map is 2x2."""
    with pytest.raises(
        UsageError, match=r"'avgpool:input', is 1x1 at an 8x8 input.*10 10 or larger"
    ):
        build_explainer(tiny_resnet(), input_size=(8, 8))
    code = main(["--arch", "models:TinyResNet", "--input-size", "8", "8", "--list-layers"])
    assert code == 2
    assert "--input-size 10 10 or larger (the pooled map is then 2x2)" in capsys.readouterr().err
    with build_explainer(tiny_resnet(), input_size=(10, 10)) as explainer:
        assert explainer.plan.layer == "avgpool:input"


def test_list_layers_always_shows_the_default_row(capsys):
    """A ResMLP-like model's default is the output of its final ``Affine`` (no norm module
    reads its tokens, so no token sequence was listed): the table showed the stem alone and
    left its own default out."""
    code = main(["--arch", "models:AffineMixer", "--input-size", "64", "64", "--list-layers"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line.endswith("<- default")]
    assert len(rows) == 1 and rows[0].split()[:2] == ["norm", "Affine"], out
