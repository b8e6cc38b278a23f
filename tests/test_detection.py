"""One-stage detectors: the selection (greedy NMS) and every detection's map, against references
written here: a plain greedy NMS loop, and an autograd Grad-CAM of each detection's score from
cloning hooks (issue 27)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from detectors import tiny_yolo
from torch import Tensor, nn

from explain_export.artifact import samples
from explain_export.builder.detect_build import build_detector, find_detector
from explain_export.builder.maths.boxes import select
from explain_export.builder.maths.methods import METHODS
from explain_export.errors import OptionError

from detection_reference import fuse, greedy_nms, reference_gradcam

SIZE = (128, 160)


def _random_boxes(g: torch.Generator, n: int, a: int) -> Tensor:
    xy = torch.rand(n, a, 2, generator=g) * 100
    wh = torch.rand(n, a, 2, generator=g) * 40 + 1
    return torch.cat([xy, xy + wh], -1)


@pytest.mark.parametrize("keep", [1, 5, 100])
def test_select_is_greedy_nms(keep: int) -> None:
    g = torch.Generator().manual_seed(keep)
    boxes = _random_boxes(g, 3, 120)
    scores = torch.rand(3, 120, generator=g)
    classes = torch.randint(0, 3, (3, 120), generator=g)
    picked = select(boxes, scores, classes, keep, 0.45, 0.2)
    for n in range(3):
        want = greedy_nms(boxes[n], scores[n], classes[n], 0.45, 0.2, keep)
        got = picked.index[n][picked.valid[n]].tolist()
        assert got == want
        assert picked.valid[n].tolist() == [j < len(want) for j in range(keep)]
    assert int(picked.valid.sum()) > 0 and (keep < 100 or not picked.valid.all())


def test_select_is_class_aware_and_strict() -> None:
    """IoU exactly at the threshold is kept (torchvision suppresses above it only); another
    class's box is never suppressed; nothing above the score threshold: no row is valid."""
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 10]]])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    classes = torch.tensor([[0, 1, 0, 0]])
    picked = select(boxes, scores, classes, 4, 1 / 3, 0.1)  # IoU of 0 and 2: exactly 1/3
    assert picked.index[0][picked.valid[0]].tolist() == [0, 1, 2]
    none = select(boxes, scores, classes, 2, 0.5, 0.95)
    assert not none.valid.any()


def _photos(size: tuple[int, int]) -> Tensor:
    names = ("chelsea.png", "coffee.png")
    photos = [samples.load_rgb(samples.photo_path(n), size) for n in names]
    return torch.from_numpy(np.stack(photos))


@pytest.mark.parametrize("window", [True, False], ids=["class-branch-window", "head-batched"])
def test_each_detection_map_is_autograd_gradcam_of_its_score(window: bool) -> None:
    model = tiny_yolo()
    images = _photos(SIZE)
    ref = reference_gradcam(model, images)
    with build_detector(model, SIZE) as explainer:
        assert explainer.detector.class_branch is not None  # TinyDetect's `cls`, per level
        if not window:  # the head run on D copies of its maps (a head with no such branch)
            explainer.detector = replace(explainer.detector, class_branch=None)
        boxes, scores, classes, count, heat = explainer(images)
    assert count.tolist() == [len(c) for c in ref["classes"]] and count.min() > 0
    assert explainer.layers == ["detect:input"]
    for n, c in enumerate(count.tolist()):
        torch.testing.assert_close(classes[n, :c], ref["classes"][n])
        torch.testing.assert_close(boxes[n, :c], ref["boxes"][n])
        torch.testing.assert_close(scores[n, :c], ref["scores"][n])
        torch.testing.assert_close(heat[n, :c], ref["heatmap"][n], atol=1e-5, rtol=0)
        assert (heat[n, :c].amax((1, 2)) == 1).all()  # no detection's map is flat
    assert (heat[1, 0] - heat[1, 1]).abs().max() > 0.1  # the maps differ by detection


