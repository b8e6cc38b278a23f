"""The plan: what an explainer explains and how, with the reason for each choice. Pure data.

:func:`make_plan` reads one recorded forward pass (:mod:`.probe`) and the options, and decides,
changing nothing:

- the **layer** (:func:`.layers.choose_layer`): as given, else the map the classifier pools;
  several given layers are fused (:class:`LayerPlan`, one per layer);
- the **method** (:mod:`.methods`), resolved once into its record: ``auto`` takes ``cam`` where
  the probe shows it exact (the map feeds global average pooling + one ``nn.Linear``,
  :mod:`.gap_head`), else ``gradcam``;
- the **target** (:mod:`.targets`): a fixed class, or the top-1 (and at run time a class per
  image, where the graph takes one), or the ``top_k`` best classes, one map each.

The explainer is built from the plan (:meth:`.explainer.Explainer.from_plan`) and carries it;
the export report and the metadata read it from there. :class:`GraphOptions`, how the graph
meets a server, is part of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from ..errors import OptionError, UsageError
from .conflicts import check_request
from .graph_options import GraphOptions
from .inspect import layers, probe
from .inspect.gap_head import find_gap_linear_head
from .inspect.maps import check_on_image
from .inspect.tap import TapSpec
from .inspect.tokens import token_grid, token_layout
from .maths import methods
from .maths.methods import AUTO, Method
from .maths.sampling import Sampling
from .maths.targets import ClassLogit, Region, Target, TopK
from .model.outputs import OutputKey

__all__ = [
    "IMAGE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "GraphOptions",
    "LayerPlan",
    "Plan",
    "check_norm",
    "make_plan",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LayerPlan:
    """One tapped map: its name, shape ``[C, h, w]`` at the probe size, layout, whether the tap
    copies it (an in-place op changes it later), and why it was chosen."""

    layer: str
    feature_shape: tuple[int, ...]
    layout: str = "NCHW"
    cloned: bool = False
    reason: str = ""

    def sizes(self, input_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((h, w), (H, W))``: the map's size at the input size the graph is exported for."""
        return (int(self.feature_shape[1]), int(self.feature_shape[2])), input_size


@dataclass(frozen=True)
class Plan:
    """What :func:`make_plan` chose and checked, and why.

    ``method_spec`` is the resolved :class:`~.methods.Method` (``method`` its name);
    ``target_spec`` what is explained (``target`` its fixed class, None for the top-1).
    """

    method_spec: Method
    layer: str
    head: str | None  # the linear layer cam uses
    target_spec: Target
    num_classes: int
    feature_shape: tuple[int, ...]  # A's shape [C, h, w] at the probe size
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    graph: GraphOptions = GraphOptions()
    requested: str = ""  # the method asked for ("auto", or the method itself)
    reason: str = ""  # why ``method`` was chosen, for auto
    layer_reason: str = ""  # why ``layer``: as given, or which default
    layout: str = "NCHW"  # the tapped tensor's layout; NHWC maps are permuted
    cloned: bool = False  # an in-place op changes the tapped tensor later: the tap copies it
    fused: tuple[LayerPlan, ...] = ()  # with several layers, all of them (the first is above)
    output: OutputKey = field(default_factory=OutputKey)  # the model output with the logits
    output_size: tuple[int, ...] | None = None  # segmentation: (H', W') of the scores at export
    sampling: Sampling | None = None  # a sampling method's steps, noise and seed
    fuse: str = "mean"  # how several layers' maps are fused (:mod:`.fusion`): mean or product

    @property
    def method(self) -> str:
        """The method's name."""
        return self.method_spec.name

    @property
    def target(self) -> int | None:
        """The fixed class explained; None: the top-1 (or the class given at run time)."""
        return self.target_spec.fixed

    @property
    def layers(self) -> tuple[LayerPlan, ...]:
        """Every tapped map: the fused layers, or the one layer."""
        one = LayerPlan(self.layer, self.feature_shape, self.layout, self.cloned, self.layer_reason)
        return self.fused or (one,)

    @property
    def segmentation(self) -> bool:
        """A segmentation model: per-pixel scores, a class over its pixels (:class:`.Region`)."""
        return isinstance(self.target_spec, Region)

    @property
    def names_classes(self) -> bool:
        """The graph has a ``classes`` output (top-k, or a segmentation region's class)."""
        return self.top_k is not None or self.segmentation

    @property
    def top_k(self) -> int | None:
        """How many classes each image gets a map for, with a top-k target; else None."""
        return self.target_spec.top_k

    @property
    def sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((h, w), (H, W))``: the (first) map's size at the input size of the export."""
        return self.layers[0].sizes(self.input_size)


