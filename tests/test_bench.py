"""explain-bench: every variant, ratio and report file is there, the math of the statistics, the
autograd and pytorch-grad-cam style baselines, the profiler's heatmap head share, the CUDA path
(CUDA graphs included) and its usage error.

No test asserts a timing value: those depend on the machine and are reported, not checked.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil

import cv2
import numpy as np
import onnx
import pytest
import torch

from explain_export import bench
from explain_export.artifact.samples import load_rgb, photo_path
from explain_export.bench import report as benchreport
from explain_export.builder.explainer import build_explainer
from explain_export.builder.maths.methods import METHODS
from explain_export.cli.bench import main

from models import tiny_resnet
from reference import correlation, gradcam, normalize

TINY = ["--arch", "models:TinyResNet", "--input-size", "64", "64", "--quiet"]
QUICK = ["--iters", "3", "--warmup", "1", "--threads", "2", "--settle", "0"]
STATS = ("median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms", "images_per_s")
RATIO_KEYS = {"value", "paired_median", "paired_p25", "paired_p75"}
# torch.compile (inductor) needs a C compiler; where there is one, it must work
COMPILER = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """All nine variants on TinyResNet at batch sizes 1 and 2."""
    out = tmp_path_factory.mktemp("bench_tiny")
    assert main([*TINY, *QUICK, "--batch-sizes", "1,2", "--targets", "--out", str(out)]) == 0
    return out, json.loads((out / "bench.json").read_text())


@pytest.mark.slow
def test_every_variant_is_measured_at_every_batch_size(tiny_run):
    _, result = tiny_run
    assert list(result["variants"]) == list(bench.VARIANTS)
    for name, v in result["variants"].items():
        if name == "compile" and not COMPILER:  # inductor needs a C compiler: recorded, not fatal
            assert v["status"] == "ok" or v["status"].startswith("failed: ")
            continue
        if name == "ort_cudagraph":  # CUDA only: a one-line status on the CPU, no batches
            assert v["status"] == bench.CUDA_GRAPH_NEEDS_CUDA and v["batches"] == {}
            continue
        assert v["status"] == "ok", (name, v["status"])
        assert set(v["batches"]) == {"1", "2"}
        for m in v["batches"].values():
            assert m["n"] == 3 and len(m["samples_ms"]) == 3 and m["page_faults_per_call"] >= 0
            assert all(isinstance(m[k], float) and math.isfinite(m[k]) for k in STATS)


@pytest.mark.slow
def test_every_variant_computes_what_eager_computes(tiny_run):
    _, result = tiny_run
    for name, v in result["variants"].items():
        for m in v["batches"].values():
            diff = m["max_abs_diff_vs_eager"]
            assert diff["logits"] <= 1e-3, name
            if name.endswith("_logits"):
                assert diff["heatmap"] is None
            else:  # autograd Grad-CAM included: cam equals it after the min-max
                assert diff["heatmap"] <= 1e-4, name


@pytest.mark.slow
def test_ratios_and_targets_come_from_the_same_run(tiny_run):
    _, result = tiny_run
    r = result["ratios"]
    exported = {"torchscript", "ort"} | ({"compile"} if COMPILER else set())
    assert set(r["speedup_vs_eager"]) == exported
    assert set(r["heatmap_overhead"]) == {"eager", "ort"}
    for by_batch in [*r["speedup_vs_eager"].values(), *r["heatmap_overhead"].values()]:
        assert set(by_batch) == {"1", "2"}
        assert all(set(x) == RATIO_KEYS for x in by_batch.values())
    assert set(r["ort_vs_autograd"]) == {"1", "2"}
    assert set(r["gradcam_overhead"]) == {"eager", "ort"}
    assert set(r["ort_gradcam_vs_autograd"]) == {"1", "2"}
    assert set(r["vs_gradcam_numpy"]) == {"ort", "ort_numpy"}  # ort_cudagraph: CUDA only
    for by_batch in [*r["vs_gradcam_numpy"].values(), r["best_exported_vs_gradcam_numpy"]]:
        assert set(by_batch) == {"1", "2"}
        assert all(set(x) == RATIO_KEYS for x in by_batch.values())
    assert set(result["best_exported"]) == {"1", "2"}
    assert {b["variant"] for b in result["best_exported"].values()} <= {"ort", "torchscript"}
    kinds = {t["kind"] for t in result["targets"]}
    assert kinds == {
        "speedup_vs_eager",
        "heatmap_overhead",
        "ort_vs_autograd",
        "ort_gradcam_vs_autograd",
        "head_profile",
    }
    assert all(isinstance(t["met"], bool) for t in result["targets"])
    assert not any("(CUDA)" in t["target"] for t in result["targets"])


@pytest.mark.slow
def test_machine_versions_and_providers_are_recorded(tiny_run):
    _, result = tiny_run
    m = result["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["torch_threads"] == m["ort_intra_op_threads"] == 2
    assert m["gpu"] is None
    assert {"torch", "onnxruntime", "onnx", "explain_export", "python"} <= set(result["versions"])
    assert "CPUExecutionProvider" in result["providers"]["available"]
    assert (
        result["providers"]["ort"] == result["providers"]["ort_logits"] == ["CPUExecutionProvider"]
    )
    assert result["providers"]["ort_numpy"] == ["CPUExecutionProvider"]
    assert result["config"]["batch_sizes"] == [1, 2] and result["config"]["threads"] == 2
    assert result["command"].startswith("explain-bench --arch models:TinyResNet")


@pytest.mark.slow
def test_markdown_and_png_are_written(tiny_run):
    out, result = tiny_run
    text = (out / "bench.md").read_text()
    assert "| variant | backend | batch | median ms |" in text
    assert "## Ratios" in text and "## Targets" in text and "](bench.png)" in text
    assert "## Heatmap head, ONNX Runtime profiler (CPU)" in text
    assert "pytorch-grad-cam style Grad-CAM, heatmaps/s" in text
    assert "others_cpu_share" in result and set(result["others_cpu_share"]) == {"1", "2"}
    for v in result["variants"].values():
        assert v["label"] in text
    png = out / "bench.png"
    assert png.stat().st_size < 100_000
    image = cv2.imread(str(png))
    assert image is not None and image.ndim == 3


@pytest.mark.slow
def test_default_model_at_batch_1(tmp_path):
    """The embedded EfficientNet-Lite0 through every path; torch.compile (slow to compile) and
    the second ONNX export (the tiny run covers it) are skipped to keep this quick."""
    args = ["--batch-sizes", "1", "--iters", "2", "--warmup", "0", "--settle", "0"]
    args += ["--skip", "compile,ort_logits", "--threads", "2", "--quiet", "--targets"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["config"]["model"].startswith("EfficientNet-Lite0")
    assert result["config"]["layer"] == "_avg_pooling:input"
    statuses = {n: v["status"] for n, v in result["variants"].items()}
    assert statuses.pop("compile") == statuses.pop("ort_logits") == "skipped: --skip"
    assert statuses.pop("ort_cudagraph") == bench.CUDA_GRAPH_NEEDS_CUDA
    assert set(statuses.values()) == {"ok"}
    assert {t["target"] for t in result["targets"]} >= {
        "ORT explainer >= 3x faster than eager explainer, batch 1",
        "ORT explainer >= 10x heatmaps/s of autograd Grad-CAM, batch 1",
    }


@pytest.mark.slow
def test_channels_last_and_tuned_malloc(tmp_path):
    """The torch variants in channels-last layout, glibc keeping freed memory; same outputs."""
    args = [*TINY, *QUICK, "--batch-sizes", "1", "--skip", "compile", "--channels-last"]
    assert main([*args, "--tuned-malloc", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["config"]["channels_last"] is True
    assert result["config"]["malloc"].startswith("glibc")
    for name, v in result["variants"].items():
        if name not in ("compile", "ort_cudagraph"):
            assert v["status"] == "ok", name
            assert v["batches"]["1"]["max_abs_diff_vs_eager"]["logits"] <= 1e-3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_device_cuda_without_cuda_is_a_one_line_usage_error(tmp_path, capsys):
    assert main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("explain-bench: error: --device cuda") and "--device cpu" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run(tmp_path):
    args = [*TINY, *QUICK, "--device", "cuda", "--batch-sizes", "1,2", "--skip", "compile"]
    assert main([*args, "--targets", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["machine"]["gpu"]
    for name in ("eager", "eager_logits", "torchscript", "autograd"):
        assert result["variants"][name]["status"] == "ok"
    for name in ("ort", "ort_logits", "ort_numpy"):
        v = result["variants"][name]
        if v["status"] == "ok":
            assert v["providers"][0] == "CUDAExecutionProvider"
        else:
            assert v["status"] == bench.ORT_CUDA_MISSING
    v = result["variants"]["ort_cudagraph"]
    if v["status"] == "ok":  # replayed graphs compute what eager computes
        assert v["providers"][0] == "CUDAExecutionProvider"
        for m in v["batches"].values():
            assert m["max_abs_diff_vs_eager"]["heatmap"] <= 1e-4
    else:  # no CUDA provider, or ORT refused the graph (a node on the CPU provider)
        assert v["status"].startswith("not measured: ") and "\n" not in v["status"]
    assert result["head_profile"] == {}  # the profiler share is a CPU figure
    targets = {t["target"] for t in result["targets"]}
    assert "best exported explainer <= 0.5 ms, batch 1 (CUDA)" in targets
    if result["variants"]["ort"]["status"] == "ok":
        assert "heatmap adds <= 5% over ort logits-only, batch 1 (CUDA)" in targets


@pytest.mark.parametrize(
    "args",
    [["--skip", "eager"], ["--skip", "nope"], ["--batch-sizes", "0"], ["--batch-sizes", "1,a"]],
)
def test_bad_flags_are_usage_errors(args, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_summarize_percentiles_and_throughput():
    s = bench.summarize([float(x) for x in range(1, 101)], batch=8)
    assert s["median_ms"] == 50.5 and s["min_ms"] == 1.0 and s["n"] == 100
    assert s["p90_ms"] == pytest.approx(90.1) and s["p99_ms"] == pytest.approx(99.01)
    assert s["images_per_s"] == pytest.approx(8 * 1000 / 50.5, abs=0.01)


def test_time_ratio_of_medians_and_of_paired_rounds():
    r = bench.time_ratio([10.0, 20.0, 30.0], [5.0, 5.0, 10.0])
    assert r["value"] == 20.0 / 5.0
    assert r["paired_median"] == 3.0  # per round: 2, 4, 3


def test_rounds_call_every_variant_once_in_rotating_order():
    order: list[str] = []
    calls = {n: (lambda n=n: order.append(n)) for n in "abc"}
    times, faults = bench.time_rounds(calls, 4, sync=lambda: None, prime=1, settle_s=0.001)
    assert order == list("aabbcc" + "bbccaa" + "ccaabb" + "aabbcc")  # each turn: primed, timed
    assert all(len(t) == 4 for t in times.values())
    assert all(len(f) == 4 and min(f) >= 0 for f in faults.values())


def test_a_variant_that_raises_drops_out_of_the_rounds():
    failed = []

    def boom():
        raise RuntimeError("no")

    calls = {"a": lambda: None, "b": boom}
    times, _ = bench.time_rounds(calls, 3, lambda: None, failed=lambda n, e: failed.append(n))
    assert failed == ["b"] and len(times["a"]) == 3 and times["b"] == []


def test_targets_met_and_missed():
    found = {
        "speedup_vs_eager": {"ort": {"1": {"value": 3.5}}},
        "heatmap_overhead": {"ort": {"1": {"value": 0.05}}},
        "ort_vs_autograd": {"8": {"value": 7.0}},
    }
    rows = {t["target"]: t["met"] for t in bench.check_targets(found)}
    assert rows == {
        "ORT explainer >= 3x faster than eager explainer, batch 1": True,
        "heatmap adds <= 3% over ort logits-only, batch 1": False,
        "ORT explainer >= 7x heatmaps/s of autograd Grad-CAM, batch 8": True,
    }


def test_autograd_gradcam_matches_the_reference_gradcam():
    model = tiny_resnet()
    explainer = build_explainer(model, "layer3", "cam", (64, 64))
    image = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    logits, heat = bench.AutogradGradCAM(explainer)(image)
    ref_heat, ref_logits = gradcam(model, normalize(image), model.layer3)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert heat.shape == (3, 1, 64, 64)
    assert float((heat - torch.from_numpy(ref_heat)).abs().max()) < 1e-4


def test_others_cpu_share_subtracts_this_process():
    cores = os.cpu_count() or 1
    # 2 s of wall time: all CPUs busy for 2*cores s, of which this process used 2 s
    share = bench.others_cpu_share((0.0, 0.0, 0.0), (2.0 * cores, 2.0, 2.0))
    assert share == pytest.approx(round((2.0 * cores - 2.0) / (2.0 * cores), 4))
    assert bench.others_cpu_share(None, (1.0, 1.0, 1.0)) is None


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A TinyResNet ``cam`` explainer (width 16, 64x64) exported as the bench exports it, and
    its logits-only model."""
    folder = tmp_path_factory.mktemp("bench_onnx")
    explainer = build_explainer(tiny_resnet(width=16), "layer3", "cam", (64, 64))
    info = explainer.plan
    example = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    path, logits_path = str(folder / "explainer.onnx"), str(folder / "logits.onnx")
    bench.export_onnx(explainer, example, path, bench.DEFAULT_OPSET, ["logits", "heatmap"])
    normalized = bench.Normalized(explainer).eval()
    bench.export_onnx(normalized, example, logits_path, bench.DEFAULT_OPSET, ["logits"])
    return path, logits_path, explainer, info


