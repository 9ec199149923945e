"""The predict stage: score a text file with an exported classifier and write one row per text (jsonl, csv, tsv)."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from bert.errors import UserError
from data.progress import Progress
from data.readers import read_column_texts
from helper.inference import iter_predict, label_names, load_model, pick_device
from helper.serving import BACKENDS, load_served

OUTPUT_FORMATS = ("jsonl", "csv", "tsv")


def run_predict(
    model: str,
    input: str = "-",
    output: str = "-",
    *,
    batch_size: int = 64,
    max_length: int = 512,
    text_column: str = "text",
    device: str = "auto",
    fmt: str | None = None,
    backend: str = "torch",
) -> None:
    """Score the texts of `input` (`-`: stdin) with `model` and write them with their scores to `output` (`-`:
    stdout), in input order. `backend`: `torch`, or `onnx` / `onnx-int8` (helper/serving.py's exports, ONNX Runtime
    on CPU) through the same batching. Bad input is a one-line `UserError`."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: unknown (choices: {', '.join(BACKENDS)})")
    if backend != "torch" and device not in ("auto", "cpu"):
        raise UserError(f"--backend {backend} runs on CPU (ONNX Runtime); use --device cpu or auto")
    if batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size}")
    if max_length < 1:
        raise UserError(f"--max-length must be a positive integer, got {max_length}")
    fmt = output_format(output, fmt)
    texts = read_column_texts(input, text_column)
    where = pick_device(device) if backend == "torch" else torch.device("cpu")
    import huggingface_hub
    import transformers

    transformers.logging.set_verbosity_error()  # load reports and progress bars would break the one-line errors
    transformers.logging.disable_progress_bar()
    huggingface_hub.utils.logging.set_verbosity_error()  # hub retries: the final failure is reported in one line
    classifier, tokenizer = load_model(model, where) if backend == "torch" else load_served(model, backend)
    progress = Progress("predict:", len(texts), "rows")
    with open_output(output) as stream:
        writer = None
        for start, label_ids, probs in iter_predict(
            classifier, tokenizer, texts, batch_size, max_length, where, progress=progress.advance
        ):
            writer = writer or RowWriter(stream, fmt, label_names(classifier, probs.shape[1]))
            writer.write(texts[start : start + len(label_ids)], label_ids, probs)
    progress.finish()


def output_format(path: str, fmt: str | None = None) -> str:
    """`fmt` if given, else by the extension of `path` (.csv, .tsv; anything else and stdout: jsonl)."""
    if fmt:
        return fmt
    suffix = "" if path == "-" else Path(path).suffix.lower()
    return {".csv": "csv", ".tsv": "tsv"}.get(suffix, "jsonl")


def _prob(p: float) -> float:
    return float(f"{p:.7g}")  # float32 precision, without the noise digits


class RowWriter:
    """Writes (text, label id, label name, probability per label) rows as jsonl, csv or tsv."""

    def __init__(self, stream, fmt: str, names: list[str]):
        if fmt not in OUTPUT_FORMATS:
            raise UserError(f"unknown output format {fmt!r} (choices: {', '.join(OUTPUT_FORMATS)})")
        self.stream, self.fmt, self.names = stream, fmt, names
        if fmt != "jsonl":
            self.csv = csv.writer(stream, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
            self.csv.writerow(["text", "label_id", "label", *(f"prob_{n}" for n in names)])

    def write(self, texts: Sequence[str], label_ids: torch.Tensor, probs: torch.Tensor) -> None:
        for text, i, p in zip(texts, label_ids.tolist(), probs.tolist()):
            if self.fmt == "jsonl":
                probs_by_name = dict(zip(self.names, map(_prob, p)))
                row = {"text": text, "label_id": i, "label": self.names[i], "probs": probs_by_name}
                self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                self.csv.writerow([text, i, self.names[i], *map(_prob, p)])


@contextmanager
def open_output(path: str):
    """stdout for `-`; else a temporary file next to `path`, renamed into place when the block ends without error."""
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        stream = open(tmp, "w", encoding="utf-8", newline="")
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with stream:
            yield stream
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