def check_norm(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Three means and three positive stds, as float tuples."""
    mean, std = _check_triplet("mean", mean), _check_triplet("std", std)
    if any(s <= 0 for s in std):
        raise OptionError(
            "std", "{name} values must be positive, got {v}", v=" ".join(map(str, std))
        )
    return mean, std


def _check_triplet(name: str, values: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise OptionError(name, "{name} takes 3 values (R G B), got {n}", n=len(values))
    return values


def make_plan(
    model: nn.Module,
    result: probe.Probe,
    layer: str | TapSpec | Sequence[str | TapSpec] | None = None,
    method: str | Method = AUTO,
    head: str | None = None,
    target: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    graph: GraphOptions = GraphOptions(),
    top_k: int | None = None,
    background: int | None = 0,
    tokens: int | None = None,
    sampling: Sampling | None = None,
    fuse: str | None = None,
) -> Plan:
    """Decide layer, method and target for ``model`` from its probe ``result``; see the module.

    ``layer`` may list several layers: each one's map is made, and the maps are fused
    by ``fuse`` (:mod:`.fusion`: mean, the default, or product); cam is refused there, and
    ``auto`` takes ``gradcam``. ``top_k``: a map for each of the ``top_k`` best classes of each
    image (:class:`.TopK`). A segmentation model (per-pixel scores ``[N,K,H',W']``) explains a
    class over its predicted pixels (:class:`.Region`); ``background`` is the class its default
    leaves out (None: none). ``tokens``: how many prefix tokens a token layer holds (default:
    what the model says, else ``T − h·w``; :func:`.tokens.token_grid`). A method at the image
    (:mod:`.pixel_methods`) has no layer (its plan's layer is ``image``), unless it also makes
    a layer's map (guided Grad-CAM); ``sampling`` sets a sampling method's steps, noise and seed.
    Raises :class:`~.errors.UsageError` naming what is wrong: an unknown method, a layer that
    is not a map, a head that is not the map's GAP + linear, a class out of range.
    """
    if method != AUTO:
        method = methods.get(method)
    mean, std = check_norm(mean, std)
    graph.check()
    several = layer is not None and not isinstance(layer, str | TapSpec)
    given = list(layer) if several else [layer]  # type: ignore[arg-type]
    check_request(method, target, top_k, graph, head, layer, fuse)  # the options alone
    fused = tuple(_layer_plan(model, result, one, tokens) for one in given) if several else ()
    names = [p.layer for p in fused]
    if len(set(names)) != len(names):  # two spellings of one tensor
        raise OptionError("layer", "{name} lists a layer twice: {names}", names=", ".join(names))
    auto_fused = several and method == AUTO
    if auto_fused:
        method = methods.GRADCAM
    if isinstance(method, Method) and method.at_image and not method.layer_map:
        return _image_plan(
            method, result, given[0], target, mean, std, graph, top_k, background, sampling
        )
    spec, layer_reason = layers.choose_layer(result, given[0], model)
    record = probe.select(result, model, spec)
    feature_shape, layout = _map_of(model, result, record, spec, tokens)
    num_classes = int(result.logits.shape[1])
    chosen, reason, head_name = _choose_method(method, result, model, record, spec, head, layout)
    if auto_fused:
        reason = "several layers are fused; cam is exact at one map only, so the gradient is used"
    segmentation = result.logits.dim() == 4
    what = _target_of(result, target, top_k, background)
    return Plan(
        chosen,
        str(spec),
        head_name,
        what if chosen.target_kind is None else chosen.target_kind(what),  # FinerCAM's
        num_classes,
        feature_shape,
        result.input_size,
        mean,
        std,
        graph,
        requested=AUTO if auto_fused else method if isinstance(method, str) else method.name,
        reason=reason,
        layer_reason=layer_reason,
        layout=layout,
        cloned=record.mutated(spec.port),
        fused=fused,
        output=result.output,
        output_size=tuple(result.logits.shape[2:]) if segmentation else None,
        sampling=_sampling(chosen, sampling),
        fuse=fuse or "mean",
    )


def _target_of(
    result: probe.Probe, target: int | None, top_k: int | None, background: int | None
) -> Target:
    """What is explained, checked against the model's classes: a segmentation region, one class,
    or the top-k."""
    num_classes = int(result.logits.shape[1])
    _check_target(target, num_classes)
    _check_top_k(top_k, num_classes)
    if result.logits.dim() != 4:
        return ClassLogit(target) if top_k is None else TopK(top_k)
    if top_k is not None:
        raise OptionError(
            "top_k",
            "{name} ranks the classes of a classifier; a segmentation "
            "model explains one class per image (drop {name})",
        )
    if background is not None and not 0 <= background < num_classes:
        raise OptionError(
            "background",
            "{name} {b} is out of range: the model has {n} classes",
            b=background,
            n=num_classes,
        )
    return Region(target, background)


IMAGE = "image"  # the plan's layer for a method whose gradient is taken at the image


def _sampling(method: Method, sampling: Sampling | None) -> Sampling | None:
    """A sampling method's settings, checked (the defaults where none are given); else None."""
    return (sampling or Sampling()).check() if method.samples is not None else None


def _image_plan(
    method: Method,
    result: probe.Probe,
    layer: str | TapSpec | None,
    target: int | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    graph: GraphOptions,
    top_k: int | None,
    background: int | None,
    sampling: Sampling | None,
) -> Plan:
    """The plan of a method at the image: no layer, the map ``[3, H, W]`` is the image's."""
    if layer:
        raise OptionError(
            "layer",
            "{m} takes the gradient at the image, not at a layer; drop {name}",
            m=method.name,
        )
    num_classes = int(result.logits.shape[1])
    what = _target_of(result, target, top_k, background)
    segmentation = result.logits.dim() == 4
    h, w = result.input_size
    return Plan(
        method,
        IMAGE,
        None,
        what,
        num_classes,
        (3, h, w),
        result.input_size,
        mean,
        std,
        graph,
        requested=method.name,
        layer_reason="the gradient is taken at the graph's image, in [0,1]",
        output=result.output,
        output_size=tuple(result.logits.shape[2:]) if segmentation else None,
        sampling=_sampling(method, sampling),
    )


def _layer_plan(
    model: nn.Module, result: probe.Probe, layer: str | TapSpec | None, tokens: int | None
) -> LayerPlan:
    """One of several fused layers, checked as a single one is."""
    if not layer:
        raise OptionError("layer", "each fused {name} needs a name")
    spec, why = layers.choose_layer(result, layer, model)
    record = probe.select(result, model, spec)
    feature_shape, layout = _map_of(model, result, record, spec, tokens)
    return LayerPlan(str(spec), feature_shape, layout, record.mutated(spec.port), why)


def _map_of(
    model: nn.Module,
    result: probe.Probe,
    record: probe.CallRecord,
    spec: TapSpec,
    tokens: int | None,
) -> tuple[tuple[int, ...], str]:
    """``([C, h, w], layout)`` of the tapped tensor: a map's, or a token sequence's laid on its
    grid (:func:`.tokens.token_grid`, layout ``tokens:P+hxw``)."""
    shape = record.shape(spec.port)
    if shape is not None and len(shape) == 3:
        prefix, h, w, _ = token_grid(model, result, record, spec.port, shape, tokens)
        return (int(shape[2]), h, w), token_layout(prefix, h, w)
    check_on_image(result, record, spec.port, str(spec))
    return tuple(probe.spatial(shape, result.input_size)), probe.layout(shape, result.input_size)


def _check_target(target: int | None, num_classes: int) -> None:
    if target is not None and not 0 <= target < num_classes:
        raise OptionError(
            "target",
            "{name} {target} is out of range: the model has {n} classes (0..{last})",
            target=target,
            n=num_classes,
            last=num_classes - 1,
        )


def _check_top_k(top_k: int | None, num_classes: int) -> None:
    if top_k is not None and not 1 <= top_k <= num_classes:
        raise OptionError(
            "top_k",
            "{name} must be 1..{n} (the model has {n} classes), got {k}",
            n=num_classes,
            k=top_k,
        )


def _choose_method(
    method: str | Method,
    result: probe.Probe,
    model: nn.Module,
    record: probe.CallRecord,
    spec: TapSpec,
    head: str | None,
    layout: str,
) -> tuple[Method, str, str | None]:
    """``(method, why, linear head)``: ``auto`` takes cam where the probe shows it exact.

    A ``head`` given by name asks for cam."""
    if head is not None and method == AUTO:
        method = methods.CAM
    if isinstance(method, Method) and not method.needs_linear:
        if head is not None:
            raise OptionError(
                "head", "{name} names cam's linear layer; {m} does not use one", m=method.name
            )
        return method, "", None
    if isinstance(method, Method):  # cam
        found = find_gap_linear_head(result, model, record, spec, head)
        return method, f"'{spec}' feeds global average pooling + '{found.linear}'", found.linear
    if layout == "NCHW":
        try:
            found = find_gap_linear_head(result, model, record, spec, head)
        except UsageError as exc:
            why = str(exc).split(";")[0]
        else:
            return (
                methods.CAM,
                f"'{spec}' feeds global average pooling + '{found.linear}', where cam equals "
                "Grad-CAM",
                found.linear,
            )
    else:
        why = "the map is channels-last" if layout == "NHWC" else "the map is a token sequence"
    return methods.GRADCAM, f"cam is not exact here ({why}), so the gradient is computed", None
