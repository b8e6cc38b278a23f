"""Time the explainer against its alternatives, in one process, on the same input batches.

Each variant maps an image batch ``[N,3,H,W]`` in [0,1] to ``(logits, heatmap)``, or to the
logits alone where its name says so:

- ``eager``: the :class:`~.explainer.Explainer` in PyTorch, under ``inference_mode``;
- ``eager_logits``: the model alone, ``model((image - mean) / std)``, the baseline for the head;
- ``torchscript``: the explainer traced and frozen, as :func:`.export.to_torchscript` writes it;
- ``ort``: the ONNX explainer of :func:`.export.to_onnx` on ONNX Runtime (CPU or CUDA provider);
- ``ort_logits``: the normalized model alone, exported by the same :func:`.export.to_onnx`;
- ``compile``: ``torch.compile(explainer)``, one static graph per batch size;
- ``autograd``: Grad-CAM as it is usually written: forward hooks, backward of the top logit
  ``y_c``, ``α_k = mean_ij ∂y_c/∂A_k(i,j)``, ``m = ReLU(Σ_k α_k A_k)``, then the same bilinear
  resize and per-image min-max;
- ``gradcam_numpy``: Grad-CAM the way pytorch-grad-cam computes it: the same hooks and backward,
  then ``A`` and ``∂y_c/∂A`` on the host, the map in numpy, min-max before ``cv2.resize``;
- ``ort_numpy``: the ``ort`` file through :class:`.runtime.OnnxExplainer`, numpy in and out, as
  ``explain-run`` runs it;
- ``ort_cudagraph`` (CUDA only): the ``ort`` file on the CUDA provider with
  ``enable_cuda_graph``, one captured graph per batch size, replayed on every call.

Timing: per batch size, ``warmup`` rounds, then ``iters`` rounds. In a round every variant takes
one turn, in an order rotated by one each round, so drift (clocks, other processes) hits all
alike. A turn is an idle pause (``settle_s``: ONNX Runtime's threads spin for 20-50 ms after a
run and would slow whichever variant came next), ``prime`` untimed calls (the variant's own
weights back in cache), then one timed call: each variant is timed as if it ran alone, back to
back. A sample is the wall time of that call; on CUDA the device is synchronized before and
after, which also covers ONNX Runtime's own stream (CUDA events on PyTorch's would not).
Per variant and batch: median, p90 and p99 in ms per batch, and images/s = N / median.

On the CPU, :func:`ort_head_share` also reads the heatmap head's cost off ONNX Runtime's
profiler (kernel time of the nodes that do not feed ``logits``), without the run-to-run noise of
an end-to-end ratio.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

from . import heads, lowering
from .errors import ExplainExportError, UsageError, first_line
from .explainer import Explainer, ExplainerInfo
from .export import DEFAULT_OPSET, quiet, to_onnx, to_torchscript, versions
from .tap import TapSpec, resolve_module

VARIANTS: dict[str, str] = {
    "eager": "eager explainer",
    "eager_logits": "eager model, logits only",
    "torchscript": "TorchScript explainer",
    "ort": "ORT explainer",
    "ort_logits": "ORT model, logits only",
    "compile": "torch.compile explainer",
    "autograd": "autograd Grad-CAM",
    "eager_gradcam": "eager explainer, gradcam",
    "ort_gradcam": "ORT explainer, gradcam",
    "gradcam_numpy": "pytorch-grad-cam style Grad-CAM",
    "ort_numpy": "ORT explainer, numpy in/out",
    "ort_cudagraph": "ORT explainer, CUDA graph",
}
REFERENCE = "eager"  # every ratio and parity figure is taken against it; it cannot be skipped
ORT_CUDA_MISSING = "not measured: onnxruntime CUDA provider unavailable"
CUDA_GRAPH_NEEDS_CUDA = "not measured: CUDA graphs need --device cuda"
EXPORTED = ("ort", "ort_cudagraph", "torchscript")  # the candidates for the fastest exported
ON_EXPLAINER_ONNX = ("ort", "ort_numpy", "ort_cudagraph")  # the variants that run explainer.onnx
PROFILE_BUDGET_S = 5.0  # at most about this much profiled run time per batch size

Call = Callable[[], tuple[Tensor, Tensor | None]]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure, and how often."""

    batch_sizes: tuple[int, ...] = (1, 8, 32)
    device: str = "cpu"
    threads: int | None = None  # torch intra-op and ORT intra-op threads; None: torch's default
    warmup: int = 5
    iters: int = 30
    skip: frozenset[str] = frozenset()
    opset: int = DEFAULT_OPSET
    prime: int = 1  # untimed calls of a variant right before each timed one (see time_rounds)
    settle_s: float = 0.1  # idle pause before each turn: other variants' thread pools go to sleep
    channels_last: bool = False  # the torch variants' model and input in channels-last layout
    tuned_malloc: bool = False  # glibc keeps freed memory: no page faults per torch call
    seed: int = 0
    models_dir: str | None = None  # keep the ONNX files and ORT's optimized graphs here
    profile_runs: int = 100  # ort_head_share runs per batch size (fewer where slow); 0: none

    def check(self) -> None:
        """Raise :class:`~.errors.UsageError` for values no run can use."""
        if not self.batch_sizes or any(b <= 0 for b in self.batch_sizes):
            raise UsageError(f"--batch-sizes must be positive integers, got {self.batch_sizes}")
        if self.warmup < 0 or self.iters < 1 or self.prime < 0 or self.settle_s < 0:
            raise UsageError("--warmup, --prime and --settle must be >= 0, --iters >= 1")
        if self.profile_runs < 0:
            raise UsageError(f"--profile-runs must be >= 0, got {self.profile_runs}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        bad = sorted(self.skip - set(VARIANTS) | (self.skip & {REFERENCE}))
        if bad:
            names = ", ".join(v for v in VARIANTS if v != REFERENCE)
            raise UsageError(f"--skip takes a comma list of {names}; got {', '.join(bad)}")
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"--device must be cpu or cuda, got '{self.device}'")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UsageError(
                "--device cuda, but this PyTorch sees no CUDA device "
                f"(torch {torch.__version__}); use --device cpu"
            )


