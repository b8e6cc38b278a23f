"""What explain-bench prints (issue 20, items 8 and 12): a speedup column that agrees with the
medians beside it, the paired one labelled as such; the plan of a run, said before it starts;
``--quick``. No timing is asserted."""

from __future__ import annotations

import json

import pytest

from explain_export.bench import BenchConfig
from explain_export.bench.report import SPEEDUP_LEGEND, markdown, table, target_value
from explain_export.cli.bench import main

from commands import run_module


def _result(eager_ms: float, compile_ms: float, value: float, paired: float) -> dict:
    def stats(ms: float) -> dict:
        return {"median_ms": ms, "p90_ms": 2 * ms, "p99_ms": 3 * ms, "images_per_s": 1e3 / ms}

    ratio = {"value": value, "paired_median": paired, "paired_p25": 1.0, "paired_p75": 3.0}
    return {
        "config": {"batch_sizes": [1]},
        "variants": {
            "eager": {
                "label": "eager explainer",
                "backend": "torch",
                "batches": {"1": stats(eager_ms)},
            },
            "compile": {
                "label": "torch.compile explainer",
                "backend": "inductor",
                "batches": {"1": stats(compile_ms)},
            },
        },
        "ratios": {"speedup_vs_eager": {"compile": {"1": ratio}}},
    }


def test_the_speedup_of_the_medians_and_the_paired_one_are_both_labelled():
    """The row of the issue: eager 328.89 ms, torch.compile 607.00 ms, 2.44× round by round.
    The medians' column reads 0.54×, as a reader checks; the paired one is labelled, and a note
    says the two disagree."""
    text = table(_result(328.89, 607.0, 328.89 / 607.0, 2.44))
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[7:9] == ["speedup (medians)", "speedup (paired)"]
    row = [c.strip() for c in lines[3].strip("|").split("|")]
    assert row[0] == "torch.compile explainer" and row[3] == "607.00"
    assert row[7] == "0.54×" and row[8] == "2.44×"
    assert SPEEDUP_LEGEND in lines
    assert lines[-1].startswith(
        "note: torch.compile explainer, batch 1: 0.54× by the medians but 2.44× paired"
    )
    agree = table(_result(300.0, 100.0, 3.0, 2.9))  # the same story: no note
    assert not agree.splitlines()[-1].startswith("note:")


def test_a_paired_target_says_paired_and_an_old_one_does_not():
    row = {"kind": "speedup_vs_eager", "value": 3.5, "unit": "×", "key": "paired_median"}
    assert target_value(row) == "3.50× paired"
    assert target_value({**row, "key": "value"}) == "3.50×"
    assert target_value({"kind": "heatmap_overhead", "value": 0.012}) == "+1.2%"


def test_the_plan_names_the_variants_and_the_slow_steps():
    full = BenchConfig().describe("cam", gradient=False)
    assert full.startswith(
        "plan: 11 variants (eager, eager_logits, torchscript, ort, ort_logits, compile, autograd, "
        "eager_gradcam, ort_gradcam, gradcam_numpy, ort_numpy), 35 rounds (5 warm-up + 30 "
        "timed) at each batch size 1,8,32; besides: 3 ONNX exports, a TorchScript trace, "
        "torch.compile at each batch size"
    )
    assert full.endswith("up to 100 profiled ORT runs per batch size")
    gradient = BenchConfig(skip=frozenset({"compile"})).describe("gradcam", gradient=True)
    assert "ort_gradcam" not in gradient and "2 ONNX exports" in gradient
    assert "torch.compile" not in gradient
    methods = BenchConfig(methods=("cam", "gradcam", "sum"), top_k=5).describe("cam", False)
    # ort, ort_logits, ort_gradcam; cam and gradcam open those again; sum; three top-5 files
    assert "besides: 7 ONNX exports" in methods and methods.count("_top5") == 3


@pytest.mark.slow
def test_quick_says_what_it_does_and_times_eager_against_ort_alone(tmp_path):
    """As a user runs it: the plan on stderr before the work, the table and the legend on
    stdout, the speedup of the medians equal to the medians' ratio; only eager and ort ran."""
    args = ["--arch", "models:TinyResNet", "--input-size", "64", "64", "--quick"]
    args += ["--settle", "0", "--threads", "1", "--out", str(tmp_path)]
    proc = run_module("explain_export.cli.bench", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    assert err[1] == (
        "plan: 2 variants (eager, ort), 12 rounds (2 warm-up + 10 timed) at each batch size 1; "
        "besides: 1 ONNX export"
    )
    out = proc.stdout.splitlines()
    rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in out[2:4])}
    assert set(rows) == {"eager explainer", "ORT explainer"}
    result = json.loads((tmp_path / "bench.json").read_text())
    medians = {n: v["batches"].get("1", {}).get("median_ms") for n, v in result["variants"].items()}
    for name, row in (("eager", rows["eager explainer"]), ("ort", rows["ORT explainer"])):
        assert row[3] == f"{medians[name]:.2f}"
    # the speedup a reader checks against the medians (printed to 0.01 ms; bench.json's to 1e-4)
    speedup = float(rows["ORT explainer"][7].rstrip("×"))
    assert speedup == pytest.approx(medians["eager"] / medians["ort"], abs=0.011)
    assert rows["ORT explainer"][8].endswith("×")  # and the paired one beside it
    assert SPEEDUP_LEGEND in out and "skipped" not in proc.stdout
    # our goals are not the user's failures: without --targets none is judged or printed
    assert not any(line.startswith("target ") for line in out) and result["targets"] == []
    ran = {n for n, v in result["variants"].items() if v["status"] == "ok"}
    assert ran == {"eager", "ort"} and result["head_profile"] == {}
    assert result["config"]["iters"] == 10 and result["config"]["batch_sizes"] == [1]
    assert "speedup (medians)" in markdown(result)


