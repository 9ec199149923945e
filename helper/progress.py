"""`ProgressLines`: a plain progress line every few seconds (step, loss, examples/s, ETA), for logs and pipes where
Lightning's interactive bar shows nothing."""

from __future__ import annotations

import sys
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from data.progress import clock


class ProgressLines(pl.Callback):
    """Prints `epoch E/N step S/T loss L | X examples/s | ETA` to stderr at most every `every_s` seconds (L: the mean
    training loss of the steps since the last line), and a line per validation with its metrics. Used instead of the
    bar when stderr is not a terminal."""

    def __init__(self, every_s: float = 5.0, stream=None, timer=time.perf_counter):
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.timer = timer
        self._start = self._last = 0.0
        self._first_step = 0
        self._examples = 0
        self._loss_sum, self._losses = None, 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last = self.timer()
        self._first_step = trainer.global_step  # a resumed run: the ETA counts only the steps made since
        self._examples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        labels = batch.get("labels") if isinstance(batch, dict) else None
        self._examples += len(labels) if labels is not None else 0
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # summed on its device: no synchronising .item() per step
            self._loss_sum = loss.detach() if self._loss_sum is None else self._loss_sum + loss.detach()
            self._losses += 1
        now = self.timer()
        if now - self._last < self.every_s:
            return
        self._last = now
        done, total = trainer.global_step, trainer.estimated_stepping_batches
        rate = self._examples / max(now - self._start, 1e-9)
        eta = (now - self._start) / max(done - self._first_step, 1) * max(total - done, 0)
        loss_text = f" loss {float(self._loss_sum) / self._losses:.4f}" if self._losses else ""
        self._loss_sum, self._losses = None, 0
        print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} step {done}/{total}{loss_text} | "
            f"{rate:.0f} examples/s | ETA {clock(eta)}",
            file=self.stream,
            flush=True,
        )

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val", "teacher/val"))}
        text = ", ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items()))
        fitting = trainer.state.fn == TrainerFn.FITTING  # else `trainer.validate` after the fit, of the chosen weights
        when = f"after epoch {trainer.current_epoch + 1}" if fitting else "after training"
        print(f"validation {when}: {text}", file=self.stream, flush=True)
