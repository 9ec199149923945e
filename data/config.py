"""`DataConfig`: where the text and labels come from and how they are batched (the `data:` section of every stage).

It lives in data/ so that data/ needs nothing from helper/; `helper.config` puts it into the stage configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DataConfig:
    # "rotten_tomatoes" (embedded demo), "hf" (datasets.load_dataset), "csv"/"tsv"/"json"/"jsonl",
    # "label_text" (`LABEL text` lines, as ../shared/data/sst2), "parallel" (text file + label file per split)
    source: Literal["rotten_tomatoes", "hf", "csv", "tsv", "json", "jsonl", "label_text", "parallel"] = (
        "rotten_tomatoes"
    )
    name: str | None = None  # hf: dataset name or local directory, e.g. "glue"
    subset: str | None = None  # hf: dataset config, e.g. "sst2"
    # hf: our split -> the dataset's split, e.g. {train: train, validation: validation_matched}. Every split named must
    # exist. Default: train / validation / test, each when the dataset has it.
    hf_splits: dict[str, str] | None = None
    # Per-split file (csv/tsv/json/jsonl/label_text) or text file (parallel); "test" is optional.
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    # parallel: label file per split
    train_labels: str | None = None
    validation_labels: str | None = None
    test_labels: str | None = None
    encoding: str = "utf-8"  # of local files (../shared/data/trec needs latin-1)
    # id -> name. Default: the source's names (hf ClassLabel, embedded demo), else the sorted labels seen in train.
    label_names: list[str] | None = None
    label_names_file: str | None = None  # one `id<TAB>name` (or just `name`) a line, as tweet_emotion/mapping.txt
    text_column: str = "text"
    text_pair_column: str | None = None  # second sentence, for pair tasks
    label_column: str = "label"
    # Without a validation split (trec), hold out this stratified, seeded fraction of train as validation.
    val_from_train: float | None = None
    max_length: int = 64
    batch_size: int = 32
    eval_batch_size: int | None = None  # defaults to batch_size
    group_by_length: bool = True  # training batches of similar length (buckets of 50 batches): ~half the padded tokens
    num_workers: int = 0
    limit_train: int | None = None  # keep a seeded random subset of N training examples
    limit_eval: int | None = None  # same for validation and test
    seed: int = 0  # embedded-demo split, val_from_train, limit_*, training order
    cache_dir: str | None = ".cache/tokenized"  # tokenized splits on disk; None: memory only
