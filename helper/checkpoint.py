"""Hugging Face-format checkpoint I/O: load classifiers with the data's labels, export atomically.

Lightning's own `.ckpt` files are already written atomically (fsspec transaction: temp file, then rename).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSequenceClassification

from bert.errors import UserError
from bert.families import family_of
from bert.loading import check_label_names, load_model_config, load_named


def load_classifier(
    name: str,
    label_names: list[str],
    attn_implementation: str = "sdpa",
    dropout: float | None = None,
    role: str = "model",
    trained_head: bool = False,
):
    """`AutoModelForSequenceClassification` with the label names written into its config.

    A head with generic names (`LABEL_0`, ...) sized for another number of labels is re-initialised for the data's
    labels (one line says so), unless `trained_head` (a teacher): then it is a one-line error naming both counts.
    """
    config = load_model_config(name)
    check_label_names(config, label_names, f"model {name!r}")
    family = family_of(config)
    kwargs: dict = {}
    if dropout is not None:
        kwargs.update(dict.fromkeys(family.dropout_keys, dropout))
    if config.num_labels != len(label_names):  # check_label_names passed: the head's label names are generic
        if trained_head:
            raise UserError(
                f"{role}.name: {name!r} has a {config.num_labels}-label head with generic names (LABEL_0, ...), but "
                f"the data has {len(label_names)} labels; fine-tune it on this data first (finetune.py)"
            )
        kwargs["ignore_mismatched_sizes"] = True
        print(
            f"{role}.name: {name!r} has a {config.num_labels}-label head (generic names); a new "
            f"{len(label_names)}-label head is initialised for the data"
        )
    verbosity = transformers.logging.get_verbosity()
    if kwargs.get("ignore_mismatched_sizes"):  # the line above says it: no load report listing the new head's keys
        transformers.logging.set_verbosity_error()
    try:
        return load_named(
            "model",
            AutoModelForSequenceClassification.from_pretrained,
            name,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            attn_implementation=family.attn_implementation(attn_implementation),
            **kwargs,
        )
    finally:
        transformers.logging.set_verbosity(verbosity)


# What `save_pretrained` of a model and a tokenizer writes, and the ONNX files of helper/serving.py: an export
# directory holding anything else is not replaced.
EXPORT_FILES = re.compile(
    r"config\.json|generation_config\.json|.*\.safetensors|model\.safetensors\.index\.json|tokenizer(_config)?\.json"
    r"|special_tokens_map\.json|added_tokens\.json|vocab\.(txt|json)|merges\.txt|spiece\.model"
    r"|sentencepiece\.bpe\.model|chat_template\.(jinja|json)|modules\.json|sentence_bert_config\.json"
    r"|model(_int8)?\.onnx"
)
POOLING_DIR = "1_Pooling"  # sentence-transformers' pooling module: its config.json (`sentence_transformers_files`)


def _temp_dirs(out: Path) -> list[Path]:
    """Temp directories of killed exports to `out`: `.<name>.<8 chars of mkdtemp>` and `.<name>.old`."""
    own = re.compile(rf"\.{re.escape(out.name)}\.([a-z0-9_]{{8}}|old)")
    return [p for p in out.parent.iterdir() if own.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_finite(model: torch.nn.Module, out: Path) -> None:
    """Non-finite weights are never exported."""
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(
            f"export: {len(bad)} weight tensors are not finite (first: {bad[0]}); nothing written to {out} "
            "(lower optim.lr, or set trainer.gradient_clip_val)"
        )


# What kd-clf's `get_model` switches on: output flags of a forward call, not part of a model. An export carrying them
# would not load as sdpa (transformers 5 refuses output_attentions there); the recorder needs none of them.
RUNTIME_FLAGS = ("output_attentions", "output_hidden_states", "output_values")


def say_runtime_flags(model: torch.nn.Module, role: str) -> None:
    """One line when a model comes with kd-clf's output flags on: they are not needed here."""
    on = [k for k in RUNTIME_FLAGS if getattr(getattr(model, "config", None), k, False) is True]
    if on:
        print(
            f"{role}: config.{', config.'.join(on)} set (kd-clf's get_model does): not needed, the recorder reads what "
            "the adaptors ask for through hooks; transformers 5 refuses output_attentions on sdpa models, so drop "
            "those lines (exports leave them out)",
            file=sys.stderr,
        )


@contextlib.contextmanager
def runtime_flags_off(model: torch.nn.Module):
    """`model.config`'s output flags off while it is saved, as they were afterwards."""
    config = getattr(model, "config", None)
    on = [k for k in RUNTIME_FLAGS if getattr(config, k, False) is True]
    for k in on:
        setattr(config, k, False)
    try:
        yield
    finally:
        for k in on:
            setattr(config, k, True)


def check_export_dir(out: Path) -> None:
    """An export replaces `out` only when it holds nothing but what `save_pretrained` writes; the stages check this
    before training too, so that a refusal costs no training time."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"export: {out} exists and is not a directory; not replaced")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not (p.is_file() and EXPORT_FILES.fullmatch(p.name)))
        pooling = out / POOLING_DIR
        if POOLING_DIR in foreign and pooling.is_dir() and [p.name for p in pooling.iterdir()] == ["config.json"]:
            foreign.remove(POOLING_DIR)
        if foreign:
            raise UserError(
                f"export: {out} holds files this project does not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); move them away or choose another logger.run_name"
            )


def sentence_transformers_files(hidden_size: int, pooling: str, max_length: int, normalize: bool) -> dict[str, str]:
    """The files that make an encoder directory a sentence-transformers model (its documented layout): `modules.json`
    (Transformer, Pooling[, Normalize]), `1_Pooling/config.json` (mean or cls pooling) and
    `sentence_bert_config.json`. {relative path: content}."""
    if pooling not in ("mean", "cls"):
        raise ValueError(f"sentence_transformers_files: pooling {pooling!r} has no sentence-transformers Pooling mode")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    pooling_config = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    return {
        "modules.json": json.dumps(modules, indent=2) + "\n",
        f"{POOLING_DIR}/config.json": json.dumps(pooling_config, indent=2) + "\n",
        "sentence_bert_config.json": json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2)
        + "\n",
    }


def export_hf(
    model: torch.nn.Module, tokenizer, out_dir: str | Path, extra_files: dict[str, str] | None = None
) -> Path:
    """Write model (safetensors) and tokenizer with `save_pretrained`, atomically (`write_dir_atomically`).
    `extra_files` ({relative path: text}, e.g. `sentence_transformers_files`) are written with them.

    Refuses non-finite weights, and an existing `out_dir` holding files `save_pretrained` does not write (nothing is
    deleted that the project did not write).
    """
    out = Path(out_dir)
    check_finite(model, out)

    def write(tmp: Path) -> None:
        with runtime_flags_off(model):
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).parent.mkdir(mode=0o755, exist_ok=True)
            (tmp / name).write_text(text)

    return write_dir_atomically(out, write)


def write_dir_atomically(out_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(temp dir)`, then the temp dir renamed into place as `out_dir`: a failed or killed `write` leaves the old
    `out_dir` as it was. An existing `out_dir` holding files the project does not write is refused
    (`check_export_dir`); leftover temp directories of killed exports to the same place are removed. Files and
    directories are fsynced; modes are the ordinary 0644/0755."""
    out = Path(out_dir)
    check_export_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in _temp_dirs(out):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        write(tmp)
        for f in tmp.rglob("*"):
            os.chmod(f, 0o755 if f.is_dir() else 0o644)  # some writers create 0600 files
            _fsync(f)
        _fsync(tmp)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        _fsync(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
