"""The heatmap head's cost read off ONNX Runtime's profiler (CPU provider): the kernel time of
the nodes that ``logits`` does not depend on, over that of the rest, without the run-to-run
noise of an end-to-end ratio."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..artifact.runtime import ort_session
from ..errors import first_line
from .config import BenchConfig, Variant

__all__ = ["PROFILE_BUDGET_S", "head_profiles", "logits_ancestors", "ort_head_share"]

PROFILE_BUDGET_S = 5.0  # at most about this much profiled run time per batch size


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

    with tempfile.TemporaryDirectory(prefix="explain-bench-profile-") as folder:
        optimized = os.path.join(folder, "optimized.onnx")
        session = ort_session(
            path,
            "cpu",
            threads,
            optimized_path=optimized,
            profile_prefix=os.path.join(folder, "profile"),
        )
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
        graph = onnx.load(optimized).graph
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


def head_profiles(
    variants: list[Variant],
    config: BenchConfig,
    input_size: tuple[int, int],
    threads: int,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, dict[str, Any]]:
    """:func:`ort_head_share` at every measured batch size, where the ``ort`` variant ran on the
    CPU provider; on the same input as :func:`.timing.measure`. ``config.profile_runs`` runs per
    batch, fewer where they would take over :data:`PROFILE_BUDGET_S`. A failure is logged, not
    raised.
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
