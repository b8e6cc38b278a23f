"""Segmentation models (issue 19, part 1): per-pixel scores [N,K,H,W] in a dict, explained over
the pixels predicted as a class (the region target), with the gradient through the decoder
inside the graph; checked against an autograd reference written in the tests, on photos."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from explain_export.artifact import runtime, samples
from explain_export.artifact.contract import check_metadata
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import export_explainer
from explain_export.errors import OptionError, UsageError

import reference
from models import tiny_seg

SIZE = (64, 64)
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")


def photos() -> np.ndarray:
    return np.stack([samples.load_rgb(samples.photo_path(n), SIZE) for n in PHOTOS])


# Seed 6 predicts class 4 on 87-96% of each photo's pixels and class 1 on 4-13%: regions that
# are part of the image, so every map below varies (a seed that gives one class everywhere
# makes the region the whole image and every map flat, which would prove nothing).
SEED = 6


def assert_not_flat(maps: np.ndarray) -> None:
    spans = maps.reshape(len(maps), -1).max(1) - maps.reshape(len(maps), -1).min(1)
    assert (spans > 0.5).all(), spans


@pytest.mark.parametrize(
    "formats", [("onnx",), pytest.param(("torchscript", "onnx", "pt2"), marks=pytest.mark.slow)]
)
def test_the_region_map_equals_the_reference(tmp_path, formats):
    model = tiny_seg(seed=SEED)
    explainer = build_explainer(model, None, "auto", SIZE, background=4)
    plan = explainer.plan
    assert (plan.method, plan.layer, str(plan.output)) == ("gradcam", "backbone.2", "['out']")
    assert "backbone" in plan.layer_reason and plan.segmentation
    result = export_explainer(explainer, str(tmp_path), formats)
    assert all(r.ok for r in result.parity)
    meta = result.metadata
    assert meta["task"] == "segmentation" and meta["background"] == 4
    assert [o["name"] for o in meta["outputs"]] == ["logits", "heatmap", "classes"]
    images = photos()
    x = reference.normalize(torch.from_numpy(images))
    expected, classes = reference.region_gradcam(model, x, model.backbone[2], background=4)
    assert classes == [1, 1, 1]  # class 4 covers the most pixels but is the background here
    assert_not_flat(expected)
    for fmt in formats:
        artifact = runtime.load(result.paths[fmt])
        for batch in (3, 1):
            out = artifact.outputs(images[:batch])
            assert out["logits"].shape == (batch, 5, *SIZE)
            assert out["classes"][:, 0].tolist() == classes[:batch]
            np.testing.assert_allclose(out["heatmap"], expected[:batch], atol=1e-4, err_msg=fmt)
    explainer.remove()


@pytest.mark.slow
def test_a_class_chosen_at_export_or_at_run_time_and_the_background(tmp_path):
    model = tiny_seg(seed=SEED)
    images = photos()
    x = reference.normalize(torch.from_numpy(images))
    explainer = build_explainer(model, None, "gradcam", SIZE)
    result = export_explainer(explainer, str(tmp_path), ("onnx",), class_input=True)
    artifact = runtime.load(result.paths["onnx"])
    chosen = [1, -1, 4]
    expected, classes = reference.region_gradcam(model, x, model.backbone[2], chosen)
    assert classes == [1, 4, 4]  # -1: the class with most pixels (0, the background, has none)
    assert_not_flat(expected)
    out = artifact.outputs(images, np.array(chosen))
    assert out["classes"][:, 0].tolist() == classes
    np.testing.assert_allclose(out["heatmap"], expected, atol=1e-4)
    explainer.remove()
    every = build_explainer(model, None, "gradcam", SIZE, background=None)
    expected, classes = reference.region_gradcam(model, x, model.backbone[2], background=None)
    with torch.no_grad():
        _, heat, got = every(torch.from_numpy(images))
    assert got[:, 0].tolist() == classes
    np.testing.assert_allclose(heat.numpy(), expected, atol=1e-4)
    every.remove()


def test_what_a_segmentation_model_cannot_take(tmp_path):
    for kwargs, words in [
        ({"top_k": 2}, "a segmentation model explains one class per image"),
        ({"background": 9}, "background 9 is out of range: the model has 5 classes"),
        ({"method": "cam"}, "cam"),
    ]:
        with pytest.raises(OptionError) as info:
            build_explainer(tiny_seg(), None, input_size=SIZE, **kwargs)
        assert words in str(info.value) and "\n" not in str(info.value)


def test_the_commands_take_it_and_count_its_classes_on_dim_1():
    """explain-run, explain-serve and the Ray engine once refused a segmentation artifact (they
    could not draw its regions; test_segmentation_consumers checks that they do now):
    check_metadata takes it, and counts its classes on the scores' dim 1, not their width."""
    outputs = [
        {"name": "logits", "dtype": "float32", "shape": ["N", 5, 64, 64]},
        {"name": "heatmap", "dtype": "float32", "shape": ["N", 1, 64, 64]},
        {"name": "classes", "dtype": "int64", "shape": ["N", 1]},
    ]
    meta = {
        "input_size": [64, 64],
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["N", 3, 64, 64]}],
        "outputs": outputs,
        "task": "segmentation",
    }
    shapes = {"image": ["batch", 3, 64, 64]} | {
        o["name"]: ["batch", *o["shape"][1:]] for o in outputs
    }
    names = [o["name"] for o in outputs]

    def opened(labels):
        data = {**meta, "labels": labels}
        return SimpleNamespace(path="seg.onnx", metadata=data, output_names=names, shapes=shapes)

    assert check_metadata(opened([f"c{i}" for i in range(5)])).task == "segmentation"
    with pytest.raises(UsageError) as info:
        check_metadata(opened([f"c{i}" for i in range(64)]))
    assert "has 64 labels for 5 classes; re-export it" in str(info.value)
