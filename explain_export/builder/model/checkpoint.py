"""Load a user's checkpoint safely and build the model it belongs to.

``torch.load(weights_only=True)`` is the default: it reads tensors and plain containers and runs
no code. A whole pickled ``nn.Module`` needs ``trust=True`` (``--trust-checkpoint``), because
unpickling it runs code from the file.
"""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import OptionError, UsageError, first_line
from ...words import a_or_an
from .offline import downloads_refused, weight_defaults

__all__ = [
    "PREFIXES",
    "STATE_DICT_KEYS",
    "CheckpointInfo",
    "LoadedModel",
    "build_arch",
    "check_checkpoint_file",
    "load_model",
    "load_weights",
    "read_checkpoint",
    "resolve_arch",
    "unpack",
]

# "ema": an Ultralytics checkpoint written mid-training (its "model" is None)
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "ema")
PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
_LIST_MAX = 8


@dataclass
class CheckpointInfo:
    """What was found in a checkpoint file."""

    path: str
    format: str  # "state_dict", "training dict['<key>']", "pickled module"
    fixes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.path}: {self.format}"
        return text + (f" ({'; '.join(self.fixes)})" if self.fixes else "")


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_MAX])
    return shown + (f" and {len(items) - _LIST_MAX} more" if len(items) > _LIST_MAX else "")


def check_checkpoint_file(path: str) -> None:
    """A :class:`.UsageError` unless ``path`` is a file with something in it (nothing read)."""
    if not os.path.exists(path):
        raise UsageError(f"checkpoint '{path}' does not exist")
    if os.path.isdir(path):
        raise UsageError(f"checkpoint '{path}' is a directory; pass the .pt/.pth file")
    if os.path.getsize(path) == 0:
        raise UsageError(f"checkpoint '{path}' is empty (0 bytes)")


def read_checkpoint(path: str, trust: bool = False) -> Any:
    """``torch.load`` the file on the CPU; weights only unless ``trust``. A file that is not
    what ``torch.save`` writes, or is cut short, is a :class:`.UsageError` that says which."""
    check_checkpoint_file(path)
    _check_container(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if not trust and "weights_only" in str(exc).lower().replace(" ", "_"):
            raise OptionError(
                "trust",
                "checkpoint '{path}' holds pickled Python objects, and loading them would run "
                "code from the file; if you trust its source, rerun with {name}",
                path=path,
            ) from exc
        raise UsageError(f"checkpoint '{path}' {_DAMAGED}") from exc
    except (EOFError, KeyError, IndexError) as exc:  # the pickle stream cut short or damaged
        raise UsageError(f"checkpoint '{path}' {_DAMAGED}") from exc
    except RuntimeError as exc:
        if "PytorchStreamReader" in str(exc) or "corrupt" in str(exc):  # a member damaged
            raise UsageError(f"checkpoint '{path}' {_DAMAGED}") from exc
        raise UsageError(f"cannot read checkpoint '{path}': {first_line(exc)}") from exc
    except Exception as exc:  # a trusted pickle's class that is not importable here, ...
        raise UsageError(f"cannot read checkpoint '{path}': {first_line(exc)}") from exc


_SAVE = "torch.save(model.state_dict(), path)"
_DAMAGED = f"is damaged or cut short (PyTorch cannot read it); save it again with {_SAVE}"
_PASS = f"save the weights with {_SAVE} and pass that file"
# torch.save's older format: a pickle (protocol 2) that starts with this number
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _check_container(path: str) -> None:
    """Refuse a file that ``torch.save`` did not write, by what it is: ``torch.save`` writes a
    zip archive with a ``data.pkl`` in it (before PyTorch 1.6, a pickle that starts with its
    magic number). ``torch.load`` itself fails on others with errors such as ``KeyError(101)``
    (a text file read as a pickle), which say nothing to a user."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise UsageError(f"cannot read checkpoint '{path}': {exc.strerror or exc}") from exc
    if head.startswith(b"PK"):
        _check_zip(path)
        return
    if head.startswith(_LEGACY_MAGIC):
        return
    if head.startswith(b"\x80"):
        what = "a pickle that torch.save did not write (pickle.dump?)"
    elif path.lower().endswith(".onnx") and head.startswith(b"\x08"):
        what = "an ONNX file, not the PyTorch model's weights"
    elif _is_text(head):
        what = "a text file"
    else:
        what = "neither a zip archive nor a pickle"
    raise UsageError(f"checkpoint '{path}' is not a PyTorch file: it is {what}; {_PASS}")


def _check_zip(path: str) -> None:
    """A zip archive: ``torch.save``'s (a ``data.pkl`` in one folder), not a TorchScript
    archive (``torch.jit.save``: a ``constants.pkl`` and ``code/``) and not cut short."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UsageError(
            f"checkpoint '{path}' is a zip archive that cannot be read: damaged or cut short; "
            f"save it again with {_SAVE}"
        ) from exc
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise OptionError(
            "ckpt",
            "checkpoint '{path}' is a TorchScript archive (torch.jit.save); pass the weights, "
            "saved with {save}, and {arch}",
            path=path,
            save=_SAVE,
        )
    if not any(n.endswith("/data.pkl") for n in names):
        raise UsageError(
            f"checkpoint '{path}' is a zip archive, but not one that torch.save wrote (no "
            f"data.pkl in it); {_PASS}"
        )


