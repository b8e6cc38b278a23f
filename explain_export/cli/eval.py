"""``explain-eval``: which method, for my model, on my images. Each exported explainer's maps
scored by deletion and insertion AUC, average drop, increase in confidence and ADCC, by the
protocol of :mod:`..artifact.faithfulness`, through the files themselves.

With .onnx models this command never imports torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import UsageError, first_line
from ._common import ArgumentParser, add_engine_flags, log, run_main

__all__ = ["EPILOG", "PROG", "build_parser", "main"]

PROG = "explain-eval"
SAME_MODEL_TOL = 1e-2  # the largest softmax difference of two files of one model on one image

EPILOG = """\
protocol (pinned; docs/evaluation.md):
  the class is each image's top-1 (softmax probability); pixels are ranked by the file's map
  at input size, descending, by a stable sort; at step i = 0..n (n = --steps) the first
  round(i*H*W/n) pixels are set to 0 (deletion) or revealed over cv2.GaussianBlur(image,
  (11, 11), 5) (insertion); AUC = (sum_i s_i - (s_0 + s_n)/2) / n. On x*m (the image times its
  own map): average drop = max(0, s - s_masked)/s, increase in confidence = [s_masked > s],
  ADCC = 3 / (1/coherency + 1/(1 - complexity) + 1/(1 - average drop)).

outputs in --out: eval.csv (a row per model: model, method, layer, images, deletion_auc,
insertion_auc, average_drop, increase_in_confidence, adcc, ms_per_image), per_image.parquet
(per_image.csv without pyarrow), curves.png (mean curves per model); the console table marks
the best value per column with *.

examples:
  explain-eval --model cam/explainer.onnx --model gradcam/explainer.onnx --images photos/ \
      --out eval/
  explain-eval --model a.onnx --model b.onnx --images photos/ --out eval/ --steps 50
  explain-eval --engine ray --workers 8 --model a.onnx --model b.onnx --images big/ --out eval/