@dataclass
class Variant:
    """One way to compute the outputs. ``make(image)`` returns the call timed on that batch."""

    name: str
    backend: str
    make: Callable[[Tensor], Call] | None
    status: str = "ok"  # "ok", "failed: <why>", "skipped: <why>", "not measured: <why>"
    note: str = ""
    providers: list[str] | None = None
    setup_s: float = 0.0
    batches: dict[int, dict[str, Any]] = field(default_factory=dict)
    path: str | None = None  # the ONNX file it runs, if any

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (batch sizes as string keys)."""
        out = {
            "label": VARIANTS[self.name],
            "backend": self.backend,
            "status": self.status,
            "note": self.note,
            "setup_s": round(self.setup_s, 3),
            "batches": {str(b): m for b, m in self.batches.items()},
        }
        if self.providers is not None:
            out["providers"] = self.providers
        return out


class Normalized(nn.Module):
    """``model((image - mean) / std)``: the explainer's forward pass without the heatmap."""

    def __init__(self, explainer: Explainer) -> None:
        super().__init__()
        self.model = explainer.model
        self.register_buffer("mean", explainer.mean.detach().clone())
        self.register_buffer("std", explainer.std.detach().clone())

    def forward(self, image: Tensor) -> Tensor:
        return self.model((image - self.mean) / self.std)


class AutogradGradCAM:
    r"""Grad-CAM with autograd, the way it is usually written (hooks + backward).

    A forward hook keeps the tapped map ``A`` and a tensor hook its gradient. Per call:
    zero the parameter gradients, forward with ``requires_grad`` on the input and on every
    parameter (as on a model in a notebook; a ``gradcam`` explainer freezes them), backward of
    :math:`\sum_n y_{n,c_n}` with :math:`c_n` the argmax, then
    :math:`m = \mathrm{ReLU}(\sum_k \alpha_k A_k)`, :math:`\alpha_k = \mathrm{mean}_{ij}\,
    \partial y_c/\partial A_k(i,j)`, and the explainer's resize + min-max (:func:`.heads.finish`).
    For a GAP + linear head this equals the ``cam`` heatmap.
    """

    def __init__(self, explainer: Explainer) -> None:
        self.explainer = explainer  # its model, and its mean/std wherever they were moved
        self.spec: TapSpec = explainer.tap.spec
        self._armed = False
        self._maps: list[Tensor] = []
        self._grads: dict[int, Tensor] = {}
        module = resolve_module(explainer.model, self.spec.module)
        self._handle = module.register_forward_hook(self._keep)

    def _held(self, t: Tensor) -> Tensor:
        """What the hooks keep of ``A`` and of its gradient: the tensor itself, here."""
        return t

    def _keep(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._armed:
            return
        a = args[0] if self.spec.port == "input" else output
        index = len(self._maps)
        self._maps.append(self._held(a))
        if a.requires_grad:
            a.register_hook(lambda g: self._grads.__setitem__(index, self._held(g)))

    @contextlib.contextmanager
    def _recording(self) -> Iterator[None]:
        """Within: the hooks keep what they see, every parameter requires grad (its gradient
        zeroed first) and autograd is on. On exit the frozen parameters are frozen again."""
        model = self.explainer.model
        self._maps, self._grads, self._armed = [], {}, True
        frozen = [p for p in model.parameters() if not p.requires_grad]
        for p in frozen:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        try:
            with torch.enable_grad():
                yield
        finally:
            self._armed = False
            for p in frozen:
                p.requires_grad_(False)
                p.grad = None

    def _tapped(self) -> tuple[Tensor, Tensor]:
        """``A`` and its gradient at the tapped call."""
        index = self.spec.call or 0
        return self._maps[index].detach(), self._grads[index]

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        model, mean, std = self.explainer.model, self.explainer.mean, self.explainer.std
        with self._recording():
            x = ((image - mean) / std).requires_grad_(True)
            logits = model(x)
            target = logits.argmax(dim=1)
            logits.gather(1, target[:, None]).sum().backward()
        a, g = self._tapped()
        m = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
        return logits.detach(), heads.finish(m, image.shape[-2:])

    def remove(self) -> None:
        """Detach the hook from the model."""
        self._handle.remove()


class NumpyGradCAM(AutogradGradCAM):
    r"""Grad-CAM as pytorch-grad-cam computes it, the baseline users run today.

    The hooks copy ``A`` and, in the backward, its gradient to the host as they see them. Per
    call: every parameter requires grad, ``model.zero_grad()``, forward (the input needs no
    gradient), targets :math:`c_n` = the argmax of the logits read back as numpy, backward of
    :math:`\sum_n y_{n,c_n}` summed image by image. Then in numpy, per image:
    :math:`w_k = \mathrm{mean}_{ij}\,\partial y_c/\partial A_k(i,j)`,
    :math:`m = \max(\sum_k w_k A_k, 0)`, :math:`m \leftarrow (m - \min m)/(10^{-7} + \max(m -
    \min m))`, ``cv2.resize(m, (W, H))`` (bilinear), and the library's final aggregation of its
    one layer: the same min-max again at full size. Min-max commutes with the resize up to the
    ``1e-7``, so this is the ``cam`` heatmap for a GAP + linear head, to float rounding.
    The heatmap comes back as a CPU tensor wrapping the numpy array; the logits stay on the
    device.
    """

    def _held(self, t: Tensor) -> Tensor:
        return t.detach().cpu()

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        model, mean, std = self.explainer.model, self.explainer.mean, self.explainer.std
        with self._recording():
            logits = model((image - mean) / std)
            targets = logits.detach().cpu().numpy().argmax(axis=-1)
            loss = sum(row[int(c)] for row, c in zip(logits, targets, strict=True))
            loss.backward(retain_graph=True)
        a, g = (t.numpy() for t in self._tapped())
        weights = g.mean(axis=(2, 3))
        cam = np.maximum((weights[:, :, None, None] * a).sum(axis=1), 0)
        size = (image.shape[-1], image.shape[-2])  # cv2 takes (W, H)
        resized = [cv2.resize(m, size) for m in _unit_range(cam)]
        heat = np.stack(_unit_range(np.stack(resized)))[:, None]
        return logits.detach(), torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))


