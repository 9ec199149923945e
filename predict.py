"""Score text with an exported classifier (student or teacher): label id, label name and per-label probabilities.

    python predict.py --model runs/distill_ms/student --input reviews.txt --output scores.csv

The model is any directory or hub name that `AutoModelForSequenceClassification.from_pretrained` loads, with its
tokenizer. Input: one text a line (a plain file or `-` for stdin), or .jsonl / .csv / .tsv with a text column.
Output: one row per input text, in input order: jsonl (default, `-` is stdout), csv or tsv (by extension or
`--format`). Texts are tokenized a chunk at a time, sorted by token length, batched and padded to each batch's
longest, and scored under `torch.inference_mode()` in fp32 (on CUDA when present). Bad input stops with
`error: <one line>` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from bert.errors import UserError
from bert.families import MODEL_INPUTS, accepted_inputs, logits_of

INPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}  # anything else: text lines
OUTPUT_FORMATS = ("jsonl", "csv", "tsv")
CHUNK_SIZE = 8192  # texts tokenized in one call and length-sorted together
PROGRESS_EVERY_S = 5.0


# ---------------------------------------------------------------------------------------------------------- input


def _input_name(path: str) -> str:
    return "<stdin>" if path == "-" else path


def read_texts(path: str, text_column: str = "text") -> list[str]:
    """The texts of `path` (`-`: stdin) in file order.

    `.jsonl`/`.ndjson`, `.csv` and `.tsv` files give the `text_column` of every row; anything else (and stdin) is one
    text a line, blank lines skipped. Raises `UserError` for an unreadable or empty file or a missing column.
    """
    name = _input_name(path)
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {name}: {err.strerror or err}") from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"cannot read {name}: not UTF-8 text (byte {err.start})") from None
    if not content.strip():
        raise UserError(f"{name} is empty: no texts to score")
    fmt = "txt" if path == "-" else INPUT_FORMATS.get(Path(path).suffix.lower(), "txt")
    if fmt == "jsonl":
        texts = _jsonl_texts(content, name, text_column)
    elif fmt in ("csv", "tsv"):
        texts = _table_texts(content, name, text_column, "," if fmt == "csv" else "\t")
    else:
        texts = [line.removesuffix("\r") for line in content.split("\n") if line.strip()]
    if not texts:
        raise UserError(f"{name} has no rows: no texts to score")
    return texts


def _jsonl_texts(content: str, name: str, column: str) -> list[str]:
    texts = []
    for lineno, line in enumerate(content.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{name} line {lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{name} line {lineno}: expected a JSON object, got {type(row).__name__}")
        if column not in row:
            present = ", ".join(map(str, row)) or "none"
            raise UserError(f"{name} line {lineno}: no column {column!r} (columns: {present}); see --text-column")
        if not isinstance(row[column], str):
            raise UserError(f"{name} line {lineno}: column {column!r} holds {type(row[column]).__name__}, not text")
        texts.append(row[column])
    return texts


def _table_texts(content: str, name: str, column: str, delimiter: str) -> list[str]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
        if column not in header:
            raise UserError(f"{name}: no column {column!r} (columns: {', '.join(header)}); see --text-column")
        col = header.index(column)
        texts = []
        for row in reader:
            if not row:
                continue
            if len(row) <= col:
                raise UserError(f"{name} line {reader.line_num}: {len(row)} fields, no {column!r} (field {col + 1})")
            texts.append(row[col])
    except csv.Error as err:
        raise UserError(f"{name} line {reader.line_num}: {err}") from None
    return texts


# ---------------------------------------------------------------------------------------------------------- model


def pick_device(device: str = "auto") -> torch.device:
    """`auto`: CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here (use --device cpu or auto)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: not a device (auto, cpu, cuda)") from None


def load_model(name: str, device: str | torch.device = "cpu"):
    """(model in eval mode, fp32, on `device`; its tokenizer) from a directory or hub name; `UserError` if it fails."""
    from transformers import AutoModelForSequenceClassification

    from bert.loading import load_named, load_tokenizer

    model = load_named("model", AutoModelForSequenceClassification.from_pretrained, name, dtype=torch.float32)
    tokenizer = load_tokenizer(name)
    return model.to(device).eval(), tokenizer


def label_names(model, num_labels: int | None = None) -> list[str]:
    """`config.id2label` as a list (`LABEL_i` where a name is missing)."""
    n = num_labels if num_labels is not None else model.config.num_labels
    id2label = {int(k): v for k, v in (getattr(model.config, "id2label", None) or {}).items()}
    return [str(id2label.get(i, f"LABEL_{i}")) for i in range(n)]


def effective_max_length(model, tokenizer, max_length: int) -> int:
    """`max_length`, capped by the tokenizer's `model_max_length` and the model's position embeddings."""
    limits = [max_length]
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:  # "no limit" is a huge sentinel
        limits.append(tok_max)
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits)


# ---------------------------------------------------------------------------------------------------------- predict


