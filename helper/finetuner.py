"""`ClfFinetune`: fine-tune any `AutoModelForSequenceClassification` (the teacher, or the hard-label baseline)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from bert.errors import UserError
from bert.families import logits_of, model_inputs
from bert.loading import name_labels
from helper.checkpoint import say_runtime_flags
from helper.config import DEFAULT_METRICS, OptimConfig
from helper.hgckpt import (
    HF_KEY,
    HgCkptIO,  # noqa: F401  (kd-clf's snippets import it from here)
    hf_export_info,
)
from helper.metrics import Scorer, Scores
from helper.training import configure_optimizers, export_module

_OPTIM_KEYS = tuple(f.name for f in dataclasses.fields(OptimConfig))


class ClfFinetune(pl.LightningModule):
    """Cross-entropy fine-tuning with accuracy and macro-F1 on validation and test; `val_loss` is logged too.

    `dm` (optional) gives the tokenizer that `export` writes; `optim` the optimiser section, keyword settings
    (`lr=2e-5`, ...) override single fields of it.
    """

    export_best = True  # export the best checkpoint on the validation metric

    def __init__(
        self,
        model: torch.nn.Module,
        dm=None,
        *,
        optim: OptimConfig | None = None,
        metrics: Sequence[str] = DEFAULT_METRICS,
        scorers: Mapping[str, Scorer] | None = None,
        **kwargs,
    ):
        super().__init__()
        unknown = [k for k in kwargs if k not in _OPTIM_KEYS]
        if unknown:
            raise UserError(f"ClfFinetune: unknown setting {unknown[0]!r} (choices: {', '.join(_OPTIM_KEYS)})")
        self.optim = dataclasses.replace(optim or OptimConfig(), **kwargs)
        self.__dict__["dm"] = dm
        self.model = model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes
        say_runtime_flags(model, "model")
        num_labels = model.config.num_labels
        self.val_scores = Scores(num_labels, "val", getattr(dm, "validation_names", None), metrics, scorers)
        self.test_scores = Scores(num_labels, "test", None, metrics, scorers)

    def setup(self, stage: str) -> None:
        names = getattr(self.dm or self.trainer.datamodule, "label_names", None)
        if names is not None:
            name_labels(self.model, names)

    def forward(self, batch: dict) -> torch.Tensor:
        return logits_of(self.model(**model_inputs(batch, self.model)), self.model)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = F.cross_entropy(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        logits, labels = self(batch), batch["labels"]
        self.val_scores.update(logits, labels, dataloader_idx)
        if dataloader_idx == 0:  # the first validation set's loss
            loss = F.cross_entropy(logits.float(), labels)
            self.log("val/loss", loss, batch_size=len(labels), add_dataloader_idx=False, sync_dist=True)
            self.log("val_loss", loss, batch_size=len(labels), add_dataloader_idx=False, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.val_scores.log(self, prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_scores.update(self(batch), batch["labels"])

    def on_test_epoch_end(self) -> None:
        self.test_scores.log(self)

    def configure_optimizers(self):
        return configure_optimizers(self, self.model.named_parameters(), self.optim)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[HF_KEY] = hf_export_info(self.model, "model.", None if self.dm is None else self.dm.tokenizer)

    def export(self, out_dir: str | Path, tokenizer=None) -> Path:
        """The model as a Hugging Face directory (best checkpoint's weights when there is one), with the data module's
        tokenizer unless `tokenizer` is given."""
        if tokenizer is None and self.dm is not None:
            tokenizer = self.dm.tokenizer
        return export_module(self, self.model, tokenizer, out_dir)
