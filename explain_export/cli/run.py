"""``explain-run``: heatmap overlays from an exported explainer (.onnx, .torchscript.pt, .pt2).

With an .onnx model this command never imports torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..errors import DeviceFallbackWarning, first_line
from ..words import count
from ._common import (
    ArgumentParser,
    add_engine_flags,
    add_overlay_flags,
    log,
    overlay_options,
    run_main,
)

__all__ = ["DEFAULT_MODEL", "EPILOG", "PROG", "build_parser", "main"]

PROG = "explain-run"
DEFAULT_MODEL = os.path.join("explainer", "explainer.onnx")
_SHOWN = 10  # images listed in the summary; predictions.jsonl has them all

EPILOG = """\
examples:
  explain-run                                         demo: scikit-image's photos, default model
  explain-run --model explainer/explainer.onnx --images photos/ --out overlays/ --sheet
  explain-run --model out/explainer.torchscript.pt --images a.jpg b.png --save-heatmaps
  explain-run --engine ray --workers 4 --images big_tree/ --out overlays/ --resume

outputs in --out: NAME.overlay.png per image (NAME.heatmap.png/.npy with --save-heatmaps),
predictions.jsonl (file, top-k labels and scores, or the error), sheet.png with --sheet;
with --engine ray also predictions.parquet. Each row's "explained" names the class the
heatmap explains (class, label, softmax score, outputs): the top-1, the --class-index, or the
class fixed at export; the console line and the sheet caption name it too ("map: espresso
(1.2e-03); top-1 Egyptian cat (0.78)"). A model exported with --top-k K explains the K
best classes of each image: NAME.overlay.png is the best one's, NAME.top2.overlay.png ...
NAME.topK.overlay.png the others' (and NAME.topJ.heatmap.*); each row's "explained" lists
the K classes (class, label, score, outputs), and the sheet shows original | K overlays.
A segmentation model's rows name the class its heatmap explains and its region instead of a
top-k: class, label, pixel_share (the fraction of the image's pixels predicted as it), and
predicted (the --topk classes with most pixels); its overlays outline the region.
A detection model's rows list its "detections" instead (box [x1, y1, x2, y2] in the image's
own pixels, class, label, score): NAME.overlay.png is the best detection's map with every box
drawn, --per-detection adds NAME.det0.overlay.png ... (one per detection, its map and box),
and the sheet shows the image, then one overlay per detection.
While a run goes, predictions.partial.jsonl holds the rows of the batches done so far;
--resume reads it after a stop.

overlay = saturate(alpha * colormap(255 * heatmap) + image), in uint8 BGR, at the original
resolution, or at most --max-overlay-side on the longer side (the image is shrunk first, and
the graph input fitted from that); --seed-blend: s = alpha * heat + image; s = s / max(s);
overlay = 255 * s. An image over --max-pixels is refused from its header, undecoded, and the
run goes on.

exit codes: 0 all images done, 1 some images failed, 2 usage error (nothing was processed).
"""


def build_parser() -> argparse.ArgumentParser:

    p = ArgumentParser(
        prog=PROG,
        description="Draw heatmap overlays with an exported explainer, the way a server runs it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        metavar="PATH",
        help=f"explainer.onnx, .torchscript.pt or .pt2, or the folder explain-export wrote "
        "(its explainer.onnx, else .torchscript.pt, else .pt2; with --engine ray its .onnx). "
        f"Default: {DEFAULT_MODEL}; for the demo it is exported first if missing",
    )
    p.add_argument(
        "--images",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="image files and/or folders (their image files, subfolders included; outputs keep "
        "the path below the folder). "
        "Default: a demo on photos that scikit-image ships, with --sheet (it replaces its own "
        "earlier outputs)",
    )
    p.add_argument(
        "--out", metavar="DIR", default="overlays", help="output folder (default: overlays)"
    )
    p.add_argument(
        "--batch-size", type=int, default=8, metavar="N", help="images per run (default: 8)"
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda uses ONNX Runtime's CUDA provider or TorchScript on CUDA where they "
        "work, else the CPU; the backend used is printed (default: cpu)",
    )
    p.add_argument(
        "--no-cuda-graphs",
        action="store_true",
        help="with --device cuda: run every batch without CUDA graph replay (default: each "
        "batch size is captured once, then replayed)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads: the model's, and the local engine's for reading and drawing images "
        "(default: the runtime's, and one per CPU; with --engine ray: per worker, default 1)",
    )
    add_engine_flags(
        p,
        "local: this process, batch by batch; ray: a Ray Data actor pool, one ONNX Runtime "
        "session per worker",
        "the images and --out",
    )
    add_overlay_flags(p)
    p.add_argument(
        "--topk",
        type=int,
        default=5,
        metavar="K",
        help="labels per image (a segmentation model: the classes with most pixels; default: 5)",
    )
    p.add_argument(
        "--class-index",
        type=int,
        metavar="K",
        help="explain class K in every image instead of each image's top-1 (a segmentation "
        "model: its class with most pixels); the model needs the class input: explain-export "
        "--class-input; not a --top-k export, whose graph picks its classes (default: -1, each "
        "image's top-1)",
    )
    p.add_argument(
        "--sheet",
        action="store_true",
        help="also write sheet.png: original | heatmap | overlay (a --top-k export: original | "
        "one overlay per class; a detector: original | one overlay per detection)",
    )
    p.add_argument(
        "--sheet-height",
        type=int,
        default=200,
        metavar="PX",
        help="panel height in the sheet, in pixels (default: 200)",
    )
    p.add_argument(
        "--save-heatmaps", action="store_true", help="also write NAME.heatmap.png and .npy"
    )
    p.add_argument(
        "--per-detection",
        action="store_true",
        help="a detection export: also write NAME.detJ.overlay.png per detection J (from 0: "
        "its own map and box; NAME.overlay.png is the best one's map with every box)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the images an earlier run into --out finished (their outputs exist and "
        "predictions list them, also after Ctrl-C) and explain the rest",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _check_args(args: argparse.Namespace) -> None:
    from ..artifact.pipeline import OverlayOptions
    from ..errors import UsageError

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.topk < 1:
        raise UsageError("--topk must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.sheet_height < 16:
        raise UsageError("--sheet-height must be at least 16")
    if args.resume and args.overwrite:
        raise UsageError("--resume keeps earlier outputs and --overwrite replaces them; pick one")
    if args.engine != "ray" and (args.workers is not None or args.address):
        raise UsageError("--workers and --address need --engine ray")
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    overlay_options(OverlayOptions, args)  # checked before any work


def _demo_model(args: argparse.Namespace) -> str:
    """The model path; for the demo without --model, export the default model if it is missing."""
    from ..errors import UsageError

    if args.model:
        return args.model
    if os.path.isfile(DEFAULT_MODEL):
        return DEFAULT_MODEL
    if args.images:
        raise UsageError(f"no model at {DEFAULT_MODEL}; run explain-export first, or pass --model")
    from ..builder.explainer import build_explainer
    from ..builder.export.export import export_explainer
    from ..builder.model.zoo import load_default

    log(f"demo: exporting the default model to {os.path.dirname(DEFAULT_MODEL)}/ first")
    zoo = load_default()
    explainer = build_explainer(zoo.model, zoo.layer, "cam")
    export_explainer(
        explainer,
        os.path.dirname(DEFAULT_MODEL),
        ("onnx",),
        model=zoo.description,
        labels=zoo.labels,
        log=log,
    )
    return DEFAULT_MODEL


def _run(args: argparse.Namespace) -> int:
    from ..artifact import runner, runtime
    from ..artifact.contract import check_metadata
    from ..errors import UsageError

    _check_args(args)
    from ..artifact.images import quiet_decoder_warnings
    from ..artifact.providers import quiet_onnxruntime_logs

    quiet_decoder_warnings()
    # a CUDA provider that does not start: our line, not theirs (theirs too with --debug)
    quiet_onnxruntime_logs(not args.debug)
    demo = not args.images
    if demo:
        from ..artifact.samples import PHOTOS, photo_path

        try:
            paths, skipped = [photo_path(n) for n in PHOTOS], 0
        except FileNotFoundError as exc:
            raise UsageError(f"demo: {exc}; or pass --images") from exc
        names = None  # runner.run names them after the photos
        args.sheet = True
        args.overwrite = True  # the demo's files, named after scikit-image's photos: run it again
    else:
        # a missing or unreadable file named directly fails on its own line, the rest go on
        paths, skipped, names = runner.collect(args.images)
        if not paths:
            raise UsageError(f"no image files in {', '.join(args.images)}")
    from ..artifact.folder import ORDER, artifact_in

    given = _demo_model(args)
    model_path = artifact_in(given, ("onnx",) if args.engine == "ray" else ORDER)
    if model_path != given and not args.quiet:
        log(f"model: {model_path}")
    if not os.path.isfile(model_path):
        raise UsageError(
            f"no model at '{model_path}'; pass --model explainer.onnx, .torchscript.pt or .pt2"
        )
    if not model_path.endswith(tuple(runtime.SUFFIXES)):
        raise UsageError(f"--model '{model_path}' is not .onnx, .pt or .pt2")
    if args.engine == "ray":
        from ..artifact.ray_run import check_model_path

        check_model_path(model_path)  # before anything loads
    try:
        graphs = False if args.no_cuda_graphs else None
        if args.threads and not model_path.endswith(".onnx"):
            import torch  # this process runs torch: its threads, once, not at every call

            torch.set_num_threads(args.threads)
        if args.engine == "ray":  # checked here; the workers open their own sessions
            artifact = runtime.load(model_path, "cpu", 1)
        else:
            with warnings.catch_warnings():  # a fallback to the CPU is said in the backend line
                warnings.simplefilter("ignore", DeviceFallbackWarning)
                artifact = runtime.load(model_path, args.device, args.threads, cuda_graph=graphs)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"cannot load --model '{model_path}': {first_line(exc)}") from exc
    opts = overlay_options(
        runner.RunOptions,
        args,
        out_dir=args.out,
        batch_size=args.batch_size,
        topk=args.topk,
        sheet=args.sheet,
        save_heatmaps=args.save_heatmaps,
        overwrite=args.overwrite,
        sheet_height=args.sheet_height,
        resume=args.resume,
        per_detection=args.per_detection,
        class_index=None if args.class_index == -1 else args.class_index,  # -1: the default
    )
    meta = check_metadata(artifact)
    runner.check_class(artifact, meta, opts)  # before any line of ours
    runner.check_names(paths, names, opts, meta.top_k)
    if not args.quiet:
        if args.engine == "ray":
            threads = count(args.threads or 1, "thread")
            log(f"engine: ray; each worker runs onnxruntime on {args.device}, {threads}")
        else:
            note = f" ({artifact.note})" if artifact.note else ""
            log(f"backend: {artifact.backend}{note}; threads: {args.threads or 'default'}")
        if skipped:
            log(f"ignoring {count(skipped, 'non-image file')} in the folders")

    from tqdm import tqdm

    bar = tqdm(total=len(paths), unit="img", disable=args.quiet or len(paths) < 2, file=sys.stderr)

    def report_error(path: str, message: str) -> None:
        bar.write(f"{PROG}: skipped {path}: {message}", file=sys.stderr)

    try:
        if args.engine == "ray":
            from ..artifact.ray_run import RayOptions
            from ..artifact.ray_run import run as ray_run

            where = RayOptions(args.workers, args.threads or 1, args.address, args.device)
            report = ray_run(
                artifact, paths, opts, where, bar.update, report_error, names, bar.write
            )
        else:
            report = runner.run(
                artifact, paths, opts, bar.update, report_error, names, image_threads=args.threads
            )
    finally:
        bar.close()
    ok = len(report.results) - len(report.failed)
    if not args.quiet:
        kept = sum(r.resumed for r in report.results)
        print(
            f"{ok} of {len(report.results)} images done"
            + (f" ({kept} kept from an earlier run)" if kept else "")
            + f", {len(report.failed)} failed; outputs in {os.path.normpath(args.out)}{os.sep}"
        )
        done = [r for r in report.results if r.error is None]
        for r in done[:_SHOWN]:
            print(f"  {r.caption}")
        if len(done) > _SHOWN:
            print(f"  … and {len(done) - _SHOWN} more (see {os.path.normpath(report.predictions)})")
        if done and not meta.labels and meta.num_classes == 1000:
            print(
                "  (class numbers: the model has no labels; if they are ImageNet-1k's, "
                "explain-export --labels imagenet stores the names)"
            )
        if report.sheet:
            print(f"sheet: {report.sheet}")
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: _run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