def test_gradcam_numpy_matches_the_cam_heatmap():
    """pytorch-grad-cam's steps (numpy, min-max, cv2.resize, min-max) give the cam heatmap of a
    GAP + linear model: on random images and on a photo."""
    explainer = build_explainer(tiny_resnet(), "layer3", "cam", (64, 64))
    images = [torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))]
    with contextlib.suppress(FileNotFoundError):  # no scikit-image: the random batch only
        images.append(torch.from_numpy(load_rgb(photo_path("chelsea.png"), (64, 64)))[None])
    before = [p.requires_grad for p in explainer.model.parameters()]
    numpy_cam = bench.NumpyGradCAM(explainer)
    try:
        for image in images:
            with torch.inference_mode():
                logits, heat = explainer(image)[:2]
            got_logits, got = numpy_cam(image)
            assert got.shape == heat.shape and got.dtype == torch.float32
            assert torch.allclose(got_logits, logits, atol=1e-5)
            assert correlation(got.numpy(), heat.numpy()) > 0.99
            assert float((got - heat).abs().max()) < 0.05
    finally:
        numpy_cam.remove()
    assert [p.requires_grad for p in explainer.model.parameters()] == before


def test_ort_head_share_counts_only_the_nodes_logits_does_not_need(
    tiny_onnx, tmp_path, monkeypatch
):
    path, logits_path, _, _ = tiny_onnx
    monkeypatch.chdir(tmp_path)  # where a profile written to the working directory would land
    image = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    head = bench.ort_head_share(path, image, threads=1, runs=10)
    assert head["runs"] == 10 and head["unmatched_nodes"] == 0
    assert 0 < head["head_nodes"] < head["nodes"]
    assert 0 < head["head_ms"] < head["total_kernel_ms"]
    assert 0 < head["share"] < 1
    assert head["share"] == pytest.approx(
        head["head_ms"] / (head["total_kernel_ms"] - head["head_ms"]), rel=1e-2
    )
    assert 0 < len(head["top"]) <= 5 and all(n["us"] >= 0 and n["op"] for n in head["top"])
    alone = bench.ort_head_share(logits_path, image, threads=1, runs=5)
    assert alone["head_nodes"] == 0 and alone["head_ms"] == 0 and alone["share"] == 0
    assert alone["total_kernel_ms"] > 0 and alone["top"] == []
    assert os.listdir(tmp_path) == []  # the profile went to a temporary folder, and is gone


