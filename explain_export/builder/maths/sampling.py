r"""The points around the image at which a sampling method takes ``∂y/∂x``, and their reduction.

- Integrated Gradients (:class:`PathSamples`), baseline 0: the gradient at :math:`α_s x` for the
  ``S`` Gauss-Legendre nodes :math:`α_s` on [0, 1] with weights :math:`w_s`, reduced to
  :math:`\sum_s w_s\, ∂y/∂x(α_s x)`; times ``x`` that is
  :math:`IG = x ⊙ \int_0^1 ∂y/∂x(αx)\,dα` (captum's ``IntegratedGradients``,
  ``method="gausslegendre"``).
- SmoothGrad (:class:`NoiseSamples`): the gradient at :math:`x + n_s`, ``n_s`` Gaussian with
  standard deviation σ, reduced to :math:`\frac1S \sum_s |∂y/∂x(x + n_s)|` (captum's
  ``NoiseTunnel(Saliency)``, ``nt_type="smoothgrad"``). The noise is drawn once, at export,
  from the seed (as captum draws it after ``torch.manual_seed(seed)``, for one image) and is a
  constant of the graph: the file is deterministic, and every image of a batch gets the same
  ``S`` draws. A graph whose image size is free tiles that ``[S,3,H,W]`` draw over a larger
  image and crops it to a smaller one.

The ``S`` points of every image run as one batch ``[N·S,3,H,W]`` through the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import OptionError

__all__ = ["NoiseSamples", "PathSamples", "Sampling", "make_samples"]


@dataclass(frozen=True)
class Sampling:
    """A sampling method's settings: ``steps`` points, the noise's σ (in the [0,1] image's
    units) and the seed it is drawn from; the export metadata records all three."""

    steps: int = 32
    noise: float = 0.15
    seed: int = 0

    def describe(self, kind: str | None) -> str:
        """The settings in words, for the export report."""
        if kind == "path":
            return f"the gradient at {self.steps} Gauss-Legendre points from a black image"
        return (
            f"the gradient at {self.steps} noisy copies, sigma {self.noise:g}, seed {self.seed} "
            "(the noise is a constant of the graph)"
        )

    def check(self) -> Sampling:
        """Itself, or an OptionError for a value no export can take."""
        if not 1 <= self.steps <= 1024:
            raise OptionError("steps", "{name} must be 1..1024, got {v}", v=self.steps)
        if not self.noise > 0:
            raise OptionError("noise", "{name} must be positive, got {v}", v=self.noise)
        if self.seed < 0:
            raise OptionError("seed", "{name} must not be negative, got {v}", v=self.seed)
        return self


class PathSamples(nn.Module):
    """Integrated Gradients' straight path from 0 to ``x`` at the Gauss-Legendre nodes."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        self.steps = steps
        self.register_buffer("alphas", torch.tensor(0.5 * (nodes + 1.0), dtype=torch.float32))
        self.register_buffer("weights", torch.tensor(0.5 * weights, dtype=torch.float32))

    def points(self, image: Tensor) -> Tensor:
        """``[N,S,3,H,W]``: :math:`α_s x`."""
        return self.alphas[None, :, None, None, None] * image[:, None]

    def reduce(self, grads: Tensor) -> Tensor:
        """``[N,S,3,H,W] -> [N,3,H,W]``: :math:`\\sum_s w_s g_s`."""
        return (self.weights[None, :, None, None, None] * grads).sum(dim=1)


class NoiseSamples(nn.Module):
    """SmoothGrad's ``S`` noisy copies of ``x``, the noise a constant drawn at export."""

    def __init__(self, steps: int, sigma: float, seed: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.steps = steps
        generator = torch.Generator().manual_seed(seed)
        std = torch.full((steps, 3, *size), float(sigma))
        self.register_buffer("noise", torch.normal(0.0, std, generator=generator))

    def points(self, image: Tensor) -> Tensor:
        """``[N,S,3,H,W]``: :math:`x + n_s`, the draw tiled and cropped to ``x``'s size."""
        h, w = image.shape[-2:]
        h0, w0 = self.noise.shape[-2:]
        noise = self.noise.repeat(1, 1, (h + h0 - 1) // h0, (w + w0 - 1) // w0)[..., :h, :w]
        return image[:, None] + noise[None]

    def reduce(self, grads: Tensor) -> Tensor:
        """``[N,S,3,H,W] -> [N,3,H,W]``: :math:`\\frac1S \\sum_s |g_s|`."""
        return grads.abs().mean(dim=1)


def make_samples(kind: str | None, sampling: Sampling, size: tuple[int, int]) -> nn.Module | None:
    """The sampler of a method's ``samples`` kind (None: the gradient at ``x`` itself)."""
    if kind is None:
        return None
    if kind == "path":
        return PathSamples(sampling.steps)
    if kind == "noise":
        return NoiseSamples(sampling.steps, sampling.noise, sampling.seed, size)
    raise ValueError(f"unknown sampling kind {kind!r}")
