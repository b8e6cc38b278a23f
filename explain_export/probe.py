"""Look inside a model once: which modules run, with what shapes, and where its head is.

One probe forward pass with a hook on every module records each call. From the records:

- :func:`select` checks a layer choice (it runs, once or at a named call, and gives a 4-D map);
- :func:`find_gap_linear_head` finds the ``nn.Linear`` that produces the logits and checks that
  its input is the global average pool of the tapped map, the condition under which ``cam``
  equals Grad-CAM;
- :func:`default_layer` picks the tensor that feeds that pooling, or else the last 4-D map;
- :func:`format_layers` lists the candidates for ``--list-layers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .errors import UsageError
from .tap import TapSpec, resolve_module

# Tolerances for "this Linear's input is the spatial mean of that map" (float32 sums).
_HEAD_RTOL = 1e-4
_HEAD_ATOL = 1e-5


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


@dataclass
class Probe:
    """What one forward pass of a model showed."""

    logits: Tensor
    records: list[CallRecord] = field(default_factory=list)

    def calls(self, name: str) -> list[CallRecord]:
        return [r for r in self.records if r.name == name]


@dataclass(frozen=True)
class Head:
    """A global-average-pool + linear classifier head: ``logits = W · GAP(A) + b``."""

    linear: str
    num_classes: int
    channels: int


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, Tensor) else None


def _spatial_mean(value: Any) -> Tensor | None:
    if isinstance(value, Tensor) and value.dim() == 4:
        return value.detach().float().mean(dim=(2, 3))
    return None


@torch.no_grad()
def probe(model: nn.Module, example: Tensor) -> Probe:
    """Run ``model(example)`` once, recording every module call."""
    records: list[CallRecord] = []
    counts: dict[str, int] = {}
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            first = args[0] if args else None
            call = counts.get(name, 0)
            counts[name] = call + 1
            rec = CallRecord(
                name,
                call,
                type(module).__name__,
                _shape(first),
                _shape(output),
                _spatial_mean(first),
                _spatial_mean(output),
            )
            if isinstance(module, nn.Linear) and isinstance(first, Tensor):
                rec.linear_io = (first.detach(), output.detach())
            records.append(rec)

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        logits = model(example)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise UsageError(
            f"the model returns {_describe(logits)}, not logits [N,K]; "
            "wrap it so that forward returns one [N,K] tensor"
        )
    return Probe(logits.detach(), records)


def probe_at_size(
    model: nn.Module,
    input_size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Probe:
    """:func:`probe` on a normalized random batch of 2 at ``input_size``."""
    h, w = input_size
    image = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    example = (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    try:
        return probe(model.eval(), example)
    except UsageError:
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"the model fails on a {h}x{w} input ({first}); check --input-size"
        ) from exc


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def select(result: Probe, model: nn.Module, spec: TapSpec) -> CallRecord:
    """The probe record of ``spec``, or a UsageError that says what is wrong and what to do."""
    resolve_module(model, spec.module)
    calls = result.calls(spec.module)
    if not calls:
        raise UsageError(
            f"layer '{spec.module}' never runs in the model's forward pass; "
            "pick one that does (see --list-layers)"
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
            f"layer '{spec.module}' runs {len(calls)} time(s); call @{index} does not exist"
        )
    record = calls[index]
    shape = record.input_shape if spec.port == "input" else record.output_shape
    if shape is None or len(shape) != 4:
        got = "not a tensor" if shape is None else f"of shape {list(shape)}"
        raise UsageError(
            f"layer '{spec}' gives a value {got}, not a 4-D [N,C,h,w] feature map; "
            "pick a convolutional layer (see --list-layers)"
        )
    if shape[2] * shape[3] == 1:
        hint = (
            f" (e.g. '{TapSpec(spec.module, 'input', spec.call)}')" if spec.port == "output" else ""
        )
        raise UsageError(
            f"layer '{spec}' gives a 1x1 map, which has no spatial detail to show; "
            f"pick an earlier layer{hint} or a larger --input-size (see --list-layers)"
        )
    return record


def _mean_of(record: CallRecord, port: str) -> Tensor | None:
    return record.input_mean if port == "input" else record.output_mean


def _classifiers(result: Probe) -> list[CallRecord]:
    """Linear calls whose output is the model's logits."""
    found = []
    for r in result.records:
        if r.linear_io is None:
            continue
        out = r.linear_io[1]
        if out.shape == result.logits.shape and torch.allclose(out, result.logits):
            found.append(r)
    return found


