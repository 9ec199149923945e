"""ProgressLines: plain progress lines for logs and pipes."""

from __future__ import annotations

import io
import re

import pytorch_lightning as pl
import torch
from transformers import BertForSequenceClassification

from data.config import DataConfig
from data.data_module import ClfDataModule
from helper.finetuner import ClfFinetune
from helper.progress import ProgressLines
from tests.conftest import tiny_bert_config


def test_lines_name_step_loss_speed_and_eta(clf_csv, tokenizer):
    cfg = DataConfig(
        source="csv", train=clf_csv["train"], validation=clf_csv["validation"], batch_size=8, cache_dir=None
    )
    dm = ClfDataModule(cfg, tokenizer)
    torch.manual_seed(0)
    stream = io.StringIO()
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[ProgressLines(every_s=0, stream=stream)],
    )  # fmt: skip
    trainer.fit(ClfFinetune(BertForSequenceClassification(tiny_bert_config()), dm), dm)
    lines = stream.getvalue().splitlines()
    steps = [line for line in lines if line.startswith("epoch")]
    assert len(steps) == 8  # 32 examples / 8 per batch, 2 epochs: one line per step when every_s is 0
    assert re.fullmatch(r"epoch 2/2 step 8/8 loss \d+\.\d{4} \| \d+ examples/s \| ETA 0:00:00", steps[-1])
    assert sum(line.startswith("validation after epoch") and "val/acc" in line for line in lines) == 2
    trainer.validate(trainer.lightning_module, datamodule=dm, verbose=False)
    assert stream.getvalue().splitlines()[-1].startswith("validation after training: ")
