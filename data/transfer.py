"""The transfer-set file (Tang et al. 2019, arXiv:1903.12136, §3.3): one Parquet file, one row per example, labelled by
the teacher. `transfer_set.py` writes it (`write_transfer`); `ClfDataModule` reads it (`read_transfer`) when
`data.transfer` is set.

Columns: `text` (string), `text_pair` (string, null for single sentences), `label` (int64: the gold label id for
`original` rows, -1 for every other row), `logits` (list<float32>: the teacher's, one per class), `source` (string:
original, mask, pos, ngram, generated, unlabelled). The file's metadata holds `label_names` (JSON list, id -> name),
plus the teacher and `max_length` it was labelled with.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from bert.errors import UserError

SOURCES = ("original", "mask", "pos", "ngram", "generated", "unlabelled")
COLUMNS = ("text", "text_pair", "label", "logits", "source")
META_LABELS = b"label_names"


def write_transfer(path: str | Path, rows: dict, logits, label_names: list[str], meta: dict | None = None) -> Path:
    """Write `rows` (lists `text`, `text_pair`, `label`, `source`) and `logits` ((N, C) float32 array) atomically."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    logits = np.ascontiguousarray(logits, dtype=np.float32)
    n, c = logits.shape
    offsets = np.arange(0, (n + 1) * c, c, dtype=np.int32)
    table = pa.table(
        {
            "text": pa.array(rows["text"], pa.string()),
            "text_pair": pa.array(rows["text_pair"], pa.string()),
            "label": pa.array(rows["label"], pa.int64()),
            "logits": pa.ListArray.from_arrays(pa.array(offsets), pa.array(logits.reshape(-1))),
            "source": pa.array(rows["source"], pa.string()),
        }
    )
    extra = {k: json.dumps(v) for k, v in (meta or {}).items()}
    table = table.replace_schema_metadata({META_LABELS: json.dumps(list(label_names)), **extra})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


@dataclass
class TransferRows:
    texts: list[str]
    pairs: list[str] | None
    labels: list[int]
    logits: object  # torch.Tensor (N, C) float32
    sources: list[str]


def read_transfer(path: str, label_names: list[str], with_pairs: bool, keep_original: bool = False) -> TransferRows:
    """The rows of the transfer file at `path` (without `original` rows unless `keep_original`), checked against the
    data's label names and pair layout; every problem is a one-line `UserError` naming the file."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import torch

    where = f"data.transfer: {path}"
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{where}: cannot read it as Parquet ({why})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(
            f"{where}: missing column(s) {', '.join(missing)} (columns: {', '.join(table.column_names)}); "
            "write it with transfer_set.py"
        )
    if table.num_rows == 0:
        raise UserError(f"{where}: the file has no rows")
    meta = table.schema.metadata or {}
    if META_LABELS in meta:
        try:
            names = json.loads(meta[META_LABELS])
        except ValueError:
            raise UserError(f"{where}: unreadable label_names in the file's metadata") from None
        if list(names) != list(label_names):
            raise UserError(f"{where}: made for labels {names}, but the data has labels {list(label_names)}")
    if not pa.types.is_list(table.schema.field("logits").type) and not pa.types.is_large_list(
        table.schema.field("logits").type
    ):
        raise UserError(f"{where}: column logits is {table.schema.field('logits').type}, expected a list of floats")
    logits_col = table.column("logits").combine_chunks()
    widths = pc.list_value_length(logits_col).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(widths != len(label_names))
    if bad.size:
        raise UserError(
            f"{where}: row {int(bad[0])} has {widths[bad[0]]} logits, but the data has {len(label_names)} labels"
        )
    sources = table.column("source").to_pylist()
    unknown = sorted({s for s in sources if s not in SOURCES}, key=str)
    if unknown:
        raise UserError(f"{where}: unknown source {unknown[0]!r} (expected one of {', '.join(SOURCES)})")
    texts, pairs, labels = (table.column(c).to_pylist() for c in ("text", "text_pair", "label"))
    has_pair = [p is not None for p in pairs]
    if any(t is None for t in texts) or any(v is None for v in labels):
        raise UserError(f"{where}: empty text or label values")
    if with_pairs and not all(has_pair) or not with_pairs and any(has_pair):
        what = "sentence pairs" if with_pairs else "single sentences"
        raise UserError(f"{where}: the data has {what} (data.text_pair_column), the file does not")
    if any(v < -1 or v >= len(label_names) for v in labels):
        raise UserError(f"{where}: a label outside -1..{len(label_names) - 1}")
    values = np.asarray(logits_col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    logits = torch.from_numpy(values.reshape(len(texts), len(label_names)).copy())
    if not torch.isfinite(logits).all():
        raise UserError(f"{where}: logits that are NaN or infinite")
    keep = [i for i, s in enumerate(sources) if keep_original or s != "original"]
    return TransferRows(
        [texts[i] for i in keep],
        [pairs[i] for i in keep] if with_pairs else None,
        [labels[i] for i in keep],
        logits[keep],
        [sources[i] for i in keep],
    )
