"""What every command shares: one-line errors and exit codes (0 ok, 1 failure, 2 usage)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

__all__ = [
    "FLAGS",
    "ArgumentParser",
    "add_engine_flags",
    "add_model_flags",
    "add_overlay_flags",
    "flag_namer",
    "input_size",
    "log",
    "model_source",
    "overlay_options",
    "run_main",
]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit code 2) that points at --help, and for a
    value that is not one of a flag's choices but near one, the one meant
    (``--method gradcampp``: "unknown method 'gradcampp'; did you mean gradcam++?")."""

    def error(self, message: str) -> NoReturn:
        tail = (
            f" (see {self.prog} --help)" if message.endswith("?") else f"; see {self.prog} --help"
        )
        self.exit(2, f"{self.prog}: error: {message}{tail}\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        from ..words import closest

        if action.choices is not None and value not in action.choices and isinstance(value, str):
            near = closest(value, [str(c) for c in action.choices])
            if near is not None:
                what = action.dest.replace("_", " ")
                raise argparse.ArgumentError(
                    action, f"unknown {what} '{value}'; did you mean {near}?"
                )
        super()._check_value(action, value)


# library parameters whose flag is named otherwise; the others are ``--`` + the name with - for _
FLAGS = {
    "out_dir": "--out",
    "path": "--model",  # explain-serve's model file
    "repo_dir": "--triton-repo",
    "name": "--triton-name",
    "overlay": "--overlay-output",
    "settle_s": "--settle",
    "request_timeout_s": "--request-timeout",
    "target": "--class-index",
    "trust": "--trust-checkpoint",
}


def flag_namer(flags: Mapping[str, str] | None = None) -> Callable[[str], str]:
    """How the commands name the library's parameters: ``flags[name]`` (default :data:`FLAGS`),
    else ``--name`` with ``_`` as ``-`` (``input_size`` -> ``--input-size``)."""
    names = FLAGS if flags is None else flags
    return lambda name: names.get(name) or "--" + name.replace("_", "-")


def run_main(
    prog: str, body: Callable[[], int], debug: bool, flags: Mapping[str, str] | None = None
) -> int:
    """Run ``body``; turn errors into one line on stderr and an exit code.

    A bad argument (:class:`.OptionError`) is worded with the command's flags (see
    :func:`flag_namer`). A traceback is shown only with ``--debug``.
    """
    from ..errors import ExplainExportError, OptionError, first_line

    try:
        return body()
    except ExplainExportError as exc:
        if debug:
            raise
        message = exc.worded(flag_namer(flags)) if isinstance(exc, OptionError) else str(exc)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # disk full, permissions, ... while writing
        if debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"{prog}: error: {exc.strerror or exc}{where}; no half-written file was left",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            raise
        print(
            f"{prog}: error: {first_line(exc)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def add_engine_flags(p: argparse.ArgumentParser, engine_help: str, where: str) -> None:
    """``--engine local|ray``, ``--workers`` and ``--address`` (the commands that can run on a
    Ray Data actor pool); ``engine_help``: what each engine does; ``where``: what must be at the
    same path on every node of a cluster."""
    ray = p.add_argument_group("engine (a large image set: Ray Data)")
    ray.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help=engine_help + " (.onnx models; pip install 'explain-export[batch]'). Default: local",
    )
    ray.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="with --engine ray: actors in the pool (default: the CPUs Ray sees / --threads)",
    )
    ray.add_argument(
        "--address",
        metavar="ADDR",
        help="with --engine ray: join this Ray cluster (e.g. auto, or ray://head:10001); "
        f"{where} must be at the same path on every node. Default: start Ray here",
    )


def log(message: str) -> None:
    """A progress line on stderr, so stdout keeps only the results."""
    print(message, file=sys.stderr, flush=True)


