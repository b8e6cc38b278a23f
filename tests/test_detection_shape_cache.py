"""A detection head that caches its anchor grid keyed on the input's shape (as Ultralytics'
``Detect`` does: ``if self.shape != shape: recompute; self.shape = shape``) exports with the
batch dimension still dynamic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import Tensor

from explain_export.artifact import runtime
from explain_export.builder.detect_build import build_detector
from explain_export.builder.export.detection import export_detector
from tests.detectors import TinyDetect, TinyYolo, tiny_yolo


class CachingDetect(TinyDetect):
    """:class:`TinyDetect` whose output is scaled by a tensor it rebuilds only when the shape of
    its first input (batch included) changes, as Ultralytics caches ``anchors``."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.shape: tuple[int, ...] | None = None
        self.scale = torch.ones(1)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        shape = feats[0].shape
        if self.shape != shape:
            self.scale = torch.ones(1, 1, 1)
            self.shape = shape
        out, raw = super().forward(feats)
        return torch.cat([out[:, :4] * self.scale, out[:, 4:]], 1), raw


@pytest.mark.slow
def test_a_head_that_caches_on_the_input_shape_keeps_the_batch_dynamic(tmp_path):
    model = tiny_yolo()
    old = model.detect
    model.detect = CachingDetect((16, 24, 32), old.nc, old.strides)
    model.detect.load_state_dict(old.state_dict())
    model.eval()
    with build_detector(model, (64, 64), max_detections=3) as explainer:
        paths = export_detector(explainer, str(tmp_path), ("torchscript",)).paths
        art = runtime.load(paths["torchscript"])
        for n in (1, 3):
            image = np.random.default_rng(n).random((n, 3, 64, 64), dtype=np.float32)
            got = art.outputs(image)
            with torch.no_grad():
                ref = explainer(torch.from_numpy(image))
            assert got["boxes"].shape == (n, 3, 4)
            np.testing.assert_array_equal(got["classes"], ref[2].numpy())


class CachingYolo(TinyYolo):
    """:class:`TinyYolo` whose head is :class:`CachingDetect` (for ``--arch``)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__(num_classes)
        self.detect = CachingDetect((16, 24, 32), num_classes, (8, 16, 32))


@pytest.mark.slow
def test_explain_bench_times_the_nms_only_file_of_a_head_that_caches_its_shape(tmp_path):
    # its NMS-only graph was exported at batch 2 without the eager batch of 1 first, so the
    # file's batch was fixed to 2: "Got invalid dimensions for input: image" on YOLO11n
    from explain_export.cli.bench import main

    model = CachingYolo()
    model.load_state_dict(tiny_yolo().state_dict())
    ckpt = tmp_path / "caching_yolo.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--arch", "test_detection_shape_cache:CachingYolo"]
    args += ["--input-size", "64", "64", "--quiet", "--batch-sizes", "1", "--warmup", "1"]
    args += ["--iters", "2", "--settle", "0", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["variants"]["ort_nms"]["status"] == "ok", result["variants"]["ort_nms"]
