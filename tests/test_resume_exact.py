"""Fault test: a run killed mid-way (SIGKILL, or Ctrl-C) and resumed with `trainer.resume=last` ends with exactly the
weights of an uninterrupted run of the same config and seed (sha256 of the exported safetensors)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

import distillation_ms
import distillation_ts_1st
from helper import stages
from helper.config import DistillationRunConfig, load_config
from tests.conftest import ROOT, run_overrides

CONFIG = ROOT / "configs" / "distillation_ts_1st.yaml"
STEPS_PER_EPOCH = 32 // 4  # clf_csv's 32 training examples in batches of 4

# Runs in a subprocess: the run of `argv[3:]`, killed with SIGKILL at the end of training step `argv[1]`.
KILLED = """
import os, signal, sys
import pytorch_lightning as pl, torch
from helper import stages
import distillation_ms
import distillation_ts_1st
from helper.config import DistillationRunConfig, load_config

class Kill(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

real = stages.build_trainer
stages.build_trainer = lambda cfg, stage, cbs=None: real(cfg, stage, [*(cbs or []), Kill()])
torch.set_num_threads(1)
distillation_ts_1st.main(load_config(DistillationRunConfig, sys.argv[2], sys.argv[3:]))
"""


def overrides(tmp_path, clf_csv, teacher, name: str, **extra) -> list[str]:
    base = {
        "teacher.name": teacher,
        "student.init_from_teacher.layers": "[1]",  # dropout 0.1: the torch RNG matters
        "distill.report": False,
        "distill.cache_teacher": True,
        "data.group_by_length": True,
        "data.batch_size": 4,
        "trainer.max_epochs": 2,
        "trainer.seed": 0,
        "trainer.checkpoint_every_n_steps": 3,
        "logger.run_name": name,
    }
    return run_overrides(tmp_path, clf_csv, **{**base, **extra})


def run(tmp_path, clf_csv, teacher, name: str, callbacks=(), **extra) -> None:
    cfg = load_config(DistillationRunConfig, CONFIG, overrides(tmp_path, clf_csv, teacher, name, **extra))
    real = stages.build_trainer
    stages.build_trainer = lambda c, s, cbs=None: real(c, s, [*(cbs or []), *callbacks])
    try:
        distillation_ts_1st.main(cfg)
    finally:
        stages.build_trainer = real


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def final_state(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


class SigintAt(pl.Callback):
    """A real SIGINT to this process at the end of training step `step` (what Ctrl-C sends)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, clf_csv, tiny_model_dir):
    """The uninterrupted run: sha256 of its exported student, and its final state."""
    tmp_path = tmp_path_factory.mktemp("reference")
    run(tmp_path, clf_csv, tiny_model_dir, "reference")
    out = tmp_path / "reference"
    return sha256(out / "student" / "model.safetensors"), final_state(out)


def resumed_matches(tmp_path, clf_csv, tiny_model_dir, name: str, reference) -> None:
    out = tmp_path / name
    assert not (out / "student").exists()
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    run(tmp_path, clf_csv, tiny_model_dir, name, **{"trainer.resume": "last"})
    assert sha256(out / "student" / "model.safetensors") == reference[0]
    state = final_state(out)
    assert state.keys() == reference[1].keys() and all(torch.equal(state[k], reference[1][k]) for k in state)
    return saved


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [11, 14])  # epoch 2; last.ckpt of steps 9 and 12: mid-epoch, 1 and 4 batches in
def test_sigkill_mid_epoch_then_resume_is_bit_identical(kill_at, tmp_path, clf_csv, tiny_model_dir, reference):
    name = f"killed_{kill_at}"
    args = overrides(tmp_path, clf_csv, tiny_model_dir, name)
    proc = subprocess.run(
        [sys.executable, "-c", KILLED, str(kill_at), str(CONFIG), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    saved = resumed_matches(tmp_path, clf_csv, tiny_model_dir, name, reference)
    step = kill_at // 3 * 3
    assert saved["global_step"] == step and saved["bert_distill"]["batches_done"] == step - STEPS_PER_EPOCH


@pytest.mark.parametrize("interrupt_at", [5, 13])  # mid-epoch 1 and mid-epoch 2
def test_ctrl_c_mid_epoch_then_resume_is_bit_identical(
    interrupt_at, tmp_path, clf_csv, tiny_model_dir, reference, capsys
):
    name = f"interrupted_{interrupt_at}"
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_info:  # Lightning: graceful shutdown, then exit status 1
            run(tmp_path, clf_csv, tiny_model_dir, name, callbacks=[SigintAt(interrupt_at)])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning leaves SIGINT ignored after a KeyboardInterrupt
    assert exit_info.value.code == 1
    said = capsys.readouterr().err
    assert re.search(r"^interrupted at step \d+: saved .*last\.ckpt; go on with trainer.resume=last$", said, re.M)
    assert "was raised with message" not in said
    saved = resumed_matches(tmp_path, clf_csv, tiny_model_dir, name, reference)
    # the interrupt is taken at the end of a training step: last.ckpt holds that step, mid-epoch
    assert saved["global_step"] in (interrupt_at, interrupt_at + 1)
    assert 0 < saved["bert_distill"]["batches_done"] < STEPS_PER_EPOCH


# Mix-step with the packaged MiniLM as teacher (6 layers, width 384), the teacher cache on (the default) and logits in
# the losses: at this size fp32 results depend on the batch a row is computed in, which a tiny model does not show.


class BatchDependentTeacher(pl.Callback):
    """Makes the teacher's logits depend on the batch a row is computed in (as fp32 results of a real-size model do, in
    their last bits): each row gets 1e-3 x the mean token id of its batch added."""

    def on_fit_start(self, trainer, pl_module):
        def hook(module, args, kwargs, output):
            output.logits.add_(1e-3 * kwargs["input_ids"].float().mean())

        pl_module.teachers[0].register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("interrupt_at", [5, 13])  # mid-epoch 1 and mid-epoch 2
def test_resume_with_the_cache_on_refills_it_from_the_batches_before_the_interrupt(
    interrupt_at, tmp_path, clf_csv, tiny_model_dir
):
    """The cache holds each example's teacher features as computed in its epoch-1 batch; a resumed run that refilled
    it from the batches after the resume would train on other values (the resumed run replays the batches first)."""
    extra = {
        "distill.adaptors": "[LogitMSE, AttnMiniLM]",
        "data.group_by_length": False,  # other batch mates in every epoch
        "optim.lr": 1e-3,
    }

    def ms(name: str, callbacks, **more) -> None:
        args = overrides(tmp_path, clf_csv, tiny_model_dir, name, **extra, **more)
        cfg = load_config(DistillationRunConfig, ROOT / "configs" / "distillation_ms.yaml", args)
        real = stages.build_trainer
        stages.build_trainer = lambda c, s, cbs=None: real(c, s, [*(cbs or []), BatchDependentTeacher(), *callbacks])
        try:
            distillation_ms.main(cfg)
        finally:
            stages.build_trainer = real

    ms("reference", [])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            ms("resumed", [SigintAt(interrupt_at)])
    finally:
        signal.signal(signal.SIGINT, handler)
    ms("resumed", [], **{"trainer.resume": "last"})
    state, want = final_state(tmp_path / "resumed"), final_state(tmp_path / "reference")
    differ = [k for k in state if not torch.equal(state[k], want[k])]
    assert not differ, f"{len(differ)} of {len(state)} tensors differ, e.g. {differ[0]}"
