"""How long :class:`RoiPooler` takes on one CPU thread: ``pool`` (with and without its levels'
table built beforehand, :meth:`RoiPooler.table`) and ``adjoint`` +
``channel_mean`` (Grad-CAM's weights) for M RoIs over the 4 levels of an 800x800 image's FPN
(strides 4-32, 256 channels, batch 1, 7x7, sampling ratio 2); with torchvision installed (the
peers venv) also its ``MultiScaleRoIAlign`` forward, and autograd through it to the maps::

    PYTHONPATH=$PWD python benchmarks/roi_align_speed.py [--rois 10 1000]

Prints the median of ``--rounds`` (ms).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from explain_export.builder.maths.roi_align import RoiPooler, scales_for

IMAGE, STRIDES = (800, 800), (4, 8, 16, 32)


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def fwd_bwd(msra: torch.nn.Module, named: dict, boxes: torch.Tensor, grad: torch.Tensor) -> None:
    """torchvision's forward, and autograd back to the maps."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in named.items()}
    out = msra(leaves, [boxes], [IMAGE])
    torch.autograd.grad((out * grad).sum(), list(leaves.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 256, IMAGE[0] // s, IMAGE[1] // s, generator=g) for s in STRIDES]
    shapes = [tuple(f.shape[-2:]) for f in feats]
    pooler = RoiPooler(scales_for(shapes, [IMAGE]), (7, 7), 2)
    try:
        from torchvision.ops import MultiScaleRoIAlign
    except ImportError:
        MultiScaleRoIAlign = None
    print(f"torch {torch.__version__}, 1 thread, median of {args.rounds} (ms)")
    print(
        "| M | levels | pool | pool, table built | adjoint + channel_mean | torchvision: forward "
        "| fwd + bwd |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    for m in args.rois:
        xy = torch.rand(m, 2, generator=g) * 700
        wh = torch.exp(torch.empty(m, 2).uniform_(1.0, 6.5, generator=g))
        boxes = torch.cat([xy, (xy + wh).clamp(max=800)], 1)
        batch = torch.zeros(m, dtype=torch.long)
        grad = torch.randn(m, 256, 7, 7, generator=g)
        counts = torch.bincount(pooler.levels(boxes), minlength=4).tolist()
        with torch.no_grad():
            pool = median_ms(lambda: pooler.pool(feats, boxes, batch), args.rounds)  # noqa: B023
            table = pooler.table(feats)
            built = median_ms(lambda: pooler.pool(feats, boxes, batch, table), args.rounds)  # noqa: B023
            cam = median_ms(
                lambda: [p.channel_mean() for p in pooler.adjoint(grad, shapes, boxes, batch)],  # noqa: B023
                args.rounds,
            )
        theirs = both = "-"
        if MultiScaleRoIAlign is not None:
            msra = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
            named = {str(i): f for i, f in enumerate(feats)}
            with torch.no_grad():
                theirs = f"{median_ms(lambda: msra(named, [boxes], [IMAGE]), args.rounds):.1f}"  # noqa: B023

            both = f"{median_ms(lambda: fwd_bwd(msra, named, boxes, grad), args.rounds):.1f}"  # noqa: B023
        print(f"| {m} | {counts} | {pool:.1f} | {built:.1f} | {cam:.1f} | {theirs} | {both} |")


if __name__ == "__main__":
    main()
