"""The options of an explainer that conflict with one another, checked from the options alone.

:func:`check_options` needs no model, so ``explain-export`` calls it with its flags before the
model loads (:mod:`..cli._export_checks`), and :func:`.explainer.build_explainer` before its
probe; :func:`.plan.make_plan` checks the rest, which needs the model (a class index or ``top_k``
against the class count, a layer's map, cam's head). Each message is the one the later check
gives, worded with the library's parameter names (a command words them with its flags).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import OptionError
from .inspect.tap import TapSpec
from .maths import fusion, methods
from .maths.methods import AUTO, Method

__all__ = ["check_options", "check_request"]


def check_request(
    method: str | Method,
    target: int | None,
    top_k: int | None,
    graph: Any,
    head: str | None,
    layer: str | TapSpec | Sequence[str | TapSpec] | None,
    fuse: str | None = None,
) -> None:
    """:func:`check_options` for the arguments :func:`.plan.make_plan` and
    :func:`.explainer.build_explainer` take: ``graph`` a :class:`.plan.GraphOptions` (its
    overlay and alpha), ``layer`` one layer or several to fuse, ``fuse`` how."""
    several = layer is not None and not isinstance(layer, str | TapSpec)
    check_options(
        method,
        target,
        top_k,
        overlay=graph.overlay,
        overlay_alpha=graph.overlay_alpha,
        head=head,
        layers=list(layer) if several else None,  # type: ignore[arg-type]
        fuse=fuse,
    )


def check_options(
    method: str | Method = AUTO,
    target: int | None = None,
    top_k: int | None = None,
    *,
    overlay: bool = False,
    overlay_alpha: float = 0.4,
    head: str | None = None,
    layers: Sequence[object] | None = None,
    class_input: bool = False,
    fuse: str | None = None,
    faithfulness: bool = False,
) -> None:
    """An :class:`.OptionError` for the first pair of options that cannot go together, or a
    value no model can take: a class (``target``, ``top_k``, ``class_input``) or the
    ``faithfulness`` scores of a class for a method that explains none; ``top_k`` with
    ``target``, ``class_input`` or the in-graph ``overlay``; ``head`` for a method without
    cam's linear layer; several ``layers`` for cam, or one listed twice; ``fuse`` (how to fuse)
    with fewer than two ``layers``, or not a fusion's name; ``top_k`` below 1, a negative
    ``target`` or ``overlay_alpha``."""
    spec = None if method == AUTO else methods.get(method)
    _check_class(spec, target, top_k, class_input, faithfulness)
    if target is not None and target < 0:
        raise OptionError(
            "target", "{name} {t} is out of range: a class index is 0 or more", t=target
        )
    if top_k is not None:
        if top_k < 1:
            raise OptionError("top_k", "{name} must be at least 1, got {k}", k=top_k)
        if target is not None:
            raise OptionError("top_k", "{name} explains the best classes; drop {target} or {name}")
        if class_input:
            raise OptionError(
                "class_input",
                "{name} picks one class per image; a top-{k} export explains the {k} best, so "
                "drop {top_k} or {name}",
                k=top_k,
            )
        if overlay:
            raise OptionError(
                "top_k",
                "{name} gives several maps per image, which the in-graph overlay cannot draw; "
                "drop {overlay} (explain-run and explain-serve draw each map)",
            )
    if overlay and overlay_alpha < 0:
        raise OptionError("overlay_alpha", "{name} must not be negative")
    if spec is not None and head is not None and not spec.needs_linear:
        raise OptionError(
            "head", "{name} names cam's linear layer; {m} does not use one", m=spec.name
        )
    _check_layers(spec, layers)
    if fuse is not None:
        fusion.get(fuse)
        if layers is None or len(layers) < 2:
            raise OptionError(
                "fuse", "{name} fuses several maps; give {layer} twice or more, or drop {name}"
            )


def _check_class(
    spec: Method | None,
    target: int | None,
    top_k: int | None,
    class_input: bool,
    faithfulness: bool = False,
) -> None:
    """A class asked of a method that explains none (auto always explains one)."""
    if spec is None or spec.has_class:
        return
    if faithfulness:
        raise OptionError(
            "faithfulness",
            "{name} scores the map of a class, and {m} explains none; pick a method that "
            "explains a class (cam, gradcam, ...) or drop {name}",
            m=spec.name,
        )
    if target is not None:
        raise OptionError(
            "target",
            "{name} needs a method that explains a class (cam, gradcam); {chosen} has no "
            "target class",
            chosen=spec.name,
        )
    if top_k is not None:
        raise OptionError(
            "top_k", "{name} needs a method that explains a class; {m} has none", m=spec.name
        )
    if class_input:
        raise OptionError(
            "class_input",
            "{name} needs a method that explains a class (cam, gradcam); {m} has none",
            m=spec.name,
        )


def _check_layers(spec: Method | None, layers: Sequence[object] | None) -> None:
    """Several layers to fuse: each once, and a method that reads more than one map."""
    if layers is None or len(layers) < 2:
        return
    names = [str(one) for one in layers]
    if len(set(names)) != len(names):
        raise OptionError("layer", "{name} lists a layer twice: {names}", names=", ".join(names))
    if spec is not None and spec.at_image:
        raise OptionError(
            "layer",
            "{m} makes one map at the image; give at most one {name}",
            m=spec.name,
        )
    if spec is not None and spec.needs_linear:
        raise OptionError(
            "layer",
            "{m} reads the one map a GAP + linear head pools; to fuse several {name}s pick "
            "{method} gradcam (or another gradient method)",
            m=spec.name,
        )