exit codes: 0 every image scored, 1 some failed, 2 usage error (nothing was written).
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Compare exported explainers of one model on a folder of images: "
        "deletion/insertion AUC, average drop, increase in confidence, ADCC, ms per image.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="PATH",
        help="an exported explainer (.onnx, .torchscript.pt, .pt2) of a classifier; repeat it "
        "for each method to compare (exports of one model)",
    )
    p.add_argument(
        "--images",
        nargs="+",
        required=True,
        metavar="FILE_OR_DIR",
        help="image files and/or folders (subfolders included)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--steps", type=int, default=20, metavar="N", help="steps per curve (default: 20)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="step images per call of the file (default: 32)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="the runtime's CPU threads (default: the runtime's; with --engine ray: per worker, "
        "default 1)",
    )
    add_engine_flags(
        p,
        "local: this process; ray: a Ray Data actor pool, each actor a session per model; the "
        "same scores",
        "the images",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _images(given: list[str]) -> list[str]:
    from ..artifact.images import IMAGE_EXTENSIONS, list_images

    paths: list[str] = []
    for item in given:
        if os.path.isdir(item):
            found, _ = list_images(item)
            if not found:
                raise UsageError(f"no image files in '{item}' (looked for {IMAGE_EXTENSIONS})")
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UsageError(f"--images '{item}' does not exist")
    return paths


def _check_args(args: argparse.Namespace) -> None:
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.engine != "ray" and (args.workers is not None or args.address):
        raise UsageError("--workers and --address need --engine ray")
    if args.engine == "ray":
        from ..artifact.ray_run import check_model_path

        for path in args.model:
            check_model_path(path)
    if len(set(args.model)) != len(args.model):
        raise UsageError("a --model is given twice; give each file once")
    for path in args.model:
        if not os.path.isfile(path):
            raise UsageError(f"--model '{path}' does not exist")
    if os.path.exists(os.path.join(args.out, "eval.csv")) and not args.overwrite:
        raise UsageError(f"'{args.out}' holds an earlier evaluation; pass --overwrite")


def _same_model(artifacts: list[Any], image: Any, name: str) -> None:
    """One line where two files' class probabilities on ``image`` (the file ``name``) differ:
    they are not exports of one model (a method is compared on one model's logits). Each file's
    first call, so it also warms every file up before ``ms`` is timed."""
    from ..artifact.evaluate import softmax

    ref = None
    for art in artifacts:
        p = softmax(art.outputs(image[None])["logits"][0])
        if ref is None:
            ref = (art.path, p)
            continue
        if p.shape != ref[1].shape or float(abs(p - ref[1]).max()) > SAME_MODEL_TOL:
            raise UsageError(
                f"'{ref[0]}' and '{art.path}' are not exports of one model (their class "
                f"probabilities on '{name}' differ); evaluate one model's exports at a time"
            )


def _local(
    args: argparse.Namespace,
    artifacts: list[Any],
    paths: list[str],
    size: tuple[int, int],
    bar: Any,
) -> list[list[dict[str, Any]]]:
    """Per model, per image: its row or ``{"error": ...}``, in this process. Each image is
    read once and scored by every model in turn."""
    from ..artifact.evaluate import evaluate_image
    from ..artifact.pipeline import OverlayOptions, read

    out: list[list[dict[str, Any]]] = [[] for _ in artifacts]
    for image_path in paths:
        try:
            image = read(image_path, size, OverlayOptions()).input
        except Exception as exc:
            image, error = None, {"error": first_line(exc)}
        for path, art, mine in zip(args.model, artifacts, out, strict=True):
            bar.set_postfix_str(path, refresh=False)
            if image is None:
                mine.append(error)
            else:
                try:
                    mine.append(evaluate_image(art, image, args.steps, args.batch_size))
                except Exception as exc:
                    mine.append({"error": first_line(exc)})
            bar.update(1)
    return out


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..artifact import runtime
    from ..artifact.eval_report import console_table, summarize, write_eval
    from ..artifact.evaluate import check_evaluable
    from ..artifact.files import ensure_out_dir
    from ..artifact.images import quiet_decoder_warnings
    from ..artifact.pipeline import OverlayOptions, read

    quiet_decoder_warnings()  # a bad image is reported in one line of ours
    _check_args(args)
    paths = _images(args.images)
    artifacts = [runtime.load(path, "cpu", args.threads) for path in args.model]
    for art in artifacts:
        check_evaluable(art)
    sizes = sorted({tuple(art.metadata["input_size"]) for art in artifacts})
    if len(sizes) > 1:
        shown = " and ".join(f"{h}x{w}" for h, w in sizes)
        raise UsageError(
            f"the models take different input sizes ({shown}); export every method at one size"
        )
    size = sizes[0]
    _same_model(artifacts, read(paths[0], size, OverlayOptions()).input, paths[0])
    ensure_out_dir(args.out)
    total = len(paths) * len(artifacts)
    bar = tqdm(total=total, unit="img", disable=args.quiet or total < 2, file=sys.stderr)
    if args.engine == "ray":
        from ..artifact import eval_ray
        from ..artifact.ray_run import RayOptions

        ray_opts = RayOptions(args.workers, args.threads or 1, args.address)
        found = eval_ray.run(
            [os.path.abspath(p) for p in args.model],
            paths,
            args.steps,
            args.batch_size,
            ray_opts,
            bar.update,
            (lambda _m: None) if args.quiet else log,
        )
    else:
        found = _local(args, artifacts, paths, size, bar)
    bar.close()
    rows: list[dict[str, Any]] = []
    summary = []
    failed = 0
    for path, art, mine in zip(args.model, artifacts, found, strict=True):
        labels = art.metadata.get("labels")
        kept = []
        for image_path, row in zip(paths, mine, strict=True):
            if "error" in row:
                failed += 1
                log(f"{PROG}: {image_path}: {row['error']}")
                continue
            c = row["class"]
            label = labels[c] if labels and c < len(labels) else None
            kept.append({"model": path, "image": image_path, "label": label, **row})
        rows += kept
        summary.append(summarize(path, art.metadata, kept))
    written = write_eval(args.out, summary, rows, args.steps)
    if not args.quiet:
        print(console_table(summary))
    for p in written:
        print(f"wrote {p}")
    for s in summary:
        missed = sum(1 for r in rows if r["model"] == s["model"] and r["adcc"] != r["adcc"])
        if missed and not args.quiet:
            log(
                f"{s['model']}: no coherency or ADCC on {missed} of {s['images']} images (the "
                "masked image's top-1 changed and the file takes no class); export with "
                "--class-input to score them all"
            )
    if failed:
        log(f"{PROG}: {failed} of {total} image evaluations failed (see above)")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: _run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
