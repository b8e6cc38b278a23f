#!/usr/bin/env python
"""Instance masks against their peers (issue 29): ``maths.masks.paste`` against torchvision's
``paste_masks_in_image``, and ``artifact.rle`` against pycocotools' ``mask.encode``/``decode``.

Not part of the test suite: it needs ``torchvision`` and ``pycocotools``, which the project
must not depend on, so it runs in the peers venv::

    PYTHONPATH=$PWD .peers/bin/python benchmarks/masks_peers.py \\
        --out benchmarks/results/masks-peers.md

Pasting: 100 detections at 480x640, masks ``[100, 28, 28]`` (Mask R-CNN's size) of smooth
probabilities (a sigmoid of upsampled noise), boxes of every size with their centres anywhere in
the image, clipped to it as torchvision's ``postprocess_detections`` clips them; float32 and
float64; ours by default (two batched products) and with ``exact=True``, and the tests' loop
(``tests/mask_reference.py``). Reported: the largest
absolute difference, and the pixels that differ at all. Speed, 1 thread: torchvision's loop and
ours (eager, and exported to ONNX as the project exports, run in ONNX Runtime), at 480x640 and at
800x800 with D = 10 and 100 (the best of 3 runs).

RLE: the pasted masks thresholded at 1/2, random masks, a mask of all 0s, of all 1s and single
pixels: our compressed string against pycocotools' (bytes, decoded to ``str``) and our decoding
against ``mask.decode``; pycocotools on the examples that ``tests/test_rle.py`` works out by
hand; encoding time for the 100 pasted masks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from importlib.metadata import version

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pycocotools import mask as coco
from torchvision.models.detection.roi_heads import paste_masks_in_image

from explain_export.artifact import rle
from explain_export.builder.maths.masks import paste


def detections(
    count: int, size: tuple[int, int], dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, 1, 7, 7, generator=g, dtype=dtype) * 4
    masks = torch.sigmoid(F.interpolate(noise, size=(28, 28), mode="bilinear"))[:, 0]
    height, width = size
    scale = torch.tensor([width, height], dtype=dtype)
    centre = torch.rand(count, 2, generator=g, dtype=dtype) * scale
    sides = torch.rand(count, 2, generator=g, dtype=dtype) ** 2 * scale + 0.3
    boxes = torch.cat([centre - sides / 2, centre + sides / 2], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return masks, boxes


def torchvision_paste(masks: torch.Tensor, boxes: torch.Tensor, size) -> torch.Tensor:
    return paste_masks_in_image(masks[:, None], boxes, size, padding=1)[:, 0]


def best(fn, rounds: int = 3) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def compare_paste(lines: list[str]) -> list[torch.Tensor]:
    size = (480, 640)
    lines += [
        "## Pasting: `paste` vs torchvision's `paste_masks_in_image`",
        "",
        "100 detections at 480x640, masks 28x28, CPU.",
        "",
        "| dtype | pasted by | max abs diff | pixels that differ | nonzero pixels |",
        "|---|---|---|---|---|",
    ]
    pasted = []
    for dtype in (torch.float32, torch.float64):
        masks, boxes = detections(100, size, dtype, seed=0)
        theirs = torchvision_paste(masks, boxes, size)
        if dtype == torch.float32:
            pasted.append(theirs)
        for name in ("default", "exact=True", "tests' reference"):
            if name == "tests' reference":
                sys.path.insert(0, "tests")
                from mask_reference import paste_reference

                ours = paste_reference(masks, boxes, size)
            else:
                ours = paste(masks, boxes, size, exact=name != "default")
            diff = (ours - theirs).abs()
            lines.append(
                f"| {str(dtype)[6:]} | {name} | {diff.max().item():.3g} | "
                f"{int((diff > 0).sum())} of {diff.numel()} | {int((theirs != 0).sum())} |"
            )
    lines += ["", "Speed, 1 thread, best of 3 (s):", ""]
    lines += [
        "| H x W | D | torchvision | ours | ours, exact=True | ours in ONNX Runtime |",
        "|---|---|---|---|---|---|",
    ]
    for size, count in (((480, 640), 100), ((800, 800), 10), ((800, 800), 100)):
        masks, boxes = detections(count, size, torch.float32, seed=1)
        session = onnx_session(count, size)
        feed = {"masks": masks[None].numpy(), "boxes": boxes[None].numpy()}
        row = [
            best(lambda m=masks, b=boxes, s=size: torchvision_paste(m, b, s)),
            best(lambda m=masks, b=boxes, s=size: paste(m, b, s)),
            best(lambda m=masks, b=boxes, s=size: paste(m, b, s, exact=True)),
            best(lambda f=feed, o=session: o.run(None, f)),
        ]
        cells = " | ".join(f"{t:.3f}" for t in row)
        lines.append(f"| {size[0]} x {size[1]} | {count} | {cells} |")
    return pasted


class Paste(torch.nn.Module):
    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return paste(masks, boxes, self.size)


def onnx_session(count: int, size: tuple[int, int]):
    """``paste`` exported as the project exports (``to_onnx``: dynamo, opset 18, free batch),
    ``[N, D, 28, 28]``, ``[N, D, 4]`` -> ``[N, D, H, W]``, in a 1-thread CPU session."""
    import onnxruntime as ort

    from explain_export.builder.export.export import DEFAULT_OPSET
    from explain_export.builder.export.writers import to_onnx

    masks, boxes = detections(2 * count, size, torch.float32, seed=2)
    args = (masks.reshape(2, count, 28, 28), boxes.reshape(2, count, 4))
    batch = torch.export.Dim("batch")
    dims = {"masks": {0: batch}, "boxes": {0: batch}}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "paste.onnx")
        to_onnx(Paste(size), args, path, DEFAULT_OPSET, dims, ["pasted"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def compare_rle(lines: list[str], pasted: list[torch.Tensor]) -> None:
    g = np.random.default_rng(0)
    cases = [m.numpy() > 0.5 for m in pasted[0]]
    cases += [g.random((h, w)) < p for h, w, p in [(7, 9, 0.5), (480, 640, 0.02), (1, 57, 0.5)]]
    cases += [np.zeros((30, 40), bool), np.ones((30, 40), bool), np.zeros((61, 1), bool)]
    for spot in [(0, 0), (29, 39), (12, 7)]:
        one = np.zeros((30, 40), bool)
        one[spot] = True
        cases.append(one)
    same_string = same_decode = same_theirs = 0
    for mask in cases:
        theirs = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = rle.encode(mask)
        same_string += ours["counts"] == theirs["counts"].decode("ascii")
        same_string_size = ours["size"] == list(theirs["size"])
        same_decode += same_string_size and np.array_equal(rle.decode(theirs), mask)
        same_theirs += np.array_equal(coco.decode({**theirs, "counts": ours["counts"]}), mask)
    sys.path.insert(0, "tests")
    from test_rle import HAND  # the examples worked out by hand from the format

    hand = sum(
        coco.encode(np.asfortranarray(np.asarray(m, np.uint8)))["counts"].decode() == text
        for m, _, text in HAND
    )
    masks = cases[:100]
    ours_time = best(lambda: [rle.encode(m) for m in masks])
    theirs_time = best(lambda: [coco.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks])
    lines += [
        "",
        "## RLE: `rle.encode`/`decode` vs pycocotools' `mask.encode`/`decode`",
        "",
        f"{len(cases)} masks: the 100 pasted masks above (torchvision's) thresholded at 1/2, "
        "random masks (7x9, 480x640, 1x57), all 0s, all 1s, an Hx1 column, single pixels.",
        "",
        f"- our `counts` string equals pycocotools': {same_string} of {len(cases)}",
        f"- pycocotools' string of the hand-worked examples in `tests/test_rle.py` equals "
        f"the hand-worked one: {hand} of {len(HAND)}",
        f"- our `decode` of pycocotools' RLE equals the mask: {same_decode} of {len(cases)}",
        f"- pycocotools' `decode` of our string equals the mask: {same_theirs} of {len(cases)}",
        f"- encoding the 100 pasted masks (480x640), 1 thread, best of 3: ours {ours_time:.3f} s, "
        f"pycocotools {theirs_time:.3f} s (with its `np.asfortranarray` copy)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/masks-peers.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        "# Instance masks vs torchvision and pycocotools (issue 29)",
        "",
        f"`benchmarks/masks_peers.py`; torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, pycocotools {version('pycocotools')}, numpy "
        f"{np.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}. Timings: "
        "one run on the shared 2-core VM (other jobs running), so expect ±30 %.",
        "",
    ]
    pasted = compare_paste(lines)
    compare_rle(lines, pasted)
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
