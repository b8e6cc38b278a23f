"""What every part of the bench shares: the variant names, :class:`BenchConfig` (what to
measure, and how often) and :class:`Variant` (one way to compute the outputs, and what was
measured of it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..builder.export.export import DEFAULT_OPSET
from ..builder.maths.methods import METHODS
from ..errors import OptionError
from ..words import closest

__all__ = [
    "CUDA_GRAPH_NEEDS_CUDA",
    "EXPORTED",
    "ON_EXPLAINER_ONNX",
    "ORT_CUDA_MISSING",
    "REFERENCE",
    "VARIANTS",
    "BenchConfig",
    "Call",
    "Variant",
]

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

Call = Callable[[], tuple[Tensor, Tensor | None]]


def _method_variant(method: str) -> str:
    """The variant that runs ``method``'s ONNX explainer (``--methods``): ``ort_<method>``;
    ``gradcam``'s is the ``ort_gradcam`` of :data:`VARIANTS`."""
    return f"ort_{method}"


def _top_k_variant(method: str, k: int) -> str:
    """The variant that runs ``method``'s top-``k`` ONNX explainer (``--top-k``)."""
    return f"ort_{method}_top{k}"


def _label(name: str) -> str:
    """A variant's label: from :data:`VARIANTS`, else a ``--methods`` variant's."""
    return VARIANTS.get(name) or f"{VARIANTS['ort']}, {name.removeprefix('ort_')}"


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
    methods: tuple[str, ...] = ()  # one more ORT variant per method (_method_variant)
    top_k: int | None = None  # and per method, its top-k export (_top_k_variant)
    targets: bool = False  # judge the project's own goals (.targets); off: the ratios alone

    def method_variants(self) -> list[str]:
        """The ``--methods`` and ``--top-k`` variants' names, in the order they are timed."""
        names = [_method_variant(m) for m in self.methods]
        if self.top_k is not None:
            names += [_top_k_variant(m, self.top_k) for m in self.methods]
        return names

    def describe(self, method: str, gradient: bool) -> str:
        """One line on what a run will do, before it starts: the variants, the rounds, and the
        slow steps (ONNX exports, TorchScript, torch.compile, the profiler). ``method``: the
        explainer's; ``gradient``: whether it computes a gradient (then it has no separate
        gradcam variants)."""
        gone = set(self.skip) | ({"eager_gradcam", "ort_gradcam"} if gradient else set())
        if self.device != "cuda":
            gone.add("ort_cudagraph")
        names = [n for n in VARIANTS if n not in gone] + self.method_variants()
        has_ort = any(n in names for n in ON_EXPLAINER_ONNX)
        reused = {method} if "ort" in names else set()  # ort's file, opened once more
        reused |= {"gradcam"} if "ort_gradcam" in names else set()
        exports = has_ort + ("ort_logits" in names) + ("ort_gradcam" in names)
        exports += sum(m not in reused for m in self.methods)
        exports += len(self.methods) if self.top_k is not None else 0
        steps = [f"{exports} ONNX export{'s' * (exports != 1)}"] if exports else []
        if "torchscript" in names:
            steps.append("a TorchScript trace")
        if "compile" in names:
            steps.append("torch.compile at each batch size (minutes on few cores)")
        if self.profile_runs and self.device == "cpu" and "ort" in names:
            steps.append(f"up to {self.profile_runs} profiled ORT runs per batch size")
        rounds = self.warmup + self.iters
        sizes = ",".join(map(str, self.batch_sizes))
        text = (
            f"plan: {len(names)} variants ({', '.join(names)}), {rounds} rounds "
            f"({self.warmup} warm-up + {self.iters} timed) at each batch size {sizes}"
        )
        return text + (f"; besides: {', '.join(steps)}" if steps else "")

    def check(self) -> None:
        """Raise :class:`~.errors.OptionError` for values no run can use."""
        if not self.batch_sizes or any(b <= 0 for b in self.batch_sizes):
            raise OptionError(
                "batch_sizes", "{name} must be positive integers, got {v}", v=self.batch_sizes
            )
        if self.warmup < 0 or self.iters < 1 or self.prime < 0 or self.settle_s < 0:
            raise OptionError("warmup", "{name}, {prime} and {settle_s} must be >= 0, {iters} >= 1")
        if self.profile_runs < 0:
            raise OptionError("profile_runs", "{name} must be >= 0, got {v}", v=self.profile_runs)
        if self.threads is not None and self.threads < 1:
            raise OptionError("threads", "{name} must be >= 1, got {v}", v=self.threads)
        bad = sorted(self.skip - set(VARIANTS) | (self.skip & {REFERENCE}))
        if bad:
            names = ", ".join(v for v in VARIANTS if v != REFERENCE)
            raise OptionError(
                "skip",
                "{name} takes a comma list of {names}; got {v}",
                names=names,
                v=", ".join(bad),
            )
        self._check_methods()
        if self.device not in ("cpu", "cuda"):
            raise OptionError("device", "{name} must be cpu or cuda, got '{v}'", v=self.device)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise OptionError(
                "device",
                "{name} cuda, but this PyTorch sees no CUDA device (torch {v}); use {name} cpu",
                v=torch.__version__,
            )

    def _check_methods(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        near = closest(unknown[0], METHODS) if len(unknown) == 1 else None
        if near is not None:
            raise OptionError(
                "methods",
                "{name}: unknown method '{v}'; did you mean {near}?",
                v=unknown[0],
                near=near,
            )
        if unknown:
            raise OptionError(
                "methods",
                "{name}: unknown {what} {v}; choose from {choices}",
                choices=", ".join(METHODS),
                v=", ".join(unknown),
                what="method" if len(unknown) == 1 else "methods",
            )
        if self.top_k is not None and (self.top_k < 1 or not self.methods):
            raise OptionError(
                "top_k",
                "{name} K (K >= 1) times each of {methods} with its K best classes beside its "
                "top-1; give both",
            )
        if "gradcam" in self.methods and _method_variant("gradcam") in self.skip:
            raise OptionError("methods", "{name} gradcam asks for ort_gradcam, which {skip} skips")


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
            "label": _label(self.name),
            "backend": self.backend,
            "status": self.status,
            "note": self.note,
            "setup_s": round(self.setup_s, 3),
            "batches": {str(b): m for b, m in self.batches.items()},
        }
        if self.providers is not None:
            out["providers"] = self.providers
        return out