def _unit_range(maps: np.ndarray) -> list[np.ndarray]:
    r"""Per map, pytorch-grad-cam's scaling: :math:`m' = m - \min m`, then
    :math:`m' / (10^{-7} + \max m')`, in float32."""
    out = []
    for m in maps:
        m = m - np.min(m)
        out.append(np.float32(m / (1e-7 + np.max(m))))
    return out


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _torch_call(fn: Callable[[Tensor], Any], image: Tensor, logits_only: bool = False) -> Call:
    def call() -> tuple[Tensor, Tensor | None]:
        with torch.inference_mode():
            out = fn(image)
        return (out, None) if logits_only else (out[0], out[1])

    return call


def ort_session(
    path: str,
    device: torch.device,
    threads: int,
    optimized_path: str | None = None,
    cuda_graph: bool = False,
) -> Any:
    """An ONNX Runtime session: the CUDA provider on a CUDA device where this onnxruntime has
    one, else CPU. ``session.get_providers()`` says which loaded.

    ``intra_op_num_threads = threads`` matches ``torch.set_num_threads(threads)``.
    ``cuda_graph``: the CUDA provider's ``enable_cuda_graph`` (ORT refuses to create the session
    where a node would run on the CPU provider).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        cuda: dict[str, Any] = {"device_id": device.index or 0}
        if cuda_graph:
            cuda["enable_cuda_graph"] = "1"
        providers.insert(0, ("CUDAExecutionProvider", cuda))
    return ort.InferenceSession(path, options, providers=providers)


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


def build_variants(
    explainer: Explainer,
    info: ExplainerInfo,
    config: BenchConfig,
    workdir: str,
    log: Callable[[str], None] = lambda _msg: None,
) -> list[Variant]:
    """Make every variant of ``explainer`` (on the CPU) and move them to ``config.device``.

    The ONNX files are exported on the CPU first; then the explainer moves to the device, where
    TorchScript is traced and ``torch.compile`` wraps it. A variant that cannot be built gets a
    ``failed:`` or ``not measured:`` status; a skipped one ``skipped: --skip``.
    """
    device = torch.device(config.device)
    threads = config.threads or torch.get_num_threads()
    folder = config.models_dir or workdir
    h, w = info.input_size
    example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(1))  # see export
    explainer = explainer.eval().to("cpu")
    logits_model = Normalized(explainer).eval()
    gradcam = gradcam_explainer(explainer, info)
    built: dict[str, Variant] = {}
    if "ort_cudagraph" not in config.skip:
        refused = _cuda_graph_refusal(device)
        if refused:  # known before any export
            built["ort_cudagraph"] = Variant("ort_cudagraph", _CUDA_GRAPH, None, refused)
    for name, module, file in (
        ("ort", explainer, "explainer.onnx"),
        ("ort_logits", logits_model, "logits.onnx"),
        ("ort_gradcam", gradcam, "gradcam.onnx"),
    ):
        users = ON_EXPLAINER_ONNX if name == "ort" else (name,)  # one file, three ways to run it
        wanted = [n for n in users if n not in config.skip and n not in built]
        if not wanted or module is None:
            continue
        log(f"exporting {VARIANTS[name]} to ONNX (dynamo, opset {config.opset})")
        outputs = {"logits": (info.num_classes,)}
        if name != "ort_logits":
            outputs["heatmap"] = (1, h, w)
        path = os.path.join(folder, file)
        t0 = time.perf_counter()
        try:
            export_onnx(exportable(module, example), example, path, config.opset, list(outputs))
        except Exception as exc:
            for n in wanted:
                built[n] = Variant(n, "onnxruntime", None, f"failed: {first_line(exc)}")
            continue
        export_s = time.perf_counter() - t0
        if name in wanted:
            built[name] = _ort_variant(name, path, outputs, device, threads, config, export_s)
        if "ort_numpy" in wanted:
            built["ort_numpy"] = _ort_numpy_variant(path, device, threads)
        if "ort_cudagraph" in wanted:
            built["ort_cudagraph"] = _ort_cudagraph_variant(path, outputs, device, threads)
    if gradcam is None:
        for name in ("eager_gradcam", "ort_gradcam"):
            built[name] = Variant(name, "", None, "skipped: the explainer is gradcam already")

    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    explainer.to(device, memory_format=layout)
    logits_model.to(device, memory_format=layout)
    built["eager"] = Variant("eager", _TORCH_EAGER, lambda x: _torch_call(explainer, x))
    if gradcam is not None and "eager_gradcam" not in config.skip:
        gradcam.to(device, memory_format=layout)
        built["eager_gradcam"] = Variant(
            "eager_gradcam",
            "torch eager, autograd from the tap on",
            lambda x: _torch_call(gradcam, x),
            note="the eager gradcam explainer: weights frozen, only the path from A is "
            "differentiated",
        )
    built["eager_logits"] = Variant(
        "eager_logits", _TORCH_EAGER, lambda x: _torch_call(logits_model, x, logits_only=True)
    )
    if "torchscript" not in config.skip:
        log("tracing TorchScript (trace + freeze)")
        example = example.to(device).contiguous(memory_format=layout)
        built["torchscript"] = _torchscript_variant(explainer, example, workdir)
    if "compile" not in config.skip:
        compiled = torch.compile(explainer, dynamic=False)
        _allow_recompiles(len(config.batch_sizes))
        built["compile"] = Variant(
            "compile",
            "torch.compile (inductor), dynamic=False",
            lambda x: _torch_call(compiled, x),
            note="compiles on the first call at each batch size (first_call_ms)",
        )
    if "autograd" not in config.skip:
        autograd = AutogradGradCAM(explainer)
        built["autograd"] = Variant(
            "autograd",
            "torch eager, autograd",
            lambda x: lambda: autograd(x),
            note="forward hook + tensor hook, zero_grad, backward of the top logit, per call",
        )
    if "gradcam_numpy" not in config.skip:
        numpy_gradcam = NumpyGradCAM(explainer)
        built["gradcam_numpy"] = Variant(
            "gradcam_numpy",
            "torch eager, autograd; numpy + cv2",
            lambda x: lambda: numpy_gradcam(x),
            note="pytorch-grad-cam's steps: hooks copy A and its gradient to the host, "
            "zero_grad, backward of the summed argmax logits, the map in numpy, min-max, "
            "cv2.resize per image, min-max again",
        )
    return [built.get(n) or Variant(n, "", None, "skipped: --skip") for n in VARIANTS]


_TORCH_EAGER = "torch eager, inference_mode"


def gradcam_explainer(explainer: Explainer, info: ExplainerInfo) -> Explainer | None:
    """The same model and layer explained with ``gradcam``; None if ``explainer`` is one."""
    if explainer.spec.needs_gradient:
        return None
    return Explainer(
        explainer.model,
        explainer.tap.spec,
        "gradcam",
        mean=info.mean,
        std=info.std,
        target=info.target,
        clone=info.cloned,
        layout=info.layout,
    ).eval()


def exportable(explainer: nn.Module, example: Tensor) -> nn.Module:
    """``explainer``, or its lowered graph where it needs a gradient (:mod:`.lowering`)."""
    if isinstance(explainer, Explainer) and explainer.spec.needs_gradient:
        with quiet():
            return lowering.lower(explainer, (example,), {0: [0]})
    return explainer


def _torchscript_variant(explainer: Explainer, example: Tensor, workdir: str) -> Variant:
    t0 = time.perf_counter()
    path = os.path.join(workdir, "explainer.torchscript.pt")
    try:
        to_torchscript(exportable(explainer, example), (example,), path)
        with quiet():
            script = torch.jit.load(path, map_location=example.device)
    except Exception as exc:
        return Variant("torchscript", "torch.jit", None, f"failed: {first_line(exc)}")
    return Variant(
        "torchscript",
        "torch.jit trace + freeze",
        lambda x: _torch_call(script, x),
        setup_s=time.perf_counter() - t0,
    )


def _allow_recompiles(batch_sizes: int) -> None:
    """One static graph per batch size: keep dynamo from giving up after its recompile limit."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for attr in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.7
        if hasattr(cfg, attr):
            setattr(cfg, attr, max(getattr(cfg, attr), batch_sizes + 2))
            return


