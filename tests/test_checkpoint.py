"""Every checkpoint loading path, and the errors for the ones that must fail."""

from __future__ import annotations

import pathlib
import pickle
import re
import zipfile

import pytest
import torch

from explain_export.builder.model.checkpoint import build_arch, load_model
from explain_export.errors import UsageError

from models import TinyResNet, tiny_resnet

ARCH = "models:TinyResNet"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bare_state_dict(tmp_path):
    src = tiny_resnet(seed=3)
    torch.save(src.state_dict(), tmp_path / "sd.pt")
    model, info = load_model(str(tmp_path / "sd.pt"), ARCH)
    assert info.format == "state_dict" and not info.fixes
    assert _same_weights(model, src) and not model.training


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod."])
def test_training_dict_with_wrapper_prefix(tmp_path, key, prefix):
    src = tiny_resnet(seed=4)
    sd = {prefix + k: v for k, v in src.state_dict().items()}
    torch.save({"epoch": 7, "optimizer": {"lr": 0.1}, key: sd}, tmp_path / "train.pt")
    model, info = load_model(str(tmp_path / "train.pt"), ARCH)
    assert info.format == f"training dict['{key}']"
    assert info.fixes == ([f"stripped '{prefix}' prefix"] if prefix else [])
    assert _same_weights(model, src)


def test_arch_kwargs_are_passed(tmp_path):
    torch.save(TinyResNet(num_classes=3).state_dict(), tmp_path / "sd.pt")
    model, _ = load_model(str(tmp_path / "sd.pt"), ARCH, {"num_classes": 3})
    assert model.fc.out_features == 3


def test_pickled_module_needs_trust(tmp_path):
    src = tiny_resnet(seed=5)
    torch.save(src, tmp_path / "whole.pt")
    with pytest.raises(UsageError, match="run code from the file.*trust=True"):
        load_model(str(tmp_path / "whole.pt"), None)
    model, info = load_model(str(tmp_path / "whole.pt"), None, trust=True)
    assert info.format == "pickled module"
    assert _same_weights(model, src)


class _Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_malicious_pickle_does_not_run_without_trust(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(
        {"state_dict": tiny_resnet().state_dict(), "x": _Payload(str(marker))}, tmp_path / "evil.pt"
    )
    with pytest.raises(UsageError, match="rerun with trust=True"):
        load_model(str(tmp_path / "evil.pt"), ARCH)
    assert not marker.exists()


def test_mismatched_keys_are_named(tmp_path):
    sd = TinyResNet(num_classes=5).state_dict()
    del sd["layer1.conv1.weight"]
    sd["extra.bias"] = torch.zeros(2)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(UsageError) as err:
        load_model(str(tmp_path / "bad.pt"), ARCH)
    text = str(err.value)
    assert "missing keys: layer1.conv1.weight" in text
    assert "unexpected keys: extra.bias" in text
    assert "fc.weight [5, 32] vs model [10, 32]" in text
    assert "\n" not in text


def _legacy(path: pathlib.Path, cut: bool = False) -> None:
    """torch.save's format before PyTorch 1.6 (one pickle stream), whole or cut in half."""
    torch.save(tiny_resnet().state_dict(), path, _use_new_zipfile_serialization=False)
    if cut:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _cut(path: pathlib.Path) -> None:
    torch.save(tiny_resnet().state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zip_of_text(path: pathlib.Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "not weights")


def _torchscript(path: pathlib.Path) -> None:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))


NOT_SAVED = r"save the weights with torch\.save\(model\.state_dict\(\), path\) and pass that file"
DAMAGED = r"is damaged or cut short \(PyTorch cannot read it\); save it again with torch\.save"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("dir", "is a directory"),
        (b"", r"is empty \(0 bytes\)"),
        # a text file read as a pickle is torch.load's KeyError(101): said as what the file is
        (b"this is not a checkpoint at all\n", r"is not a PyTorch file: it is a text file; "),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "it is neither a zip archive nor a pickle"),
        (pickle.dumps({"a": 1}), r"it is a pickle that torch\.save did not write"),
        (_cut, r"is a zip archive that cannot be read: damaged or cut short"),
        (_zip_of_text, r"is a zip archive, but not one that torch\.save wrote \(no data\.pkl"),
        (_torchscript, r"is a TorchScript archive \(torch\.jit\.save\); pass the weights"),
        (lambda p: _legacy(p, cut=True), DAMAGED),
    ],
)
def test_unreadable_checkpoints_say_what_the_file_is(tmp_path, content, message):
    path = tmp_path / "ckpt.pt"
    if content == "dir":
        path.mkdir()
    elif callable(content):
        content(path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message) as err:
        load_model(str(path), ARCH)
    text = str(err.value)
    assert "\n" not in text and "KeyError" not in text and "miniz" not in text
    assert not text.endswith(": 101")
    if "not a PyTorch file" in text or "not one that" in text:
        assert re.search(NOT_SAVED, text), text