def _is_text(head: bytes) -> bool:
    """UTF-8 (the last character may be cut off) with no control bytes but tabs and line ends."""
    if any(b < 32 and b not in b"\t\n\r\f" for b in head):
        return False
    for cut in range(4):
        try:
            head[: len(head) - cut].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def unpack(obj: Any, path: str) -> tuple[nn.Module | dict[str, Tensor], CheckpointInfo]:
    """Find the module or the state_dict inside a loaded checkpoint; strip wrapper prefixes."""
    if isinstance(obj, nn.Module):
        return obj, CheckpointInfo(path, "pickled module")
    if _is_state_dict(obj):
        info = CheckpointInfo(path, "state_dict")
        return _strip_prefixes(obj, info), info
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner, CheckpointInfo(path, f"training dict['{key}'] (pickled module)")
            if _is_state_dict(inner):
                info = CheckpointInfo(path, f"training dict['{key}']")
                return _strip_prefixes(inner, info), info
        keys = _names([repr(k) for k in obj])
        raise UsageError(
            f"checkpoint '{path}' is a dict with keys {keys}, and none of "
            f"{', '.join(STATE_DICT_KEYS)} holds a state_dict; save model.state_dict() instead"
        )
    raise UsageError(
        f"checkpoint '{path}' holds {a_or_an(type(obj).__name__)}, not a state_dict or a model"
    )


def _strip_prefixes(sd: Mapping[str, Tensor], info: CheckpointInfo) -> dict[str, Tensor]:
    """A copy of ``sd`` without wrapper prefixes, keeping ``_metadata``.

    ``state_dict()`` carries ``_metadata``, each module's version, which some modules read when
    loading (torchvision's MNASNet refuses a state dict without it).
    """
    meta = getattr(sd, "_metadata", None)
    out: dict[str, Tensor] = OrderedDict(sd)
    for prefix in PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = OrderedDict((k[len(prefix) :], v) for k, v in out.items())
            info.fixes.append(f"stripped '{prefix}' prefix")
            if meta is not None:
                meta = _strip_metadata(meta, prefix)
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]
    return out


def _strip_metadata(meta: Mapping[str, Any], prefix: str) -> OrderedDict[str, Any]:
    """Module names lose the prefix: ``module.layer1`` -> ``layer1``, ``module`` -> ``""``."""
    name = prefix.rstrip(".")
    out: OrderedDict[str, Any] = OrderedDict()
    for key, value in meta.items():
        if key == name:
            out[""] = value
        elif key.startswith(prefix):
            out[key[len(prefix) :]] = value
        elif key not in out:
            out[key] = value
    return out