def test_quick_keeps_the_flags_given_and_refuses_the_ones_it_sets(tmp_path, capsys):
    from explain_export.cli.bench import FULL, QUICK, _preset, build_parser

    def preset(*args: str) -> dict:
        return _preset(build_parser().parse_args(list(args)))

    assert preset() == FULL
    quick = preset("--quick")
    assert {k: v for k, v in quick.items() if k != "skip"} == {
        "batch_sizes": "1",
        "warmup": 2,
        "iters": 10,
        "profile_runs": 0,
    }
    skipped = set(quick["skip"].split(","))
    assert "eager" not in skipped and "ort" not in skipped and {"compile", "torchscript"} <= skipped
    given = preset("--quick", "--iters", "3", "--batch-sizes", "1,8", "--profile-runs", "5")
    assert (given["iters"], given["batch_sizes"], given["profile_runs"]) == (3, "1,8", 5)
    assert given["warmup"] == QUICK["warmup"]
    for flag in (["--methods", "cam"], ["--skip", "compile"], ["--top-k", "2"]):
        assert main(["--quick", *flag, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("explain-bench: error: --quick times the eager and the ONNX")


def _judged(met: bool) -> dict:
    return {
        "target": "ORT explainer >= 3x faster than eager explainer, batch 1",
        "kind": "speedup_vs_eager",
        "value": 1.2,
        "unit": "×",
        "key": "paired_median",
        "met": met,
        "judged": True,
    }


def test_the_console_shows_the_ratios_and_our_targets_only_where_asked():
    """Issue 26, item 7: a user's run prints the table and its ratios, never "target MISSED";
    a run with --targets (the project's own) prints each goal, met or not."""
    from explain_export.bench.report import console_lines

    result = {**_result(300.0, 100.0, 3.0, 2.9), "notes": [], "busy": {"1": 0.4}}
    users = console_lines({**result, "targets": []})
    assert users[0] == table(result)
    assert not any("target" in line for line in users)
    assert users[-1] == (
        "warning: the machine was busy: other processes used 40% of the CPUs while timing "
        "batch 1; those figures are not reliable; rerun on an idle machine"
    )
    ours = console_lines({**result, "busy": {}, "targets": [_judged(False)]})
    assert ours[-1] == (
        "target MISSED: ORT explainer >= 3x faster than eager explainer, batch 1 (1.20× paired)"
    )


def test_targets_are_judged_only_with_the_flag():
    from explain_export.cli.bench import build_parser

    assert BenchConfig().targets is False
    assert build_parser().parse_args([]).targets is False
    assert build_parser().parse_args(["--targets"]).targets is True


def test_an_earlier_report_is_refused_before_the_model_loads_unless_overwrite(
    tmp_path, capsys, monkeypatch
):
    """Issue 26, item 7: as explain-run, explain-bench does not silently replace its outputs."""
    import explain_export.bench as bench_pkg

    (tmp_path / "bench.md").write_text("an earlier run\n")
    loaded = []
    monkeypatch.setattr(bench_pkg, "load_explainer", lambda *a: loaded.append(a) or 1 / 0)
    assert main(["--quick", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"explain-bench: error: '{tmp_path / 'bench.md'}' already exists; pass --overwrite to "
        "replace, or choose another --out\n"
    )
    assert loaded == [] and (tmp_path / "bench.md").read_text() == "an earlier run\n"
    # --save-models also guards its folder; --overwrite goes on to load the model
    (tmp_path / "bench.md").unlink()
    (tmp_path / "models").mkdir()
    assert main(["--quick", "--save-models", "--out", str(tmp_path)]) == 2
    assert "models' already exists" in capsys.readouterr().err
    assert main(["--quick", "--overwrite", "--save-models", "--out", str(tmp_path)]) == 1
    assert len(loaded) == 1


def test_the_plot_title_names_the_method():
    from explain_export.bench.plot import plot, title

    result = {
        "config": {
            "model": "TinyResNet, user model",
            "input_size": [64, 64],
            "method": "gradcam++",
            "device": "cpu",
        },
        "machine": {"torch_threads": 2},
        "variants": {},
    }
    assert title(result) == "TinyResNet 64x64, gradcam++, cpu, 2 threads: median ms per batch"
    assert plot(result).shape[2] == 3  # drawn with it
