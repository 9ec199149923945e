"""`ClfFinetune`: fine-tune any `AutoModelForSequenceClassification` (the teacher, or the hard-label baseline)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from helper.config import OptimConfig
from helper.training import clf_metrics, configure_optimizers

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


class ClfFinetune(pl.LightningModule):
    """Cross-entropy fine-tuning with accuracy and macro-F1 on validation and test."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig):
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes
        self.optim = optim
        num_labels = model.config.num_labels
        self.val_metrics = clf_metrics(num_labels, "val/")
        self.test_metrics = clf_metrics(num_labels, "test/")

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(**model_inputs(batch)).logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_metrics.update(self(batch), batch["labels"])
        self.log_dict(self.val_metrics, prog_bar=True, batch_size=len(batch["labels"]))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_metrics.update(self(batch), batch["labels"])
        self.log_dict(self.test_metrics, batch_size=len(batch["labels"]))

    def configure_optimizers(self):
        return configure_optimizers(self, self.model.named_parameters(), self.optim)