def add_overlay_flags(group: Any) -> None:
    """The image flags ``explain-run`` and ``explain-serve`` share (:class:`.OverlayOptions`),
    with the library's defaults and choices."""
    from ..artifact.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, RESIZE_MODES
    from ..artifact.overlay import DEFAULT_ALPHA, DEFAULT_COLORMAP

    group.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"heat weight in the blend (default: {DEFAULT_ALPHA})",
    )
    group.add_argument(
        "--colormap",
        default=DEFAULT_COLORMAP,
        help=f"an OpenCV colormap name (default: {DEFAULT_COLORMAP})",
    )
    group.add_argument(
        "--seed-blend",
        action="store_true",
        help="blend as alpha*heat + image rescaled by its max (no clipping; darker), instead "
        "of saturating at 255",
    )
    group.add_argument(
        "--resize",
        choices=RESIZE_MODES,
        default="stretch",
        help="fit images to the export size by stretching, or by scaling and padding "
        "(aspect kept); the overlay is drawn at the original size either way (default: stretch)",
    )
    group.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse images larger than this, from the file's header before decoding "
        f"(default: {DEFAULT_MAX_PIXELS:,})",
    )
    group.add_argument(
        "--max-overlay-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        metavar="PX",
        help="draw overlays and heatmaps at most this long on the longer side: a larger image "
        "is decoded (JPEG) or shrunk to it first, which bounds each image's memory; 0 draws at "
        f"the file's size (default: {DEFAULT_MAX_SIDE})",
    )


def overlay_options(cls: Any, args: argparse.Namespace, **fields: Any) -> Any:
    """``cls`` (an :class:`.OverlayOptions`) from the shared image flags and ``fields``; a bad
    value is an :class:`.OptionError`, which :func:`run_main` words with the flag's name."""
    return cls(
        alpha=args.alpha,
        colormap=args.colormap,
        seed_blend=args.seed_blend,
        resize=args.resize,
        max_pixels=args.max_pixels,
        max_overlay_side=args.max_overlay_side,
        **fields,
    )


def add_model_flags(group: Any) -> None:
    """Where the model comes from (:class:`.ModelSource`): the flags ``explain-export`` and
    ``explain-bench`` share."""
    group.add_argument(
        "--ckpt",
        metavar="PATH",
        help="checkpoint: a state_dict, a training dict holding one under "
        "state_dict/model/model_state_dict, or (with --trust-checkpoint) a "
        "pickled nn.Module. Default: the embedded EfficientNet-Lite0",
    )
    group.add_argument(
        "--arch",
        metavar="MOD:FN",
        help="callable that builds the model, as package.module:callable "
        "(e.g. torchvision.models:resnet50). Default: none (a --ckpt state_dict needs it; with "
        "neither flag, the embedded EfficientNet-Lite0)",
    )
    group.add_argument(
        "--arch-kwargs",
        metavar="JSON",
        default="{}",
        help="keyword arguments for --arch, as a JSON object (default: {})",
    )
    group.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a checkpoint that unpickles Python objects; this runs code from "
        "the file, so only use it for files you trust",
    )


def model_source(args: argparse.Namespace) -> Any:
    """The :class:`.ModelSource` the model flags describe, checked before anything loads
    (:meth:`.ModelSource.check`: the JSON of --arch-kwargs, the checkpoint file is there,
    --arch names a callable)."""
    from ..builder.model.source import ModelSource

    source = ModelSource(args.ckpt, args.arch, args.arch_kwargs, args.trust_checkpoint)
    source.check()
    return source


DEFAULT_SIZE = (224, 224)  # a classifier's; a detector's follows the model (YOLO: 640)


def input_size(args: argparse.Namespace) -> tuple[int, int]:
    """``--input-size H W``, checked (both positive) before anything loads."""
    from ..builder.explainer import check_input_size

    given = args.input_size or DEFAULT_SIZE
    return check_input_size((given[0], given[1]))


def write_triton(args: Any, paths: dict[str, str], metadata: dict[str, Any]) -> None:
    """With ``--triton-repo``: the Triton model repository of an export's files, its folders
    printed."""
    if not args.triton_repo:
        return
    from ..artifact.triton import write_triton_repo

    folders = write_triton_repo(
        paths,
        metadata,
        args.triton_repo,
        args.triton_name,
        args.max_batch_size,
        args.instances,
        args.kind,
        overwrite=True,
    )
    for folder in folders:
        print(f"wrote {folder}")
