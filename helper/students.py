"""Build the student: (a) a Hugging Face name or directory, (b) a config with random init, (c) cut from the teacher."""

from __future__ import annotations

import copy

from torch import nn
from transformers import AutoModelForSequenceClassification

from bert.errors import UserError
from bert.families import family_of, get_family
from helper.checkpoint import load_classifier
from helper.config import StudentConfig


def build_student(cfg: StudentConfig, teacher: nn.Module, teacher_name: str, label_names: list[str]) -> nn.Module:
    chosen = [k for k in ("name", "config", "init_from_teacher") if getattr(cfg, k) is not None]
    if len(chosen) != 1:
        raise UserError(
            f"student: set exactly one of name, config, init_from_teacher (got {', '.join(chosen) or 'none'}); "
            "set the others to null"
        )
    if cfg.name is not None:
        return load_classifier(cfg.name, label_names, cfg.attn_implementation, cfg.dropout)
    if cfg.config is not None:
        return random_student(teacher, cfg)
    src = cfg.init_from_teacher
    source = teacher if src.model is None else load_classifier(src.model, label_names, cfg.attn_implementation)
    return cut_student(source, src.layers, src.embeddings, cfg, src.model or teacher_name)


def _student_config(base_config, cfg: StudentConfig, **overrides):
    config = copy.deepcopy(base_config)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise UserError(f"student.config.{key}: not a field of {type(config).__name__}")
        setattr(config, key, value)
    if cfg.dropout is not None:
        family_of(config).set_dropout(config, cfg.dropout)
    config._attn_implementation = family_of(config).attn_implementation(cfg.attn_implementation)
    return config


def random_student(teacher: nn.Module, cfg: StudentConfig) -> nn.Module:
    """The teacher's architecture and vocabulary with `student.config` overrides, randomly initialised."""
    config = _student_config(teacher.config, cfg, **cfg.config)
    heads, hidden = config.num_attention_heads, config.hidden_size
    if hidden % heads:
        raise UserError(f"student.config: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=config._attn_implementation)


def cut_student(source: nn.Module, layers: list[int], embeddings: bool, cfg: StudentConfig, source_name: str):
    """Copy of `source` keeping only encoder `layers` (in that order); everything else (embeddings, pooler, head) is
    copied too: the teacher's head fits the same labels, and a pretrained source's head is freshly initialised."""
    family = get_family(source)
    n = len(family.layers(source))
    bad = [i for i in layers if not 0 <= i < n]
    if not layers or bad:
        raise UserError(
            f"student.init_from_teacher.layers: {bad or layers} out of range for {source_name} with {n} layers "
            f"(0..{n - 1})"
        )
    cut = copy.deepcopy(source)
    family.cut(cut, layers)
    # Rebuilt from its config, so that every module follows it (dropout rates), then given the cut weights.
    config = _student_config(cut.config, cfg)
    student = AutoModelForSequenceClassification.from_config(config, attn_implementation=config._attn_implementation)
    student.load_state_dict(cut.state_dict())
    if not embeddings:
        family.embeddings(student).apply(student._init_weights)
    return student
