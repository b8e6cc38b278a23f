"""``explain-bench``: time the explainer eager, TorchScript, ONNX Runtime and torch.compile,
against the bare model, an autograd Grad-CAM and a pytorch-grad-cam style one; write JSON,
Markdown and a PNG plot.

Without --ckpt it measures the embedded default model, EfficientNet-Lite0 with ImageNet weights.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from typing import Any

from ..builder.maths.methods import AUTO, CHOICES, METHODS
from ..errors import DeviceFallbackWarning
from ._common import ArgumentParser, add_model_flags, input_size, log, model_source, run_main

__all__ = ["EPILOG", "PROG", "build_parser", "main"]

PROG = "explain-bench"

# the flags --quick sets (a flag given keeps its value), and their values without it
FULL = {"batch_sizes": "1,8,32", "warmup": 5, "iters": 30, "profile_runs": 100, "skip": ""}
QUICK = {"batch_sizes": "1", "warmup": 2, "iters": 10, "profile_runs": 0, "skip": None}
QUICK_VARIANTS = ("eager", "ort")  # --quick skips the others

EPILOG = """\
variants (all on the same inputs, interleaved round by round):
  eager         the explainer in PyTorch (inference_mode)       the reference
  eager_logits  the model alone, logits only                    baseline for the heatmap head
  torchscript   trace + freeze, as explain-export writes it
  ort           the exported ONNX explainer on ONNX Runtime (CPU; CUDA provider with --device cuda)
  ort_logits    the model alone, exported the same way
  compile       torch.compile of the explainer (slow to compile on few cores: --skip compile)
  autograd      Grad-CAM with hooks and backward, then the same resize and min-max
  eager_gradcam the explainer with --method gradcam, eager (autograd from the tap on)
  ort_gradcam   the gradcam explainer exported (gradient lowered into the graph) on ORT
                (both skipped where the explainer is gradcam already)
  gradcam_numpy Grad-CAM the way pytorch-grad-cam computes it: hooks copy the map and its
                gradient to the host, backward, the map in numpy, min-max, cv2.resize per image
  ort_numpy     the ort file through explain_export.runtime.OnnxExplainer, numpy in and out,
                as explain-run runs it
  ort_cudagraph the ort file on the CUDA provider with CUDA graphs, one per batch size
                (--device cuda only; not measured where ORT refuses them)
  ort_<method>  with --methods, one per method: the same model and layer exported with that
                method, on ORT as ort is (gradcam's is ort_gradcam); "not measured: <why>"
                where the layer cannot take it (cam without GAP + one Linear after the map).
                With cam among them, each method's time over ort_cam is reported too
  ort_<method>_top<K>  with --methods and --top-k K: that method exported with --top-k K
                (heatmap [N,K,H,W]); its time over ort_<method> is reported

a detector (a model whose output is raw predictions [N,4+K,A], a torchvision one-stage
detector or R-CNN; --max-detections D, default 10; input 640x640 unless --input-size) gets its
own variants, all on the CPU:
  eager         the eager detection explainer, gradcam (D maps)   the reference
  ort_nms       the detector with its NMS in the graph, no maps    the baseline
                (a Mask R-CNN's with its masks: the model's own outputs)
  ort_gradcam   the detection explainer with D Grad-CAM maps, as explain-export writes it
  ort_eigencam  the same with eigencam (one map per image)
  reported: each one's time over ort_nms; --method, --head, --methods, --top-k, --skip,
  --profile-runs, --channels-last and --device cuda are refused

timing: in each round every variant takes one turn (the order rotates): an idle pause
(--settle), --prime untimed calls, one timed call. Reported: median, p90, p99 ms per batch,
images/s, page faults per call; ratios from the same run. --targets: also the project's own
goals (set for EfficientNet-Lite0 224x224 on 2 threads), met or not.
On the CPU, ONNX Runtime's profiler also measures the heatmap head: the kernel time of the
nodes that logits does not depend on, over that of the rest (--profile-runs).

examples:
  explain-bench --quick                                     eager vs ORT, in well under a minute
  explain-bench --threads 2 --batch-sizes 1,8,32 --out bench/ --overwrite
  explain-bench --threads 2 --channels-last --tuned-malloc     eager PyTorch at its best
  explain-bench --device cuda --batch-sizes 1,8,32,64 --skip compile
  explain-bench --ckpt model.pt --arch torchvision.models:resnet50 --layer layer4
  explain-bench --threads 2 --batch-sizes 1,8 --skip compile --methods all    every method
  explain-bench --threads 2 --batch-sizes 1,8 --methods cam,gradcam --top-k 5  top-5 vs top-1

exit codes: 0 ok, 1 failure, 2 usage (bad flag, path, layer, or --device cuda without CUDA).
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Benchmark the explainer (image -> logits, heatmap) eager, TorchScript, "
        "ONNX Runtime and torch.compile, against the bare model and an autograd Grad-CAM.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m = p.add_argument_group("model (as in explain-export)")
    add_model_flags(m)
    m.add_argument(
        "--layer",
        metavar="NAME",
        help="the map to explain, NAME[:input][@CALL] (default: as explain-export, the map "
        "that the classifier's global pooling takes)",
    )
    m.add_argument(
        "--method",
        choices=CHOICES,
        default=AUTO,
        help="as explain-export (default: auto, cam where exact, else gradcam)",
    )
    m.add_argument(
        "--head",
        metavar="NAME",
        help="for cam, the nn.Linear after the pooling (default: found automatically)",
    )
    m.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="image size (default: 224 224; a detector: 640 640)",
    )
    m.add_argument(
        "--max-detections",
        type=int,
        metavar="D",
        help="a detector: the detections (and maps) per image (default: 10)",
    )
    m.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    b = p.add_argument_group("benchmark")
    b.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    b.add_argument(
        "--quick",
        action="store_true",
        help="how fast is my model, in well under a minute: the eager explainer against the "
        "ONNX explainer on ONNX Runtime alone (one ONNX export; no TorchScript, torch.compile, "
        "baselines or profiler), batch size 1, 2 warm-up + 10 timed rounds; flags given "
        "explicitly keep their values",
    )
    b.add_argument(
        "--batch-sizes",
        metavar="LIST",
        help=f"comma list (default: {FULL['batch_sizes']}; --quick: {QUICK['batch_sizes']})",
    )
    b.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch.set_num_threads(N) and ONNX Runtime intra_op_num_threads=N "
        "(default: torch's default)",
    )
    b.add_argument(
        "--warmup",
        type=int,
        metavar="N",
        help=f"warm-up rounds (default: {FULL['warmup']}; --quick: {QUICK['warmup']})",
    )
    b.add_argument(
        "--iters",
        type=int,
        metavar="N",
        help=f"timed rounds (default: {FULL['iters']}; --quick: {QUICK['iters']})",
    )
    b.add_argument(
        "--prime",
        type=int,
        default=1,
        metavar="N",
        help="untimed calls of a variant right before each of its timed calls, so it runs with "
        "its own weights in cache (default: 1)",
    )
    b.add_argument(
        "--settle",
        type=float,
        default=100.0,
        metavar="MS",
        help="idle pause before each variant's turn, so the thread pools of the variant before "
        "have gone to sleep; ONNX Runtime's threads spin for 20-50 ms after a run (default: 100)",
    )
    b.add_argument(
        "--skip",
        metavar="LIST",
        help="comma list of the variants listed below not to run (any but eager), e.g. "
        "compile or compile,autograd,gradcam_numpy (default: none)",
    )
    b.add_argument(
        "--methods",
        default="",
        metavar="LIST",
        help="also time these methods on ONNX Runtime, one variant ort_<method> each, on the "
        f"same model and layer, in the same rounds: all, or a comma list of {', '.join(METHODS)} "
        "(default: none)",
    )
    b.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="with --methods: also time each of those methods exported with --top-k K (K maps "
        "per image), one variant ort_<method>_top<K> each, and report its time over the "
        "method's top-1 (default: off)",
    )
    b.add_argument(
        "--profile-runs",
        type=int,
        metavar="N",
        help="CPU: profiled runs of the ORT explainer per batch size for the heatmap head's "
        "share, fewer where they would take over 5 s; 0: no profile "
        f"(default: {FULL['profile_runs']}; --quick: {QUICK['profile_runs']})",
    )
    b.add_argument(
        "--channels-last",
        action="store_true",
        help="run the torch variants (model and input) in channels-last memory layout",
    )
    b.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="glibc: keep freed memory in the heap (mmap and trim thresholds 1 GiB), so eager "
        "PyTorch stops page-faulting its activations on every call, as with jemalloc",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--out",
        metavar="DIR",
        default="bench",
        help="folder for bench.json, bench.md, bench.png (default: ./bench)",
    )
    o.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the report files of an earlier run in DIR (default: refuse)",
    )
    o.add_argument(
        "--targets",
        action="store_true",
        help="also judge the project's own speed goals (explain_export/data/bench_targets.json, "
        "set for the embedded EfficientNet-Lite0 at 224x224 on 2 threads; a detector's for "
        "YOLO11n at 640x640), met or not; for "
        "the project's runs, not a verdict on your model (default: the ratios alone)",
    )
    o.add_argument(
        "--save-models",
        action="store_true",
        help="also keep the ONNX files and ONNX Runtime's optimized graphs in DIR/models",
    )
    o.add_argument("--quiet", action="store_true", help="no progress bar, no progress lines")
    o.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _preset(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that ``--quick`` sets: :data:`QUICK` with it, else :data:`FULL`, each one
    given on the command line kept."""
    from ..errors import UsageError

    if args.quick and (args.skip or args.methods or args.top_k is not None):
        raise UsageError(
            "--quick times the eager and the ONNX explainer alone; drop --skip, --methods and "
            "--top-k, or --quick"
        )
    preset = dict(QUICK if args.quick else FULL)
    if args.quick:
        from ..bench.config import VARIANTS

        preset["skip"] = ",".join(v for v in VARIANTS if v not in QUICK_VARIANTS)
    given = {k: getattr(args, k) for k in preset if getattr(args, k) is not None}
    return {**preset, **given}


def _batch_sizes(text: str) -> tuple[int, ...]:
    from ..errors import UsageError

    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise UsageError(f"--batch-sizes takes a comma list of integers, got '{text}'") from exc
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes takes positive integers, got '{text}'")
    return tuple(dict.fromkeys(sizes))


def _methods(text: str) -> tuple[str, ...]:
    """``--methods``: ``all``, or the names in order, once each (checked by the config)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    return tuple(METHODS) if names == ["all"] else tuple(dict.fromkeys(names))


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from ..bench import BenchConfig, load_explainer, run_bench
    from ..bench.report import MODELS, check_out_dir, console_lines, write_report
    from ..builder.export.export import DEFAULT_OPSET
    from ._bench_detect import detector_of, run_detector_bench

    preset = _preset(args)
    config = BenchConfig(
        batch_sizes=_batch_sizes(preset["batch_sizes"]),
        device=args.device,
        threads=args.threads,
        warmup=preset["warmup"],
        iters=preset["iters"],
        prime=args.prime,
        settle_s=args.settle / 1000,
        channels_last=args.channels_last,
        tuned_malloc=args.tuned_malloc,
        skip=frozenset(s.strip() for s in preset["skip"].split(",") if s.strip()),
        opset=args.opset or DEFAULT_OPSET,
        models_dir=os.path.join(args.out, MODELS) if args.save_models else None,
        profile_runs=preset["profile_runs"],
        methods=_methods(args.methods),
        top_k=args.top_k,
        targets=args.targets,
    )
    config.check()  # before the model loads: --device cuda without CUDA is a usage error
    from ..artifact.providers import quiet_onnxruntime_logs

    # a CUDA provider that does not start is the ort variants' status line (theirs: --debug)
    quiet_onnxruntime_logs(not args.debug)
    if not args.debug:
        warnings.simplefilter("ignore", DeviceFallbackWarning)
    size = input_size(args)
    source = model_source(args)  # the checkpoint file is there, --arch resolves
    check_out_dir(args.out, args.overwrite, args.save_models)  # before the model loads
    loaded, detector = detector_of(args, source, size)
    if detector is not None:
        return run_detector_bench(args, argv, PROG, config, loaded, detector)
    explainer, description = load_explainer(
        source, args.layer, args.method, args.head, size, loaded
    )
    say = (lambda _msg: None) if args.quiet else log
    info = explainer.plan
    say(f"model: {description}; {info.method} at {info.layer}, input {size[0]}x{size[1]}")
    plan = config.describe(info.method, explainer.method.needs_gradient)
    say(plan + ("" if args.quick else "; --quick: eager vs ORT alone, in well under a minute"))
    rounds = len(config.batch_sizes) * (config.warmup + config.iters)
    bar: Any = None  # a tqdm bar over the rounds, opened when the first round ends

    def tick(batch: int) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=rounds, unit="round", file=sys.stderr, dynamic_ncols=True)
        bar.set_postfix_str(f"batch {batch}", refresh=False)
        bar.update(1)

    def progress(message: str) -> None:
        if bar is None:
            say(message)
        else:
            bar.write(message, file=sys.stderr)

    try:
        result = run_bench(
            explainer,
            config,
            model=description,
            command=shlex.join([PROG, *argv]),
            log=progress,
            tick=tick,
        )
    finally:
        if bar is not None:
            bar.close()
    paths = write_report(result, args.out)
    for line in console_lines(result):
        print(line)
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: _run(args, argv), args.debug)


if __name__ == "__main__":
    sys.exit(main())
