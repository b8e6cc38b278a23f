"""Build every variant of an explainer (see :data:`.config.VARIANTS`): export the ONNX files,
trace TorchScript, wrap ``torch.compile``, set up the baselines, and move them to the device."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..builder.explainer import Explainer
from ..builder.export.writers import quiet, to_torchscript
from ..builder.inspect import probe
from ..builder.lower import lowering
from ..builder.maths import methods
from ..builder.maths.targets import Finer, Target, TopK
from ..builder.plan import GraphOptions, make_plan
from ..errors import UsageError, first_line
from .baselines import AutogradGradCAM, Normalized, NumpyGradCAM
from .config import (
    ON_EXPLAINER_ONNX,
    VARIANTS,
    BenchConfig,
    Call,
    Variant,
    _method_variant,
    _top_k_variant,
)
from .ort import (
    _CUDA_GRAPH,
    _cuda_graph_refusal,
    _ort_cudagraph_variant,
    _ort_numpy_variant,
    _ort_variant,
    export_onnx,
)

__all__ = ["build_variants", "exportable", "gradcam_explainer"]

_TORCH_EAGER = "torch eager, inference_mode"


def _torch_call(fn: Callable[[Tensor], Any], image: Tensor, logits_only: bool = False) -> Call:
    def call() -> tuple[Tensor, Tensor | None]:
        with torch.inference_mode():
            out = fn(image)
        return (out, None) if logits_only else (out[0], out[1])

    return call


def build_variants(
    explainer: Explainer,
    config: BenchConfig,
    workdir: str,
    log: Callable[[str], None] = lambda _msg: None,
) -> list[Variant]:
    """Make every variant of ``explainer`` (on the CPU) and move them to ``config.device``.

    The ONNX files are exported on the CPU first; then the explainer moves to the device, where
    TorchScript is traced and ``torch.compile`` wraps it. A variant that cannot be built gets a
    ``failed:`` or ``not measured:`` status; a skipped one ``skipped: --skip``. The variants
    of ``config.methods`` (:func:`_method_variants`) come last.
    """
    device = torch.device(config.device)
    threads = config.threads or torch.get_num_threads()
    folder = config.models_dir or workdir
    h, w = explainer.plan.input_size
    example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(1))  # see export
    explainer = explainer.eval().to("cpu")
    logits_model = Normalized(explainer).eval()
    gradcam = gradcam_explainer(explainer)
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
        outputs = {"logits": (explainer.plan.num_classes,)}
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
    if config.methods:
        _method_variants(explainer, config, folder, example, built, log)

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
    if "eager_logits" not in config.skip:
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
            note="pytorch-grad-cam's steps: A and its gradient copied to the host, "
            "zero_grad, backward of the summed argmax logits, the map in numpy, min-max, "
            "cv2.resize per image, min-max again",
        )
    extra = [n for n in config.method_variants() if n not in VARIANTS]
    return [built.get(n) or Variant(n, "", None, "skipped: --skip") for n in [*VARIANTS, *extra]]


def _method_variants(
    explainer: Explainer,
    config: BenchConfig,
    folder: str,
    example: Tensor,
    built: dict[str, Variant],
    log: Callable[[str], None],
) -> None:
    """``ort_<method>`` for each of ``config.methods`` (on the CPU, before anything moves): the
    same model and layer exported with that method and opened on ONNX Runtime as ``ort`` is.
    ``gradcam``'s is ``ort_gradcam``, where built already; the explainer's own method reuses
    the ``ort`` file. A method the layer cannot take is ``not measured:``, with the reason."""
    device = torch.device(config.device)
    threads = config.threads or torch.get_num_threads()
    h, w = explainer.plan.input_size
    outputs = {"logits": (explainer.plan.num_classes,), "heatmap": (1, h, w)}
    for method in config.methods:
        name = _method_variant(method)
        done, ort = built.get(name), built.get("ort")
        if done is not None and done.status == "ok":
            continue
        own = method == explainer.plan.method
        if own and ort is not None and ort.status == "ok" and ort.path:
            built[name] = _ort_variant(name, ort.path, outputs, device, threads, config)
            continue
        try:
            module = explainer if own else _method_explainer(explainer, method)
        except UsageError as exc:
            why = first_line(exc, with_type=False)
            built[name] = Variant(name, "onnxruntime", None, f"not measured: {why}")
            continue
        log(f"exporting ORT explainer, {method} to ONNX (dynamo, opset {config.opset})")
        path = os.path.join(folder, f"method-{method}.onnx")
        built[name] = _exported_variant(
            name, module, module is not explainer, path, outputs, config, example
        )
    if config.top_k is not None:
        for method in config.methods:
            _top_k_variant_of(explainer, method, config, folder, example, built, log)


def _top_k_variant_of(
    explainer: Explainer,
    method: str,
    config: BenchConfig,
    folder: str,
    example: Tensor,
    built: dict[str, Variant],
    log: Callable[[str], None],
) -> None:
    """``ort_<method>_top<K>``: ``method``'s explainer with a top-K target (K maps per image,
    the ``classes`` output left unbound), exported and opened as its ``ort_<method>`` is."""
    k = config.top_k
    assert k is not None
    name = _top_k_variant(method, k)
    h, w = explainer.plan.input_size
    outputs = {"logits": (explainer.plan.num_classes,), "heatmap": (k, h, w)}
    try:
        module = _method_explainer(explainer, method, k)
    except UsageError as exc:
        built[name] = Variant(name, "onnxruntime", None, f"not measured: {first_line(exc, False)}")
        return
    log(f"exporting ORT explainer, {method}, top-{k} to ONNX (dynamo, opset {config.opset})")
    path = os.path.join(folder, f"method-{method}-top{k}.onnx")
    variant = _exported_variant(name, module, True, path, outputs, config, example)
    make = variant.make
    if make is not None:  # compared with eager by its best class's map (a view: no copy)
        variant.make = lambda x: _first_map(make(x))
    built[name] = variant


def _exported_variant(
    name: str,
    module: Explainer,
    owned: bool,
    path: str,
    outputs: dict[str, tuple[int, ...]],
    config: BenchConfig,
    example: Tensor,
) -> Variant:
    """``module`` exported to ``path`` and opened on ONNX Runtime as ``ort`` is; ``failed:``
    where the export fails. An ``owned`` module's tap comes off the model after the export
    (only the ONNX file runs)."""
    t0 = time.perf_counter()
    try:
        export_onnx(exportable(module, example), example, path, config.opset, list(outputs))
    except Exception as exc:
        return Variant(name, "onnxruntime", None, f"failed: {first_line(exc)}")
    finally:
        if owned:
            module.remove()
    device = torch.device(config.device)
    threads = config.threads or torch.get_num_threads()
    return _ort_variant(name, path, outputs, device, threads, config, time.perf_counter() - t0)


def _first_map(call: Call) -> Call:
    def first() -> tuple[Tensor, Tensor | None]:
        logits, heatmap = call()
        return logits, None if heatmap is None else heatmap[:, :1]

    return first


def _method_explainer(explainer: Explainer, method: str, top_k: int | None = None) -> Explainer:
    """The same model and layer explained with ``method`` (its tap on the model until
    ``remove()``), for the ``top_k`` best classes where given. A method with a linear head
    (``cam``) takes the explainer's, or the one a fresh probe finds; a
    :class:`~.errors.UsageError` where there is none, or where ``method`` has no class."""
    spec, plan = methods.get(method), explainer.plan
    head = None
    if spec.needs_linear:
        head = plan.head
        if head is None:  # planned again: the check that the map feeds GAP + one nn.Linear
            found = probe.probe_at_size(explainer.model, plan.input_size, plan.mean, plan.std)
            layer, model = plan.layer, explainer.model
            head = make_plan(model, found, layer, spec, mean=plan.mean, std=plan.std).head
    target = _plain(plan.target_spec)
    if top_k is not None:
        if not spec.has_class:
            raise UsageError(f"{method} explains no class, so it has no top-{top_k}")
        target = TopK(top_k)
    if spec.target_kind is not None:  # e.g. FinerCAM's comparison with the nearest classes
        target = spec.target_kind(target)
    plan = dataclasses.replace(
        plan,
        method_spec=spec,
        head=head,
        graph=GraphOptions(),
        requested=method,
        reason="",
        target_spec=target,
    )
    return Explainer(explainer.model, plan).eval()


def gradcam_explainer(explainer: Explainer) -> Explainer | None:
    """The same model and layer explained with ``gradcam``; None if ``explainer`` is gradcam
    already. Its plan is ``explainer``'s with the method replaced."""
    if explainer.method.name == methods.GRADCAM.name:
        return None
    plan = dataclasses.replace(
        explainer.plan,
        method_spec=methods.GRADCAM,
        head=None,
        graph=GraphOptions(),
        target_spec=_plain(explainer.plan.target_spec),
    )
    return Explainer(explainer.model, plan).eval()


def _plain(target: Target) -> Target:
    """The plan's own target, without the comparison a method made of it (FinerCAM's)."""
    return target.base if isinstance(target, Finer) else target


def exportable(explainer: nn.Module, example: Tensor) -> nn.Module:
    """``explainer``, or its lowered graph where it needs a gradient (:mod:`.lowering`)."""
    if isinstance(explainer, Explainer) and explainer.method.needs_gradient:
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
