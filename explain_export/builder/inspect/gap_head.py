"""Find a model's global-average-pool + linear head in one recorded forward pass.

``cam`` equals Grad-CAM where the logits are ``Linear(GAP(A))`` for the tapped map ``A``. From a
:class:`.probe.Probe`:

- :func:`classifiers` lists the ``nn.Linear`` calls whose output is the logits;
- :func:`find_gap_linear_head` checks that the classifier's input is the global average of the
  tapped map and returns that head, else says what to use instead;
- :func:`gap_input` finds the map whose global average the classifier takes (where ``cam`` is
  exact; :mod:`.layers` makes it the default layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import OptionError
from ...words import a_or_an
from .probe import CallRecord, Probe, layout, mean_of, spec_for
from .tap import TapSpec, resolve_module

__all__ = [
    "HEAD_ATOL",
    "HEAD_RTOL",
    "Head",
    "classifiers",
    "find_gap_linear_head",
    "gap_input",
]

# Tolerances for "this Linear's input is the spatial mean of that map" (float32 sums).
HEAD_RTOL = 1e-4
HEAD_ATOL = 1e-5


@dataclass(frozen=True)
class Head:
    """A global-average-pool + linear classifier head: ``logits = W · GAP(A) + b``."""

    linear: str


def classifiers(result: Probe) -> list[CallRecord]:
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
            raise OptionError(
                "head",
                "{name} '{head}' is {t}, not an nn.Linear",
                head=head,
                t=a_or_an(type(module).__name__),
            )
        candidates = [r for r in classifiers(result) if r.name == head]
        if not candidates:
            raise OptionError(
                "head", "{name} '{head}' does not produce the model's logits", head=head
            )
    else:
        candidates = classifiers(result)
        if not candidates:
            seen = ", ".join(dict.fromkeys(linears)) or "none"
            raise OptionError(
                "method",
                "cam needs a head of global average pooling + one nn.Linear that gives the "
                "logits; no nn.Linear gives them (Linear layers: {seen}); use {name} gradcam",
                seen=seen,
            )
    rec = candidates[-1]
    linear_in = rec.linear_io[0]
    pooled = mean_of(tapped, spec.port)
    if linear_in.dim() != 2 or pooled is None or linear_in.shape != pooled.shape:
        got = "a map" if pooled is None else f"{pooled.shape[1]} channels"
        suggest, values = _suggest(result)
        raise OptionError(
            "method",
            "cam needs '{spec}' to feed global average pooling + '{linear}', but '{linear}' "
            "takes {features} features and '{spec}' has {got}; " + suggest,
            spec=spec,
            linear=rec.name,
            features=list(linear_in.shape[1:]),
            got=got,
            **values,
        )
    if not torch.allclose(linear_in.float(), pooled, rtol=HEAD_RTOL, atol=HEAD_ATOL):
        diff = (linear_in.float() - pooled).abs().max().item()
        suggest, values = _suggest(result)
        raise OptionError(
            "method",
            "cam needs '{linear}' to take the global average of '{spec}', but its input differs "
            "from that average by up to {diff:.3g}; " + suggest,
            linear=rec.name,
            spec=spec,
            diff=diff,
            **values,
        )
    return Head(rec.name)


def gap_input(result: Probe) -> TapSpec | None:
    """The latest map whose global average is the classifier's input, if there is one."""
    found = classifiers(result)
    if not found:
        return None
    linear_in = found[-1].linear_io[0].float()
    for rec in reversed(result.records):
        for port in ("input", "output"):
            mean = mean_of(rec, port)
            shape = rec.shape(port)
            if (
                mean is not None
                and shape[2] * shape[3] > 1
                and layout(shape, result.input_size) == "NCHW"
                and mean.shape == linear_in.shape
                and torch.allclose(linear_in, mean, rtol=HEAD_RTOL, atol=HEAD_ATOL)
            ):
                return spec_for(result, rec, port)
    return None


def _suggest(result: Probe) -> tuple[str, dict[str, Any]]:
    """What to do instead, for cam errors (an :class:`.OptionError` template and its values):
    the layer where cam is exact, or gradcam."""
    spec = gap_input(result)
    if spec is None:
        return "use {method} gradcam (any head)", {}
    return "use {layer} {exact} (the map that feeds the pooling) or {method} gradcam", {
        "exact": spec
    }
