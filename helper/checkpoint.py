"""Hugging Face-format checkpoint I/O: load classifiers with the data's labels, export atomically.

Lightning's own `.ckpt` files are already written atomically (fsspec transaction: temp file, then rename).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from bert.errors import UserError
from bert.families import family_of
from bert.loading import load_model_config, load_named


def load_classifier(
    name: str,
    label_names: list[str],
    attn_implementation: str = "sdpa",
    dropout: float | None = None,
):
    """`AutoModelForSequenceClassification` with the label names written into its config."""
    config = load_model_config(name)
    check_labels(config, label_names, name)
    family = family_of(config)
    kwargs: dict = {}
    if dropout is not None:
        kwargs.update(dict.fromkeys(family.dropout_keys, dropout))
    model = load_named(
        "model",
        AutoModelForSequenceClassification.from_pretrained,
        name,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
        attn_implementation=family.attn_implementation(attn_implementation),
        **kwargs,
    )
    return model


def check_labels(config, label_names: list[str], name: str) -> None:
    """A classifier whose head was trained on other labels must not silently be used on this data."""
    have = [config.id2label[i] for i in range(config.num_labels)]
    generic = all(n == f"LABEL_{i}" for i, n in enumerate(have))
    if have != list(label_names) and not generic:
        raise UserError(f"model {name!r} was trained on labels {have}, but the data has labels {list(label_names)}")


def export_hf(model: torch.nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """Write model (safetensors) and tokenizer with `save_pretrained`, atomically: a temp dir renamed into place."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
