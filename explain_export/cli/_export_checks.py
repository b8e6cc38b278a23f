"""``explain-export``'s flags, checked before anything loads.

A bad size, format, normalization, label file, checkpoint path, output folder or ``--arch``,
flags that conflict (:func:`.conflicts.check_options`), and a label count that does not fit a
class count the flags tell (:meth:`.ModelSource.known_classes`) fail in about the time it takes
to import torch, not after the model is read and built.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from ._common import input_size, model_source
from ._sampling import check_sampling

__all__ = ["COCO", "Checked", "check_flags", "check_label_count"]

COCO = ("coco", "coco80", "coco91")  # --labels names of the shipped COCO sets


@dataclass(frozen=True)
class Checked:
    """The flags as values, each checked."""

    source: Any  # a ModelSource whose checkpoint file is there and whose --arch resolves
    size: tuple[int, int]
    formats: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: list[str] | None  # from --labels; None: the model's own, if it has them
    background: int | None
    sampling: Any = None  # --steps, --noise, --seed as a Sampling (a sampling method only)


def check_flags(args: argparse.Namespace) -> Checked:
    """Every check of the flags that needs no model; an :class:`.OptionError` or
    :class:`.UsageError` for the first that fails."""
    from ..builder.conflicts import check_options
    from ..builder.export.export import check_formats
    from ..builder.plan import IMAGENET_MEAN, IMAGENET_STD, check_norm
    from ..errors import OptionError

    size = input_size(args)
    listing = args.list_layers is not None  # lists the layers and exits: no export to check
    if not listing:
        check_options(
            args.method,
            args.class_index,
            args.top_k,
            overlay=args.overlay_output,
            overlay_alpha=args.overlay_alpha,
            head=args.head,
            layers=args.layer if args.layer and len(args.layer) > 1 else None,
            class_input=args.class_input,
            fuse=args.fuse,
            faithfulness=args.faithfulness,
        )
    formats = check_formats(tuple(f.strip() for f in args.formats.split(",") if f.strip()))
    sampling = check_sampling(args)
    _detector_values(args)
    mean, std = check_norm(args.mean or IMAGENET_MEAN, args.std or IMAGENET_STD)
    background = _background(args.background)
    if args.list_layers is None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise OptionError("out_dir", "{name} '{path}' is a file; give a folder", path=args.out)
    labels = _labels(args.labels)
    if args.triton_repo:
        from ..artifact.triton import check_repo

        check_repo(
            args.triton_repo,
            list(formats),
            args.triton_name,
            args.max_batch_size,
            args.instances,
            args.kind,
            overwrite=True,
        )
    source = model_source(args)  # last: --arch imports its module
    if labels is not None and not listing and args.labels not in COCO:
        known = source.known_classes()
        if known is not None:
            check_label_count(
                labels, args.labels, known[0], known[1].replace("arch_kwargs", "--arch-kwargs")
            )
        head = source.checkpoint_classes(len(labels))
        if head is not None:
            check_label_count(
                labels, args.labels, head[0], f"the checkpoint's last layer '{head[1]}'"
            )
    return Checked(source, size, formats, tuple(mean), tuple(std), labels, background, sampling)


def check_label_count(labels: list[str], given: str, classes: int, why: str = "") -> None:
    """A :class:`.UsageError` that says how to fix it where ``--labels`` (``given``) does not
    name one label per class of a model with ``classes`` classes (``why``: how that is known)."""
    from ..errors import UsageError

    if len(labels) == classes:
        return
    what = (
        f"--labels imagenet names {len(labels)}"
        if given == "imagenet" and not os.path.exists(given)
        else f"--labels '{given}' has {len(labels)} lines"
    )
    known = f" ({why})" if why else ""
    raise UsageError(
        f"the model has {classes} classes{known} but {what}; pass a file with one label per "
        "class, in class order, or leave --labels out"
    )


def _detector_values(args: argparse.Namespace) -> None:
    """``--max-detections`` at least 1, the thresholds in [0, 1] (where given)."""
    from ..errors import OptionError

    if getattr(args, "max_detections", None) is not None and args.max_detections < 1:
        raise OptionError(
            "max_detections", "{name} must be at least 1, got {v}", v=args.max_detections
        )
    for attr in ("score_threshold", "iou_threshold"):
        value = getattr(args, attr, None)
        if value is not None and not 0 <= value <= 1:
            raise OptionError(attr, "{name} must be in [0, 1], got {v}", v=value)


def _labels(given: str | None) -> list[str] | None:
    """``--labels``: the shipped ImageNet names for ``imagenet`` (unless a file has that name),
    else the file's non-empty lines; None without the flag."""
    from ..errors import UsageError

    if given is None:
        return None
    if given == "imagenet" and not os.path.exists(given):
        from ..builder.model.zoo import imagenet_labels

        return list(imagenet_labels())
    if given in COCO and not os.path.exists(given):  # a detector's 91 ids: coco91, by count
        from ..artifact.labels import label_set

        return label_set("coco80" if given == "coco" else given)
    try:
        with open(given, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except OSError as exc:
        raise UsageError(f"cannot read --labels '{given}': {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"--labels '{given}' is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"offset {exc.start}); save it as UTF-8, one label per line"
        ) from exc


def _background(text: str) -> int | None:
    """``--background``: a class index, or ``none``."""
    from ..errors import OptionError

    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise OptionError(
            "background", "{name} takes a class index or none, not '{t}'", t=text
        ) from None
