"""Time the explainer against its alternatives, in one process, on the same input batches.

Each variant maps an image batch ``[N,3,H,W]`` in [0,1] to ``(logits, heatmap)``, or to the
logits alone where its name says so:

- ``eager``: the :class:`~.explainer.Explainer` in PyTorch, under ``inference_mode``;
- ``eager_logits``: the model alone, ``model((image - mean) / std)``, the baseline for the head;
- ``torchscript``: the explainer traced and frozen, as :func:`.writers.to_torchscript` writes it;
- ``ort``: the ONNX explainer of :func:`.writers.to_onnx` on ONNX Runtime (CPU or CUDA provider);
- ``ort_logits``: the normalized model alone, exported by the same :func:`.writers.to_onnx`;
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
- ``ort_<method>`` (with ``BenchConfig.methods``, ``--methods``): the same model and layer
  exported with each of those methods, on ONNX Runtime as ``ort``; ``not measured:`` where the
  layer cannot take the method. With ``cam`` among them, each one's time over ``ort_cam``.

Timing: per batch size, ``warmup`` rounds, then ``iters`` rounds. In a round every variant takes
one turn, in an order rotated by one each round, so drift (clocks, other processes) hits all
alike. A turn is an idle pause (``settle_s``: ONNX Runtime's threads spin for 20-50 ms after a
run and would slow whichever variant came next), ``prime`` untimed calls (the variant's own
weights back in cache), then one timed call: each variant is timed as if it ran alone, back to
back. A sample is the wall time of that call; on CUDA the device is synchronized before and
after, which also covers ONNX Runtime's own stream (CUDA events on PyTorch's would not).
Per variant and batch: median, p90 and p99 in ms per batch, and images/s = N / median.

On the CPU, :func:`.profile.ort_head_share` also reads the heatmap head's cost off ONNX Runtime's
profiler (kernel time of the nodes that do not feed ``logits``), without the run-to-run noise of
an end-to-end ratio.

The modules, each importing only those above it:

- :mod:`.config`: the variant names, :class:`BenchConfig`, :class:`Variant`;
- :mod:`.targets`: the issues' goals (read from ``data/bench_targets.json``), met or not;
- :mod:`.stats`: summaries and ratios of the samples;
- :mod:`.machine`: the machine a run was timed on;
- :mod:`.baselines`: the model alone, autograd Grad-CAM, pytorch-grad-cam style Grad-CAM;
- :mod:`.ort`: the ONNX export and the ONNX Runtime variants;
- :mod:`.variants`: every variant of an explainer, built;
- :mod:`.timing`: the rounds, page faults, other processes' CPU, malloc tuning, :func:`measure`;
- :mod:`.profile`: the heatmap head on ONNX Runtime's profiler;
- :mod:`.run`: :func:`run_bench`, :func:`load_explainer`;
- :mod:`.plot`: the PNG plot of the medians against the batch size (imports none of the above);
- :mod:`.report`: the result as JSON, Markdown and the plot (imports :mod:`.plot` alone);
- :mod:`.detection_timing`, :mod:`.detection`, :mod:`.detection_report`: a one-stage detector's
  own variants (``eager``, ``ort_nms``: NMS and no maps, ``ort_gradcam``, ``ort_eigencam``),
  their time over ``ort_nms``, and their report (not re-exported here).
"""

from ..builder.export.export import DEFAULT_OPSET
from .baselines import AutogradGradCAM, Normalized, NumpyGradCAM
from .config import (
    CUDA_GRAPH_NEEDS_CUDA,
    EXPORTED,
    ON_EXPLAINER_ONNX,
    ORT_CUDA_MISSING,
    REFERENCE,
    VARIANTS,
    BenchConfig,
    Call,
    Variant,
)
from .machine import machine
from .ort import _ort_cudagraph_variant as _ort_cudagraph_variant
from .ort import _ort_numpy_variant as _ort_numpy_variant
from .ort import export_onnx
from .profile import PROFILE_BUDGET_S, head_profiles, logits_ancestors, ort_head_share
from .report import head_profile_line, table, target_value, write_report
from .run import load_explainer, run_bench
from .stats import best_exported, ratios, summarize, time_ratio
from .targets import TARGETS_FILE, Target, check_targets, load_targets
from .timing import (
    HEAP_KEEP,
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    keep_freed_memory,
    measure,
    others_cpu_share,
    time_rounds,
)
from .variants import build_variants, exportable, gradcam_explainer

__all__ = [
    "CUDA_GRAPH_NEEDS_CUDA",
    "DEFAULT_OPSET",
    "EXPORTED",
    "HEAP_KEEP",
    "M_MMAP_THRESHOLD",
    "M_TRIM_THRESHOLD",
    "ON_EXPLAINER_ONNX",
    "ORT_CUDA_MISSING",
    "PROFILE_BUDGET_S",
    "REFERENCE",
    "TARGETS_FILE",
    "VARIANTS",
    "AutogradGradCAM",
    "BenchConfig",
    "Call",
    "Normalized",
    "NumpyGradCAM",
    "Target",
    "Variant",
    "best_exported",
    "build_variants",
    "check_targets",
    "export_onnx",
    "exportable",
    "gradcam_explainer",
    "head_profile_line",
    "head_profiles",
    "keep_freed_memory",
    "load_explainer",
    "load_targets",
    "logits_ancestors",
    "machine",
    "measure",
    "ort_head_share",
    "others_cpu_share",
    "ratios",
    "run_bench",
    "summarize",
    "table",
    "target_value",
    "time_ratio",
    "time_rounds",
    "write_report",
]
