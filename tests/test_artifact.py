"""The artifact contract: typed metadata round-trips what export writes, and bad metadata is
one line that says what is wrong."""

from __future__ import annotations

import json
import re

import pytest

from explain_export.artifact.contract import ArtifactMetadata, MetadataError, TensorSpec
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export.export import METADATA_FILE, export_explainer
from explain_export.builder.plan import GraphOptions

from models import tiny_resnet


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifact")
    graph = GraphOptions(input_format="uint8-nhwc", overlay=True, heatmap_dtype="uint8")
    explainer = build_explainer(tiny_resnet(), method="cam", input_size=(32, 32), graph=graph)
    export_explainer(explainer, str(out), ("onnx",), labels=[f"c{i}" for i in range(10)])
    with open(out / METADATA_FILE) as f:
        return json.load(f)


def test_typed_metadata_round_trips_the_json_export_writes(written):
    meta = ArtifactMetadata.from_json(written)
    assert meta.to_json() == written
    assert meta.input_size == (32, 32) and meta.input_format == "uint8-nhwc"
    assert meta.output_names == ["logits", "heatmap", "overlay"]
    assert meta.tensor("heatmap") == TensorSpec(
        "heatmap", "uint8", ("N", 1, 32, 32), {"range": [0, 255], "meaning": "round(255 * heatmap)"}
    )
    assert meta.labels is not None and len(meta.labels) == 10
    assert ArtifactMetadata.coerce(meta) is meta


def test_unknown_keys_are_kept_and_optional_ones_default(written):
    minimal = {k: written[k] for k in ("input_size", "inputs", "outputs")}
    meta = ArtifactMetadata.from_json({**minimal, "future_field": {"x": 1}})
    assert meta.method is None and meta.heatmap_dtype == "float32" and not meta.half
    assert meta.to_json()["future_field"] == {"x": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_size": [0, 32]}, "input_size must be [H, W] with positive integers"),
        ({"input_size": [True, 32]}, "input_size must be [H, W] with positive integers"),
        ({"labels": "cat"}, "labels must be a list of strings"),
        ({"outputs": [{"dtype": "float32"}]}, "lists of tensors with names"),
        ({"inputs": {"name": "image"}}, "inputs must be a list"),
        ({"outputs": [{"name": "x", "shape": "N"}]}, "has shape 'N', not a list"),
    ],
)
def test_bad_metadata_says_what_is_wrong_in_one_line(written, change, message):
    with pytest.raises(MetadataError, match=re.escape(message)) as err:
        ArtifactMetadata.from_json({**written, **change})
    assert "\n" not in str(err.value)
    with pytest.raises(MetadataError, match="it lacks input_size"):
        ArtifactMetadata.from_json({k: v for k, v in written.items() if k != "input_size"})
    with pytest.raises(MetadataError, match="not a JSON object"):
        ArtifactMetadata.from_json([written])