def test_logits_ancestors_walk_back_from_logits(tiny_onnx):
    graph = onnx.load(tiny_onnx[0]).graph
    ancestors = bench.logits_ancestors(graph)
    producer = {o: n.name for n in graph.node for o in n.output}
    assert producer["logits"] in ancestors and producer["heatmap"] not in ancestors
    assert bench.logits_ancestors(graph, "no such tensor") == set()


def test_ort_cudagraph_is_not_measured_without_cuda(tiny_onnx):
    outputs = {"logits": (10,), "heatmap": (1, 64, 64)}
    v = bench._ort_cudagraph_variant(tiny_onnx[0], outputs, torch.device("cpu"), 1)
    assert v.make is None and v.status == bench.CUDA_GRAPH_NEEDS_CUDA
    assert v.status.startswith("not measured: ") and "\n" not in v.status


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ort_cudagraph_replays_one_graph_per_batch_size(tiny_onnx):
    """Each batch size gets its own graph on its own bound buffers; a replay reads the input
    buffer's current content."""
    path, _, explainer, info = tiny_onnx
    device = torch.device("cuda")
    outputs = {"logits": (info.num_classes,), "heatmap": (1, 64, 64)}
    v = bench._ort_cudagraph_variant(path, outputs, device, 2)
    if v.status != "ok":
        assert v.status.startswith("not measured: ") and "\n" not in v.status
        pytest.skip(v.status)
    explainer = copy.deepcopy(explainer).to(device)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for batch in (1, 2, 1):  # batch 1 again: a third graph on new buffers
        image = torch.rand(batch, 3, 64, 64, device=device, generator=gen)
        call = v.make(image)
        for step in range(5):  # plain runs, the capture, then replays
            image.copy_(torch.rand(batch, 3, 64, 64, device=device, generator=gen))
            torch.cuda.synchronize()  # ORT runs on its own stream
            logits, heat = call()
            torch.cuda.synchronize()
            with torch.inference_mode():
                want_logits, want_heat = explainer(image)[:2]
            assert float((logits - want_logits).abs().max()) <= 1e-3, (batch, step)
            assert float((heat - want_heat).abs().max()) <= 1e-4, (batch, step)


