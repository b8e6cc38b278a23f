"""The ONNX Runtime variants: the export, the session, IO binding, and the ``ort``,
``ort_logits``, ``ort_gradcam``, ``ort_numpy`` and ``ort_cudagraph`` builders."""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..artifact.runtime import ort_session
from ..builder.export.writers import to_onnx
from ..errors import first_line
from .config import CUDA_GRAPH_NEEDS_CUDA, ORT_CUDA_MISSING, BenchConfig, Call, Variant

__all__ = ["export_onnx"]

_CUDA_GRAPH = "onnxruntime CUDA, CUDA graph"


def export_onnx(
    module: nn.Module, example: Tensor, path: str, opset: int, outputs: list[str]
) -> None:
    """``module`` (on the CPU) to ``path``, the batch dimension free, as explain-export does."""
    shapes = {"image": {0: torch.export.Dim("batch")}}
    to_onnx(module, (example,), path, opset, shapes, outputs)


def _ort_call(
    session: Any, image: Tensor, shapes: dict[str, tuple[int, ...]], run_options: Any = None
) -> Call:
    """Run ``session`` through IO binding: the input is the torch tensor's own buffer (an NCHW
    copy, made once, if it is channels-last), the outputs go into preallocated tensors on the same
    device, so no call copies or allocates, and the addresses stay fixed (a CUDA graph replays on
    them). The call holds the tensors whose memory is bound. ``run_options``: ORT's RunOptions
    for every run (``ort_cudagraph``'s graph id)."""
    image = image.contiguous()
    kind, index = image.device.type, image.device.index or 0
    binding = session.io_binding()
    binding.bind_input("image", kind, index, np.float32, list(image.shape), image.data_ptr())
    outputs = {
        n: torch.empty(s, dtype=torch.float32, device=image.device) for n, s in shapes.items()
    }
    for name, buf in outputs.items():
        binding.bind_output(name, kind, index, np.float32, list(buf.shape), buf.data_ptr())

    def call(bound: Tensor = image) -> tuple[Tensor, Tensor | None]:  # holds the bound input
        session.run_with_iobinding(binding, run_options)
        return outputs["logits"], outputs.get("heatmap")

    return call


def _ort_variant(
    name: str,
    path: str,
    outputs: dict[str, tuple[int, ...]],
    device: torch.device,
    threads: int,
    config: BenchConfig,
    export_s: float = 0.0,
) -> Variant:
    """Open the exported ``path`` on ``device``'s provider, driven through IO binding."""
    t0 = time.perf_counter()
    try:
        session = ort_session(path, device.type, threads, device_id=device.index or 0)
        if config.models_dir:  # ORT's optimized graph, for reading, from a separate session
            ort_session(
                path,
                device.type,
                threads,
                device_id=device.index or 0,
                optimized_path=path.replace(".onnx", ".ort-optimized.onnx"),
            )
    except Exception as exc:
        return Variant(name, "onnxruntime", None, f"failed: {first_line(exc)}")
    used = list(session.get_providers())
    variant = Variant(
        name,
        f"onnxruntime {used[0].removesuffix('ExecutionProvider')}",
        lambda x: _ort_call(session, x, {n: (x.shape[0], *s) for n, s in outputs.items()}),
        note="IO binding: the input is the torch buffer itself; outputs preallocated",
        providers=used,
        setup_s=export_s + time.perf_counter() - t0,
        path=path,
    )
    if device.type == "cuda" and "CUDAExecutionProvider" not in used:
        variant.make, variant.status = None, ORT_CUDA_MISSING
    return variant


def _ort_numpy_variant(path: str, device: torch.device, threads: int) -> Variant:
    """``path`` through :class:`.runtime.OnnxExplainer`, as ``explain-run`` opens it: numpy
    float32 in (made once per batch size, outside the timed call), numpy out; CUDA graphs off
    (``ort_cudagraph`` measures them)."""
    from ..artifact.runtime import OnnxExplainer

    t0 = time.perf_counter()
    try:
        runner = OnnxExplainer(path, device=device.type, threads=threads, cuda_graph=False)
    except Exception as exc:
        return Variant("ort_numpy", "onnxruntime", None, f"failed: {first_line(exc)}")
    used = list(runner.providers)
    variant = Variant(
        "ort_numpy",
        f"onnxruntime {used[0].removesuffix('ExecutionProvider')}, numpy in/out",
        lambda x: _numpy_call(runner, x),
        note="artifact.runtime.OnnxExplainer as explain-run uses it (session.run with a "
        "numpy feed, numpy outputs); the ort variant's ONNX file",
        providers=used,
        setup_s=time.perf_counter() - t0,
        path=path,
    )
    if device.type == "cuda" and "CUDAExecutionProvider" not in used:
        variant.make, variant.status = None, ORT_CUDA_MISSING
    return variant


def _numpy_call(runner: Any, image: Tensor) -> Call:
    """``runner(batch)`` on a numpy copy of ``image`` made here, once; the numpy outputs are
    wrapped (no copy) as CPU tensors for the harness's checks."""
    batch = image.contiguous().cpu().numpy()

    def call() -> tuple[Tensor, Tensor | None]:
        logits, heatmap = runner(batch)
        return torch.from_numpy(logits), torch.from_numpy(heatmap)

    return call


def _cuda_graph_refusal(device: torch.device) -> str | None:
    """Why ``ort_cudagraph`` cannot run here, as a ``not measured:`` status; None if it may."""
    import onnxruntime as ort

    if device.type != "cuda":
        return CUDA_GRAPH_NEEDS_CUDA
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ORT_CUDA_MISSING
    return None


def _ort_cudagraph_variant(
    path: str, outputs: dict[str, tuple[int, ...]], device: torch.device, threads: int
) -> Variant:
    """``path`` on the CUDA provider with ``enable_cuda_graph``: IO binding to fixed buffers per
    batch size, each batch size under its own ``gpu_graph_id`` (1, 2, ...: ORT reserves 0 for
    runs without an id, -1 turns capture off), so ONNX Runtime captures one graph per batch
    size after its first runs and replays it from then on.

    Not measured (never an error) off CUDA, without the CUDA provider, or where ORT refuses the
    session: a CUDA graph needs every node on the CUDA provider.
    """
    refused = _cuda_graph_refusal(device)
    if refused:
        return Variant("ort_cudagraph", _CUDA_GRAPH, None, refused)
    import onnxruntime as ort

    t0 = time.perf_counter()
    try:
        session = ort_session(
            path, device.type, threads, device_id=device.index or 0, cuda_graph=True
        )
    except Exception as exc:
        why = f"not measured: ORT refused CUDA graphs ({first_line(exc)})"
        return Variant("ort_cudagraph", _CUDA_GRAPH, None, why)
    used = list(session.get_providers())
    if "CUDAExecutionProvider" not in used:
        return Variant("ort_cudagraph", _CUDA_GRAPH, None, ORT_CUDA_MISSING, providers=used)
    graph_ids = itertools.count(1)  # one id per make(): per batch size, with its own buffers

    def make(image: Tensor) -> Call:
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", str(next(graph_ids)))
        shapes = {n: (image.shape[0], *s) for n, s in outputs.items()}
        return _ort_call(session, image, shapes, run_options)

    return Variant(
        "ort_cudagraph",
        _CUDA_GRAPH,
        make,
        note="IO binding to fixed buffers; one CUDA graph per batch size (gpu_graph_id), "
        "captured on an early call (first_call_ms), replayed after; the ort variant's ONNX file",
        providers=used,
        setup_s=time.perf_counter() - t0,
        path=path,
    )
