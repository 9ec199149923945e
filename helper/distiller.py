"""Lightning modules of distillation: `BaseDistiller` (mix-step), `InterDistiller` (step 1), `PredDistiller` (step 2).

The teacher is frozen, in eval mode, run under `no_grad` (not `inference_mode`: its tensors meet student tensors in the
losses), kept out of the optimiser and out of checkpoints (it is not a registered submodule), and moved to the student's
device and dtype. What it gives depends only on the example, so `TeacherCache` keeps it per training example.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

from bert.errors import UserError
from bert.families import check_features, get_family, logits_of, model_inputs
from bert.features import Features, ModelDims, merge_requests
from bert.loading import name_labels
from bert.recorder import FeatureRecorder
from helper.adaptors import build_adaptors
from helper.config import DEFAULT_METRICS, DistillationRunConfig, DistillConfig, OptimConfig
from helper.hgckpt import HF_KEY, hf_export_info
from helper.metrics import Scorer, Scores
from helper.teacher_cache import TeacherCache, with_stored_logits
from helper.training import configure_optimizers, export_module

_OPTIM_KEYS = tuple(f.name for f in dataclasses.fields(OptimConfig))
_DISTILL_KEYS = tuple(f.name for f in dataclasses.fields(DistillConfig) if f.name != "adaptors")
# The distillers' own `transfer_batch_to_device` (keeps `idx` on the CPU) is meant to apply with any data module.
warnings.filterwarnings("ignore", message="You have overridden `transfer_batch_to_device` in `LightningModule`")


def head_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The prediction layer: everything outside the encoder (classifier, pre-classifier), plus the pooler."""
    base = getattr(model, "base_model", model)
    if base is model:  # no separate encoder (a BiLSTM, a user's module): the head is its classifier, where named
        path = get_family(model).pooled_path
        return [(f"{path}.{n}", p) for n, p in model.get_submodule(path).named_parameters()] if path else []
    encoder_ids = {id(p) for n, p in base.named_parameters() if not n.startswith("pooler.")}
    return [(n, p) for n, p in model.named_parameters() if id(p) not in encoder_ids]


def settings(owner: str, optim: OptimConfig | None, distill: DistillConfig | None, kwargs: dict[str, Any]):
    """`optim` and `distill` (defaults: the distillation stages' own) with keyword settings applied on top."""
    defaults = DistillationRunConfig()
    unknown = [k for k in kwargs if k not in _OPTIM_KEYS + _DISTILL_KEYS]
    if unknown:
        raise UserError(f"{owner}: unknown setting {unknown[0]!r} (choices: {', '.join(_OPTIM_KEYS + _DISTILL_KEYS)})")
    optim = dataclasses.replace(optim or defaults.optim, **{k: v for k, v in kwargs.items() if k in _OPTIM_KEYS})
    distill = dataclasses.replace(
        distill or defaults.distill, **{k: v for k, v in kwargs.items() if k in _DISTILL_KEYS}
    )
    return optim, distill


class Distiller(pl.LightningModule):
    """What every distiller shares (`BaseDistiller`, `MultiDistiller`): the settings and the data module, the optimiser
    over the trainable parameters, frozen teachers placed on the students' device and dtype, batches moved without
    `idx`, and training values logged only on the steps the loggers write."""

    export_best: ClassVar[bool] = True  # export the best checkpoint on the validation metric (else the last)

    def __init__(self, dm, optim: OptimConfig | None, distill: DistillConfig | None, kwargs: dict[str, Any]):
        super().__init__()
        self.optim, self.distill = settings(type(self).__name__, optim, distill, kwargs)
        self.__dict__["dm"] = dm  # not a module: kept out of the state dict and hyperparameters

    def frozen_teachers(self) -> list[nn.Module]:
        """The teachers: unregistered modules (no optimiser, no checkpoint), moved with the students."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Every trainable parameter once (`named_parameters` drops the repeats of shared, tied modules)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def configure_optimizers(self):
        return configure_optimizers(self, self.trainable_parameters(), self.optim)

    def _place_teachers(self) -> None:
        dtype = next(self.parameters()).dtype  # the first student's
        for teacher in self.frozen_teachers():
            teacher.to(device=self.device, dtype=dtype).eval()

    def on_fit_start(self) -> None:
        self._place_teachers()

    def on_validation_start(self) -> None:
        self._place_teachers()

    def on_test_start(self) -> None:
        self._place_teachers()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Tensors to `device`, except `idx`: the teacher cache reads it on the CPU (on a GPU, a device copy would cost
        a copy and a synchronising `tolist()` every step). Nothing moves when the device is the CPU."""
        if device.type == "cpu" or not isinstance(batch, dict):
            return batch if device.type == "cpu" else super().transfer_batch_to_device(batch, device, dataloader_idx)
        return {
            k: v.to(device, non_blocking=True)
            if isinstance(v, torch.Tensor) and k != "idx"
            else self.transfer_batch_to_device(v, device, dataloader_idx)
            if isinstance(v, dict)
            else v
            for k, v in batch.items()
        }

    def _logs_now(self) -> bool:
        """Whether Lightning hands this step's logged values to the loggers (every `trainer.log_every_n_steps`); on
        other steps `self.log` would only feed the progress bar, at the cost of a few calls (and, on a GPU, a
        synchronising `.item()` per value) every step. The bar shows the values of the last logged step."""
        trainer = self._trainer
        if trainer is None:
            return False  # outside a Trainer self.log does nothing
        return trainer._logger_connector.should_update_logs or bool(trainer.fast_dev_run)


