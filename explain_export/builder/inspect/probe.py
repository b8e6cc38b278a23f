"""Look inside a model once: which modules run, and with what shapes.

One probe forward pass with a hook on every module records each call. From the records:

- :func:`select` checks a layer choice (it runs, once or at a named call, and gives a 4-D map);
- :func:`layout` tells a ``[N,C,h,w]`` map from a channels-last ``[N,h,w,C]`` one.

Where the head is (a global-average-pool + ``nn.Linear`` after the tapped map, for ``cam``) is
:mod:`.gap_head`'s job; the default layer and ``--list-layers`` are :mod:`.layers`'.

Each record also says whether an in-place op changed the tensor after the module ran (its
version counter moved): a tap there must copy the value (:class:`~.tap.Tap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import OptionError, UsageError, first_line
from ...words import a_or_an, count
from ..model.outputs import OutputKey, choose_output, describe
from .tap import TapSpec, resolve_module

__all__ = [
    "CallRecord",
    "Probe",
    "device_of",
    "is_segmentation",
    "is_spatial",
    "layout",
    "mean_of",
    "probe",
    "probe_at_size",
    "select",
    "spatial",
    "spec_for",
]


@dataclass
class CallRecord:
    """One call of one module during the probe."""

    name: str
    call: int
    kind: str
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    input_mean: Tensor | None = None  # spatial mean [N, C] where the input is 4-D
    output_mean: Tensor | None = None  # spatial mean [N, C] where the output is 4-D
    linear_io: tuple[Tensor, Tensor] | None = None  # (input, output) of an nn.Linear
    input_mutated: bool = False  # an in-place op changed the input after the module began
    output_mutated: bool = False  # an in-place op changed the output after the module ran
    input_probs: bool = False  # the 4-D input's rows are probabilities (attention, softmax)
    output_probs: bool = False  # the 4-D output's rows are probabilities
    # the module calls this one ran inside, outermost first: (name, shape of the first input)
    outer: tuple[tuple[str, tuple[int, ...] | None], ...] = ()

    def shape(self, port: str) -> tuple[int, ...] | None:
        return self.input_shape if port == "input" else self.output_shape

    def mutated(self, port: str) -> bool:
        return self.input_mutated if port == "input" else self.output_mutated

    def probabilities(self, port: str) -> bool:
        return self.input_probs if port == "input" else self.output_probs


@dataclass
class Probe:
    """What one forward pass of a model showed."""

    logits: Tensor
    records: list[CallRecord] = field(default_factory=list)
    input_size: tuple[int, int] | None = None  # (H, W) of the probe batch
    output: OutputKey = field(default_factory=OutputKey)  # which output holds the logits

    def calls(self, name: str) -> list[CallRecord]:
        return [r for r in self.records if r.name == name]


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, Tensor) else None


def _spatial_mean(value: Any) -> Tensor | None:
    if isinstance(value, Tensor) and value.dim() == 4:
        return value.detach().float().mean(dim=(2, 3))
    return None


def _probabilities(value: Any) -> bool:
    """A 4-D tensor whose last dim holds probabilities: every value ≥ 0 and each row summing to 1
    (a softmax over keys: an attention matrix)."""
    if not isinstance(value, Tensor) or value.dim() != 4 or value.shape[-1] < 2:
        return False
    v = value.detach().float()
    return bool(v.min() >= 0) and bool(((v.sum(-1) - 1).abs() <= 1e-3).all())


def _version(value: Any) -> int | None:
    return value._version if isinstance(value, Tensor) else None


@torch.no_grad()
def probe(model: nn.Module, example: Tensor, output: str | None = None) -> Probe:
    """Run ``model(example)`` once, recording every module call; ``output`` chooses which of
    its outputs holds the logits (:func:`.outputs.choose_output`; default: the obvious one).

    A pre-hook records each call's input before the module runs (an in-place module changes
    it); a hook records the output. Both keep the tensor until the pass ends, to see whether
    its version counter moved afterwards.
    """
    records: list[CallRecord] = []
    counts: dict[str, int] = {}
    pending: dict[str, list[tuple[Any, int | None, Tensor | None]]] = {}
    watched: list[tuple[CallRecord, str, Tensor, int]] = []
    running: list[tuple[str, tuple[int, ...] | None]] = []  # the calls entered, not yet left
    handles = []

    def make_pre_hook(name: str):
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            first = args[0] if args else None
            pending.setdefault(name, []).append((first, _version(first), _spatial_mean(first)))
            running.append((name, _shape(first)))

        return pre_hook

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            first, first_version, first_mean = pending[name].pop()
            while running and running.pop()[0] != name:
                pass  # a call left without its hook (it raised inside a caught error)
            call = counts.get(name, 0)
            counts[name] = call + 1
            rec = CallRecord(
                name,
                call,
                type(module).__name__,
                _shape(first),
                _shape(output),
                first_mean,
                _spatial_mean(output),
                input_probs=_probabilities(first),
                output_probs=_probabilities(output),
                outer=tuple(running),
            )
            if isinstance(module, nn.Linear) and isinstance(first, Tensor):
                rec.linear_io = (first.detach(), output.detach())
            if isinstance(first, Tensor):
                watched.append((rec, "input", first, first_version))
            if isinstance(output, Tensor):
                watched.append((rec, "output", output, output._version))
            records.append(rec)

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(make_pre_hook(name)))
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        logits = model(example)
    finally:
        for h in handles:
            h.remove()
    for rec, port, tensor, version in watched:
        if tensor._version != version:
            setattr(rec, f"{port}_mutated", True)
    key = choose_output(logits, output)
    picked = key.pick(logits)
    if picked.dim() != 2 and not is_segmentation(picked, tuple(example.shape[-2:])):
        where = "the model returns" if key.kind == "tensor" else f"its output {key} is"
        raise OptionError(
            "output",
            "{where} {d}, neither logits [N,K] nor per-pixel scores [N,K,H',W'] at a quarter of "
            "the input size or more, nor a detector's raw predictions [N,4+K,A] (cx, cy, w, h "
            "in input pixels, then K class probabilities, A anchors on strides 8, 16, 32...); "
            "pick them with {name} KEY|INDEX, or wrap the model so that forward returns them",
            where=where,
            d=describe(picked),
        )
    return Probe(picked.detach(), records, tuple(example.shape[-2:]), key)


def is_segmentation(scores: Tensor, input_size: tuple[int, int]) -> bool:
    """Per-pixel class scores ``[N, K, H', W']``: 4-D, at least a quarter of the input's height
    and width (a segmentation model's output, not a backbone's map)."""
    if scores.dim() != 4:
        return False
    h, w = scores.shape[2:]
    return 4 * h >= input_size[0] and 4 * w >= input_size[1]


def device_of(model: nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives; the CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def probe_at_size(
    model: nn.Module,
    input_size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    output: str | None = None,
) -> Probe:
    """:func:`probe` on a normalized random batch of 2 at ``input_size``, on the model's
    device."""
    h, w = input_size
    image = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    example = (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    example = example.to(device_of(model))
    try:
        return probe(model.eval(), example, output)
    except UsageError:
        raise
    except RuntimeError as exc:
        first = first_line(exc, with_type=False)
        raise OptionError(
            "input_size",
            "the model fails on {size} input ({why}); check {name}",
            size=a_or_an(f"{h}x{w}"),
            why=first,
        ) from exc


def _stride_consistent(p: int, q: int, size: tuple[int, int]) -> bool:
    """``(p, q)`` can be a map of an ``(H, W)`` image: both sides shrunk by about one stride."""
    if p < 1 or q < 1:
        return False
    sh, sw = size[0] / p, size[1] / q
    return max(sh, sw) / min(sh, sw) <= 1.5


def layout(shape: Sequence[int], input_size: tuple[int, int] | None) -> str:
    """``"NCHW"`` or ``"NHWC"`` for a 4-D tensor of the probe, from its sizes.

    A map's two spatial sides are the image's, each divided by about the same stride: a tensor
    whose dims 1, 2 fit that while dims 2, 3 do not is channels-last (a ConvNeXt block's or a Swin
    stage's ``[N,h,w,C]``). Anything else, the ambiguous ``[N,7,7,7]`` included, is NCHW.
    """
    if len(shape) != 4 or input_size is None:
        return "NCHW"
    _, a, b, c = shape
    if _stride_consistent(a, b, input_size) and not _stride_consistent(b, c, input_size):
        return "NHWC"
    return "NCHW"


def spatial(shape: Sequence[int], input_size: tuple[int, int] | None) -> tuple[int, int, int]:
    """``(C, h, w)`` of a 4-D map in either layout."""
    _, a, b, c = shape
    return (c, a, b) if layout(shape, input_size) == "NHWC" else (a, b, c)


def select(result: Probe, model: nn.Module, spec: TapSpec) -> CallRecord:
    """The probe record of ``spec``, or a UsageError that says what is wrong and what to do."""
    resolve_module(model, spec.module)
    calls = result.calls(spec.module)
    if not calls:
        raise OptionError(
            "layer",
            "layer '{spec}' never runs in the model's forward pass; pick one that does "
            "(see {list_layers})",
            spec=spec.module,
        )
    if spec.call is None and len(calls) > 1:
        raise UsageError(
            f"layer '{spec.module}' runs {len(calls)} times in one forward pass; pick one call "
            f"with '{TapSpec(spec.module, spec.port, 0)}' ... "
            f"'{TapSpec(spec.module, spec.port, len(calls) - 1)}'"
        )
    index = spec.call or 0
    if index >= len(calls):
        raise UsageError(
            f"layer '{spec.module}' runs {count(len(calls), 'time')}; call @{index} does not exist"
        )
    record = calls[index]
    shape = record.shape(spec.port)
    if shape is not None and len(shape) == 3:
        return record  # a token sequence [N, T, C]: its grid is found by tokens.token_grid
    if shape is None or len(shape) != 4:
        got = "not a tensor" if shape is None else f"of shape {list(shape)}"
        raise OptionError(
            "layer",
            "layer '{spec}' gives a value {got}, not a 4-D [N,C,h,w] feature map or an [N,T,C] "
            "token sequence; pick a convolutional layer (see {list_layers})",
            spec=spec,
            got=got,
        )
    _, h, w = spatial(shape, result.input_size)
    if h * w == 1:
        hint = (
            f" (e.g. '{TapSpec(spec.module, 'input', spec.call)}')"
            if spec.port == "output" and is_spatial(record.input_shape, result.input_size)
            else ""
        )
        raise OptionError(
            "layer",
            "layer '{spec}' gives a 1x1 map, which has no spatial detail to show; pick an "
            "earlier layer{hint} or a larger {input_size} (see {list_layers})",
            spec=spec,
            hint=hint,
        )
    return record


def is_spatial(shape: Sequence[int] | None, input_size: tuple[int, int] | None) -> bool:
    """A 4-D map with more than one pixel."""
    if shape is None or len(shape) != 4:
        return False
    _, h, w = spatial(shape, input_size)
    return h * w > 1


def mean_of(record: CallRecord, port: str) -> Tensor | None:
    return record.input_mean if port == "input" else record.output_mean


def spec_for(result: Probe, rec: CallRecord, port: str) -> TapSpec:
    call = rec.call if len(result.calls(rec.name)) > 1 else None
    return TapSpec(rec.name, port, call)
