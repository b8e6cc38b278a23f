"""Issue 19, the two crashes: a cache that a trace filled with a fake tensor (timm's TinyViT),
and parity judged against float64 where float32 rounding is the question (visformer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from explain_export.artifact.contract import heatmap_unit
from explain_export.builder.explainer import build_explainer
from explain_export.builder.export import export as export_mod
from explain_export.builder.export import parity64, verify
from explain_export.builder.export.export import export_explainer
from explain_export.builder.lower.trace_state import kept_attributes
from explain_export.errors import ParityError

SIZE = (32, 32)


class CachedBias(nn.Module):
    """Adds a bias that, in eval mode, it computes once per device and keeps in a plain dict,
    cleared by ``train()``/``eval()``: what timm's TinyViT attention does with its biases."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(0.1 * torch.randn(channels, 1, 1))
        self.cache: dict[str, Tensor] = {}

    def train(self, mode: bool = True) -> CachedBias:
        super().train(mode)
        self.cache = {}
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return x + 2 * self.bias
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = 2 * self.bias
        return x + self.cache[key]


class CachingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bias = CachedBias(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.bias(torch.relu(self.conv(x)))).flatten(1))


class OnAnOffset(nn.Module):
    """Maps on a large common value, ``A = conv(relu(conv(x))) + 1e4``: float32 keeps the
    signal to ulp(1e4) ~ 1e-3, and cam's ``Σ_k W_k A_k`` sums terms of 1e4 to a spread of ~1,
    so eager float32 itself is ~5e-3 from float64 on the heatmap, fifty times the fixed 1e-4."""

    def __init__(self, width: int = 32, offset: float = 1e4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.offset = offset
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv2(torch.relu(self.conv(x))) + self.offset
        return self.fc(self.pool(a).flatten(1))


def _seeded(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def test_export_leaves_no_fake_tensor_in_a_models_cache(tmp_path):
    # gradcam is lowered with make_fx on fake tensors; eval() there empties the cache and the
    # traced forward refilled it with a FakeTensor, and eager then failed with ".numpy() is not
    # supported for tensor subclasses" (tiny_vit_5m_224)
    model = _seeded(CachingNet)
    explainer = build_explainer(model, method="gradcam", input_size=SIZE)
    before = dict(model.bias.cache)
    result = export_explainer(explainer, str(tmp_path), formats=("torchscript",))
    assert all(r.ok for r in result.parity)
    assert model.bias.cache.keys() == before.keys()
    assert all(type(v) is torch.Tensor for v in model.bias.cache.values())


def test_kept_attributes_puts_back_dicts_lists_and_new_attributes_but_not_hooks():
    model = nn.Sequential(nn.Linear(2, 2))
    inner = model[0]
    inner.cache, inner.items, inner.flag = {"a": torch.ones(1)}, [1], "x"
    kept_dict, kept_list = inner.cache, inner.items
    with kept_attributes(model):
        inner.cache["b"] = torch.zeros(1)
        inner.items.append(2)
        inner.flag = "y"
        inner.added = 3
        handle = inner.register_forward_hook(lambda *a: None)
        model.eval()
    assert inner.cache is kept_dict and list(inner.cache) == ["a"]
    assert inner.items is kept_list and inner.items == [1]
    assert inner.flag == "x" and not hasattr(inner, "added")
    assert len(inner._forward_hooks) == 1 and not inner.training
    handle.remove()
    assert not inner._forward_hooks


def test_in_float64_converts_and_puts_every_tensor_back():
    model = _seeded(CachingNet)
    model(torch.rand(1, 3, 8, 8))
    params = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    cached = model.bias.cache["cpu"]
    with parity64.in_float64(model):
        assert all(p.dtype == torch.float64 for p in model.parameters())
        model(torch.rand(1, 3, 8, 8, dtype=torch.float64))
    for name, p in model.named_parameters():
        assert p is params[name][0] and p.dtype == torch.float32
        assert torch.equal(p, params[name][1])
    assert model.bias.cache["cpu"] is cached


def test_stay_float64_keeps_float64_through_float32_casts():
    x = torch.ones(2, dtype=torch.float64)
    with parity64._StayFloat64():
        assert x.float().dtype == torch.float64
        assert x.to(torch.float32).dtype == torch.float64
        assert x.to("cpu", dtype=torch.float32).dtype == torch.float64
        assert torch.ones(2, dtype=torch.int64).float().dtype == torch.float32
    assert x.float().dtype == torch.float32


class Outputs:
    """An artifact whose outputs are made from eager's: ``make(case index, eager fp32 outputs,
    float64 outputs) -> outputs``."""

    def __init__(self, cases, refs, refs64, make) -> None:
        self.by_image = {id(c.image): i for i, c in enumerate(cases)}
        self.refs, self.refs64, self.make = refs, refs64, make

    def outputs(self, image, class_index=None):
        i = self.by_image[id(image)]
        return self.make(self.refs[i], self.refs64[i])


@pytest.fixture(scope="module")
def offset():
    """The OnAnOffset explainer (cam), its cases, eager float32 and float64 outputs."""
    explainer = build_explainer(_seeded(OnAnOffset), input_size=SIZE)
    cases = verify.cases(SIZE)
    refs = verify.references(explainer, cases)
    exact = parity64.Float64Reference(explainer, cases, refs)
    exact._compute()
    return explainer, cases, refs, exact


def _mirror(ref, ref64):
    """A file as far from float64 as eager float32 is, the other way: 2·float64 − eager."""
    heat = np.clip(2 * heatmap_unit(ref64["heatmap"]) - ref["heatmap"], 0, 1)
    logits = 2 * ref64["logits"] - ref["logits"]
    return {"logits": logits.astype(np.float32), "heatmap": heat.astype(np.float32)}


def test_float64_rule_accepts_a_file_as_exact_as_eager(offset):
    explainer, cases, refs, exact = offset
    y_heat = exact.yardstick[1]
    assert y_heat > 10 * verify.HEATMAP_TOL  # eager float32 is itself far from float64
    artifact = Outputs(cases, refs, exact.outputs, _mirror)
    rows = verify.parity("onnx", artifact, explainer, cases, refs=refs, exact=exact)
    assert all(r.ok for r in rows)
    judged = [r for r in rows if r.float64]
    assert judged and max(r.heatmap_err for r in judged) > verify.HEATMAP_TOL
    for r in judged:
        assert r.float64["eager_heatmap_err"] == y_heat
        assert r.float64["heatmap_limit"] == pytest.approx(parity64.TIMES * y_heat)
        assert r.float64["heatmap_err"] <= 1.01 * y_heat  # float32 rounding of the mirror
    assert "float64" in verify.format_report(rows)


def test_float64_rule_still_fails_a_wrong_file(offset):
    explainer, cases, refs, exact = offset

    def flipped(ref, ref64):  # the heatmap of a mirrored kernel: wrong, not rounded
        return {"logits": ref["logits"], "heatmap": ref["heatmap"][..., ::-1].copy()}

    rows = verify.parity("onnx", Outputs(cases, refs, exact.outputs, flipped), explainer, cases,
                         refs=refs, exact=exact)  # fmt: skip
    assert not any(r.ok for r in rows)
    assert all(r.float64["heatmap_err"] > r.float64["heatmap_limit"] for r in rows)


def test_float64_runs_only_where_a_fixed_limit_fails(offset):
    explainer, cases, refs, _ = offset
    exact = parity64.Float64Reference(explainer, cases, refs)
    same = Outputs(cases, refs, refs, lambda ref, _: ref)
    rows = verify.parity("onnx", same, explainer, cases, refs=refs, exact=exact)
    assert all(r.ok and r.float64 is None for r in rows)
    assert exact.outputs is None and exact.error is None


class _Flipped:
    """A runtime whose heatmap is mirrored left-right: a wrong file."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def outputs(self, image, class_index=None):
        got = dict(self.inner.outputs(image, class_index))
        got["heatmap"] = got["heatmap"][..., ::-1].copy()
        return got


def test_a_wrong_file_of_a_well_conditioned_model_fails_export(tmp_path, monkeypatch):
    from models import tiny_resnet

    real = export_mod.RUNTIMES["torchscript"]
    monkeypatch.setitem(export_mod.RUNTIMES, "torchscript", lambda *a, **k: _Flipped(real(*a, **k)))
    explainer = build_explainer(tiny_resnet(), input_size=SIZE)
    with pytest.raises(ParityError, match="from float64 eager by more than 4x"):
        export_explainer(explainer, str(tmp_path), formats=("torchscript",))
    assert not any(p.name.endswith(".pt") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_export_of_an_ill_conditioned_model_is_judged_against_float64(tmp_path):
    import json

    # offset 3e3, not 1e4: at 1e4 the frozen TorchScript file's heatmap on a CPU without
    # AVX-512 is 4.2 Y from float64 on the photo (Y 5.5e-3), just past the rule's 4 Y, and the
    # export refuses (nothing written); at 3e3 the worst is 2.8 Y there, and eager float32 is
    # still far outside the fixed limits
    torch.manual_seed(0)
    explainer = build_explainer(OnAnOffset(offset=3e3).eval(), input_size=SIZE)
    result = export_explainer(explainer, str(tmp_path))
    assert all(r.ok for r in result.parity)
    rows = json.loads((tmp_path / "explainer.json").read_text())["parity"]["rows"]
    judged = [r for r in rows if r["float64"]]
    assert judged, "premise: the files differ from eager float32 by more than the fixed limits"
    assert all(r["float64"]["heatmap_err"] <= r["float64"]["heatmap_limit"] for r in judged)
