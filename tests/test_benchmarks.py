"""Smoke runs of every benchmark script on tiny inputs, so that they keep working (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import bench_demo, bench_inference, bench_overhead, bench_shapes, common

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def stages_in_process(monkeypatch):
    """common.run_stage runs each stage script inside the test's process: the wiring is the same, without an
    interpreter start-up and the heavy imports per stage."""
    monkeypatch.setenv("BENCH_IN_PROCESS", "1")


def test_overhead_times_all_variants(tmp_path):
    out = tmp_path / "overhead.json"
    argv = ["--tiny", "--rounds", "1", "--warmup", "0", "--memory-steps", "0", "--students", "1", "--out", str(out)]
    bench_overhead.main(argv)
    res = json.loads(out.read_text())
    student = res["students"]["1-layer [1]"]
    assert set(student["median_s"]) == {"lightning", "module", "hand", "hand-sdpa", "module-cache"}
    assert all(t > 0 for t in student["median_s"].values())
    assert {"lightning/hand", "module/hand", "lightning/hand-sdpa"} <= set(student["time_ratio"])
    assert "memory_met" not in res["targets"]


def test_shapes_times_every_depth_and_width_against_the_teacher(tmp_path):
    out = tmp_path / "shapes.json"
    argv = ["--tiny", "--layers", "1", "2", "--widths", "37", "16", "--latency-calls", "2", "--throughput-batches", "1"]
    bench_shapes.main([*argv, "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res["students"]) == {"1x37", "1x16", "2x37", "2x16"}
    assert res["students"]["2x16"]["layers"] == [0, 1] and res["students"]["1x16"]["params_ratio"] < 1
    assert all(r["throughput_ratio"] > 0 and r["latency_ratio"] > 0 for r in res["students"].values())


def test_hand_loop_computes_the_distiller_loss(tmp_path):
    path = common.tiny_model_dir(tmp_path)
    batch = common.sst2_batches(bench_overhead.AutoTokenizer.from_pretrained(path), 1, 4, 16, "max_length")[0]
    batch["attention_mask"][0, 5:] = 0  # padding must be ignored the same way by both
    distiller = bench_overhead.make_distiller(path, [1])
    hands = {v: bench_overhead.make_loop(v, path, [1], total_steps=1) for v in ("hand", "hand-sdpa")}
    for model in (distiller.student, *(h.student for h in hands.values())):  # unlike the teacher: non-zero losses
        torch.manual_seed(1)
        for p in model.parameters():
            p.data.add_(0.5 * torch.randn_like(p))
    check = bench_overhead.loss_check(distiller, hands, batch)
    assert check["distiller"] > 1e-3
    assert check["hand"] == pytest.approx(check["distiller"], rel=1e-4)
    assert check["hand-sdpa"] == pytest.approx(check["distiller"], rel=1e-4)


@pytest.mark.parametrize("variant", ["lightning", "hand"])
def test_overhead_memory_child(tmp_path, capsys, variant):
    path = common.tiny_model_dir(tmp_path)
    argv = ["--child", variant, "--teacher", path, "--students", "1", "--memory-steps", "2", "--threads", "1"]
    bench_overhead.main(argv)
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["growth_mb"] >= 0 and res["peak_mb"] > res["growth_mb"]
    assert res.get("steady_growth_mb", 0) >= 0  # absent where the kernel refuses to reset the peak


def test_inference_runs_cpu_and_reports_cuda(tmp_path):
    out = tmp_path / "inference.json"
    argv = ["--tiny", "--latency-calls", "2", "--throughput-batches", "1", "--out", str(out)]
    bench_inference.main([*argv, "--variants", "cpu-fp32", "cpu-bf16", "cuda-fp32"])
    res = json.loads(out.read_text())["variants"]
    for variant in ("cpu-fp32", "cpu-bf16"):
        assert res[variant]["teacher"]["latency_ms"] > 0 and res[variant]["student"]["throughput"] > 0
    if torch.cuda.is_available():
        assert res["cuda-fp32"]["student"]["latency_ms"] > 0
    else:
        assert "skipped" in res["cuda-fp32"]


def test_demo_scripts_are_read_from_the_makefile():
    scripts = bench_demo.demo_scripts()
    assert scripts[0] == "finetune.py"
    assert all((ROOT / s).is_file() for s in scripts)


@pytest.mark.slow
def test_demo_smoke(tmp_path):
    out = tmp_path / "demo.json"
    bench_demo.main(["--smoke", "--out", str(out)])
    res = json.loads(out.read_text())
    assert list(res["stages"]) == bench_demo.demo_scripts()
    assert all(s["returncode"] == 0 and s["peak_rss_mb"] > 0 for s in res["stages"].values())
    assert "distill_ms report" in res["results"]


@pytest.mark.slow
def test_recorder_benchmark(tmp_path):
    from benchmarks import bench_recorder

    out = tmp_path / "recorder.json"
    bench_recorder.main(["--tiny", "--steps", "1", "--warmup", "0", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["train"]["ratio_record_vs_plain"] > 0 and res["teacher"]["ratio_record_vs_eager"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["on", "off"])
def test_e2e_benchmark(tmp_path, shared_data, cache):
    pytest.importorskip("textbrewer")
    from benchmarks import bench_e2e

    out = tmp_path / "e2e.json"
    bench_e2e.main(["--limit", "32", "--ours-cache", cache, "--out", str(out)])
    res = json.loads(out.read_text())
    assert ("teacher_cache" in res["runs"]["0"]["ours"]) == (cache == "on")
    assert len(res["speedup_ours_over_peer"]) == 2 and res["train_examples"] == 32
    assert len(res["dev_acc_diff_points"]) == 1
    assert res["gradient_check_max_relative_gap"] < 1e-3  # our losses and TextBrewer's do the same work


@pytest.mark.slow
def test_stage2_benchmark(tmp_path, shared_data):
    from benchmarks import bench_stage2

    out = tmp_path / "stage2.json"
    bench_stage2.main(["--tiny", "--limit", "32", "--rounds", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res["pairs"]) == {"head", "encoder"}
    assert all(p["ratio"] > 0 for p in res["pairs"].values())


def test_overhead_framework_mode(tmp_path):
    out = tmp_path / "step_overhead.json"
    argv = ["--framework", "--rounds", "2", "--warmup", "1", "--repeats", "1", "--batches", "2", "--out", str(out)]
    bench_overhead.main(argv)
    res = json.loads(out.read_text())
    assert set(res["settings"]) == {"cache off", "cache on"}
    for setting in res["settings"].values():
        assert set(setting["median_ms"]) == {"trainer", "module", "hand"}
        assert set(setting["overhead_ms"]) == {"trainer-hand", "module-hand"}
    assert res["settings"]["cache off"]["loss_check"]["hand"] == pytest.approx(
        res["settings"]["cache off"]["loss_check"]["distiller"], rel=1e-4
    )
    assert "met" in res["targets"]


def test_heatmap_benchmark(tmp_path):
    from benchmarks import bench_heatmap

    out = tmp_path / "heatmap.json"
    bench_heatmap.main(["--tiny", "--repeats", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res["median_ms"]) == {"png only", "png + wandb image"} and res["png_kb"] > 0


@pytest.mark.slow
def test_startup_benchmark(tmp_path):
    from benchmarks import bench_startup

    out = tmp_path / "startup.json"
    bench_startup.main(["--smoke", "--repeats", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res["stages"]) == {"finetune.py", "distillation_ms.py"}
    for stage in res["stages"].values():
        phases = stage["runs"][0]["phases_s"]
        assert 0 < phases["fit_start"] <= phases["first_step_start"] <= phases["first_step_end"]


@pytest.mark.slow
def test_multi_benchmark_times_the_pair_and_scores_each_student(tmp_path, shared_data):
    from benchmarks import bench_multi

    out = tmp_path / "multi.json"
    res = bench_multi.main(["--tiny", "--limit", "32", "--epochs", "1", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text())["epochs"] == 1
    for cache in ("off", "on"):
        timing = res[f"cache_{cache}"]
        assert len(timing["pair"]) == len(timing["pair_over_sum"]) == 1 and timing["pair_over_sum"][0] > 0
        for together in ("pair", "alone"):
            assert set(timing["dev_acc"][together]) == {"two", "three"}
    assert 0 <= res["cipher"]["kd_from_english_teacher"] <= 1


def test_predict_benchmark(tmp_path):
    from benchmarks import bench_predict

    out = tmp_path / "predict.json"
    res = bench_predict.main(["--tiny", "--repeats", "2", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text())["texts"] == res["texts"] > 0
    assert len(res["seconds"]["predict"]) == len(res["seconds"]["forward"]) == 2 and res["predict_over_forward"] > 0
    assert 0 <= res["predict_test_acc"] <= 1 and res["recorded_test_acc"] is None


@pytest.mark.slow
def test_general_benchmark_distils_then_finetunes_each_init(tmp_path, shared_data):
    from benchmarks import bench_general

    tiny = ["data.limit_train=32", "data.limit_eval=16", "data.max_length=16", "trainer.accelerator=cpu"]
    argv = [
        "--seeds", "0", "--general-epochs", "1", "--finetune-epochs", "1", "--out", str(tmp_path / "runs"),
        "--result", str(tmp_path / "general.json"), "--extra", *tiny,
    ]  # fmt: skip
    res = bench_general.main(argv)
    assert set(res["inits"]) == {"general", "random", "cut"} and res["texts"] > 10000
    for row in res["inits"].values():
        assert 0 <= row["test_acc_mean"] <= 1 and len(row["runs"]) == 1
    assert (tmp_path / "runs" / "general" / "student" / "config.json").is_file()


@pytest.mark.realdata
def test_serving_benchmark_times_every_variant(tmp_path, shared_data):
    pytest.importorskip("onnxruntime")
    from benchmarks import bench_serving

    teacher = common.tiny_model_dir(tmp_path / "tiny", 6)
    argv = [
        "--data", "sst2", "--teacher", teacher, "--speed-only", "--latency-calls", "1", "--throughput-batches", "1",
        "--out", str(tmp_path / "runs"), "--result", str(tmp_path / "serving.json"),
    ]  # fmt: skip
    res = bench_serving.main(argv)
    assert json.loads((tmp_path / "serving.json").read_text())["speed_only"] is True
    assert len(res["timing"]) == 5 and all(f["throughput"] > 0 and f["model_bytes"] > 0 for f in res["timing"].values())


@pytest.mark.realdata
def test_serving_benchmark_trains_and_serves_a_bilstm(tmp_path, shared_data):
    pytest.importorskip("onnxruntime")
    from benchmarks import bench_serving

    teacher = common.tiny_model_dir(tmp_path / "tiny", 2)
    tiny = ["data.limit_train=32", "data.limit_eval=16", "data.max_length=16", "trainer.max_epochs=1"]
    argv = [
        "--data", "sst2", "--teacher", teacher, "--student", "bilstm", "--seeds", "0", "--latency-calls", "1",
        "--throughput-batches", "1", "--out", str(tmp_path / "runs"), "--result", str(tmp_path / "bilstm.json"),
        "--extra", *tiny,
    ]  # fmt: skip
    res = bench_serving.main(argv)
    assert res["student"] == "bilstm" and res["int8_gemm"]["speedup"] > 0
    assert (tmp_path / "runs" / "sst2_bilstm_s0" / "student_onnx" / "model.onnx").is_file()
    assert set(res["timing_first_seed"]) == set(bench_serving.VARIANTS)
    assert all(0 <= f["acc"] <= 1 and f["throughput"] > 0 for f in res["timing_first_seed"].values())


@pytest.mark.realdata
@pytest.mark.parametrize("variants", [["ours"], ["ours", "st_raw"]])
def test_xling_anchor_benchmark_trains_the_same_student_both_ways(tmp_path, shared_data, variants):
    if "st_raw" in variants:
        pytest.importorskip("sentence_transformers")
        pytest.importorskip("accelerate")
    from benchmarks import bench_xling_anchor

    argv = [
        "--train", "32", "--batch", "16", "--eval", "32", "--max-length", "16", "--variants", *variants,
        "--out", str(tmp_path / "runs"), "--result", str(tmp_path / "anchor.json"),
    ]  # fmt: skip
    res = bench_xling_anchor.main(argv)
    assert json.loads((tmp_path / "anchor.json").read_text())["settings"]["train"] == 32
    assert set(res["results"]) == {"teacher", *variants}
    for name in variants:
        row = res["results"][name]
        assert row["examples_per_s"] > 0 and 0 <= row["xx_en"] <= 1 and 0 <= row["en_xx"] <= 1
    assert set(res["ratios"]) == ({"ours_x_st_raw_examples_per_s"} if "st_raw" in variants else set())
    assert (tmp_path / "runs" / "init" / "config.json").is_file()


def test_sweep_record_holds_every_trial_and_the_summary_as_plain_json(tmp_path, clf_csv, tiny_model_dir):
    pytest.importorskip("optuna")
    from benchmarks import sweep_record
    from sweep import main as sweep_main
    from tests.test_sweep import write_sweep

    path = write_sweep(tmp_path, clf_csv, tiny_model_dir, grid={"optim.lr": [1e-3]}, seeds=[0, 1])
    sweep_main([str(path)])
    out = tmp_path / "record.json"
    record = sweep_record.main([str(path), "--note", "tiny", "--out", str(out)])
    assert json.loads(out.read_text(), parse_constant=pytest.fail) == json.loads(json.dumps(record))  # no NaN
    assert record["command"] == f"python sweep.py {path}" and record["note"] == "tiny"
    assert [t["seed"] for t in record["trials"]] == [0, 1] and "run_dir" not in record["trials"][0]
    assert record["summary"][0]["n"] == 2 and record["summary"][0]["trials"] == [0, 1]
    assert record["cpu_seconds_total"] == pytest.approx(sum(t["cpu_seconds"] for t in record["trials"]), abs=1e-3)
    assert record["date"] and record["machine"]
