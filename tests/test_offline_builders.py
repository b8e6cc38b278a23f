"""An ``--arch`` builder downloads nothing: its pretrained-weights parameters load nothing unless
``--arch-kwargs`` says otherwise, and a download it tries anyway is refused in one line.

The builders below stand in for torchvision's and timm's: each raises the network error that a
download without a network raises when it is asked for pretrained weights (none is fetched).
"""

from __future__ import annotations

import functools
import socket
import urllib.error

import pytest
import torch
from torch import nn

from explain_export.builder.model.checkpoint import build_arch
from explain_export.builder.model.offline import describe_weight_defaults, weight_defaults
from explain_export.builder.model.source import ModelSource
from explain_export.cli import export as export_cli
from explain_export.errors import OptionError

from models import TinyResNet

HERE = "test_offline_builders"
_NO_NETWORK = OSError(-3, "Temporary failure in name resolution")


def seg_like(
    *, weights=None, weights_backbone="IMAGENET1K_V1", num_classes=4, **kwargs
) -> nn.Module:
    """torchvision's segmentation builders: ImageNet backbone weights unless told otherwise."""
    if weights is not None or weights_backbone is not None:
        raise urllib.error.URLError(_NO_NETWORK)  # what urlopen raises with no network
    return TinyResNet(num_classes)


def legacy_like(pretrained=True, pretrained_backbone=True, num_classes=4) -> nn.Module:
    """An older library whose builder downloads by default."""
    if pretrained or pretrained_backbone:
        raise socket.gaierror(-3, "Temporary failure in name resolution")
    return TinyResNet(num_classes)


def timm_like(model_name, pretrained=False, pretrained_cfg=None, **kwargs) -> nn.Module:
    """timm's ``create_model``: ``pretrained_cfg`` is no weights flag and must stay None."""
    assert pretrained_cfg is None
    if pretrained:
        raise RuntimeError("could not fetch the weights") from urllib.error.URLError(_NO_NETWORK)
    return TinyResNet(**kwargs)


def kwargs_only(**kwargs) -> nn.Module:
    """A builder whose accepted names cannot be read: it gets nothing added."""
    return TinyResNet(**kwargs)


def always_downloads(num_classes=4) -> nn.Module:
    """A builder that downloads whatever it is given (a hub call inside)."""
    raise RuntimeError("hub failed") from ConnectionRefusedError(111, "Connection refused")


def test_weight_defaults_reads_the_signature():
    assert weight_defaults(seg_like, {}) == {"weights": None, "weights_backbone": None}
    assert weight_defaults(seg_like, {"weights_backbone": "X"}) == {"weights": None}
    assert weight_defaults(legacy_like, {}) == {"pretrained": False, "pretrained_backbone": False}
    assert weight_defaults(timm_like, {"model_name": "m"}) == {"pretrained": False}
    assert weight_defaults(functools.partial(seg_like, num_classes=3), {}) == {
        "weights": None,
        "weights_backbone": None,
    }
    assert weight_defaults(kwargs_only, {}) == {}
    assert weight_defaults(TinyResNet, {}) == {}
    assert weight_defaults(len, {}) == {}  # a builtin: no signature to read


@pytest.mark.parametrize("name", ["seg_like", "legacy_like", "timm_like"])
def test_builders_that_would_download_build_offline(name):
    kwargs = {"model_name": "tiny", "num_classes": 3} if name == "timm_like" else {}
    model = build_arch(f"{HERE}:{name}", kwargs)
    assert isinstance(model, TinyResNet)


def test_the_users_kwargs_win():
    model = build_arch(f"{HERE}:seg_like", {"weights_backbone": None, "num_classes": 3})
    assert model.fc.out_features == 3
    with pytest.raises(OptionError, match=r"'test_offline_builders:seg_like' tried to download"):
        build_arch(f"{HERE}:seg_like", {"weights_backbone": "IMAGENET1K_V1"})


@pytest.mark.parametrize(
    ("name", "kwargs", "cause"),
    [
        ("always_downloads", {}, "ConnectionRefusedError"),
        ("timm_like", {"model_name": "m", "pretrained": True}, "URLError"),
        ("legacy_like", {"pretrained": True}, "gaierror"),
    ],
)
def test_a_download_is_refused_in_one_line(name, kwargs, cause):
    with pytest.raises(OptionError) as info:
        build_arch(f"{HERE}:{name}", kwargs)
    message = str(info.value)
    assert "tried to download weights while building the model" in message
    assert cause in message and "set its weights flag off in arch_kwargs" in message
    assert "\n" not in message


def test_other_errors_pass_through():
    with pytest.raises(OptionError, match="rejected arch_kwargs"):
        build_arch(f"{HERE}:legacy_like", {"no_such": 1})


def test_model_source_says_what_it_passed(tmp_path):
    torch.save(TinyResNet(4).state_dict(), tmp_path / "sd.pt")
    loaded = ModelSource(str(tmp_path / "sd.pt"), f"{HERE}:seg_like").load((32, 32))
    assert loaded.arch_weights == {"weights": None, "weights_backbone": None}
    own = ModelSource(str(tmp_path / "sd.pt"), f"{HERE}:seg_like", {"weights_backbone": None})
    assert own.load((32, 32)).arch_weights == {"weights": None}
    bare = ModelSource(arch=f"{HERE}:legacy_like").load((32, 32))  # no --ckpt: random init
    assert describe_weight_defaults(bare.arch_weights, checkpoint=False) == (
        "arch: pretrained=False, pretrained_backbone=False (nothing is downloaded: the weights "
        "are the builder's random init)"
    )


def test_export_prints_the_line_and_refuses_a_download(tmp_path, capsys):
    torch.save(TinyResNet(4).state_dict(), tmp_path / "sd.pt")
    ckpt = ["--ckpt", str(tmp_path / "sd.pt"), "--input-size", "32", "32"]
    code = export_cli.main([*ckpt, "--arch", f"{HERE}:seg_like", "--list-layers"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    line = "arch: weights=None, weights_backbone=None (the checkpoint supplies every weight)"
    assert line in captured.err.splitlines()

    code = export_cli.main([*ckpt, "--arch", f"{HERE}:always_downloads", "--list-layers"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in lines[0]
    assert lines[0].startswith(
        "explain-export: error: --arch 'test_offline_builders:always_downloads' tried to "
        "download weights while building the model (ConnectionRefusedError: "
    )
    assert "set its weights flag off in --arch-kwargs" in lines[0] and "with --ckpt" in lines[0]


def test_network_errors_by_type_and_by_library():
    from explain_export.builder.model.offline import network_error

    hub_error = type(
        "LocalEntryNotFoundError", (Exception,), {"__module__": "huggingface_hub.errors"}
    )
    assert network_error(hub_error("cannot find the requested files")) is not None
    wrapped = RuntimeError("x")
    wrapped.__cause__ = socket.gaierror(-2, "Name or service not known")
    assert isinstance(network_error(wrapped), socket.gaierror)
    assert (
        network_error(FileNotFoundError(2, "No such file")) is None
    )  # a file error is no download
    assert network_error(ValueError("bad")) is None