class BaseDistiller(Distiller):
    """Mix-step distillation: every adaptor trains at once; `sum(weight * loss)` is minimised.

    `adaptors`: names or mappings as in `distill.adaptors` (built against both models' sizes), or a built
    `nn.ModuleList`; default `distill.adaptors`. `dm`: the `ClfDataModule` (its tokenizers tell whether teacher and
    student read the same tokens, and are exported with the student). `optim`/`distill` are the config sections;
    keyword settings (`lr=3e-5`, `temperature=4`, `cache_teacher=False`, ...) override single fields of either.
    """

    stages: ClassVar[tuple[str, ...]] = ("inter", "pred")

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        adaptors: list | nn.ModuleList | None = None,
        dm=None,
        *,
        optim: OptimConfig | None = None,
        distill: DistillConfig | None = None,
        metrics: Sequence[str] = DEFAULT_METRICS,
        scorers: Mapping[str, Scorer] | None = None,
        **kwargs,
    ):
        super().__init__(dm, optim, distill, kwargs)
        if not isinstance(adaptors, nn.ModuleList):
            try:
                adaptors = build_adaptors(
                    self.distill.adaptors if adaptors is None else adaptors,
                    ModelDims.of(teacher.config),
                    ModelDims.of(getattr(student, "config", None)),
                    temperature=self.distill.temperature,
                )
            except UserError as err:
                raise UserError(f"distill.{err}") from None
        wrong = [a.key for a in adaptors if a.stage not in self.stages]
        if wrong:
            raise UserError(
                f"distill.adaptors: {', '.join(wrong)} cannot train in {type(self).__name__} "
                f"(it takes {' and '.join(self.stages)}-stage adaptors)"
            )
        if not len(adaptors):
            raise UserError(f"distill.adaptors: {type(self).__name__} needs at least one adaptor")
        token_level = [a.key for a in adaptors if not a.sentence_level]
        if token_level and getattr(dm, "student_tokenizer", None) is not None:
            raise UserError(
                f"distill.adaptors: {', '.join(token_level)} compare tokens, but teacher and student tokenize "
                "differently; only sentence-level adaptors (logits, [CLS]) are allowed"
            )
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)  # unregistered: no optimiser, no checkpoint
        self.student = student.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes
        self.adaptors = adaptors
        request_t = merge_requests(*(a.request()[0] for a in adaptors))
        request_s = merge_requests(*(a.request()[1] for a in adaptors))
        check_features(teacher, request_t, "teacher")
        check_features(student, request_s, "student")
        self.rec_t = FeatureRecorder(teacher, request_t)
        self.rec_s = FeatureRecorder(student, request_s)
        use_cache = self.distill.cache_teacher and bool(request_t)
        self.teacher_cache = TeacherCache(self.distill.cache_max_mb) if use_cache else None
        num_labels = getattr(getattr(student, "config", None), "num_labels", None) or teacher.config.num_labels
        sets = getattr(dm, "validation_names", None)
        self.val_scores = Scores(num_labels, "val", sets, metrics, scorers)
        self.test_scores = Scores(num_labels, "test", None, metrics, scorers)
        self.teacher_val_scores = Scores(num_labels, "teacher/val", sets, metrics)
        self._teacher_evaluated = False
        self.configure_trainable()

    # -- what trains ------------------------------------------------------------------------------------------------
    def configure_trainable(self) -> None:
        """Mix-step trains the whole student (and the adaptors' projections)."""

    def setup(self, stage: str) -> None:
        names = getattr(self.dm or self.trainer.datamodule, "label_names", None)
        if names is not None:
            name_labels(self.teacher, names, "teacher")
            name_labels(self.student, names, "student")

    # -- teacher ----------------------------------------------------------------------------------------------------
    def frozen_teachers(self) -> list[nn.Module]:
        return [self.teacher]

    def teacher_features(self, batch: dict) -> Features:
        """Teacher features of `batch` (teacher inputs), through the per-example cache when it is on.

        Transfer-set rows carry the teacher's logits (`teacher_logits`): when logits are all the adaptors read from
        the teacher, it does not run for them (cache on or off); token features need the teacher on every row."""
        if "teacher_logits" in batch and set(self.rec_t.request) == {"logits"}:
            return with_stored_logits(batch, self._teacher_features)
        return self._teacher_features(batch)

    def _teacher_features(self, batch: dict) -> Features:
        with torch.no_grad():
            if not self.rec_t.request:  # e.g. HardCE alone: nothing to read from the teacher
                return Features(attention_mask=batch["attention_mask"])
            if self.teacher_cache is not None and "idx" not in batch:
                warnings.warn(
                    "teacher cache off: the batches carry no `idx` (example index), so examples cannot be told apart; "
                    "ClfDataModule's collator adds it",
                    stacklevel=1,
                )
                self.teacher_cache = None
            if self.teacher_cache is None:
                return self.rec_t(**model_inputs(batch))[1]
            dtype = next(self.teacher.parameters()).dtype
            return self.teacher_cache.features(batch, lambda **inputs: self.rec_t(**inputs)[1], dtype)

    # -- steps ------------------------------------------------------------------------------------------------------
    def student_inputs(self, batch: dict) -> dict:
        return model_inputs(batch.get("student", batch), self.student)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        feats_t = self.teacher_features(batch)
        _, feats_s = self.rec_s(**self.student_inputs(batch))
        labels = batch["labels"]
        total = 0.0
        losses = []
        for adaptor in self.adaptors:
            loss = adaptor(feats_t, feats_s, labels)
            losses.append(loss)
            total = total + adaptor.weight * loss
        self.step_losses = {a.key: loss.detach() for a, loss in zip(self.adaptors, losses)}  # NonFiniteGuard names them
        if self._logs_now():
            for adaptor, loss in zip(self.adaptors, losses):
                self.log(f"train/{adaptor.key}", loss, batch_size=len(labels))
            self.log("train/loss", total, prog_bar=True, batch_size=len(labels))
            if self.teacher_cache is not None:
                self.log("train/teacher_cache_hit_rate", self.teacher_cache.hit_rate)
        if getattr(self.dm, "transfer_rows", 0):  # rows without a gold label (label -1), per epoch; HardCE skips them
            unlabelled = (labels < 0).sum().float()
            self.log("train/unlabelled_rows", unlabelled, on_step=False, on_epoch=True, reduce_fx="sum")
        return total

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        labels = batch["labels"]
        logits_s = logits_of(self.student(**self.student_inputs(batch)), self.student)
        self.val_scores.update(logits_s, labels, dataloader_idx)
        if dataloader_idx == 0:  # the first validation set's loss
            loss = F.cross_entropy(logits_s.float(), labels)
            self.log("val/loss", loss, batch_size=len(labels), add_dataloader_idx=False)
            self.log("val_loss", loss, batch_size=len(labels), add_dataloader_idx=False)
        if not self._teacher_evaluated and not self.trainer.sanity_checking:  # once, on the whole validation set
            logits_t = logits_of(self.teacher(**model_inputs(batch, self.teacher)), self.teacher)
            self.teacher_val_scores.update(logits_t, labels, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self.val_scores.log(self, prog_bar=True)
        # Every rank takes the same branch; the teacher's metrics are reduced by torchmetrics like the student's.
        if not self.trainer.sanity_checking and not self._teacher_evaluated:
            self.teacher_val_scores.log(self)
            self._teacher_evaluated = True

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = logits_of(self.student(**self.student_inputs(batch)), self.student)
        self.test_scores.update(logits, batch["labels"])

    def on_test_epoch_end(self) -> None:
        self.test_scores.log(self)

    # -- export -----------------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        tokenizer = None if self.dm is None else self.dm.student_tokenizer or self.dm.tokenizer
        checkpoint[HF_KEY] = hf_export_info(self.student, "student.", tokenizer)

    def export(self, out_dir: str | Path, tokenizer=None) -> Path:
        """Write the student as a Hugging Face directory (safetensors + tokenizer), atomically: the best checkpoint's
        weights when the run has one (`export_best`), else the current ones. The tokenizer defaults to the data
        module's student tokenizer."""
        if tokenizer is None and self.dm is not None:
            tokenizer = self.dm.student_tokenizer or self.dm.tokenizer
        return export_module(self, self.student, tokenizer, out_dir)


class InterDistiller(BaseDistiller):
    """Two-step distillation, step 1: intermediate-layer adaptors only; the prediction layer stays frozen."""

    stages = ("inter",)
    export_best = False  # with the head frozen, validation accuracy does not measure how well the layers fit

    def configure_trainable(self) -> None:
        for _, p in head_parameters(self.student):
            p.requires_grad_(False)


class PredDistiller(BaseDistiller):
    """Two-step distillation, step 2: prediction-layer adaptors (plus `HardCE` if listed).

    By default only the classifier head trains; `distill.train_encoder` (keyword `train_encoder=True`) trains
    everything.
    """

    stages = ("pred",)

    def configure_trainable(self) -> None:
        if not self.distill.train_encoder:
            head = {id(p) for _, p in head_parameters(self.student)}
            for p in self.student.parameters():
                p.requires_grad_(id(p) in head)