def export_onnx(
    module: nn.Module, example: Tensor, path: str, opset: int, outputs: list[str]
) -> None:
    """``module`` (on the CPU) to ``path``, the batch dimension free, as explain-export does."""
    shapes = {"image": {0: torch.export.Dim("batch")}}
    to_onnx(module, (example,), path, opset, shapes, outputs)


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
        session = ort_session(path, device, threads)
        if config.models_dir:  # ORT's optimized graph, for reading, from a separate session
            ort_session(path, device, threads, path.replace(".onnx", ".ort-optimized.onnx"))
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
    from .runtime import OnnxExplainer

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
        note="explain_export.runtime.OnnxExplainer as explain-run uses it (session.run with a "
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


_CUDA_GRAPH = "onnxruntime CUDA, CUDA graph"


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
        session = ort_session(path, device, threads, cuda_graph=True)
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


def logits_ancestors(graph: Any, output: str = "logits") -> set[str]:
    """Names of the nodes of an ONNX ``graph`` that ``output`` depends on (producers walked back
    from it; initializers and graph inputs end the walk)."""
    producer = {o: node for node in graph.node for o in node.output if o}
    seen: set[str] = set()
    stack, visited = [output], set[int]()
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        seen.add(node.name)
        stack.extend(i for i in node.input if i)
    return seen