def resolve_arch(arch: str) -> Callable[..., Any]:
    """The callable that ``package.module:callable`` names: its module is imported, nothing is
    called. An :class:`.OptionError` where the name is malformed, the module cannot be imported,
    or the attribute is missing or not callable."""
    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise OptionError(
            "arch", "{name} '{arch}' must look like package.module:callable", arch=arch
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OptionError(
            "arch",
            "{name}: cannot import '{module}': {why}",
            module=module_name,
            why=first_line(exc, with_type=False),
        ) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise OptionError(
                "arch",
                "{name}: '{module}' has no attribute '{attr}'",
                module=module_name,
                attr=attr,
            )
        target = getattr(target, part)
    if not callable(target):
        raise OptionError("arch", "{name}: '{arch}' is not callable", arch=arch)
    return target


def build_arch(arch: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Call ``package.module:callable`` (:func:`resolve_arch`) with ``kwargs`` and return the
    module it builds. Its pretrained-weights parameters that ``kwargs`` leaves out load nothing
    (:func:`.offline.weight_defaults`); a download it tries anyway is refused in one line."""
    target = resolve_arch(arch)
    given = dict(kwargs or {})
    try:
        with downloads_refused(arch):
            model = target(**weight_defaults(target, given), **given)
    except TypeError as exc:
        raise OptionError(
            "arch",
            "{name} '{arch}' rejected {arch_kwargs}: {why}",
            arch=arch,
            why=first_line(exc, with_type=False),
        ) from exc
    if not isinstance(model, nn.Module):
        raise OptionError(
            "arch",
            "{name} '{arch}' returned {t}, not an nn.Module",
            arch=arch,
            t=a_or_an(type(model).__name__),
        )
    return model


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Load strictly; missing, unexpected and mis-shaped keys are named in one error."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {list(state_dict[k].shape)} vs model {list(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_names(mismatched)}")
    if problems:
        raise OptionError(
            "arch",
            "{source} does not fit the model ({problems}); check {name} and {arch_kwargs}",
            source=source,
            problems="; ".join(problems),
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        hint = (
            "; it lacks the modules' versions (_metadata): save it with "
            "torch.save(model.state_dict(), path)"
            if getattr(state_dict, "_metadata", None) is None
            else ""
        )
        raise UsageError(
            f"the model refused {source} while loading it: {first_line(exc, with_type=False)}{hint}"
        ) from exc


def load_model(
    ckpt: str | None,
    arch: str | None,
    arch_kwargs: dict[str, Any] | None = None,
    trust: bool = False,
) -> tuple[nn.Module, CheckpointInfo | None]:
    """Build the model from ``arch`` and/or ``ckpt``; returns it in eval mode, on the CPU."""
    info = None
    if ckpt is None:
        if arch is None:
            raise OptionError(
                "ckpt", "give {name} and {arch}, or neither for the embedded default model"
            )
        model = build_arch(arch, arch_kwargs)
    else:
        found, info = unpack(read_checkpoint(ckpt, trust), ckpt)
        if isinstance(found, nn.Module):
            model = found
        elif arch is None:
            raise OptionError(
                "arch",
                "checkpoint '{ckpt}' is a state_dict; name the model that it fits with "
                "{name} package.module:callable",
                ckpt=ckpt,
            )
        else:
            model = build_arch(arch, arch_kwargs)
            load_weights(model, found, f"checkpoint '{ckpt}'")
    return model.float().eval(), info


@dataclass(frozen=True)
class LoadedModel:
    """A model with what its source knows: a description, the class labels and default layer
    where known (the embedded model, :mod:`.zoo`), the checkpoint's facts (None without
    one), and the pretrained-weights arguments the ``--arch`` builder was given so that nothing
    downloads (:func:`.offline.weight_defaults`). :class:`.source.ModelSource` gives one for any
    source."""

    model: nn.Module
    description: str
    labels: list[str] | None
    layer: str | None
    checkpoint: CheckpointInfo | None
    arch_weights: Mapping[str, Any] = field(default_factory=dict)
