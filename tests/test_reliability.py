"""Reliability: non-finite losses, one run per run directory, resume checks, settings only the machine can check.

Every error is one line (a `UserError`; exit status 2 from the CLI) that names the key, with no traceback."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

import distillation_ms
import finetune
from bert.errors import UserError
from helper import training
from helper.config import DistillationRunConfig, FinetuneConfig, load_config
from tests.conftest import ROOT, run_overrides


def ft_overrides(tmp_path, clf_csv, model_dir, **extra) -> list[str]:
    return run_overrides(tmp_path, clf_csv, **{"model.name": model_dir, **extra})


def ft(tmp_path, clf_csv, model_dir, **extra) -> dict:
    cfg = load_config(
        FinetuneConfig, ROOT / "configs" / "finetune.yaml", ft_overrides(tmp_path, clf_csv, model_dir, **extra)
    )
    return finetune.main(cfg)


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- non-finite loss ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_non_finite_loss_is_one_line_exit_2_and_nothing_exported(tmp_path, clf_csv, tiny_model_dir):
    args = ft_overrides(tmp_path, clf_csv, tiny_model_dir, **{"optim.lr": 1e10, "optim.warmup_ratio": 0})
    proc = subprocess.run(
        [sys.executable, "finetune.py", *args, "trainer.checkpoint_every_n_steps=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert "training loss is not finite at step" in errors[0] and "train/loss = nan" in errors[0]
    assert re.search(r"; lr [0-9.]+e\+09;", errors[0])  # 1e10, decaying linearly
    run = tmp_path / "finetune"
    assert not (run / "model").exists() and not (run / "metrics.json").exists()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # the periodic save before it went bad
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_distiller_names_the_adaptor_that_went_bad(tmp_path, clf_csv, tiny_model_dir, monkeypatch):
    from helper.adaptors import LogitMSE

    real = LogitMSE.forward
    monkeypatch.setattr(LogitMSE, "forward", lambda self, *a: real(self, *a) * float("nan"))
    cfg = load_config(
        DistillationRunConfig,
        ROOT / "configs" / "distillation_ms.yaml",
        run_overrides(
            tmp_path, clf_csv,
            **{"teacher.name": tiny_model_dir, "student.init_from_teacher.layers": "[1]", "distill.report": False,
               "distill.adaptors": "[AttnMiniLM, LogitMSE]"},
        ),
    )  # fmt: skip
    with pytest.raises(UserError, match=r"not finite at step 1 \(epoch 1/1, batch 1\): train/LogitMSE = nan") as err:
        distillation_ms.main(cfg)
    assert "train/AttnMiniLM" not in one_line(err) and "lr " in str(err.value)
    assert not (tmp_path / "distill_ms" / "student").exists()
    assert not (tmp_path / "distill_ms" / "checkpoints" / "last.ckpt").exists()  # no crash checkpoint of NaN weights


# -- one run per run directory -----------------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from helper.training import claim_run_dir
claim_run_dir(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_second_run_in_the_same_directory_refuses(tmp_path, clf_csv, tiny_model_dir):
    run = tmp_path / "finetune"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"logger.run_name: {run} is in use by another run \(pid {holder.pid} on "):
            ft(tmp_path, clf_csv, tiny_model_dir)
        assert not (run / "config.yaml").exists()  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    ft(tmp_path, clf_csv, tiny_model_dir, **{"trainer.fast_dev_run": True})  # the holder is gone: the lock is free
    assert (run / ".lock").read_text() == ""  # released at the end of the run


def test_a_stale_lock_is_taken_over_with_one_warning(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    training.claim_run_dir(tmp_path)
    try:
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and f"taking over the lock of an earlier run that has ended (pid {dead.pid}" in out
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    finally:
        training.release_run_dir(tmp_path)


def test_a_lock_of_another_host_is_not_taken_over(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(UserError, match=r"in use by another run \(pid 1 on elsewhere\).*delete .*\.lock"):
        training.claim_run_dir(tmp_path)


# -- resume ------------------------------------------------------------------------------------------------------------


def test_corrupt_checkpoint_is_one_line(tmp_path, clf_csv, tiny_model_dir):
    ckpt = tmp_path / "broken.ckpt"
    ckpt.write_bytes(b"\x80\x02not a checkpoint at all" * 10)
    with pytest.raises(UserError, match=rf"trainer.resume: {ckpt} is not a readable checkpoint \(") as err:
        ft(tmp_path, clf_csv, tiny_model_dir, **{"trainer.resume": str(ckpt)})
    one_line(err)


def test_empty_checkpoint_is_one_line(tmp_path, clf_csv, tiny_model_dir):
    ckpt = tmp_path / "empty.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(UserError, match=rf"trainer.resume: {ckpt} is empty \(0 bytes") as err:
        ft(tmp_path, clf_csv, tiny_model_dir, **{"trainer.resume": str(ckpt)})
    assert "mmap" not in one_line(err)


def test_foreign_files_in_the_export_directory_stop_the_run_before_training(tmp_path, clf_csv, tiny_model_dir):
    (tmp_path / "finetune" / "model").mkdir(parents=True)
    (tmp_path / "finetune" / "model" / "important.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files this project does not write \(important.txt\)") as err:
        ft(tmp_path, clf_csv, tiny_model_dir)
    one_line(err)
    assert not (tmp_path / "finetune" / "checkpoints").exists()  # nothing trained


def test_resume_with_changed_architecture_data_or_lr(tmp_path, clf_csv, tiny_model_dir, capsys):
    ft(tmp_path, clf_csv, tiny_model_dir)
    other = {"model.name": _wider_model(tmp_path), "model.tokenizer": tiny_model_dir, "trainer.resume": "last"}
    with pytest.raises(
        UserError, match=r"architecture differs .*resized \(e.g. model.bert.encoder.layer.0.interm"
    ) as err:
        ft(tmp_path, clf_csv, tiny_model_dir, **other)
    one_line(err)
    with pytest.raises(UserError, match=r"training data differ from the checkpoint's \(32 examples.*; 16, ") as err:
        ft(tmp_path, clf_csv, tiny_model_dir, **{"trainer.resume": "last", "data.limit_train": 16})
    one_line(err)
    capsys.readouterr()
    ft(tmp_path, clf_csv, tiny_model_dir, **{"trainer.resume": "last", "optim.lr": 1e-4, "trainer.max_epochs": 2})
    changed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trainer.resume: changed")]
    assert changed == ["trainer.resume: changed since the checkpoint: optim.lr 5e-05 -> 0.0001, trainer.max_epochs "
                       "1 -> 2 (applied from here on)"]  # fmt: skip


def _wider_model(tmp_path) -> str:
    """The tiny model with a wider feed-forward layer: another architecture."""
    from transformers import BertForSequenceClassification

    from tests.conftest import tiny_bert_config

    out = tmp_path / "wider"
    BertForSequenceClassification(tiny_bert_config(intermediate_size=40)).save_pretrained(out)
    return str(out)


# -- settings only the machine can check -------------------------------------------------------------------------------


def test_unwritable_output_dir_is_one_line_before_heavy_work(tmp_path, clf_csv, monkeypatch):
    import helper.stages as stages

    monkeypatch.setattr(stages, "load_tokenizer", lambda *a: pytest.fail("heavy work started"))
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"logger.output_dir: cannot write the run directory .*file/finetune") as err:
        ft(tmp_path, clf_csv, "/nonexistent", **{"logger.output_dir": str(tmp_path / "file")})
    one_line(err)


def test_max_length_beyond_the_position_embeddings(tmp_path, clf_csv, tiny_model_dir):
    with pytest.raises(UserError, match=r"data.max_length: 200 is more than the model's max_position_embeddings \(128"):
        ft(tmp_path, clf_csv, tiny_model_dir, **{"data.max_length": 200})


def test_16_mixed_with_accelerator_auto_without_cuda(tmp_path, clf_csv, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"trainer.precision: '16-mixed' needs a CUDA GPU .*accelerator auto") as err:
        ft(tmp_path, clf_csv, "/nonexistent", **{"trainer.precision": "16-mixed", "trainer.accelerator": "auto"})
    one_line(err)