def test_ort_numpy_is_the_runtime_on_numpy(tiny_onnx):
    path, _, explainer, _ = tiny_onnx
    v = bench._ort_numpy_variant(path, torch.device("cpu"), 1)
    assert v.status == "ok" and v.providers == ["CPUExecutionProvider"] and v.path == path
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    logits, heat = v.make(image)()
    with torch.inference_mode():
        want_logits, want_heat = explainer(image)[:2]
    assert logits.device.type == "cpu" and heat.shape == (2, 1, 64, 64)
    assert float((logits - want_logits).abs().max()) <= 1e-3
    assert float((heat - want_heat).abs().max()) <= 1e-4


def test_targets_by_device_and_unit():
    found = {
        "heatmap_overhead": {"ort": {"1": {"value": 0.04}}},
        "best_exported": {
            "1": {"variant": "ort", "median_ms": 0.4, "images_per_s": 2500.0},
            "64": {"variant": "ort", "median_ms": 6.0, "images_per_s": 10666.7},
        },
        "best_exported_vs_gradcam_numpy": {"1": {"value": 40.0}, "64": {"value": 9.0}},
        "head_profile": {"1": {"share": 0.02}, "8": {"share": 0.05}},
    }
    cuda = {t["target"]: t for t in bench.check_targets(found, "cuda")}
    assert {k: t["met"] for k, t in cuda.items() if "(CUDA)" in k} == {
        "best exported explainer <= 0.5 ms, batch 1 (CUDA)": True,
        "best exported explainer >= 30x heatmaps/s of pytorch-grad-cam style, batch 1 (CUDA)": True,
        "best exported explainer >= 12000 images/s, batch 64 (CUDA)": False,
        "best exported explainer >= 10x heatmaps/s of pytorch-grad-cam style, batch 64 (CUDA)": (
            False
        ),
        "heatmap adds <= 5% over ort logits-only, batch 1 (CUDA)": True,
    }
    assert not any("(profiler)" in k for k in cuda)
    cpu = {t["target"]: t for t in bench.check_targets(found, "cpu")}
    assert not any("(CUDA)" in k for k in cpu)
    profiled = [t for k, t in cpu.items() if "(profiler)" in k]
    assert [t["met"] for t in profiled] == [True, False]
    values = [benchreport.target_value(t) for t in (*profiled, *cuda.values())]
    assert {"+2.0%", "+5.0%", "0.400 ms", "40.00×", "10,667 images/s"} <= set(values)


