"""Text-file readers: a file (or stdin) in an encoding as lines, unlabelled text, and a text column of .jsonl/.csv/.tsv
input. Every bad input is a one-line `UserError` naming the file and its 1-based line."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from bert.errors import UserError

ENCODING_HINT = "set data.encoding, e.g. latin-1"
TABLE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}  # anything else: text lines


def read_text(path: str, encoding: str = "utf-8", hint: str = ENCODING_HINT) -> str:
    """The content of `path` (`-`: stdin) decoded with `encoding`."""
    name = "<stdin>" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"{name}: cannot read ({err.strerror or err})") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{name} line {line}: not valid {encoding} ({hint})") from None
    except LookupError:
        raise UserError(f"data.encoding: unknown encoding {encoding!r}") from None


def split_lines(text: str) -> list[str]:
    """Split on \\n only (tweets may hold other Unicode line breaks); one final newline ends the last line."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_lines(path: str, encoding: str = "utf-8", hint: str = ENCODING_HINT) -> list[str]:
    """Every line of `path` (`-`: stdin), blank ones included, without its line break."""
    return split_lines(read_text(path, encoding, hint))


def read_text_file(path: str, encoding: str = "utf-8") -> list[str]:
    """One text a line, stripped; blank lines skipped. An unreadable or empty file is a one-line `UserError`."""
    texts = [line.strip() for line in read_lines(path, encoding) if line.strip()]
    if not texts:
        raise UserError(f"{path}: no text (the file is empty or holds only blank lines)")
    return texts


def read_unlabelled(path: str, encoding: str, with_pairs: bool, what: str) -> tuple[list[str], list[str] | None]:
    """(texts, pairs or None): one example a line, `text<TAB>pair` for pair data; blank lines skipped. `what` names
    the setting in errors."""
    texts, pairs = [], [] if with_pairs else None
    for n, line in enumerate(read_lines(path, encoding), 1):
        if not line.strip():
            continue
        if with_pairs:
            text, tab, pair = line.partition("\t")
            if not tab or not text.strip() or not pair.strip():
                raise UserError(f"{what}: {path} line {n}: expected `text<TAB>pair` (pair data)")
            texts.append(text.strip())
            pairs.append(pair.strip())
        else:
            texts.append(line.strip())
    if not texts:
        raise UserError(f"{what}: {path}: no examples (the file is empty)")
    return texts, pairs


def read_column_texts(path: str, text_column: str = "text") -> list[str]:
    """The texts of UTF-8 `path` (`-`: stdin) in file order, as they are (not stripped).

    `.jsonl`/`.ndjson`, `.csv` and `.tsv` files give the `text_column` of every row; anything else (and stdin) is one
    text a line, blank lines skipped. Raises `UserError` for an unreadable or empty file or a missing column.
    """
    name = "<stdin>" if path == "-" else path
    content = read_text(path, "utf-8", "convert it to UTF-8").removeprefix("\ufeff")
    if not content.strip():
        raise UserError(f"{name} is empty: no texts to score")
    fmt = "txt" if path == "-" else TABLE_FORMATS.get(Path(path).suffix.lower(), "txt")
    if fmt == "jsonl":
        texts = _jsonl_texts(content, name, text_column)
    elif fmt in ("csv", "tsv"):
        texts = _table_texts(content, name, text_column, "," if fmt == "csv" else "\t")
    else:
        texts = [line for line in split_lines(content) if line.strip()]
    if not texts:
        raise UserError(f"{name} has no rows: no texts to score")
    return texts


def _jsonl_texts(content: str, name: str, column: str) -> list[str]:
    texts = []
    for lineno, line in enumerate(split_lines(content), 1):
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
