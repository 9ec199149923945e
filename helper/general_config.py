"""Config of `distillation_general.py`: task-agnostic distillation of a bare encoder on unlabelled text.

Imports only the config layer (no torch), like `helper.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bert.sections import NON_NEGATIVE, Num, Section
from data.config import TextDataConfig
from helper.config import AdaptorsConfig, LoggerConfig, ModelConfig, OptimConfig, StudentConfig, TrainerConfig

# MiniLMv2 (Wang et al. 2021, arXiv:2012.15828): query-query, key-key and value-value self-attention relations of the
# last layer. Relation heads (default: the teacher's head count) re-split both models' heads, so teacher and student
# may differ in width and head count.
DEFAULT_ADAPTORS = ["QQMiniLMv2", "KKMiniLMv2", "VVMiniLMv2"]


@dataclass
class MLMConfig(Section):
    """Masked-language-model loss on the student (BERT masking: of the chosen tokens 80% [MASK], 10% random, 10%
    kept). The student is then built as a masked LM (`AutoModelForMaskedLM`); its encoder is what is exported."""

    SECTION = "distill.mlm"
    RULES = {"weight": NON_NEGATIVE, "probability": Num(0, 1, lo_open=True, hi_open=True)}

    weight: float = 1.0  # weight of the MLM loss in the total
    probability: float = 0.15  # fraction of the (non-special) tokens chosen for prediction


@dataclass
class GeneralDistillConfig(AdaptorsConfig):
    # Intermediate-layer adaptors only (the models are bare encoders: no logits, no labels).
    adaptors: list[Any] = field(default_factory=lambda: list(DEFAULT_ADAPTORS))  # losses, by name
    mlm: MLMConfig | None = None  # masked-LM loss on the student; null (default): off


@dataclass
class GeneralTrainerConfig(TrainerConfig):
    """`trainer:` of general distillation: there are no labels, so the held-out distillation loss picks the best
    checkpoint (and stops early)."""

    monitor: Literal["val/loss"] = "val/loss"  # the held-out distillation loss (minimised)


def _general_student() -> StudentConfig:
    """MiniLM-style: the teacher's architecture made smaller, randomly initialised (2 layers, hidden 192, 12 heads)."""
    return StudentConfig(
        config={"num_hidden_layers": 2, "hidden_size": 192, "num_attention_heads": 12, "intermediate_size": 768}
    )


@dataclass
class GeneralRunConfig:
    teacher: ModelConfig = field(default_factory=ModelConfig)  # the pretrained all-MiniLM-L6-v2 (any encoder works)
    student: StudentConfig = field(default_factory=_general_student)
    distill: GeneralDistillConfig = field(default_factory=GeneralDistillConfig)
    data: TextDataConfig = field(default_factory=TextDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_ratio=0.05))
    trainer: GeneralTrainerConfig = field(default_factory=lambda: GeneralTrainerConfig(max_epochs=1))
    logger: LoggerConfig = field(default_factory=LoggerConfig)
