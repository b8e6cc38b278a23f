"""Where EigenCAM's time goes on ONNX Runtime: its power iteration alone, three ways.

The embedded EfficientNet-Lite0's map at ``_avg_pooling:input`` (``[N,1280,7,7]``, captured on
the bundled photos) goes through EigenCAM's loop, exported on its own (dynamo, opset 18) and
run on ONNX Runtime's CPU provider, interleaved, median ms per run:

- ``scaled``: as ``builder/maths/cams.py`` writes it: the centred map times a constant
  (``unit_peak`` then ``* guard(...)``) before 48 steps ``v <- Xᵀ(X v) / |.|``. ONNX Runtime folds
  that constant into every step's products (``FusedMatMul`` nodes named ``MatMulScaleFusion``);
- ``folded``: the same, the constant moved into the runtime divisor
  (``x / (peak / guard)``), so there is no constant ``Mul`` before the products to fold;
- ``gram``: ``G = X Xᵀ`` (``hw × hw``), six squarings (``G^64``, normalized each time), then
  ``v = Xᵀ G^64 X 1``: 64 power steps in 6 products (cheap where ``hw`` is small).

Each map is checked against a float64 SVD with the same sign rule. Run in the project's venv::

    python benchmarks/eigencam_loop.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

STEPS, SQUARINGS, GUARD = 48, 6, 2.0**-12  # GUARD: heads.guard(1280), a power of two


def _centred(a: torch.Tensor) -> torch.Tensor:
    n, c, h, w = a.shape
    x = a.reshape(n, c, h * w).transpose(1, 2)  # [N, hw, C]
    return x - x.mean(dim=1, keepdim=True)


def _finish(x: torch.Tensor, v: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    m = (x @ v).transpose(1, 2)
    flip = (-m.amin(dim=2, keepdim=True)) > m.amax(dim=2, keepdim=True)
    n, _, h, w = shape
    return torch.relu(torch.where(flip, -m, m)).reshape(n, 1, h, w)


def _power(x: torch.Tensor) -> torch.Tensor:
    xt = x.transpose(1, 2).contiguous()
    v = torch.ones_like(xt[:, :, :1])
    for _ in range(STEPS):
        v = xt @ (x @ v)
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-30)
    return v


class Scaled(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        x = _centred(a)
        x = x / x.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-30) * GUARD
        return _finish(x, _power(x), a.shape)


class Folded(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        x = _centred(a)
        x = x / (x.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-30) / GUARD)
        return _finish(x, _power(x), a.shape)


class Gram(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        x = _centred(a)
        g = x @ x.transpose(1, 2)  # [N, hw, hw]
        for _ in range(SQUARINGS):
            g = g / g.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
            g = g @ g
        u = g @ (x @ torch.ones_like(x[:, :1, :].transpose(1, 2)))  # X 1: 1 is in G's kernel
        v = x.transpose(1, 2) @ u
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-30)
        return _finish(x, v, a.shape)


def features() -> np.ndarray:
    """The tapped map of the bundled photos, ``[4,1280,7,7]``."""
    from explain_export.artifact import samples
    from explain_export.builder.model.zoo import load_default
    from explain_export.builder.plan import IMAGENET_MEAN, IMAGENET_STD

    model = load_default().model
    got = []
    pool = model.get_submodule("_avg_pooling")
    pool.register_forward_pre_hook(lambda _m, args: got.append(args[0].detach().clone()))
    images = [samples.load_rgb(samples.photo_path(p), (224, 224)) for p in samples.PHOTOS]
    x = torch.from_numpy(np.stack(images))
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    with torch.no_grad():
        model((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    return got[0].numpy().astype(np.float32)


def svd_maps(a: np.ndarray) -> np.ndarray:
    """EigenCAM in float64 by SVD, with our sign rule, each map over its peak."""
    out = []
    for f in a.astype(np.float64):
        x = f.reshape(f.shape[0], -1).T
        x = x - x.mean(axis=0)
        p = x @ np.linalg.svd(x, full_matrices=False)[2][0]
        p = np.maximum(-p if abs(p.min()) > abs(p.max()) else p, 0)
        out.append((p / p.max()).reshape(f.shape[1:]))
    return np.stack(out)[:, None]


def main(threads: int = 2, rounds: int = 60) -> None:
    feats = features()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sessions = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, module in (("scaled", Scaled()), ("folded", Folded()), ("gram", Gram())):
            path = os.path.join(folder, f"{name}.onnx")
            batch = {"a": {0: torch.export.Dim("batch")}}
            torch.onnx.export(
                module,
                (torch.from_numpy(feats[:2]),),
                path,
                dynamo=True,
                input_names=["a"],
                dynamic_shapes=batch,
                opset_version=18,
            )
            sessions[name] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for n in (1, 8):
        a = np.stack([feats[i % len(feats)] for i in range(n)])
        want = svd_maps(a)
        errors = {}
        for name, s in sessions.items():
            m = s.run(None, {"a": a})[0]
            errors[name] = float(np.abs(m / m.max(axis=(2, 3), keepdims=True) - want).max())
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(rounds):
            for name, s in sessions.items():
                time.sleep(0.05)  # ORT's threads stop spinning
                s.run(None, {"a": a})
                t0 = time.perf_counter()
                s.run(None, {"a": a})
                times[name].append(1000 * (time.perf_counter() - t0))
        print(
            f"batch {n}: "
            + ", ".join(
                f"{k} {statistics.median(v):.3f} ms (vs SVD {errors[k]:.1e})"
                for k, v in times.items()
            )
        )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