def _pad(seqs: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(padded (B, T) tensor of `seqs`, bool mask (B, T) of real tokens), padded to the longest."""
    lengths = torch.tensor([len(s) for s in seqs])
    longest = int(lengths.max())
    positions = torch.arange(longest)
    mask = positions >= (longest - lengths)[:, None] if left else positions < lengths[:, None]  # (B, T)
    out = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    out[mask] = torch.tensor(list(itertools.chain.from_iterable(seqs)), dtype=torch.long)  # row-major fill
    return out, mask


def iter_predict(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 512,
    device: str | torch.device | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per chunk of `texts`: (start index, label ids (n,), probabilities (n, C) float32 on CPU), in input order.

    Each chunk is tokenized in one call (truncated to `max_length`, capped by the model's limits), sorted by token
    length (longest first), cut into batches of `batch_size` padded to their longest, and run under
    `torch.inference_mode()`; the results go back to the chunk's input order. `progress(rows_done)` is called after
    every batch. The model is moved to `device` (default: where it is) and put in eval mode.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size}")
    if max_length < 1:
        raise UserError(f"max length must be a positive integer, got {max_length}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).eval()
    accepted = accepted_inputs(model)
    max_length = effective_max_length(model, tokenizer, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    chunk_size = max(chunk_size, batch_size)
    done = 0
    for start in range(0, len(texts), chunk_size):
        chunk = list(texts[start : start + chunk_size])
        enc = tokenizer(chunk, truncation=True, max_length=max_length, return_attention_mask=False)
        features = {k: enc[k] for k in MODEL_INPUTS if k in enc and k in accepted and k != "attention_mask"}
        ids = features["input_ids"]
        order = sorted(range(len(chunk)), key=lambda i: len(ids[i]), reverse=True)
        probs = []
        for b in range(0, len(order), batch_size):
            rows = order[b : b + batch_size]
            inputs = {}
            for key, values in features.items():
                inputs[key], mask = _pad([values[i] for i in rows], pad_id if key == "input_ids" else 0, left)
            if "attention_mask" in accepted:
                inputs["attention_mask"] = mask.long()
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            with torch.inference_mode():
                out = model(**inputs)
                probs.append(logits_of(out, model).float().softmax(-1))  # (B, C)
            done += len(rows)
            if progress is not None:
                progress(done)
        with torch.inference_mode():
            sorted_probs = torch.cat(probs).cpu()  # (n, C), in `order`
            chunk_probs = torch.empty_like(sorted_probs)
            chunk_probs[torch.tensor(order)] = sorted_probs
        yield start, chunk_probs.argmax(-1), chunk_probs


def predict(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 512,
    device: str | torch.device | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(label ids (N,), probabilities (N, C) float32) of `texts`, in input order; see `iter_predict`."""
    parts = list(iter_predict(model, tokenizer, texts, batch_size, max_length, device, **kwargs))
    if not parts:
        return torch.empty(0, dtype=torch.long), torch.empty(0, model.config.num_labels)
    return torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])


# ---------------------------------------------------------------------------------------------------------- output


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


class Progress:
    """`progress(done)`: a line `predict: done/total rows (p%), r rows/s` on stderr at most every `every` seconds."""

    def __init__(self, total: int, every: float = PROGRESS_EVERY_S, stream=None):
        self.total, self.every, self.stream = total, every, stream if stream is not None else sys.stderr
        self.start = self.last = time.monotonic()
        self.printed = False

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every and done < self.total:
            self.last, self.printed = now, True
            rate = done / max(now - self.start, 1e-9)
            print(
                f"predict: {done}/{self.total} rows ({100 * done / self.total:.0f}%), {rate:.1f} rows/s",
                file=self.stream,
                flush=True,
            )

    def finish(self) -> None:
        if self.printed:
            seconds = time.monotonic() - self.start
            print(
                f"predict: {self.total} rows in {seconds:.1f} s, {self.total / seconds:.1f} rows/s",
                file=self.stream,
                flush=True,
            )


# ---------------------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (via main), instead of usage + message
        raise UserError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported model directory or hub name")
    p.add_argument("--input", default="-", help="text lines (.txt), .jsonl, .csv or .tsv; '-' = stdin (default)")
    p.add_argument("--output", default="-", help="output file; '-' = stdout (default)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward call (default 64)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per text, longer ones truncated (default 512)")
    p.add_argument("--text-column", default="text", help="text column of .jsonl/.csv/.tsv input (default text)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--format", choices=OUTPUT_FORMATS, help="output format (default: by --output extension, jsonl)")
    return p


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.max_length < 1:
        raise UserError(f"--max-length must be a positive integer, got {args.max_length}")
    fmt = output_format(args.output, args.format)
    texts = read_texts(args.input, args.text_column)
    device = pick_device(args.device)
    import huggingface_hub
    import transformers

    transformers.logging.set_verbosity_error()  # load reports and progress bars would break the one-line errors
    transformers.logging.disable_progress_bar()
    huggingface_hub.utils.logging.set_verbosity_error()  # hub retries: the final failure is reported in one line
    model, tokenizer = load_model(args.model, device)
    progress = Progress(len(texts))
    with open_output(args.output) as stream:
        writer = None
        chunks = iter_predict(model, tokenizer, texts, args.batch_size, args.max_length, device, progress=progress)
        for start, label_ids, probs in chunks:
            writer = writer or RowWriter(stream, fmt, label_names(model, probs.shape[1]))
            writer.write(texts[start : start + len(label_ids)], label_ids, probs)
    progress.finish()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except UserError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        print("error: out of memory; try a smaller --batch-size or --max-length", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `| head`: the reader left; stay quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
