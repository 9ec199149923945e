"""`TextDataConfig`: unlabelled text for task-agnostic ("general") distillation (the `data:` section of
`distillation_general.py`). Like `data.config`, it imports only the standard library: reading a config never loads
torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from data.config import (
    LOADER_RULES,
    TEXT,
    TEXT_OR_NONE,
    Check,
    Num,
    Section,
    _encoding_ok,
)


@dataclass
class TextDataConfig(Section):
    SECTION = "data"
    RULES = {
        "train": TEXT_OR_NONE,
        "validation": TEXT_OR_NONE,
        "name": TEXT_OR_NONE,
        "subset": TEXT_OR_NONE,
        "hf_split": TEXT,
        "hf_validation_split": TEXT_OR_NONE,
        "text_column": TEXT,
        "encoding": Check(_encoding_ok, "a text encoding Python knows (utf-8, latin-1, ...)"),
        "validation_fraction": Num(0, 1, lo_open=True, hi_open=True),
        "max_length": Num(3, integer=True),  # [CLS] + at least one token + [SEP]
        **LOADER_RULES,
    }

    # "text": a plain text file, one text a line (blank lines skipped); "hf": datasets.load_dataset(name, subset);
    # "transfer": the `text` column of a transfer-set Parquet file (transfer_set.py)
    source: Literal["text", "hf", "transfer"] = "text"  # where the unlabelled text comes from
    train: str | None = None  # text: the text file; transfer: the Parquet file
    validation: str | None = None  # a text file (one text a line) to validate on; default: hold out a fraction
    name: str | None = None  # hf: dataset name or local directory
    subset: str | None = None  # hf: dataset config
    hf_split: str = "train"  # hf: the split to read
    hf_validation_split: str | None = None  # hf: a split to validate on; default: hold out a fraction
    text_column: str = "text"  # hf: the column of the text
    encoding: str = "utf-8"  # of text files (../shared/data/trec needs latin-1)
    # Without a validation file or split, this seeded fraction of the texts (not windows) is held out.
    validation_fraction: float = 0.05  # fraction of the texts held out for validation (when none is given)
    # Longer texts are cut into consecutive windows of max_length tokens ([CLS] and [SEP] included), not truncated.
    max_length: int = 128  # tokens per window; longer texts become several windows
    batch_size: int = 32  # training batch size (per device)
    eval_batch_size: int | None = None  # defaults to batch_size
    group_by_length: bool = True  # training batches of similar length (buckets of 50 batches)
    num_workers: int = 0  # DataLoader worker processes (0: load in the main process)
    limit_train: int | None = None  # keep a seeded random subset of N training texts
    limit_eval: int | None = None  # same for validation
    seed: int = 0  # held-out split, limit_*, training order
    cache_dir: str | None = ".cache/tokenized"  # tokenized windows on disk; None: memory only
