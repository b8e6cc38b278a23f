"""explain-eval's masked-image scores against pytorch-grad-cam's metrics (issue 30, section 4),
in the peers venv: for an exported classifier and scikit-image's photos, our
``masked_score − score`` against ``CamMultImageConfidenceChange`` with
``ClassifierOutputSoftmaxTarget``, our ``average_drop`` against ``DropInConfidence`` (which
pytorch-grad-cam does not divide by the score: compared as ``drop·score``), and our
``increase_in_confidence`` against ``IncreaseInConfidence``, each given the file's own map.
A file exported with ``--faithfulness`` also has its graph's own ``masked_score − score``
compared (the column "graph").

pytorch-grad-cam multiplies the tensor the model takes by the map; ours multiplies the graph's
[0, 1] image, so its model here is the embedded network behind the export's own normalization
(the same thing the file computes).

    PYTHONPATH=$PWD .peers/bin/python benchmarks/faithfulness_peers.py \\
        --model cam/explainer.onnx --out benchmarks/results/faithfulness-peers.md
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from explain_export.artifact import runtime, samples
from explain_export.artifact.contract import heatmap_unit
from explain_export.artifact.evaluate import evaluate_image
from explain_export.artifact.pipeline import OverlayOptions, read
from explain_export.builder.model.zoo import load_default

from md_out import emit


class Normalized(nn.Module):
    """``image in [0, 1] -> logits``: the export's normalization, then the network."""

    def __init__(self, net: nn.Module, mean, std) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def main() -> int:
    from pytorch_grad_cam.metrics.cam_mult_image import (
        CamMultImageConfidenceChange,
        DropInConfidence,
        IncreaseInConfidence,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="an export of the embedded model (.onnx)")
    p.add_argument("--out", help="write a Markdown table here")
    args = p.parse_args()
    art = runtime.load(args.model, "cpu", 2)
    meta = art.metadata
    model = Normalized(load_default().model.eval(), meta["mean"], meta["std"]).eval()
    size = tuple(meta["input_size"])
    graph = "masked_score" in art.output_names
    lines = [
        "| photo | class | ours masked − score |"
        + (" graph masked − score |" if graph else "")
        + " pgc CamMultImageConfidenceChange | |diff| |"
        " ours drop·score | pgc DropInConfidence | ours increase | pgc IncreaseInConfidence |",
        "| --- | ---: | ---: |"
        + (" ---: |" if graph else "")
        + " ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    worst = 0.0
    for name in samples.PHOTOS:
        image = read(samples.photo_path(name), size, OverlayOptions()).input
        row = evaluate_image(art, image, 2, 8)
        out = art.outputs(image[None])
        cam = heatmap_unit(out["heatmap"])[:, 0]
        x = torch.from_numpy(image[None])
        target = [ClassifierOutputSoftmaxTarget(row["class"])]
        change = float(CamMultImageConfidenceChange()(x, cam, target, model)[0])
        drop = float(DropInConfidence()(x, cam, target, model)[0])
        inc = float(IncreaseInConfidence()(x, cam, target, model)[0])
        ours = row["masked_score"] - row["score"]
        worst = max(worst, abs(ours - change), abs(row["average_drop"] * row["score"] - drop))
        in_graph, diff = "", abs(ours - change)
        if graph:
            own = float(out["masked_score"][0] - out["score"][0])
            in_graph, diff = f" {own:.6f} |", max(diff, abs(own - change))
            worst = max(worst, diff)
        lines.append(
            f"| {name} | {row['class']} | {ours:.6f} |{in_graph} {change:.6f} | {diff:.1e} |"
            f" {row['average_drop'] * row['score']:.6f} | {drop:.6f} |"
            f" {row['increase_in_confidence']:.0f} | {inc:.0f} |"
        )
    lines.append(f"\nlargest difference: {worst:.1e}")
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
