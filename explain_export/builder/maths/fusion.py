"""How several layers' heatmaps become one (``--fuse``): a registry of small records.

Each layer's map is made by its head, ReLU'd, resized and min-maxed (in [0, 1]); a fusion takes
those maps and gives one, min-maxed again:

- ``mean`` (the default, :func:`.heads.fuse`): :math:`\\mathrm{minmax}(\\frac1L\\sum_l m_l)`;
- ``product`` (:func:`.heads.fuse_product`): :math:`\\mathrm{minmax}(\\prod_l m_l)`,
  pytorch-grad-cam's ``RefineCAM``, where a later layer's map masks an earlier, noisier one.

The build resolves a name once (:func:`get`); the head calls the record's function. No torch at
import (the commands read the choices).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import OptionError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["FUSIONS", "MEAN", "PRODUCT", "Fusion", "get"]


@dataclass(frozen=True)
class Fusion:
    """A way to fuse layers' maps: ``combine(maps, eps)``, each map ``[M,1,H,W]`` in [0, 1],
    gives one map in [0, 1] (flat: 0). ``formula``, ``when``: for ``--help`` and the docs."""

    name: str
    formula: str
    when: str
    combine: Callable[[list[Tensor], float], Tensor]


def _mean(maps: list[Tensor], eps: float) -> Tensor:
    from . import heads

    return heads.fuse(maps, eps)


def _product(maps: list[Tensor], eps: float) -> Tensor:
    from . import heads

    return heads.fuse_product(maps, eps)


MEAN = Fusion("mean", "minmax(mean_l m_l)", "the default: every layer's map counts", _mean)
PRODUCT = Fusion(
    "product",
    "minmax(prod_l m_l)",
    "pytorch-grad-cam's RefineCAM: only what every layer shows stays (denoises early layers)",
    _product,
)
FUSIONS: dict[str, Fusion] = {f.name: f for f in (MEAN, PRODUCT)}


def get(name: str | Fusion) -> Fusion:
    """The fusion called ``name`` (a record is returned as it is); an OptionError naming the
    choices otherwise."""
    if isinstance(name, Fusion):
        return name
    if name not in FUSIONS:
        raise OptionError(
            "fuse", "{name} takes {choices}, not '{v}'", choices=" or ".join(FUSIONS), v=name
        )
    return FUSIONS[name]