def ort_head_share(
    path: str, image: np.ndarray, threads: int, runs: int, warmup: int = 3, top: int = 5
) -> dict[str, Any]:
    r"""The heatmap head's cost read off ONNX Runtime's profiler, on the CPU provider.

    The ONNX explainer at ``path`` is optimized as for a run (``intra_op_num_threads=threads``)
    and the optimized graph saved to a temporary folder, so its node names are known. A node is
    heatmap-only where ``logits`` does not depend on it (:func:`logits_ancestors`). After
    ``warmup`` untimed runs, ``runs`` profiled runs of ``image`` (float32 ``[N,3,H,W]``). Per
    node, its kernel time is the median over the runs (a kernel that was preempted once does
    not count); :math:`t_h` = the sum over the heatmap-only nodes, :math:`t` = over all nodes,
    and ``share`` :math:`= t_h / (t - t_h)`, the head's cost over the logits-only path. Kernel
    time leaves out the executor's own time between nodes; profiled node names the saved graph
    lacks count for the logits path (``unmatched_nodes``). ``run_ms``: the mean profiled run
    (kernels, the executor between them, the profiler's overhead). The profile file is deleted.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="explain-bench-profile-") as folder:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feeds: dict[str, np.ndarray] = {}
        for tensor in session.get_inputs():
            if tensor.name == "class_index":
                feeds[tensor.name] = np.full(image.shape[0], -1, np.int64)
            else:
                feeds[tensor.name] = np.ascontiguousarray(image, dtype=np.float32)
        for _ in range(warmup + runs):
            session.run(None, feeds)
        profile = session.end_profiling()
        try:
            with open(profile) as f:
                events = json.load(f)
        finally:
            os.remove(profile)
        graph = onnx.load(options.optimized_model_filepath).graph
    ops = {node.name: node.op_type for node in graph.node}
    logits_path = logits_ancestors(graph)
    head_only = set(ops) - logits_path
    # the timed runs: from the start of the first of the last `runs` model_run events
    timed = sorted((e["ts"], e["dur"]) for e in events if e.get("name") == "model_run")[-runs:]
    since, counted = (timed[0][0], len(timed)) if timed else (0, warmup + runs)
    samples: dict[str, list[float]] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time") and e["ts"] >= since:
            samples.setdefault(name.removesuffix("_kernel_time"), []).append(e["dur"])
    per_node = {n: float(np.median(us)) for n, us in samples.items()}
    total_us = sum(per_node.values())
    head_us = sum(us for n, us in per_node.items() if n in head_only)
    ranked = sorted((n for n in per_node if n in head_only), key=per_node.__getitem__)[::-1]
    return {
        "runs": counted,
        "threads": threads,
        "head_ms": round(head_us / 1000, 4),
        "total_kernel_ms": round(total_us / 1000, 4),
        "run_ms": round(sum(d for _, d in timed) / counted / 1000, 4) if timed else None,
        "share": round(head_us / (total_us - head_us), 5) if total_us > head_us else None,
        "head_nodes": len(head_only),
        "nodes": len(ops),
        "unmatched_nodes": sum(n not in ops for n in per_node),
        "top": [{"op": ops[n], "node": n, "us": round(per_node[n], 1)} for n in ranked[:top]],
    }


def _profile_runs(wanted: int, median_ms: float | None) -> int:
    """``wanted`` runs, fewer where they would take over :data:`PROFILE_BUDGET_S` (at least 10,
    or ``wanted`` if smaller)."""
    if not median_ms:
        return wanted
    return max(min(wanted, int(PROFILE_BUDGET_S * 1000 / median_ms)), min(wanted, 10))


def summarize(samples: Sequence[float], batch: int) -> dict[str, Any]:
    """Median, p90, p99, min, mean of ``samples`` (ms per batch); images/s = batch / median."""
    a = np.asarray(samples, dtype=np.float64)
    median, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "median_ms": round(float(median), 4),
        "p90_ms": round(float(p90), 4),
        "p99_ms": round(float(p99), 4),
        "min_ms": round(float(a.min()), 4),
        "mean_ms": round(float(a.mean()), 4),
        "images_per_s": round(batch * 1000.0 / float(median), 2),
        "n": int(a.size),
    }


def time_ratio(slow: Sequence[float], fast: Sequence[float]) -> dict[str, float]:
    """``median(slow) / median(fast)``, and the same ratio taken round by round (the samples are
    paired: both ran in the same round), as its median and quartiles."""
    s, f = np.asarray(slow, dtype=np.float64), np.asarray(fast, dtype=np.float64)
    n = min(s.size, f.size)
    paired = s[:n] / f[:n]
    q25, q50, q75 = np.percentile(paired, [25, 50, 75])
    return {
        "value": round(float(np.median(s) / np.median(f)), 4),
        "paired_median": round(float(q50), 4),
        "paired_p25": round(float(q25), 4),
        "paired_p75": round(float(q75), 4),
    }


def time_rounds(
    calls: dict[str, Call],
    rounds: int,
    sync: Callable[[], None],
    tick: Callable[[], None] = lambda: None,
    failed: Callable[[str, BaseException], None] | None = None,
    prime: int = 0,
    settle_s: float = 0.0,
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Run ``rounds`` rounds; in each, every variant takes one turn, in an order rotated by one
    per round. A turn is an idle pause of ``settle_s``, ``prime`` untimed calls, then one timed
    call. Returns each variant's wall times in ms, and the page faults (minor, whole process)
    of each timed call. A call that raises drops its variant (``failed(name, exc)``)."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    faults: dict[str, list[int]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            if name not in calls:
                continue
            try:
                if settle_s:
                    time.sleep(settle_s)
                for _ in range(prime):
                    calls[name]()
                sync()
                f0 = _minor_faults()
                t0 = time.perf_counter_ns()
                calls[name]()
                sync()
                times[name].append((time.perf_counter_ns() - t0) / 1e6)
                faults[name].append(_minor_faults() - f0)
            except Exception as exc:
                del calls[name]
                if failed is not None:
                    failed(name, exc)
        tick()
    return times, faults


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def _max_diff(a: Tensor | None, b: Tensor | None) -> float | None:
    """Max abs difference, on the host (the numpy variants return CPU tensors)."""
    if a is None or b is None:
        return None
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
HEAP_KEEP = 1 << 30


def keep_freed_memory() -> None:
    """glibc only: ``mallopt(M_MMAP_THRESHOLD, 1 GiB)`` and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``.

    By default glibc serves large blocks with ``mmap`` and returns them on ``free``, so every
    call of an eager PyTorch model that allocates big activations page-faults them in again (on
    the 2-core test machine: 115 000 faults and 240 ms of system time per batch of 8). With both
    thresholds raised, freed blocks stay in the heap and are reused, as with jemalloc/tcmalloc.
    ONNX Runtime has its own arena either way. This lasts for the rest of the process.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, HEAP_KEEP) and libc.mallopt(M_TRIM_THRESHOLD, HEAP_KEEP)
    except (OSError, AttributeError):
        ok = False
    if not ok:
        raise UsageError("--tuned-malloc needs glibc (mallopt); it is not available here")


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy seconds of all CPUs from /proc/stat, this process's CPU seconds, wall seconds)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    own = os.times()
    return busy, own.user + own.system, time.monotonic()


