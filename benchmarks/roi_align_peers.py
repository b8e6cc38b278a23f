"""Our RoIAlign (:mod:`explain_export.builder.maths.roi_align`) against torchvision's own.

Not part of the test suite: it needs torchvision, so it runs in the peers venv::

    PYTHONPATH=$PWD .peers/bin/python benchmarks/roi_align_peers.py [--out FILE.md]

FPN-like maps at strides 4, 8, 16, 32 of an 800x800 image (batch of 2, 256 channels for the
forward, 8 for the backward, where each row's full gradient map is held), 1000 random boxes of
every size (log-uniform 0.05 to 1000 px, zero-width and zero-height ones, boxes over the edges and
outside the image), sampling ratio 2, 7x7. Compared, as the largest absolute difference:

- ``pool`` with one level against ``torchvision.ops.roi_align`` at each stride;
- ``levels`` against ``MultiScaleRoIAlign``'s ``LevelMapper``, and ``pool`` against
  ``MultiScaleRoIAlign``;
- each level's ``RoiGradient.full()``, rows summed per image, against
  ``torch.ops.torchvision._roi_align_backward`` (per level, on that level's RoIs) and against
  autograd through ``MultiScaleRoIAlign``; ``channel_mean()`` against ``full().mean((2, 3))``;
- the tests' loop reference (``tests/roi_reference.py``) against ``roi_align`` on 40 boxes;
- boxes with ``x2 < x1`` (not produced by the detectors), reported only.

Prints a markdown report and writes it to ``--out``
(default ``benchmarks/results/roi-align-peers.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign, roi_align

from explain_export.builder.maths.roi_align import RoiPooler, scales_for

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import roi_reference  # noqa: E402

IMAGE = (800, 800)
STRIDES = (4, 8, 16, 32)
SIZE, RATIO = (7, 7), 2


def boxes_for(n: int, seed: int) -> torch.Tensor:
    """``[n, 4]``: log-uniform sizes, centres over and beyond the image, a tenth degenerate."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * 1000 - 100
    size = torch.exp(torch.empty(n, 2).uniform_(-3.0, 6.9, generator=g))
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    flat = torch.rand(n, generator=g) < 0.1
    boxes[flat, 2] = boxes[flat, 0]  # zero width
    thin = torch.rand(n, generator=g) < 0.05
    boxes[thin, 3] = boxes[thin, 1]  # zero height
    boxes[:4] = torch.tensor(
        [[0.0, 0.0, 800.0, 800.0], [792.0, 0.0, 800.0, 8.0], [-30, -30, 10, 10], [0.0, 0, 1, 1]]
    )
    return boxes


def maps(channels: int, batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, channels, IMAGE[0] // s, IMAGE[1] // s, generator=g) for s in STRIDES
    ]


