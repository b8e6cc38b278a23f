"""``explain-bench`` for a detector: whether the model is one, its flags checked, the detector
bench run (:func:`..bench.detection.run_detection_bench`) and its report written.

A model whose output is YOLO-style raw predictions ``[N, 4+K, A]``, a torchvision one-stage
detector or a torchvision R-CNN (:func:`..builder.detect_build.find_detector`) takes this path; the
classifier bench's flags that mean nothing for it are refused in one line, as
``--max-detections`` is on a classifier.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from typing import Any

from ..errors import UsageError
from ._common import log
from ._detect import _size, find_detector

__all__ = ["CLASSIFIER_ONLY", "detector_of", "run_detector_bench"]

# the classifier bench's flags a detector refuses: attribute -> (its flag, the value it is off)
CLASSIFIER_ONLY: dict[str, tuple[str, Any]] = {
    "method": ("--method", "auto"),
    "head": ("--head", None),
    "methods": ("--methods", ""),
    "top_k": ("--top-k", None),
    "skip": ("--skip", None),
    "profile_runs": ("--profile-runs", None),
    "channels_last": ("--channels-last", False),
    "device": ("--device", "cpu"),
}
_WHY = {
    "--method": "it times gradcam and eigencam both",
    "--device": "it runs on ONNX Runtime's CPU provider",
}


def detector_of(args: argparse.Namespace, source: Any, size: tuple[int, int]) -> tuple[Any, Any]:
    """``(the loaded model, (detector, output key))`` where the model is a detector;
    ``(the loaded model or None, None)`` where it is not (the embedded default is not loaded
    here), after refusing ``--max-detections`` for it."""
    loaded = found = None
    if not source.embedded:
        loaded = source.load(size)
        found = find_detector(loaded.model, size, None)
    if found is None and args.max_detections is not None:
        raise UsageError(
            "--max-detections applies to detectors (raw predictions [N,4+K,A], a torchvision "
            "detector or R-CNN); this model is not one, so leave it out"
        )
    return loaded, found


def _check_flags(args: argparse.Namespace) -> None:
    for attr, (flag, off) in CLASSIFIER_ONLY.items():
        if getattr(args, attr) != off:
            why = _WHY.get(flag, "it applies to a classifier's bench")
            raise UsageError(f"{flag} does not apply to a detector's bench ({why}); leave it out")


def run_detector_bench(
    args: argparse.Namespace, argv: list[str], prog: str, config: Any, loaded: Any, found: Any
) -> int:
    """Time the detector's variants and write the report; ``config``: the classifier bench's
    :class:`.BenchConfig` from the same flags (its batch sizes, rounds, threads, ...)."""
    from ..bench.detection import DETECTION_VARIANTS, run_detection_bench
    from ..bench.detection_report import detection_console_lines, write_detection
    from ..builder.detect_build import build_detector

    _check_flags(args)
    detector, _ = found
    size = _size(args, detector.size_step)
    explainer = build_detector(
        loaded.model,
        size,
        "gradcam",
        [args.layer] if args.layer else None,
        None,
        10 if args.max_detections is None else args.max_detections,
    )
    config = dataclasses.replace(config, skip=frozenset(), profile_runs=0)
    say = (lambda _msg: None) if args.quiet else log
    say(
        f"model: {loaded.description}; detector ({detector.family}), {detector.num_classes} "
        f"classes, up to {explainer.max_detections} detections, input {size[0]}x{size[1]}"
    )
    rounds = config.warmup + config.iters
    sizes = ",".join(map(str, config.batch_sizes))
    say(
        f"plan: {len(DETECTION_VARIANTS)} variants ({', '.join(DETECTION_VARIANTS)}), {rounds} "
        f"rounds ({config.warmup} warm-up + {config.iters} timed) at each batch size {sizes}; "
        "besides: 3 ONNX exports"
    )
    bar: Any = None

    def tick(batch: int) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            total = len(config.batch_sizes) * rounds
            bar = tqdm(total=total, unit="round", file=sys.stderr, dynamic_ncols=True)
        bar.set_postfix_str(f"batch {batch}", refresh=False)
        bar.update(1)

    try:
        result = run_detection_bench(
            explainer,
            config,
            model=loaded.description,
            command=shlex.join([prog, *argv]),
            log=say,
            tick=tick,
        )
    finally:
        explainer.remove()
        if bar is not None:
            bar.close()
    paths = write_detection(result, args.out)
    for line in detection_console_lines(result):
        print(line)
    for path in paths.values():
        print(f"wrote {path}")
    return 0