def test_chosen_layers_get_the_gradient_through_the_rest_of_the_model() -> None:
    """``--layer`` taps: each detection's gradient reaches them through everything after them
    (the neck too, one backward pass per detection), as a forward hook that clones sees it."""
    model = tiny_yolo()
    images = _photos(SIZE)[1:]
    layers = ["lat8", "lat16"]
    with build_detector(model, SIZE, layers=layers, max_detections=3) as explainer:
        _, _, classes, count, heat = explainer(images)
    assert count.item() == 3
    held: dict[str, Tensor] = {}

    def hook(name: str):
        def keep(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
            held[name] = out.clone()
            return held[name]

        return keep

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in layers]
    with torch.enable_grad():
        images = images.clone().requires_grad_(True)
        raw = model(images)[0][0]
    for h in handles:
        h.remove()
    score, cls = raw[4:].detach().max(0)
    xy, wh = raw[:2].detach().T, raw[2:4].detach().T
    picks = greedy_nms(torch.cat([xy - wh / 2, xy + wh / 2], 1), score, cls, 0.7, 0.25, 3)
    for j, a in enumerate(picks):
        tapped = [held[n] for n in layers]
        grads = torch.autograd.grad(raw[4 + cls[a], a], tapped, retain_graph=True)
        cams = [
            torch.relu((g.mean((2, 3), keepdim=True) * held[n]).sum(1, keepdim=True)).detach()
            for g, n in zip(grads, layers, strict=True)
        ]
        assert classes[0, j] == cls[a]
        torch.testing.assert_close(heat[0, j], fuse(cams, SIZE)[0, 0], atol=1e-5, rtol=0)


def test_eigencam_gives_one_map_per_image() -> None:
    with build_detector(tiny_yolo(), SIZE, "eigencam") as explainer:
        _, _, _classes, count, heat = explainer(_photos(SIZE))
    assert heat.shape == (2, 1, *SIZE) and count.min() > 0
    assert not explainer.per_detection and heat.amax() == 1


def test_no_detection_is_count_zero_and_no_error() -> None:
    with build_detector(tiny_yolo(), SIZE, score_threshold=0.99) as explainer:
        boxes, scores, classes, count, heat = explainer(_photos(SIZE))
    assert count.tolist() == [0, 0]
    assert (classes == -1).all() and (scores == 0).all() and (boxes == 0).all()
    assert (heat == 0).all()


def test_padding_rows_when_fewer_than_d_pass() -> None:
    model = tiny_yolo()
    with build_detector(model, SIZE, max_detections=10, score_threshold=0.33) as explainer:
        _, scores, classes, count, heat = explainer(_photos(SIZE))
    assert ((count > 0) & (count < 10)).any(), "some detections and some padding"
    for n in range(2):
        c = int(count[n])
        assert (classes[n, c:] == -1).all() and (scores[n, c:] == 0).all()
        assert (heat[n, c:] == 0).all() and (heat[n, :c].amax((1, 2)) == 1).all()
        assert (scores[n, :c] > 0.33).all()


def test_bad_requests_are_refused_in_one_line() -> None:
    with pytest.raises(OptionError, match="at least 1"):
        build_detector(tiny_yolo(), SIZE, max_detections=0)
    with pytest.raises(OptionError, match="cam needs a classifier"):
        build_detector(tiny_yolo(), SIZE, "cam")
    classifier = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert find_detector(classifier, SIZE) is None
    with pytest.raises(OptionError, match=r"\[N, 4\+K, A\]"):
        build_detector(classifier, SIZE)


def test_transposed_raw_output_is_not_taken_for_a_detector() -> None:
    """``[N, A, 4+K]`` (anchors first) is not the form; it is refused, not misread."""

    class Transposed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny_yolo()

        def forward(self, x: Tensor) -> Tensor:
            return self.inner(x)[0].transpose(1, 2)

    assert find_detector(Transposed().eval(), SIZE) is None


@pytest.mark.parametrize(  # detectors refuse pixel-level methods, finercam and shapleycam
    "method",
    [
        m.name
        for m in METHODS.values()
        if m.needs_gradient and m.has_class and not m.at_image
        if not m.second_order and m.target_kind is None
    ],
)
def test_window_gradients_give_every_method_the_whole_heads_maps(method: str) -> None:
    # the class branch's windows against the head run on D copies of its maps, method by method
    model = tiny_yolo()
    images = _photos(SIZE)
    with build_detector(model, SIZE, method) as explainer:
        assert explainer.detector.class_branch is not None
        window = explainer(images)
        explainer.detector = replace(explainer.detector, class_branch=None)
        whole = explainer(images)
    assert window[3].min() > 0
    for got, want in zip(window, whole, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
