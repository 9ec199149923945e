"""Lightning modules of distillation: `BaseDistiller` (mix-step), `InterDistiller` (step 1), `PredDistiller` (step 2).

The teacher is frozen, in eval mode, run under `no_grad` (not `inference_mode`: its tensors meet student tensors in the
losses), kept out of the optimiser and out of checkpoints (it is not a registered submodule), and moved to the student's
device and dtype. What it gives depends only on the example, so `TeacherCache` keeps it per training example.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import torch
from torch import nn

from bert.features import LAYER_FEATURES, MODEL_FEATURES, Features, ModelDims, merge_requests
from bert.recorder import FeatureRecorder
from helper.config import OptimConfig
from bert.errors import UserError
from helper.finetuner import model_inputs
from helper.training import clf_metrics, configure_optimizers


def head_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The prediction layer: everything outside the encoder (classifier, pre-classifier), plus the pooler."""
    base = model.base_model
    encoder_ids = {id(p) for n, p in base.named_parameters() if not n.startswith("pooler.")}
    return [(n, p) for n, p in model.named_parameters() if id(p) not in encoder_ids]


# Axes of one example's feature tensor (batch axis removed) that run over its tokens.
TOKEN_AXES = {
    "attentions": (1, 2),  # (h, n, n)
    "queries": (1,),  # (h, n, d)
    "keys": (1,),
    "values": (1,),
    "hidden_states": (0,),  # (n, H)
    "embeddings": (0,),
    "logits": (),  # (C,)
}


def stored_dtype(name: str) -> torch.dtype:
    """Logits float32; attention probabilities (in [0, 1]) float16; other token features bfloat16 (cannot overflow)."""
    return torch.float32 if name == "logits" else torch.float16 if name == "attentions" else torch.bfloat16


def _entries(feats: Features) -> dict[tuple[str, int | None], torch.Tensor]:
    """Every tensor of `feats` keyed by (feature, layer); layer is None for embeddings and logits."""
    out = {(name, i): x for name in LAYER_FEATURES for i, x in getattr(feats, name).items()}
    out.update({(name, None): getattr(feats, name) for name in MODEL_FEATURES if getattr(feats, name) is not None})
    return out


class TeacherCache:
    """Teacher features per training example, keyed by the batch's `idx` (never its position), in CPU memory.

    Stored without padding (the collator pads on the right, so an example's n real tokens come first), in
    `stored_dtype`. Rebuilt for any padding length: positions past an example's tokens are 0, like the teacher's
    attention to padding keys; padded query rows and padded tokens are 0 too (every adaptor ignores them). Once
    `max_mb` of tensors is held nothing more is added: the examples left out keep running through the teacher.
    """

    def __init__(self, max_mb: float):
        self.max_bytes = int(max_mb * 2**20)
        self.rows: dict[int, dict[tuple[str, int | None], torch.Tensor]] = {}
        self.nbytes = 0
        self.full = False
        self.hits = self.misses = 0  # examples, since the start

    @property
    def hit_rate(self) -> float:
        return self.hits / max(1, self.hits + self.misses)

    def features(self, batch: dict, run_teacher, dtype: torch.dtype) -> Features:
        """Features of `batch` as the teacher gives them; `run_teacher(**inputs)` runs only for uncached examples.

        Token features come back in `dtype`, logits in float32.
        """
        mask = batch["attention_mask"]
        keys = batch["idx"].tolist()
        missing = [b for b, i in enumerate(keys) if i not in self.rows]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        fresh = {}
        if missing:
            sub = torch.tensor(missing, device=mask.device)
            n = int(mask[sub].sum(1).max())  # the uncached examples' own padding length
            feats = run_teacher(**{k: v[sub, :n] for k, v in model_inputs(batch).items()})
            fresh = dict(zip(missing, self._split(feats)))
            for b, row in fresh.items():
                self._add(keys[b], row)
        return self._assemble([fresh[b] if b in fresh else self.rows[i] for b, i in enumerate(keys)], mask, dtype)

    @staticmethod
    def _split(feats: Features) -> list[dict]:
        """One dict per example of its unpadded tensors, copied to the CPU in `stored_dtype`."""
        lengths = feats.attention_mask.sum(1).tolist()
        rows = [{} for _ in lengths]
        for (name, layer), x in _entries(feats).items():
            x = x.to("cpu", stored_dtype(name))
            axes = TOKEN_AXES[name]
            for row, x_b, n in zip(rows, x, lengths):
                cut = tuple(slice(n) if a in axes else slice(None) for a in range(x_b.dim()))
                row[name, layer] = x_b[cut].clone()  # its own storage, not a view of the batch
        return rows

    def _add(self, key: int, row: dict) -> None:
        size = sum(t.nbytes for t in row.values())
        if not self.full and self.nbytes + size > self.max_bytes:
            self.full = True
            warnings.warn(
                f"teacher cache full ({self.nbytes / 2**20:.0f} MB, {len(self.rows)} examples; distill.cache_max_mb "
                "sets the limit): the teacher runs for the other examples",
                stacklevel=1,
            )
        if not self.full:
            self.rows[key] = row
            self.nbytes += size

    @staticmethod
    def _assemble(rows: list[dict], mask: torch.Tensor, dtype: torch.dtype) -> Features:
        """The rows padded to the batch's length T, on the mask's device."""
        feats = Features(attention_mask=mask)
        for (name, layer), first in rows[0].items():
            shape = [mask.shape[1] if a in TOKEN_AXES[name] else s for a, s in enumerate(first.shape)]
            out = first.new_zeros(len(rows), *shape)  # (B, ...) e.g. (B, h, T, T)
            for out_b, row in zip(out, rows):
                x = row[name, layer]
                out_b[tuple(map(slice, x.shape))] = x
            out = out.to(mask.device, torch.float32 if name == "logits" else dtype)
            if layer is None:
                setattr(feats, name, out)
            else:
                getattr(feats, name)[layer] = out
        return feats