@pytest.mark.slow
def test_head_profile_line_reads_as_a_percentage(tiny_run):
    _, result = tiny_run
    assert set(result["head_profile"]) == {"1", "2"}
    line = benchreport.head_profile_line("1", result["head_profile"]["1"])
    assert line.startswith("ORT heatmap head, batch 1 (profiler, ") and line.endswith(
        "% over the logits-only path"
    )
    assert "\n" not in line


def test_a_busy_machine_is_said_and_its_targets_not_judged():
    from explain_export.bench.run import busy
    from explain_export.bench.targets import Target, check_targets

    assert busy({1: 0.5, 8: 0.01, 32: None}) == {"1": 0.5}
    t1 = Target("x >= 3, batch 1", ("speedup_vs_eager", "ort", "1"), 3.0, key="paired_median")
    t8 = Target("x >= 3, batch 8", ("speedup_vs_eager", "ort", "8"), 3.0, key="paired_median")
    found = {
        "speedup_vs_eager": {"ort": {"1": {"paired_median": 1.0}, "8": {"paired_median": 4.0}}}
    }
    rows = check_targets(found, "cpu", (t1, t8), busy={"1"})
    assert [(r["met"], r["judged"]) for r in rows] == [(False, False), (True, True)]


def test_a_printed_ratio_lies_within_its_paired_range():
    r = bench.time_ratio([10.0, 20.0, 30.0], [5.0, 5.0, 10.0])  # medians 4.0, rounds 2, 4, 3
    text = benchreport._fmt_ratio(r)
    assert text.startswith("3.00×") and "paired 2.50…3.50" in text


