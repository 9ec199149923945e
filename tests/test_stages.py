"""The three distillation scripts end to end on tiny models: hand-off, exports, checkpoints, resume, DDP, bad input."""

from __future__ import annotations

import csv
import json
import logging
import runpy
import subprocess
import sys
import warnings

import pytest
import pytorch_lightning as pl
import torch
import transformers
from safetensors.torch import load_file
from torch.nn import functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import distillation_ms
import distillation_ts_1st
import distillation_ts_2nd
import helper.distiller as distiller_module
from bert.errors import UserError
from bert.families import model_inputs
from data.config import DataConfig
from data.data_module import ClfDataModule
from helper import stages
from helper.config import DistillationRunConfig, load_config
from helper.distiller import head_parameters
from tests.conftest import ROOT, run_overrides

SCRIPTS = {"ms": distillation_ms, "ts_1st": distillation_ts_1st, "ts_2nd": distillation_ts_2nd}


def overrides(tmp_path, clf_csv, teacher: str, script: str, **extra) -> list[str]:
    """`run_overrides` plus: the teacher, no report, and (unless the student is given) a 1-layer student cut from
    layer 1 of the 2-layer teacher."""
    base = {"teacher.name": teacher, "distill.report": False}
    if script != "ts_2nd" and not {"student.name", "student.config", "student.bilstm"} & set(extra):
        base["student.init_from_teacher.layers"] = "[1]"
    return run_overrides(tmp_path, clf_csv, **{**base, **extra})


def run(script: str, tmp_path, clf_csv, teacher: str, **extra) -> dict:
    cfg = load_config(
        DistillationRunConfig,
        ROOT / "configs" / f"distillation_{script}.yaml",
        overrides(tmp_path, clf_csv, teacher, script, **extra),
    )
    return SCRIPTS[script].main(cfg)