class BaseDistiller(pl.LightningModule):
    """Mix-step distillation: every configured adaptor trains at once; `sum(weight * loss)` is minimised."""

    stages: ClassVar[tuple[str, ...]] = ("inter", "pred")
    export_best: ClassVar[bool] = True  # export the best checkpoint on the validation metric (else the last)

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        adaptors: nn.ModuleList,
        optim: OptimConfig,
        *,
        cache_teacher: bool = True,
        cache_max_mb: float = 2048,
        tokenizer=None,
        student_tokenizer=None,
        attention_plot_dir: str | Path | None = None,
    ):
        super().__init__()
        wrong = [a.key for a in adaptors if a.stage not in self.stages]
        if wrong:
            raise UserError(
                f"distill.adaptors: {', '.join(wrong)} cannot train in {type(self).__name__} "
                f"(it takes {' and '.join(self.stages)}-stage adaptors)"
            )
        if not len(adaptors):
            raise UserError(f"distill.adaptors: {type(self).__name__} needs at least one adaptor")
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)  # unregistered: no optimiser, no checkpoint
        self.student = student.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes
        self.adaptors = adaptors
        self.optim = optim
        request_t = merge_requests(*(a.request()[0] for a in adaptors))
        request_s = merge_requests(*(a.request()[1] for a in adaptors))
        self.rec_t = FeatureRecorder(teacher, request_t)
        self.rec_s = FeatureRecorder(student, request_s)
        self.teacher_cache = TeacherCache(cache_max_mb) if cache_teacher and request_t else None
        num_labels = student.config.num_labels
        self.val_metrics = clf_metrics(num_labels, "val/")
        self.test_metrics = clf_metrics(num_labels, "test/")
        self.teacher_val_metrics = clf_metrics(num_labels, "teacher/val/")
        self._teacher_evaluated = False
        self.tokenizer = tokenizer  # only to label the attention heatmaps
        self.student_tokenizer = student_tokenizer  # when it differs from the teacher's
        self.attention_plot_dir = Path(attention_plot_dir) if attention_plot_dir else None
        self._plot_batch: dict | None = None
        self.configure_trainable()

    # -- what trains ------------------------------------------------------------------------------------------------
    def configure_trainable(self) -> None:
        """Mix-step trains the whole student (and the adaptors' projections)."""

    def trainable_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    # -- teacher ----------------------------------------------------------------------------------------------------
    def _place_teacher(self) -> None:
        dtype = next(self.student.parameters()).dtype
        self.teacher.to(device=self.device, dtype=dtype).eval()

    def on_fit_start(self) -> None:
        self._place_teacher()

    def on_validation_start(self) -> None:
        self._place_teacher()

    def on_test_start(self) -> None:
        self._place_teacher()

    def teacher_features(self, batch: dict) -> Features:
        """Teacher features of `batch` (teacher inputs), through the per-example cache when it is on."""
        with torch.no_grad():
            if not self.rec_t.request:  # e.g. HardCE alone: nothing to read from the teacher
                return Features(attention_mask=batch["attention_mask"])
            if self.teacher_cache is None:
                return self.rec_t(**model_inputs(batch))[1]
            dtype = next(self.teacher.parameters()).dtype
            return self.teacher_cache.features(batch, lambda **inputs: self.rec_t(**inputs)[1], dtype)

    # -- steps ------------------------------------------------------------------------------------------------------
    def student_inputs(self, batch: dict) -> dict:
        return model_inputs(batch.get("student", batch))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        feats_t = self.teacher_features(batch)
        _, feats_s = self.rec_s(**self.student_inputs(batch))
        labels = batch["labels"]
        total = 0.0
        for adaptor in self.adaptors:
            loss = adaptor(feats_t, feats_s, labels)
            self.log(f"train/{adaptor.key}", loss, batch_size=len(labels))
            total = total + adaptor.weight * loss
        self.log("train/loss", total, prog_bar=True, batch_size=len(labels))
        if self.teacher_cache is not None:
            self.log("train/teacher_cache_hit_rate", self.teacher_cache.hit_rate)
        return total

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        labels = batch["labels"]
        logits_s = self.student(**self.student_inputs(batch)).logits
        self.val_metrics.update(logits_s, labels)
        self.log_dict(self.val_metrics, prog_bar=True, batch_size=len(labels))
        if not self._teacher_evaluated:
            self.teacher_val_metrics.update(self.teacher(**model_inputs(batch)).logits, labels)
            self.log_dict(self.teacher_val_metrics, batch_size=len(labels))
        if batch_idx == 0 and self._plot_batch is None:
            self._plot_batch = {k: v[:1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
            if "student" in batch:
                self._plot_batch["student"] = {k: v[:1] for k, v in batch["student"].items()}

    def on_validation_epoch_end(self) -> None:
        # Every rank takes the same branches; the teacher's metrics are reduced by Lightning like the student's.
        if self.trainer.sanity_checking:
            return
        self._teacher_evaluated = True
        if self._plot_batch is not None and self.trainer.is_global_zero:
            try:
                self.plot_attention()
            except Exception as err:  # a diagnostic image must never stop training
                warnings.warn(f"attention heatmap skipped: {type(err).__name__}: {err}", stacklevel=1)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_metrics.update(self.student(**self.student_inputs(batch)).logits, batch["labels"])
        self.log_dict(self.test_metrics, batch_size=len(batch["labels"]))

    # -- attention heatmaps -----------------------------------------------------------------------------------------
    def plot_attention(self) -> None:
        """Teacher and student last-layer attention for a fixed validation example, as an image (wandb and PNG)."""
        from helper.report import attention_figure

        batch = self._plot_batch
        tok_s = self.tokenizer if self.student_tokenizer is None else self.student_tokenizer
        parts = ((self.teacher, batch, self.tokenizer), (self.student, batch.get("student", batch), tok_s))
        maps, tokens = [], []
        with torch.no_grad():
            for model, inputs, tok in parts:
                n = int(inputs["attention_mask"][0].sum())
                if n == 0:
                    return
                last = ModelDims.of(model.config).num_layers - 1
                with FeatureRecorder(model, {"attentions": [last]}) as rec:
                    maps.append(rec(**model_inputs(inputs))[1].attentions[last][0].float().cpu())  # (h, T, T)
                ids = inputs["input_ids"][0, :n].tolist()
                tokens.append(tok.convert_ids_to_tokens(ids) if tok is not None else [str(i) for i in ids])
        fig = attention_figure(maps[0], maps[1], tokens[0], tokens[1], title=f"epoch {self.current_epoch}")
        if self.attention_plot_dir is not None:
            self.attention_plot_dir.mkdir(parents=True, exist_ok=True)
            fig.savefig(self.attention_plot_dir / f"epoch{self.current_epoch:02d}_step{self.global_step}.png", dpi=80)
        for logger in self.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="attention", images=[fig], step=self.global_step)

    def configure_optimizers(self):
        return configure_optimizers(self, self.trainable_parameters(), self.optim)


class InterDistiller(BaseDistiller):
    """Two-step distillation, step 1: intermediate-layer adaptors only; the prediction layer stays frozen."""

    stages = ("inter",)
    export_best = False  # with the head frozen, validation accuracy does not measure how well the layers fit

    def configure_trainable(self) -> None:
        for _, p in head_parameters(self.student):
            p.requires_grad_(False)


class PredDistiller(BaseDistiller):
    """Two-step distillation, step 2: prediction-layer adaptors (plus `HardCE` if listed).

    By default only the classifier head trains; `train_encoder=True` trains everything.
    """

    stages = ("pred",)

    def __init__(self, *args, train_encoder: bool = False, **kwargs):
        self.train_encoder = train_encoder
        super().__init__(*args, **kwargs)

    def configure_trainable(self) -> None:
        if not self.train_encoder:
            head = {id(p) for _, p in head_parameters(self.student)}
            for p in self.student.parameters():
                p.requires_grad_(id(p) in head)