def rois(boxes: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    return torch.cat([batch[:, None].to(boxes.dtype), boxes], 1)


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def big(t: torch.Tensor) -> str:
    return f"{float(t.abs().max()):.2g}"


def forward(lines: list[str]) -> None:
    feats = maps(256, 2, 0)
    boxes = boxes_for(1000, 1)
    batch = (torch.arange(1000) % 2).long()
    scales = scales_for([f.shape[-2:] for f in feats], [IMAGE])
    lines.append(f"scales: {scales}\n")
    lines.append("| check | max\\|diff\\| | max\\|theirs\\| |\n| --- | --- | --- |")
    for f, s in zip(feats, scales, strict=True):
        ours = RoiPooler((s,), SIZE, RATIO).pool([f], boxes, batch)
        theirs = roi_align(f, rois(boxes, batch), SIZE, s, RATIO, aligned=False)
        lines.append(
            f"| roi_align, one level, scale {s} | {diff(ours, theirs):.1e} | {big(theirs)} |"
        )
    pooler = RoiPooler(scales, SIZE, RATIO)
    msra = MultiScaleRoIAlign(["0", "1", "2", "3"], SIZE, RATIO)
    named = {str(i): f for i, f in enumerate(feats)}
    per_image = [boxes[batch == n] for n in range(2)]
    theirs = msra(named, per_image, [IMAGE, IMAGE])
    order = torch.cat([torch.nonzero(batch == n)[:, 0] for n in range(2)])
    ours = pooler.pool(feats, boxes[order], batch[order])
    mapper = msra.map_levels
    levels = pooler.levels(boxes[order])
    wrong = int((levels != mapper(per_image)).sum())
    counts = torch.bincount(levels, minlength=4).tolist()
    lines.append(f"| MultiScaleRoIAlign, levels {counts} (LevelMapper disagrees on {wrong}) "
                 f"| {diff(ours, theirs):.1e} | {big(theirs)} |")  # fmt: skip
    few = torch.arange(40)
    ref = roi_reference.multi_scale(feats, boxes[few], batch[few], list(scales), SIZE, RATIO)
    theirs = msra(named, [boxes[few][batch[few] == n] for n in range(2)], [IMAGE, IMAGE])
    order = torch.cat([torch.nonzero(batch[few] == n)[:, 0] for n in range(2)])
    lines.append(f"| tests' loop reference vs MultiScaleRoIAlign, 40 boxes | "
                 f"{diff(ref[order], theirs):.1e} | {big(theirs)} |")  # fmt: skip


def backward(lines: list[str]) -> None:
    feats = [f.requires_grad_(True) for f in maps(8, 2, 2)]
    boxes = boxes_for(1000, 3)
    batch = (torch.arange(1000) % 2).long()
    scales = scales_for([f.shape[-2:] for f in feats], [IMAGE])
    pooler = RoiPooler(scales, SIZE, RATIO)
    grad = torch.randn(1000, 8, *SIZE, generator=torch.Generator().manual_seed(4))
    shapes = [tuple(f.shape[-2:]) for f in feats]
    levels = pooler.levels(boxes)
    summed = [torch.zeros_like(f) for f in feats]
    worst_mean = 0.0
    for chunk in torch.arange(1000).split(50):
        parts = pooler.adjoint(grad[chunk], shapes, boxes[chunk], batch[chunk])
        for total, part in zip(summed, parts, strict=True):
            full = part.full()
            total.index_add_(0, batch[chunk], full)
            worst_mean = max(worst_mean, diff(part.channel_mean(), full.mean((2, 3))))
    msra = MultiScaleRoIAlign(["0", "1", "2", "3"], SIZE, RATIO)
    per_image = [boxes[batch == n] for n in range(2)]
    order = torch.cat([torch.nonzero(batch == n)[:, 0] for n in range(2)])
    out = msra({str(i): f for i, f in enumerate(feats)}, per_image, [IMAGE, IMAGE])
    autograd = torch.autograd.grad((out * grad[order]).sum(), feats)
    for k, (f, s) in enumerate(zip(feats, scales, strict=True)):
        here = levels == k
        kernel = torch.ops.torchvision._roi_align_backward(
            grad[here], rois(boxes[here], batch[here]), s, *SIZE, *f.shape, RATIO, False
        )
        lines.append(
            f"| full(), level {k} ({int(here.sum())} RoIs), rows summed per image: vs "
            f"_roi_align_backward {diff(summed[k], kernel):.1e}, vs autograd through "
            f"MultiScaleRoIAlign {diff(summed[k], autograd[k]):.1e} "
            f"| {max(diff(summed[k], kernel), diff(summed[k], autograd[k])):.1e} | {big(kernel)} |"
        )
    lines.append(f"| channel_mean() vs full().mean((2, 3)), every row and level "
                 f"| {worst_mean:.1e} | |")  # fmt: skip


def inverted(lines: list[str]) -> None:
    feats = maps(4, 1, 5)
    boxes = torch.tensor([[300.0, 300, 200, 250], [300, 300, 200, 100], [10, 10, 5, 60]])
    batch = torch.zeros(3, dtype=torch.long)
    pooler = RoiPooler(scales_for([f.shape[-2:] for f in feats], [IMAGE]), SIZE, RATIO)
    msra = MultiScaleRoIAlign(["0", "1", "2", "3"], SIZE, RATIO)
    theirs = msra({str(i): f for i, f in enumerate(feats)}, [boxes], [IMAGE])
    ours = pooler.pool(feats, boxes, batch)
    lines.append(
        f"\nBoxes with x2 < x1 (areas {[float(a) for a in (boxes[:, 2:] - boxes[:, :2]).prod(1)]}):"
        f" our levels {pooler.levels(boxes).tolist()}, |ours| max per box "
        f"{[round(float(o.abs().max()), 3) for o in ours]}, |theirs| max per box "
        f"{[round(float(o.abs().max()), 3) for o in theirs]}, max|diff| {diff(ours, theirs):.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "results", "roi-align-peers.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        "# RoIAlign: ours vs torchvision (CPU kernel)\n",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{platform.machine()}, 1 thread. `benchmarks/roi_align_peers.py`: strides 4-32 of an "
        "800x800 image, batch 2, 1000 random boxes of every size (degenerate, over the edges and "
        "outside included), 7x7, sampling ratio 2; forward 256 channels, backward 8.\n",
    ]
    forward(lines)
    backward(lines)
    inverted(lines)
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
