"""ProgressLines: plain progress lines for logs and pipes."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from transformers import BertForSequenceClassification

from data.config import DataConfig
from data.data_module import ClfDataModule
from helper.finetuner import ClfFinetune
from helper.progress import ProgressLines
from tests.conftest import tiny_bert_config


class StepLosses(pl.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def fit(clf_csv, tokenizer, progress: ProgressLines, *callbacks) -> tuple[pl.Trainer, ClfDataModule]:
    """Fine-tune a tiny BERT for 2 epochs of 4 steps (32 examples, batches of 8)."""
    cfg = DataConfig(
        source="csv", train=clf_csv["train"], validation=clf_csv["validation"], batch_size=8, cache_dir=None
    )
    dm = ClfDataModule(cfg, tokenizer)
    torch.manual_seed(0)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[progress, *callbacks],
    )  # fmt: skip
    trainer.fit(ClfFinetune(BertForSequenceClassification(tiny_bert_config()), dm), dm)
    return trainer, dm


def test_lines_name_step_loss_speed_and_eta(clf_csv, tokenizer):
    stream = io.StringIO()
    trainer, dm = fit(clf_csv, tokenizer, ProgressLines(every_s=0, stream=stream))
    lines = stream.getvalue().splitlines()
    steps = [line for line in lines if line.startswith("epoch")]
    assert len(steps) == 8  # one line per step when every_s is 0
    assert re.fullmatch(r"epoch 2/2 step 8/8 loss \d+\.\d{4} \| \d+ examples/s \| ETA 0:00:00", steps[-1])
    assert sum(line.startswith("validation after epoch") and "val/acc" in line for line in lines) == 2
    trainer.validate(trainer.lightning_module, datamodule=dm, verbose=False)
    assert stream.getvalue().splitlines()[-1].startswith("validation after training: ")


def test_the_loss_shown_is_the_mean_of_the_steps_since_the_last_line(clf_csv, tokenizer):
    ticks = iter(range(1000))  # a clock that advances 1 s per reading: a line every second step
    stream, step_losses = io.StringIO(), StepLosses()
    fit(clf_csv, tokenizer, ProgressLines(every_s=1.5, stream=stream, timer=lambda: next(ticks)), step_losses)
    steps = [line for line in stream.getvalue().splitlines() if line.startswith("epoch")]
    assert [re.search(r"step (\d+)/", line).group(1) for line in steps] == ["2", "4", "6", "8"]
    shown = [float(re.search(r"loss (\S+)", line).group(1)) for line in steps]
    pairs = [(a + b) / 2 for a, b in zip(step_losses.losses[::2], step_losses.losses[1::2])]
    assert shown == pytest.approx(pairs, abs=1e-4)


def test_the_eta_of_a_resumed_run_counts_only_the_steps_it_made():
    ticks = iter([0.0, 10.0])  # train start at 0 s, a line at 10 s
    stream = io.StringIO()
    progress = ProgressLines(every_s=5, stream=stream, timer=lambda: next(ticks))
    trainer = SimpleNamespace(global_step=100, estimated_stepping_batches=200, current_epoch=1, max_epochs=2)
    progress.on_train_start(trainer, None)  # resumed at step 100
    trainer.global_step = 110  # 10 steps in 10 s; 90 to go
    progress.on_train_batch_end(trainer, None, None, {"labels": [0] * 8}, 0)
    assert stream.getvalue() == "epoch 2/2 step 110/200 | 1 examples/s | ETA 0:01:30\n"