def others_cpu_share(
    start: tuple[float, float, float] | None, end: tuple[float, float, float] | None
) -> float | None:
    """The share of all CPUs that other processes (and the hypervisor's steal) used between two
    snapshots: ``(Δbusy − Δown) / (Δwall · cores)``. A noisy machine shows here, not in ratios."""
    if start is None or end is None or end[2] <= start[2]:
        return None
    other = (end[0] - start[0]) - (end[1] - start[1])
    return round(min(max(other / ((end[2] - start[2]) * (os.cpu_count() or 1)), 0.0), 1.0), 4)


def measure(
    variants: list[Variant],
    config: BenchConfig,
    input_size: tuple[int, int],
    tick: Callable[[int], None] = lambda _batch: None,
) -> tuple[dict[int, dict[str, list[float]]], dict[int, float | None]]:
    """Time every live variant at every batch size; fill each variant's ``batches``.

    Per batch: one first call per variant (it compiles, where it compiles; its output is compared
    with the eager explainer's), ``config.warmup`` rounds, then ``config.iters`` timed rounds.
    Returns the raw samples, ``{batch: {variant: [ms, ...]}}``, and per batch the share of the
    CPUs that other processes used during the timed rounds.
    """
    device = torch.device(config.device)
    sync = _sync(device)
    by_name = {v.name: v for v in variants}
    raw: dict[int, dict[str, list[float]]] = {}
    others: dict[int, float | None] = {}

    def fail(name: str, exc: BaseException) -> None:
        by_name[name].status = f"failed: {first_line(exc)}"

    for batch in config.batch_sizes:
        gen = torch.Generator().manual_seed(config.seed + batch)
        image = torch.rand(batch, 3, *input_size, generator=gen).to(device)
        if config.channels_last:  # for the torch variants; ONNX Runtime binds an NCHW copy
            image = image.contiguous(memory_format=torch.channels_last)
        calls: dict[str, Call] = {}
        reference: tuple[Tensor, Tensor | None] | None = None
        for v in variants:
            if v.make is None or v.status != "ok":
                continue
            try:
                sync()
                t0 = time.perf_counter()
                call = v.make(image)
                logits, heatmap = call()
                sync()
                first_ms = (time.perf_counter() - t0) * 1000
            except Exception as exc:
                if v.name == REFERENCE:
                    raise ExplainExportError(
                        f"the eager explainer failed at batch {batch}: {first_line(exc)}"
                    ) from exc
                fail(v.name, exc)
                continue
            if v.name == REFERENCE:
                reference = (logits.clone(), heatmap.clone() if heatmap is not None else None)
            assert reference is not None  # the reference variant is built and run first
            v.batches[batch] = {
                "first_call_ms": round(first_ms, 3),
                "max_abs_diff_vs_eager": {
                    "logits": _max_diff(logits, reference[0]),
                    "heatmap": _max_diff(heatmap, reference[1]),
                },
            }
            calls[v.name] = call
        step = functools.partial(tick, batch)
        time_rounds(calls, config.warmup, sync, step, fail)
        before = _cpu_snapshot()
        times, faults = time_rounds(
            calls, config.iters, sync, step, fail, config.prime, config.settle_s
        )
        others[batch] = others_cpu_share(before, _cpu_snapshot())
        raw[batch] = {}
        for name, samples in times.items():
            v = by_name[name]
            if v.status != "ok":
                v.batches.pop(batch, None)
                continue
            v.batches[batch].update(summarize(samples, batch))
            v.batches[batch]["page_faults_per_call"] = float(np.median(faults[name]))
            v.batches[batch]["samples_ms"] = [round(t, 4) for t in samples]
            raw[batch][name] = samples
    return raw, others