def spy(monkeypatch, name: str, module=stages) -> list:
    """Record what `<module>.<name>` returns during the run."""
    real, seen = getattr(module, name), []

    def wrapper(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(module, name, wrapper)
    return seen


def at_build_trainer(monkeypatch, fn=lambda: None, callbacks: list | None = None) -> None:
    """Call `fn()` when the run builds its Trainer (student and adaptors are built, not yet trained); add callbacks."""
    real = stages.build_trainer

    def wrapper(cfg, stage, extra_callbacks=None):
        fn()
        return real(cfg, stage, [*(extra_callbacks or []), *(callbacks or [])])

    monkeypatch.setattr(stages, "build_trainer", wrapper)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def hf_state(model_dir) -> dict[str, torch.Tensor]:
    return load_file(f"{model_dir}/model.safetensors")


def test_two_step_hands_off_through_an_hf_directory(tmp_path, clf_csv, tiny_model_dir, monkeypatch):
    teacher = hf_state(tiny_model_dir)
    run("ts_1st", tmp_path, clf_csv, tiny_model_dir)
    stage1 = tmp_path / "distill_ts_1st" / "student"
    state1 = hf_state(stage1)
    # the prediction layer is the teacher's, untouched; the kept layer (teacher layer 1) was trained
    assert all(torch.equal(state1[k], teacher[k]) for k in ("classifier.weight", "bert.pooler.dense.weight"))
    t_layer1 = {k.replace("layer.1.", "layer.0."): v for k, v in teacher.items() if ".layer.1." in k}
    assert any(not torch.equal(state1[k], v) for k, v in t_layer1.items())
    ckpt = torch.load(tmp_path / "distill_ts_1st" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and not [k for k in ckpt["state_dict"] if k.startswith("teacher")]

    students = spy(monkeypatch, "build_student")
    initial = []
    at_build_trainer(monkeypatch, lambda: initial.append(snapshot(students[0])))
    metrics = run("ts_2nd", tmp_path, clf_csv, tiny_model_dir, **{"student.name": str(stage1)})
    assert {"val/acc", "test/acc"} <= set(metrics)
    assert initial[0].keys() == state1.keys() and all(torch.equal(initial[0][k], v) for k, v in state1.items())
    state2 = hf_state(tmp_path / "distill_ts_2nd" / "student")
    head = {n for n, _ in head_parameters(students[0])}
    assert {k for k in state2 if not torch.equal(state2[k], state1[k])} <= head  # step 2 trains the head only
    assert any(not torch.equal(state2[k], state1[k]) for k in head)


def test_projections_train_but_stay_out_of_the_exported_student(tmp_path, clf_csv, tiny_model_dir, monkeypatch):
    built = spy(monkeypatch, "build_adaptors", distiller_module)
    initial = []
    at_build_trainer(monkeypatch, lambda: initial.append(snapshot(built[0])))
    student_config = "{hidden_size: 64, num_attention_heads: 4, intermediate_size: 37}"
    run(
        "ts_1st", tmp_path, clf_csv, tiny_model_dir,
        **{"student.config": student_config, "student.init_from_teacher": "null", "distill.adaptors": "[HidnTinyBERT]"},
    )  # fmt: skip
    projection = built[0][0].projection
    assert projection.in_features == 64 and projection.out_features == 32
    assert not torch.equal(initial[0]["0.projection.weight"], projection.weight)  # trained

    run_dir = tmp_path / "distill_ts_1st"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    state = ckpt["state_dict"]
    assert torch.equal(state["adaptors.student.0.projection.weight"], projection.weight)
    assert not [k for k in state if k.startswith("teacher")]
    # the optimiser holds exactly the trainable student parameters and the projection: not the teacher
    trainable = [k for k in state if k.startswith("adaptors.") or k.startswith("students.student.")]
    head = [k for k in trainable if k.removeprefix("students.student.").startswith(("classifier.", "bert.pooler."))]
    assert sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"]) == len(trainable) - len(head)

    exported = hf_state(run_dir / "student")
    assert exported.keys() == {k.removeprefix("students.student.") for k in state if k.startswith("students.student.")}
    assert exported["bert.embeddings.word_embeddings.weight"].shape[1] == 64


def test_random_init_student_and_projections_follow_the_seed(tmp_path, clf_csv, tiny_model_dir, monkeypatch):
    built_s, built_a = spy(monkeypatch, "build_student"), spy(monkeypatch, "build_adaptors", distiller_module)
    initial = []
    at_build_trainer(monkeypatch, lambda: initial.append({**snapshot(built_s[-1]), **snapshot(built_a[-1])}))
    extra = {
        "student.config": "{hidden_size: 64, num_attention_heads: 4, intermediate_size: 37}",
        "student.init_from_teacher": "null",
        "distill.adaptors": "[HidnTinyBERT]",
        "trainer.fast_dev_run": True,
    }
    for name in ("a", "b"):
        torch.manual_seed(len(name) + len(initial))  # a different global RNG state before each run
        run("ts_1st", tmp_path, clf_csv, tiny_model_dir, **extra, **{"logger.run_name": name})
    assert all(torch.equal(initial[0][k], initial[1][k]) for k in initial[0])


class Crash(pl.Callback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated interruption")


def test_resume_after_interruption(tmp_path, clf_csv, tiny_model_dir, monkeypatch):
    extra = {"trainer.max_epochs": 3, "distill.adaptors": "[AttnMiniLM, LogitMSE]"}
    with monkeypatch.context() as m:
        at_build_trainer(m, callbacks=[Crash(6)])
        with pytest.raises(RuntimeError, match="simulated interruption"):
            run("ms", tmp_path, clf_csv, tiny_model_dir, **extra)
    run_dir = tmp_path / "distill_ms"
    assert not (run_dir / "student").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run("ms", tmp_path, clf_csv, tiny_model_dir, **extra, **{"trainer.resume": "last"})
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]  # the resume's own checkpoints
    steps_per_epoch = 32 // 8
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3 * steps_per_epoch
    first, second = (
        list(csv.DictReader(open(run_dir / "csv" / v / "metrics.csv"))) for v in ("version_0", "version_1")
    )
    assert {r["epoch"] for r in first if r["train/loss"]} == {"0", "1"}
    trained_again = [r for r in second if r["train/loss"]]
    assert {r["epoch"] for r in trained_again} == {"1", "2"}
    assert (run_dir / "student" / "model.safetensors").is_file()


def test_no_notices_about_our_own_settings(tmp_path, clf_csv, tiny_model_dir):
    """Lightning's notices about values the stage passes itself (all batches, a logger tip) stay out of the log."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    lightning_log = logging.getLogger("pytorch_lightning")
    level = lightning_log.level  # the benchmarks' helpers silence Lightning
    lightning_log.addHandler(handler)
    lightning_log.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run("ms", tmp_path, clf_csv, tiny_model_dir, **{"distill.adaptors": "[LogitKL]"})
    finally:
        lightning_log.removeHandler(handler)
        lightning_log.setLevel(level)
    assert any("GPU available" in m for m in seen)  # the handler sees Lightning's notices
    assert not [m for m in seen if "was configured so" in m or "litlogger" in m]
    assert not [str(w.message) for w in caught if "LeafSpec" in str(w.message)]


def test_two_tokenizers_with_sentence_level_adaptors(tmp_path, clf_csv, tiny_model_dir, other_tokenizer_dir):
    metrics = run(
        "ms", tmp_path, clf_csv, tiny_model_dir,
        **{"student.tokenizer": other_tokenizer_dir, "distill.adaptors": "[LogitKL]"},
    )  # fmt: skip
    assert "val/acc" in metrics
    out = tmp_path / "distill_ms"
    assert AutoTokenizer.from_pretrained(out / "student").get_vocab() == (
        AutoTokenizer.from_pretrained(other_tokenizer_dir).get_vocab()
    )
    assert list((out / "attention").glob("*.png"))  # the heatmap handles two tokenizations


BAD = {
    "pred adaptor in step 1": ("ts_1st", {"distill.adaptors": "[LogitMSE]"}, "LogitMSE cannot train in InterDistiller"),
    "inter adaptor in step 2": ("ts_2nd", {"distill.adaptors": "[AttnMiniLM]"}, "AttnMiniLM cannot train in Pred"),
    "unknown adaptor": ("ms", {"distill.adaptors": "[Nope]"}, r"distill.adaptors\[0\]: unknown adaptor 'Nope'"),
    "layers out of range": ("ms", {"student.init_from_teacher.layers": "[0, 5]"}, r"layers: \[5\] out of range"),
    "missing teacher": ("ms", {"teacher.name": "/nonexistent/teacher"}, "'/nonexistent/teacher': no such directory"),
    "token-level adaptor, two tokenizers": ("ms", {"student.tokenizer": None}, "AttnMiniLM, ValMiniLM compare tokens"),
    "student vocabulary too small": (
        "ms",
        {"student.tokenizer": None, "student.config": "{vocab_size: 10}", "student.init_from_teacher": "null"},
        "has 52 tokens but the student's embeddings have 10 rows",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_a_one_line_user_error(case, tmp_path, clf_csv, tiny_model_dir, other_tokenizer_dir):
    script, extra, message = BAD[case]
    if script == "ts_2nd":
        extra = {**extra, "student.name": tiny_model_dir}
    if "student.tokenizer" in extra:
        extra = {**extra, "student.tokenizer": other_tokenizer_dir}
    with pytest.raises(UserError, match=message) as err:
        run(script, tmp_path, clf_csv, tiny_model_dir, **extra)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["trainer.max_epoch=3", "teacher.name=/nonexistent/teacher"])
def test_cli_bad_override_is_one_line_and_exit_2(override, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["distillation_ms.py", override])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "distillation_ms.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, clf_csv, tiny_model_dir):
    extra = {"trainer.devices": 2, "trainer.strategy": "ddp", "distill.adaptors": "[AttnMiniLM, LogitMSE]"}
    args = overrides(tmp_path, clf_csv, tiny_model_dir, "ms", **extra)
    proc = subprocess.run(
        [sys.executable, "distillation_ms.py", "--config", "configs/distillation_ms.yaml", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    # metrics.json holds the metrics of the whole validation set (both ranks' halves), as one process gives them
    metrics = json.loads((tmp_path / "distill_ms" / "metrics.json").read_text())
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "distill_ms" / "student")
    data = DataConfig(source="csv", train=clf_csv["train"], validation=clf_csv["validation"], max_length=16)
    dm = ClfDataModule(data, AutoTokenizer.from_pretrained(tmp_path / "distill_ms" / "student"), cache_dir=None)
    dm.setup("fit")
    with torch.no_grad():
        batches = list(dm.val_dataloader())
        logits = torch.cat([student(**model_inputs(b, student)).logits for b in batches])  # (N, C)
    labels = torch.cat([b["labels"] for b in batches])
    assert metrics["val/loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-5)
    assert metrics["val/acc"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item(), abs=1e-6)


def test_cache_max_mb_reaches_the_teacher_cache(tmp_path, clf_csv, tiny_model_dir, monkeypatch):
    modules = []
    real = stages.fit_and_export

    def wrapper(cfg, stage, job):
        modules.append(job.module)
        return real(cfg, stage, job)

    monkeypatch.setattr(stages, "fit_and_export", wrapper)
    with pytest.warns(UserWarning, match="teacher cache full"):
        run("ms", tmp_path, clf_csv, tiny_model_dir, **{"distill.cache_max_mb": 0.001, "distill.report": "false"})
    cache = modules[0].teacher_cache
    assert cache.max_bytes == int(0.001 * 2**20) and cache.full and cache.nbytes <= cache.max_bytes


def test_the_seed_reaches_the_teacher_head_initialisation(tmp_path, clf_csv, minilm_path, monkeypatch):
    import finetune

    heads = []
    real = stages.load_classifier

    class Loaded(Exception):
        pass

    def wrapper(*args, **kwargs):
        heads.append(real(*args, **kwargs).classifier.weight.detach().clone())
        raise Loaded  # the head is initialised: nothing more to run

    monkeypatch.setattr(stages, "load_classifier", wrapper)
    for seed in (1, 1, 2):
        cfg = load_config(
            type(finetune.FinetuneConfig()),
            None,
            run_overrides(tmp_path, clf_csv, **{"model.name": minilm_path}) + [f"trainer.seed={seed}"],
        )
        with pytest.raises(Loaded):
            finetune.main(cfg)
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])


def test_bilstm_student_distils_exports_and_reports(tmp_path, clf_csv, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    bilstm = "{hidden_size: 16, mlp_hidden: 8}"
    extra = {"student.bilstm": bilstm, "distill.adaptors": "[LogitMSE, PooledMSE]", "distill.report": True}
    metrics = run("ms", tmp_path, clf_csv, tiny_model_dir, **extra)
    assert {"val/acc", "test/acc"} <= set(metrics) and "throughput" in metrics["summary"]
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "distill_ms" / "student")
    assert type(student).__name__ == "BiLSTMForSequenceClassification" and student.config.hidden_size == 16
    assert (tmp_path / "distill_ms" / "report.md").is_file()


def test_require_stops_a_student_that_misses_its_budget_before_training(tmp_path, clf_csv, tiny_model_dir, monkeypatch):
    trained = []
    at_build_trainer(monkeypatch, lambda: trained.append(True))
    missed = (
        r"distill.require: 'ratio.params <= 0.5' is not met by the untrained student \(ratio.params 0\.9\d*; timed as "
    )
    with pytest.raises(UserError, match=missed) as err:
        run("ms", tmp_path, clf_csv, tiny_model_dir, **{"distill.require": "['ratio.params <= 0.5']"})
    assert "\n" not in str(err.value) and not trained  # the student shares the teacher's 30k-row embeddings
    record = json.loads((tmp_path / "distill_ms" / "precheck.json").read_text())
    assert record["missed"] == ["ratio.params <= 0.5"] and not record["met"]
    assert record["figures"]["student.throughput"] > 0 and record["figures"]["ratio.latency_ms"] > 0


def test_require_met_trains_as_the_run_without_it(tmp_path, clf_csv, tiny_model_dir, capsys):
    extra = {  # a projection (hidden 64 -> 32) built after the check: it draws from the global RNG
        "student.config": "{hidden_size: 64, num_attention_heads: 4, intermediate_size: 37}",
        "student.init_from_teacher": "null",
        "distill.adaptors": "[HidnTinyBERT, LogitMSE]",
    }
    plain = run("ms", tmp_path / "a", clf_csv, tiny_model_dir, **extra)
    require = "['ratio.params <= 3', 'ratio.throughput >= 0.01']"
    checked = run("ms", tmp_path / "b", clf_csv, tiny_model_dir, **extra, **{"distill.require": require})
    assert "distill.require: met before training (ratio.params 2.0" in capsys.readouterr().out
    assert checked == plain  # the check leaves every RNG and the models' modes as they were


def test_layer_adaptor_with_a_bilstm_student_is_one_line(tmp_path, clf_csv, tiny_model_dir):
    extra = {"student.bilstm": "{hidden_size: 16}", "distill.adaptors": "[AttnMiniLM]"}
    with pytest.raises(UserError, match=r"AttnMiniLM.*the student has no encoder layers.*LogitMSE") as err:
        run("ms", tmp_path, clf_csv, tiny_model_dir, **extra)
    assert "\n" not in str(err.value)


def test_roberta_student_with_its_own_bpe_tokenizer(tmp_path, clf_csv, tiny_model_dir, roberta_student_dir):
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch)

    run_args = (tmp_path, clf_csv, tiny_model_dir)
    with pytest.raises(UserError, match="AttnMiniLM compare tokens, but teacher and student tokenize differently"):
        run("ms", *run_args, **{"student.name": roberta_student_dir, "distill.adaptors": "[AttnMiniLM, LogitKL]"})
    at_build_trainer(pytest.MonkeyPatch(), callbacks=[Spy()])
    metrics = run("ms", *run_args, **{"student.name": roberta_student_dir, "distill.adaptors": "[LogitKL, HardCE]"})
    assert "val/acc" in metrics
    vocab = AutoTokenizer.from_pretrained(roberta_student_dir).get_vocab()
    student_ids = seen[0]["student"]["input_ids"]
    assert student_ids.max() < len(vocab) and not torch.equal(
        student_ids, seen[0]["input_ids"][:, : student_ids.shape[1]]
    )
    exported = AutoTokenizer.from_pretrained(tmp_path / "distill_ms" / "student")
    assert exported.get_vocab() == vocab  # the student is exported with its own tokenizer


def test_two_validation_sets_monitor_and_grad_norms_in_a_stage(tmp_path, clf_csv, tiny_model_dir):
    sets = f"{{dev: {clf_csv['validation']}, other: {clf_csv['test']}}}"
    extra = {"data.validation": sets, "trainer.monitor": "val/other/acc", "trainer.track_grad_norm": True}
    metrics = run("ms", tmp_path, clf_csv, tiny_model_dir, **extra, **{"distill.report": True})
    assert {"val/dev/acc", "val/other/acc", "val/acc"} <= set(metrics)
    report = json.loads((tmp_path / "distill_ms" / "report.json").read_text())
    assert (
        set(report["validation_sets"]) == {"dev", "other"}
        and "validation set other" in (tmp_path / "distill_ms" / "report.md").read_text()
    )
    log = (tmp_path / "distill_ms" / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"grad_norm/total", "grad_norm/students", "val/other/f1"} <= set(log)
    with pytest.raises(UserError, match=r"trainer.monitor: 'val/nope/acc' names no validation set \(sets: dev, other"):
        run("ms", tmp_path, clf_csv, tiny_model_dir, **{"data.validation": sets, "trainer.monitor": "val/nope/acc"})
    bad = f"{{dev: {clf_csv['validation']}, other: {tmp_path / 'missing.csv'}}}"
    with pytest.raises(UserError, match="missing.csv") as err:
        run("ms", tmp_path, clf_csv, tiny_model_dir, **{"data.validation": bad, "logger.run_name": "bad"})
    assert "\n" not in str(err.value)


def test_a_stage_writing_to_a_log_shows_no_model_loading_bars(tmp_path, clf_csv, tiny_model_dir, capsys):
    transformers.logging.enable_progress_bar()  # another test may have turned the bars off for this process
    try:
        run("ms", tmp_path, clf_csv, tiny_model_dir)
        err = capsys.readouterr().err
    finally:
        transformers.logging.enable_progress_bar()
    assert "Loading weights" not in err  # stderr is not a terminal here
    assert "epoch 1/" in err or "validation after epoch 1" in err  # the plain progress lines still are


@pytest.mark.slow
def test_csv_tensorboard_and_mlflow_loggers_all_get_the_run(tmp_path, clf_csv, tiny_model_dir, capsys):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run("ms", tmp_path, clf_csv, tiny_model_dir, **{"logger.loggers": "[csv, tensorboard, mlflow]"})
    out = tmp_path / "distill_ms"
    printed = capsys.readouterr().out
    assert f"tensorboard: logging to {out / 'tensorboard' / 'version_0'}" in printed
    assert f"mlflow: logging to sqlite:///{out / 'mlflow.db'}" in printed
    assert "train/LogitMSE" in (out / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    tags = {"scalars": set(), "images": set()}  # fit, validate and test each write an event file
    for path in (out / "tensorboard" / "version_0").glob("events.out.tfevents.*"):
        for kind, names in EventAccumulator(str(path)).Reload().Tags().items():
            tags.get(kind, set()).update(names if isinstance(names, list) else [])
    assert {"train/LogitMSE", "train/AttnMiniLM", "val/acc", "test/acc"} <= tags["scalars"]
    assert tags["images"] == {"attention"}  # the attention heatmap
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (mlrun,) = client.search_runs([client.get_experiment_by_name("bert-distill").experiment_id])
    assert {"train/LogitMSE", "train/AttnMiniLM", "val/acc"} <= set(mlrun.data.metrics)
    assert mlrun.data.params["optim.lr"] == "0.0001"


def test_a_logger_without_its_package_is_one_line_before_any_model_loads(tmp_path, clf_csv, monkeypatch):
    monkeypatch.setitem(sys.modules, "comet_ml", None)  # not importable, installed or not
    with pytest.raises(UserError) as err:
        run("ms", tmp_path, clf_csv, str(tmp_path / "no_such_teacher"), **{"logger.loggers": "[csv, comet]"})
    assert str(err.value) == "logger.loggers: comet needs its package: pip install comet-ml"


@pytest.mark.slow
def test_comet_logs_offline_into_the_run_directory(tmp_path, clf_csv, tiny_model_dir, monkeypatch):
    pytest.importorskip("comet_ml")
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    run("ms", tmp_path, clf_csv, tiny_model_dir, **{"logger.loggers": "[csv, comet]"})
    (archive,) = (tmp_path / "distill_ms" / "comet").glob("*.zip")  # comet's offline experiment, for `comet upload`
    assert archive.stat().st_size > 0


def test_onnx_exports_are_checked_and_reported_and_need_no_onnxruntime(
    tmp_path, clf_csv, tiny_model_dir, monkeypatch, capsys
):
    pytest.importorskip("onnxruntime")
    run(
        "ms",
        tmp_path,
        clf_csv,
        tiny_model_dir,
        **{"distill.onnx": True, "distill.report": True, "distill.report_batches": 2},
    )
    out = capsys.readouterr().out
    assert "onnx export -> " in out and "model_int8.onnx" in out
    report = json.loads((tmp_path / "distill_ms" / "report.json").read_text())
    assert set(report["served"]) == {"onnx", "onnx-int8"}
    onnx = report["served"]["onnx"]
    assert onnx["acc"] == pytest.approx(report["student"]["acc"]) and onnx["throughput"] > 0
    assert onnx["model_bytes"] == (tmp_path / "distill_ms" / "student_onnx" / "model.onnx").stat().st_size
    assert "## The student as served" in (tmp_path / "distill_ms" / "report.md").read_text()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # without it the run still completes, with one line
    metrics = run("ms", tmp_path, clf_csv, tiny_model_dir, **{"distill.onnx": True, "logger.run_name": "no_ort"})
    assert "test/acc" in metrics and not (tmp_path / "no_ort" / "student_onnx").exists()
    lines = [line for line in capsys.readouterr().out.splitlines() if "onnxruntime" in line]
    assert lines == [
        "distill.onnx: onnx and onnxruntime are not installed (pip install onnx onnxruntime); no ONNX export"
    ]
