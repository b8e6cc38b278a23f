"""explain-export's flags of the sampling methods (``--steps``, ``--noise``, ``--seed``) and
of the methods at the image, which take no ``--layer``."""

from __future__ import annotations

import argparse
from typing import Any

from ..builder.maths.methods import METHODS

__all__ = ["IMAGE", "PIXEL_ONLY", "add_sampling_flags", "check_sampling"]

IMAGE = "image"  # the plan's layer of a method at the image (builder.plan.IMAGE)
PIXEL_ONLY = {m.name for m in METHODS.values() if m.at_image and not m.layer_map}


def add_sampling_flags(group: Any) -> None:
    """``--steps``, ``--noise`` and ``--seed`` on the argument group ``group``."""
    group.add_argument(
        "--steps",
        type=int,
        metavar="S",
        help="integrated-gradients: the Gauss-Legendre steps on the path from a black image; "
        "smoothgrad: the noisy copies. They run as one batch of S images inside the graph "
        "(default: 32)",
    )
    group.add_argument(
        "--noise",
        type=float,
        metavar="SIGMA",
        help="smoothgrad: the noise's standard deviation, in the [0,1] image's units "
        "(default: 0.15)",
    )
    group.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="smoothgrad: the seed of the noise, drawn once at export and stored in the graph, "
        "so the file is deterministic (default: 0)",
    )


def check_sampling(args: argparse.Namespace) -> Any:
    """``--steps``, ``--noise``, ``--seed`` as a checked :class:`.sampling.Sampling`; an
    :class:`.OptionError` where the method samples nothing or the flag does not apply."""
    from ..builder.maths import methods
    from ..builder.maths.sampling import Sampling
    from ..errors import OptionError

    given = {
        k: getattr(args, k) for k in ("steps", "noise", "seed") if getattr(args, k) is not None
    }
    spec = None if args.method == methods.AUTO else methods.get(args.method)
    kind = None if spec is None else spec.samples
    for key in given:
        if kind is None or (key != "steps" and kind != "noise"):
            raise OptionError(
                key,
                "{name} sets {what}; method {m} takes no such setting",
                what="the samples of integrated-gradients and smoothgrad"
                if key == "steps"
                else "smoothgrad's noise",
                m=args.method,
            )
    return Sampling(**given).check() if kind is not None else None