def ratios(raw: dict[int, dict[str, list[float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """All ratios, from samples of one run.

    - ``speedup_vs_eager[v][batch]``: eager explainer time / ``v`` time, for every explainer;
    - ``heatmap_overhead[backend][batch]``: explainer time / logits-only time − 1, on ``eager``
      and ``ort``;
    - ``ort_vs_autograd[batch]``: heatmaps/s of the ORT explainer / heatmaps/s of autograd
      Grad-CAM (the same batch, so autograd time / ORT time);
    - ``gradcam_overhead[backend][batch]``: gradcam explainer time / explainer time − 1, on
      ``eager`` and ``ort`` (what the in-graph gradient costs over ``cam``);
    - ``ort_gradcam_vs_autograd[batch]``: autograd Grad-CAM time / ORT gradcam time;
    - ``vs_gradcam_numpy[v][batch]``: heatmaps/s of ``v`` / heatmaps/s of the pytorch-grad-cam
      style Grad-CAM (``gradcam_numpy`` time / ``v`` time), for ``ort``, ``ort_numpy`` and
      ``ort_cudagraph``;
    - ``best_exported_vs_gradcam_numpy[batch]``: the same for the fastest exported explainer of
      the batch (:func:`best_exported`).
    """
    out: dict[str, dict[str, Any]] = {
        "speedup_vs_eager": {},
        "heatmap_overhead": {},
        "ort_vs_autograd": {},
        "gradcam_overhead": {},
        "ort_gradcam_vs_autograd": {},
        "vs_gradcam_numpy": {},
        "best_exported_vs_gradcam_numpy": {},
    }
    fastest = best_exported(raw)
    for batch, t in raw.items():
        key = str(batch)
        for name in ("torchscript", "ort", "compile"):
            if REFERENCE in t and name in t:
                out["speedup_vs_eager"].setdefault(name, {})[key] = time_ratio(
                    t[REFERENCE], t[name]
                )
        for expl, logits in (("eager", "eager_logits"), ("ort", "ort_logits")):
            if expl in t and logits in t:
                out["heatmap_overhead"].setdefault(expl, {})[key] = _overhead(t[expl], t[logits])
        if "ort" in t and "autograd" in t:
            out["ort_vs_autograd"][key] = time_ratio(t["autograd"], t["ort"])
        for expl, grad in (("eager", "eager_gradcam"), ("ort", "ort_gradcam")):
            if expl in t and grad in t:
                out["gradcam_overhead"].setdefault(expl, {})[key] = _overhead(t[grad], t[expl])
        if "ort_gradcam" in t and "autograd" in t:
            out["ort_gradcam_vs_autograd"][key] = time_ratio(t["autograd"], t["ort_gradcam"])
        if "gradcam_numpy" in t:
            for name in ON_EXPLAINER_ONNX:
                if name in t:
                    out["vs_gradcam_numpy"].setdefault(name, {})[key] = time_ratio(
                        t["gradcam_numpy"], t[name]
                    )
            if key in fastest:
                best = fastest[key]["variant"]
                out["best_exported_vs_gradcam_numpy"][key] = time_ratio(t["gradcam_numpy"], t[best])
    return out


def best_exported(raw: dict[int, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """Per batch, the exported explainer (of ``ort``, ``ort_cudagraph``, ``torchscript``) with
    the lowest median: its name, median ms per batch and images/s = N / median."""
    out: dict[str, dict[str, Any]] = {}
    for batch, t in raw.items():
        medians = {n: float(np.median(t[n])) for n in EXPORTED if t.get(n)}
        if medians:
            name = min(medians, key=medians.__getitem__)
            out[str(batch)] = {
                "variant": name,
                "median_ms": round(medians[name], 4),
                "images_per_s": round(batch * 1000.0 / medians[name], 2),
            }
    return out


def _overhead(slow: Sequence[float], fast: Sequence[float]) -> dict[str, float]:
    """:func:`time_ratio` − 1: the extra time of ``slow`` over ``fast``, as a fraction."""
    return {k: round(v - 1, 4) for k, v in time_ratio(slow, fast).items()}


@dataclass(frozen=True)
class Target:
    """A goal from the issue, read off :func:`ratios` (``ratio[kind][variant][batch]``), or off
    ``best_exported`` / ``head_profile`` (``[kind][batch]``), at ``key``, vs ``bound``.

    ``unit`` says how the value reads (×, %, ms, images/s); a target with a ``device`` is checked
    on runs on that device only.
    """

    text: str
    path: tuple[str, ...]  # keys into the ratios, the batch last
    bound: float
    at_most: bool = False
    key: str = "value"
    unit: str = "×"
    device: str | None = None


TARGETS = (
    Target(
        "ORT explainer >= 3x faster than eager explainer, batch 1",
        ("speedup_vs_eager", "ort", "1"),
        3.0,
    ),
    *(
        Target(
            f"heatmap adds <= 3% over {b} logits-only, batch {n}",
            ("heatmap_overhead", b, str(n)),
            0.03,
            at_most=True,
            unit="%",
        )
        for b in ("eager", "ort")
        for n in (1, 8, 32)
    ),
    Target(
        "ORT explainer >= 10x heatmaps/s of autograd Grad-CAM, batch 1",
        ("ort_vs_autograd", "1"),
        10.0,
    ),
    Target(
        "ORT explainer >= 7x heatmaps/s of autograd Grad-CAM, batch 8",
        ("ort_vs_autograd", "8"),
        7.0,
    ),
    *(
        Target(
            f"ORT gradcam >= 3x heatmaps/s of autograd Grad-CAM, batch {n}",
            ("ort_gradcam_vs_autograd", str(n)),
            3.0,
        )
        for n in (1, 8)
    ),
    *(
        Target(
            f"ORT heatmap head <= 3% of the logits-only kernel time, batch {n} (profiler)",
            ("head_profile", str(n)),
            0.03,
            at_most=True,
            key="share",
            unit="%",
            device="cpu",
        )
        for n in (1, 8)
    ),
    Target(
        "best exported explainer <= 0.5 ms, batch 1 (CUDA)",
        ("best_exported", "1"),
        0.5,
        at_most=True,
        key="median_ms",
        unit="ms",
        device="cuda",
    ),
    Target(
        "best exported explainer >= 30x heatmaps/s of pytorch-grad-cam style, batch 1 (CUDA)",
        ("best_exported_vs_gradcam_numpy", "1"),
        30.0,
        device="cuda",
    ),
    Target(
        "best exported explainer >= 12000 images/s, batch 64 (CUDA)",
        ("best_exported", "64"),
        12000.0,
        key="images_per_s",
        unit="images/s",
        device="cuda",
    ),
    Target(
        "best exported explainer >= 10x heatmaps/s of pytorch-grad-cam style, batch 64 (CUDA)",
        ("best_exported_vs_gradcam_numpy", "64"),
        10.0,
        device="cuda",
    ),
    *(
        Target(
            f"heatmap adds <= 5% over ort logits-only, batch {n} (CUDA)",
            ("heatmap_overhead", "ort", str(n)),
            0.05,
            at_most=True,
            unit="%",
            device="cuda",
        )
        for n in (1, 8)
    ),
)


def check_targets(found: dict[str, Any], device: str | None = None) -> list[dict[str, Any]]:
    """Each target whose value was measured, with the value and whether it is met. ``found``:
    the ratios, plus ``best_exported`` and ``head_profile`` where known. Targets for a device
    other than ``device`` are left out silently."""
    rows = []
    for t in TARGETS:
        if t.device is not None and t.device != device:
            continue
        node: Any = found
        for key in t.path:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or node.get(t.key) is None:
            continue
        value = node[t.key]
        met = value <= t.bound if t.at_most else value >= t.bound
        rows.append(
            {
                "target": t.text,
                "kind": t.path[0],
                "value": value,
                "bound": t.bound,
                "unit": t.unit,
                "met": bool(met),
            }
        )
    return rows


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(config: BenchConfig, threads: int) -> dict[str, Any]:
    """CPU model, cores, the threads used, the SIMD level PyTorch picked; the GPU if one is used."""
    get_capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)
    affinity = getattr(os, "sched_getaffinity", None)
    out: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(affinity(0)) if affinity else os.cpu_count(),
        "torch_threads": threads,
        "ort_intra_op_threads": threads,
        "cpu_capability": get_capability(),
        "platform": platform.platform(),
        "gpu": None,
    }
    if config.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(torch.device("cuda"))
    return out


def run_bench(
    explainer: Explainer,
    info: ExplainerInfo,
    config: BenchConfig,
    *,
    model: str = "user model",
    command: str | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    tick: Callable[[int], None] = lambda _batch: None,
) -> dict[str, Any]:
    """Build every variant, time them, and return the JSON-ready result (see :mod:`.benchreport`).

    ``tick(batch)`` is called after each round, for a progress bar:
    ``len(batch_sizes) * (warmup + iters)`` calls in all.
    """
    import onnxruntime as ort

    config.check()
    threads = config.threads or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    device = torch.device(config.device)
    started = datetime.now().astimezone()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    if config.models_dir:
        os.makedirs(config.models_dir, exist_ok=True)
    if config.tuned_malloc:
        keep_freed_memory()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="explain-bench-") as workdir:
            variants = build_variants(explainer, info, config, workdir, log)
            live = sum(v.make is not None and v.status == "ok" for v in variants)
            log(f"timing {live} variants at batch sizes {', '.join(map(str, config.batch_sizes))}")
            raw, others = measure(variants, config, info.input_size, tick)
            profile = head_profiles(variants, config, info.input_size, threads, log)
    finally:
        torch.set_num_threads(previous_threads)
    found = ratios(raw)
    fastest = best_exported(raw)
    notes = [f"{VARIANTS[v.name]}: {v.status}" for v in variants if v.status != "ok"]
    return {
        "format": "explain-bench/1",
        "created": started.isoformat(timespec="seconds"),
        "created_utc": started.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": {
            "model": model,
            "method": info.method,
            "layer": info.layer,
            "head": info.head,
            "input_size": list(info.input_size),
            "num_classes": info.num_classes,
            "device": config.device,
            "batch_sizes": list(config.batch_sizes),
            "threads": threads,
            "warmup": config.warmup,
            "iters": config.iters,
            "opset": config.opset,
            "skip": sorted(config.skip),
            "channels_last": config.channels_last,
            "malloc": f"glibc mmap and trim thresholds {HEAP_KEEP >> 20} MiB"
            if config.tuned_malloc
            else "default",
            "prime": config.prime,
            "settle_s": config.settle_s,
            "order": "round-robin; the order rotates by one variant each round",
            "timer": "time.perf_counter_ns per call"
            + ("; torch.cuda.synchronize before and after" if device.type == "cuda" else ""),
        },
        "machine": machine(config, threads),
        "loadavg": {
            "start": list(load_start) if load_start else None,
            "end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "others_cpu_share": {str(b): share for b, share in others.items()},
        "versions": versions(),
        "providers": {
            "available": ort.get_available_providers(),
            **{v.name: v.providers for v in variants if v.providers is not None},
        },
        "variants": {v.name: v.to_dict() for v in variants},
        "ratios": found,
        "best_exported": fastest,
        "head_profile": profile,
        "targets": check_targets(
            {**found, "best_exported": fastest, "head_profile": profile}, config.device
        ),
        "notes": notes,
    }


def head_profiles(
    variants: list[Variant],
    config: BenchConfig,
    input_size: tuple[int, int],
    threads: int,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, dict[str, Any]]:
    """:func:`ort_head_share` at every measured batch size, where the ``ort`` variant ran on the
    CPU provider; on the same input as :func:`measure`. ``config.profile_runs`` runs per batch,
    fewer where they would take over :data:`PROFILE_BUDGET_S`. A failure is logged, not raised.
    """
    ort_variant = next((v for v in variants if v.name == "ort"), None)
    if (
        config.profile_runs == 0
        or ort_variant is None
        or ort_variant.status != "ok"
        or ort_variant.path is None
        or (ort_variant.providers or [""])[0] != "CPUExecutionProvider"
    ):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for batch in config.batch_sizes:
        measured = ort_variant.batches.get(batch)
        if not measured or "median_ms" not in measured:
            continue
        runs = _profile_runs(config.profile_runs, measured["median_ms"])
        log(f"profiling the ORT explainer's heatmap head at batch {batch} ({runs} runs)")
        gen = torch.Generator().manual_seed(config.seed + batch)
        image = torch.rand(batch, 3, *input_size, generator=gen).numpy()
        try:
            out[str(batch)] = ort_head_share(ort_variant.path, image, threads, runs)
        except Exception as exc:
            log(f"head profile at batch {batch} failed: {first_line(exc)}")
    return out


def load_explainer(
    ckpt: str | None,
    arch: str | None,
    arch_kwargs: dict[str, Any],
    trust: bool,
    layer: str | None,
    method: str,
    head: str | None,
    input_size: tuple[int, int],
) -> tuple[Explainer, ExplainerInfo, str]:
    """The explainer the ``explain-export`` flags describe (no flags: the embedded default)."""
    from .checkpoint import load_model
    from .explainer import build_explainer

    if ckpt is None and arch is None:
        from .zoo import load_default

        zoo = load_default(input_size)
        model, description, layer = zoo.model, zoo.description, layer or zoo.layer
    else:
        model, _ = load_model(ckpt, arch, arch_kwargs, trust)
        description = arch or type(model).__name__
    explainer, info = build_explainer(model, layer, method, input_size, head=head)
    return explainer, info, description