def find_gap_linear_head(
    result: Probe, model: nn.Module, tapped: CallRecord, spec: TapSpec, head: str | None = None
) -> Head:
    """Check that ``logits = Linear(GAP(A))`` for the tapped map ``A``; return that head.

    ``head`` names the linear layer; by default it is the ``nn.Linear`` whose output is the logits.
    """
    linears = [r.name for r in result.records if r.linear_io is not None]
    if head is not None:
        module = resolve_module(model, head)
        if not isinstance(module, nn.Linear):
            raise UsageError(f"--head '{head}' is a {type(module).__name__}, not an nn.Linear")
        candidates = [r for r in _classifiers(result) if r.name == head]
        if not candidates:
            raise UsageError(f"--head '{head}' does not produce the model's logits")
    else:
        candidates = _classifiers(result)
        if not candidates:
            seen = ", ".join(dict.fromkeys(linears)) or "none"
            raise UsageError(
                "cam needs a head of global average pooling + one nn.Linear that gives the "
                f"logits; no nn.Linear gives them (Linear layers: {seen}); use --method sum"
            )
    rec = candidates[-1]
    linear_in = rec.linear_io[0]
    pooled = _mean_of(tapped, spec.port)
    if linear_in.dim() != 2 or pooled is None or linear_in.shape != pooled.shape:
        got = "a map" if pooled is None else f"{pooled.shape[1]} channels"
        raise UsageError(
            f"cam needs '{spec}' to feed global average pooling + '{rec.name}', but "
            f"'{rec.name}' takes {list(linear_in.shape[1:])} features and '{spec}' has {got}; "
            f"{_suggest(result)}"
        )
    if not torch.allclose(linear_in.float(), pooled, rtol=_HEAD_RTOL, atol=_HEAD_ATOL):
        diff = (linear_in.float() - pooled).abs().max().item()
        raise UsageError(
            f"cam needs '{rec.name}' to take the global average of '{spec}', but its input "
            f"differs from that average by up to {diff:.3g}; {_suggest(result)}"
        )
    return Head(rec.name, int(rec.linear_io[1].shape[1]), int(linear_in.shape[1]))


def _suggest(result: Probe) -> str:
    """What to do instead, for cam errors: the layer where cam is exact, or --method sum."""
    spec = gap_input(result)
    if spec is None:
        return "use --method sum"
    return f"use --layer {spec} (the map that feeds the pooling) or --method sum"


def gap_input(result: Probe) -> TapSpec | None:
    """The latest map whose global average is the classifier's input, if there is one."""
    classifiers = _classifiers(result)
    if not classifiers:
        return None
    linear_in = classifiers[-1].linear_io[0].float()
    for rec in reversed(result.records):
        for port in ("input", "output"):
            mean = _mean_of(rec, port)
            shape = rec.input_shape if port == "input" else rec.output_shape
            if (
                mean is not None
                and shape[2] * shape[3] > 1
                and mean.shape == linear_in.shape
                and torch.allclose(linear_in, mean, rtol=_HEAD_RTOL, atol=_HEAD_ATOL)
            ):
                return _spec_for(result, rec, port)
    return None


def default_layer(result: Probe) -> TapSpec:
    """The map that feeds a GAP+linear head (see :func:`gap_input`), else the last 4-D map."""
    spec = gap_input(result)
    if spec is not None:
        return spec
    for rec in reversed(result.records):
        if rec.output_shape is not None and len(rec.output_shape) == 4:
            return _spec_for(result, rec, "output")
    raise UsageError("the model has no layer with a 4-D [N,C,h,w] output to explain")


def _spec_for(result: Probe, rec: CallRecord, port: str) -> TapSpec:
    call = rec.call if len(result.calls(rec.name)) > 1 else None
    return TapSpec(rec.name, port, call)


def format_layers(result: Probe, default: TapSpec | None) -> str:
    """A table of the tap candidates (layers with a 4-D output larger than 1x1), default marked."""
    counts: dict[str, int] = {}
    for r in result.records:
        counts[r.name] = counts.get(r.name, 0) + 1
    rows = [("layer", "type", "shape [C,h,w]", "")]
    for r in result.records:
        specs = []
        if default is not None and default.port == "input" and _matches(default, r, counts):
            specs.append((_spec_for(result, r, "input"), r.input_shape))
        shape = r.output_shape
        if shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1:
            specs.append((_spec_for(result, r, "output"), shape))
        for spec, shape in specs:
            is_default = default is not None and str(spec) == str(default)
            rows.append(
                (
                    str(spec),
                    r.kind,
                    "x".join(map(str, shape[1:])),
                    "<- default" if is_default else "",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _matches(spec: TapSpec, r: CallRecord, counts: dict[str, int]) -> bool:
    return r.name == spec.module and (spec.call is None or spec.call == r.call)