def test_the_older_torch_save_format_still_loads(tmp_path):
    _legacy(tmp_path / "old.pt")
    model, info = load_model(str(tmp_path / "old.pt"), ARCH)
    assert info.format == "state_dict" and _same_weights(model, tiny_resnet())


def test_unknown_dict_layout_lists_its_keys(tmp_path):
    torch.save({"weights": tiny_resnet().state_dict(), "epoch": 1}, tmp_path / "odd.pt")
    with pytest.raises(UsageError, match=r"keys 'weights', 'epoch'.*state_dict"):
        load_model(str(tmp_path / "odd.pt"), ARCH)


def test_state_dict_without_arch(tmp_path):
    torch.save(tiny_resnet().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(UsageError, match="name the model that it fits with arch package"):
        load_model(str(tmp_path / "sd.pt"), None)


@pytest.mark.parametrize(
    ("arch", "kwargs", "message"),
    [
        ("no_such_package.nets:Net", None, "cannot import 'no_such_package.nets'"),
        ("models:NoSuchNet", None, "has no attribute 'NoSuchNet'"),
        ("models", None, "package.module:callable"),
        ("models:TinyResNet", {"depth": 50}, "rejected arch_kwargs"),
        ("models:Block", {"cin": 3, "cout": 4, "stride": 1}, None),
    ],
)
def test_arch_errors(arch, kwargs, message):
    if message is None:
        assert isinstance(build_arch(arch, kwargs), torch.nn.Module)
    else:
        with pytest.raises(UsageError, match=message):
            build_arch(arch, kwargs)


@pytest.mark.parametrize("wrap", ["plain", "training-dict", "data-parallel"])
def test_state_dict_keeps_the_modules_versions(tmp_path, wrap):
    """``_metadata`` survives unpacking and prefix stripping (MNASNet needs it to load)."""
    from models import Versioned

    sd = Versioned().state_dict()
    if wrap == "data-parallel":
        wrapped = torch.nn.DataParallel(Versioned())
        sd = wrapped.state_dict()
    obj = {"state_dict": sd} if wrap == "training-dict" else sd
    torch.save(obj, tmp_path / "m.pt")
    model, _ = load_model(str(tmp_path / "m.pt"), "models:Versioned")
    assert isinstance(model, torch.nn.Module)


def test_state_dict_without_versions_is_a_clear_error(tmp_path):
    from models import Versioned

    torch.save(dict(Versioned().state_dict()), tmp_path / "m.pt")  # dict() drops _metadata
    with pytest.raises(UsageError, match=r"refused checkpoint.*version should be set.*_metadata"):
        load_model(str(tmp_path / "m.pt"), "models:Versioned")


def test_model_source_reads_its_kwargs_as_json_or_a_mapping(tmp_path):
    from explain_export.builder.model.source import ModelSource

    torch.save(TinyResNet(num_classes=3).state_dict(), tmp_path / "sd.pt")
    source = ModelSource(str(tmp_path / "sd.pt"), ARCH, '{"num_classes": 3}')
    assert source.arch_kwargs == {"num_classes": 3} and not source.embedded
    loaded = source.load((32, 32))
    assert loaded.description == ARCH and loaded.labels is None and loaded.layer is None
    assert loaded.checkpoint is not None and loaded.model(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    assert ModelSource(arch=ARCH, arch_kwargs={"num_classes": 3}).arch_kwargs == {"num_classes": 3}
    assert ModelSource().embedded
    with pytest.raises(UsageError, match="arch_kwargs is not valid JSON"):
        ModelSource(arch=ARCH, arch_kwargs="{width: 3}")
    with pytest.raises(UsageError, match="arch_kwargs must be a JSON object"):
        ModelSource(arch=ARCH, arch_kwargs="[1]")
