"""A YOLO head's class branch: each detection's score gradient from a window of its level's map
equals autograd's on the whole map, at every anchor (corners and maps smaller than the window
included); the branch is taken only where the probe shows it is one (issue 27, section 5)."""

from __future__ import annotations

import pytest
import torch
from detectors import tiny_yolo
from torch import Tensor, nn

from explain_export.builder.inspect import class_branch
from explain_export.builder.model.detectors import head_inputs


def _branch(c: int, k: int, dilation: int = 1) -> nn.Sequential:
    """Reach (2 + dilation, 1 + dilation): a 5x3, a 3x3 (dilated) and a 1x1 convolution."""
    return nn.Sequential(
        nn.Conv2d(c, 6, (5, 3), padding=(2, 1)),
        nn.BatchNorm2d(6),
        nn.SiLU(),
        nn.Conv2d(6, 6, 3, padding=dilation, dilation=dilation, groups=2),
        nn.ReLU(),
        nn.Conv2d(6, k, 1),
    ).eval()


def _full_gradients(branches, maps, anchors, classes, weight) -> list[Tensor]:
    """Autograd on the whole maps, detection by detection: ``∂ w·σ(z_l[c, y, x]) / ∂A``."""
    leaves = [a.clone().requires_grad_(True) for a in maps]
    z = torch.cat([b(a).flatten(2) for b, a in zip(branches, leaves, strict=True)], 2)
    n, d = anchors.shape
    out = [torch.zeros(n * d, *a.shape[1:]) for a in maps]
    for i in range(n):
        for j in range(d):
            y = weight[i, j] * torch.sigmoid(z[i, classes[i, j], anchors[i, j]])
            grads = torch.autograd.grad(y, leaves, retain_graph=True, allow_unused=True)
            for level, g in enumerate(grads):
                if g is not None:
                    out[level][i * d + j] = g[i]
    return out


def test_window_gradient_is_the_whole_maps_gradient_at_every_anchor() -> None:
    torch.manual_seed(0)
    k = 3
    sizes = [(9, 11), (4, 6), (3, 2)]  # the last two: smaller than a 7x5 window
    maps = [torch.randn(2, 4, h, w) for h, w in sizes]
    branches = [_branch(4, k, dilation) for dilation in (2, 1, 1)]
    radii = tuple(class_branch.reach(b) for b in branches)
    assert radii == ((4, 3), (3, 2), (3, 2))
    total = sum(h * w for h, w in sizes)
    anchors = torch.arange(total).repeat(2, 1)  # every anchor, in both images
    anchors[1] = anchors[1].flip(0)
    classes = torch.randint(0, k, anchors.shape)
    weight = torch.ones(anchors.shape)
    weight[0, 5] = 0  # a padding row: no gradient
    got = class_branch.window_gradients(branches, radii, maps, anchors, classes, weight)
    want = _full_gradients(branches, maps, anchors, classes, weight)
    for g, w in zip(got, want, strict=True):
        full = g.full()
        assert full.shape == w.shape
        torch.testing.assert_close(full, w, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(g.channel_mean(), w.mean((2, 3)), atol=1e-7, rtol=1e-5)
    assert got[0].full()[5].abs().max() == 0 and got[0].full()[6].abs().max() > 0


def test_a_window_one_pixel_too_small_is_wrong_somewhere() -> None:
    # the reach is what makes it exact: one less, and some anchor's gradient is cut
    torch.manual_seed(1)
    maps = [torch.randn(1, 4, 9, 11)]
    branches = [_branch(4, 2)]
    anchors, classes = torch.arange(99)[None], torch.zeros(1, 99, dtype=torch.long)
    weight = torch.ones(1, 99)
    want = _full_gradients(branches, maps, anchors, classes, weight)[0]
    short = class_branch.window_gradients(branches, ((2, 1),), maps, anchors, classes, weight)[0]
    assert (short.full() - want).abs().max() > 1e-3


class _Rolled(nn.Module):
    """A convolution whose forward also rolls its input: a reach its modules do not show."""

    def __init__(self, c: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, k, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(torch.roll(x, 3, dims=-1))


@pytest.mark.parametrize(
    ("module", "want"),
    [
        (nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.SiLU(), nn.Conv2d(2, 2, 1)), (1, 1)),
        (nn.Conv2d(2, 2, 3, padding="same", dilation=3), (3, 3)),
        (nn.Conv2d(2, 2, 3, stride=2, padding=1), None),  # a coarser grid
        (nn.Conv2d(2, 2, 3), None),  # the map shrinks
        (nn.Conv2d(2, 2, 2, padding=1), None),  # even kernel
        (nn.Sequential(nn.Conv2d(2, 2, 1), nn.MaxPool2d(3, 1, 1)), None),
        (nn.Sequential(nn.Conv2d(2, 2, 1), nn.Upsample(scale_factor=2.0)), None),
        (nn.Sequential(nn.Conv2d(2, 2, 1), nn.GroupNorm(1, 2)), None),  # statistics of the map
        (nn.Sequential(nn.Conv2d(2, 2, 1), nn.Softmax(dim=-1)), None),  # along the width
        (nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Softmax(dim=1)), (1, 1)),  # channels
    ],
)
def test_reach_counts_only_what_it_can_bound(module: nn.Module, want) -> None:
    assert class_branch.reach(module) == want


def _probe(model: nn.Module, size=(128, 160)):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    name, _, out, maps = head_inputs(model, x)
    return model.get_submodule(name), maps, out[0]


def test_find_takes_the_tiny_yolo_class_branch() -> None:
    head, maps, raw = _probe(tiny_yolo())
    found = class_branch.find(head, maps, raw, 3)
    assert found == class_branch.ClassBranch("cls", ((1, 1), (1, 1), (1, 1)))


def test_find_refuses_a_branch_the_probe_contradicts() -> None:
    model = tiny_yolo()
    head = model.detect
    head.cls[1] = _Rolled(24, 3)  # its modules say reach 1; the window disagrees at the edges
    head, maps, raw = _probe(model)
    assert class_branch.reach(head.cls[1]) == (1, 1)
    assert class_branch.find(head, maps, raw, 3) is None
    head.cls[1] = nn.Conv2d(24, 3, 3, padding=1)  # a plain conv again: taken
    head, maps, raw = _probe(model)
    assert class_branch.find(head, maps, raw, 3) is not None


def test_find_refuses_branches_whose_sigmoids_are_not_the_raw_rows() -> None:
    head, maps, raw = _probe(tiny_yolo())
    shifted = raw.clone()
    shifted[:, 4:] = torch.roll(shifted[:, 4:], 1, dims=2)  # anchors out of order
    assert class_branch.find(head, maps, shifted, 3) is None