# one round untimed, two timed, one thread: a check of the plumbing, not a measurement
FEW = [*TINY, "--iters", "2", "--warmup", "0", "--prime", "0", "--settle", "0", "--threads", "1"]
FEW += ["--batch-sizes", "1", "--profile-runs", "0"]
NOT_EAGER = "compile,torchscript,autograd,gradcam_numpy,ort_numpy,ort_logits,eager_gradcam"


@pytest.mark.slow
def test_methods_add_one_ort_variant_each(tmp_path):
    """``--methods``: ``ort_<method>`` after the fixed variants, once each, timed in the same
    rounds, with its speedup vs eager and its time over ``ort_cam``."""
    args = [*FEW, "--skip", f"{NOT_EAGER},ort,ort_gradcam", "--methods", "cam,sum,cam"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["config"]["methods"] == ["cam", "sum"]
    assert list(result["variants"]) == [*bench.VARIANTS, "ort_cam", "ort_sum"]
    for name in ("ort_cam", "ort_sum"):
        v = result["variants"][name]
        assert v["status"] == "ok" and v["label"] == "ORT explainer, " + name[4:]
        assert v["providers"] == ["CPUExecutionProvider"] and v["batches"]["1"]["n"] == 2
    cam = result["variants"]["ort_cam"]["batches"]["1"]["max_abs_diff_vs_eager"]
    assert cam["heatmap"] < 1e-4  # the explainer's own method
    r = result["ratios"]
    assert set(r["speedup_vs_eager"]) == {"ort_cam", "ort_sum"}
    assert set(r["time_vs_cam"]) == {"ort_sum"} and set(r["time_vs_cam"]["ort_sum"]["1"]) == (
        RATIO_KEYS
    )
    text = (tmp_path / "bench.md").read_text()
    assert "| ORT explainer, sum | onnxruntime CPU | 1 |" in text
    assert "| ORT explainer, sum: time over ORT explainer, cam |" in text


@pytest.mark.slow
def test_a_method_the_layer_cannot_take_is_not_measured(tmp_path):
    """cam needs GAP + one Linear after the map: LayerNormHead's is refused in one line. Its
    explainer is gradcam, so ort_gradcam, asked for, runs the ort file."""
    args = [*FEW, "--skip", NOT_EAGER, "--arch", "models:LayerNormHead", "--methods", "cam,gradcam"]
    assert main([*args, "--save-models", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["config"]["method"] == "gradcam"
    cam = result["variants"]["ort_cam"]
    assert cam["status"].startswith("not measured: cam needs") and "\n" not in cam["status"]
    assert cam["batches"] == {}
    assert result["variants"]["ort_gradcam"]["status"] == "ok"
    models = sorted(os.listdir(tmp_path / "models"))
    assert models == ["explainer.onnx", "explainer.ort-optimized.onnx"]  # no second export
    assert result["ratios"]["time_vs_cam"] == {}
    assert f"ORT explainer, cam: {cam['status']}" in result["notes"]


@pytest.mark.parametrize(
    "args", [["--methods", "cam,nope"], ["--methods", "gradcam", "--skip", "ort_gradcam"]]
)
def test_bad_methods_are_usage_errors(args, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--methods" in err


def test_methods_all_and_the_help():
    from explain_export.builder.maths.methods import METHODS
    from explain_export.cli.bench import _methods, build_parser

    assert _methods("all") == tuple(METHODS)
    assert _methods("eigencam, cam,eigencam") == ("eigencam", "cam")
    assert "ort_<method>" in build_parser().format_help()


def test_time_vs_cam_divides_by_ort_cam_and_judges_eigencam():
    raw = {1: {"ort_cam": [2.0, 2.0, 4.0], "ort_eigencam": [3.0, 2.0, 4.0], "eager": [9.0] * 3}}
    r = bench.ratios(raw, ["ort_cam", "ort_eigencam"])
    assert r["time_vs_cam"]["ort_eigencam"]["1"]["value"] == 1.5
    assert r["time_vs_cam"]["ort_eigencam"]["1"]["paired_median"] == 1.0  # 1.5, 1.0, 1.0
    assert set(r["speedup_vs_eager"]) == {"ort_cam", "ort_eigencam"}
    assert bench.ratios(raw)["time_vs_cam"] == {}  # without --methods, none
    rows = [t for t in bench.check_targets(r, "cpu") if t["kind"] == "time_vs_cam"]
    assert [(t["target"], t["met"]) for t in rows] == [
        ("ORT eigencam <= 1.3x the time of ORT cam, batch 1 (--methods)", True)
    ]


@pytest.mark.slow
def test_every_method_on_ort_computes_its_eager_explainer(tmp_path):
    """--methods all: every method's ONNX file gives what that method's eager explainer gives;
    cam and gradcam are the ort and ort_gradcam files."""
    from explain_export.artifact import runtime

    torch.save(tiny_resnet().state_dict(), tmp_path / "m.pt")
    args = [*FEW, "--skip", NOT_EAGER, "--methods", "all", "--save-models"]
    assert main([*args, "--ckpt", str(tmp_path / "m.pt"), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    layer = result["config"]["layer"]
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    for method in result["config"]["methods"]:
        v = result["variants"][f"ort_{method}"]
        assert v["status"] == "ok", (method, v["status"])
        path = {"cam": "explainer.onnx", "gradcam": "gradcam.onnx"}.get(method)
        out = runtime.load(str(tmp_path / "models" / (path or f"method-{method}.onnx")))
        got = out.outputs(image.numpy())["heatmap"]
        spec = METHODS[method]
        at = None if spec.at_image and not spec.layer_map else layer  # pixel-level: no layer
        with build_explainer(tiny_resnet(), at, method, (64, 64)) as eager:
            want = eager(image)[1].detach().numpy()
        assert np.abs(got - want).max() < 1e-3, method
    assert not os.path.exists(tmp_path / "models" / "method-cam.onnx")
    assert len(result["ratios"]["time_vs_cam"]) == len(result["config"]["methods"]) - 1


@pytest.mark.slow
def test_top_k_adds_one_variant_per_method_with_its_time_over_top_1(tmp_path):
    """``--top-k 3``: ``ort_<method>_top3`` beside each ``ort_<method>``, its best class's map
    equal to eager's (the explainer's own method), and its time over its top-1; a method with no
    class is not measured."""
    skip = f"{NOT_EAGER},ort,ort_gradcam"
    args = [*FEW, "--skip", skip, "--methods", "cam,sum", "--top-k", "3"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    names = ["ort_cam", "ort_sum", "ort_cam_top3", "ort_sum_top3"]
    assert list(result["variants"]) == [*bench.VARIANTS, *names]
    top3 = result["variants"]["ort_cam_top3"]
    assert top3["status"] == "ok"
    assert top3["batches"]["1"]["max_abs_diff_vs_eager"]["heatmap"] < 1e-4
    assert result["variants"]["ort_sum_top3"]["status"].startswith("not measured: sum explains")
    r = result["ratios"]
    assert set(r["time_vs_top1"]) == {"ort_cam_top3"} and "ort_cam_top3" not in r["time_vs_cam"]
    assert "| ORT explainer, cam_top3: time over its top-1 |" in (tmp_path / "bench.md").read_text()


def test_top_k_needs_methods(tmp_path, capsys):
    assert main([*FEW, "--top-k", "3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--top-k" in err and "--methods" in err


def test_time_vs_top1_divides_a_top_k_variant_by_its_method():
    raw = {1: {"ort_cam": [2.0, 2.0, 2.0], "ort_cam_top5": [2.4, 2.2, 2.2], "eager": [9.0] * 3}}
    r = bench.ratios(raw, ["ort_cam", "ort_cam_top5"])
    assert r["time_vs_top1"]["ort_cam_top5"]["1"]["paired_median"] == 1.1
    assert r["time_vs_cam"] == {}  # a top-k variant is not another method


@pytest.mark.parametrize(
    "method, compared", [("gradcam", False), ("layercam", True), ("cam", True)]
)
def test_gradcam_variants_are_skipped_only_for_gradcam_itself(method, compared):
    from explain_export.bench.variants import gradcam_explainer

    layer = "avgpool:input" if method == "cam" else "layer2"
    explainer = build_explainer(tiny_resnet(seed=0), layer, method)
    other = gradcam_explainer(explainer)
    explainer.remove()
    assert (other is not None) == compared
    if other is not None:
        assert other.method.name == "gradcam" and other.plan.layer == explainer.plan.layer
        other.remove()
