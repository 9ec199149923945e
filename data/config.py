"""The `data:` sections: `DataConfig` (labelled examples, every classification stage) and `TextDataConfig` (unlabelled
text, general distillation), both on `LoaderConfig`, the reading and batching settings they share.

They live in data/ so that data/ needs nothing from helper/; `helper.config` puts them into the stage configs. Like
`bert.sections`, this module imports only the standard library and bert/: reading a config never loads torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from bert.sections import (
    AT_LEAST_1,
    AT_LEAST_1_OR_NONE,
    COUNT,
    ENCODING,
    MAX_COUNT,
    SEED,
    TEXT,
    TEXT_OR_NONE,
    Check,
    Num,
    Section,
    name_ok,
    text_ok,
)

SPLITS = ("train", "validation", "test")


def _split_files_ok(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and all(k in SPLITS and text_ok(p) for k, p in v.items())


def _sets_ok(v: Any) -> bool:
    if v is None or isinstance(v, str):
        return v is None or text_ok(v)
    return isinstance(v, dict) and bool(v) and all(name_ok(k) and text_ok(p) for k, p in v.items())


@dataclass
class LoaderConfig(Section):
    """How examples are read, tokenized and batched: the settings every `data:` section shares."""

    SECTION = "data"
    RULES = {
        "text_column": TEXT,
        "encoding": ENCODING,
        # [CLS] + [SEP]; the model's own limit (its position embeddings) is checked when it is loaded
        "max_length": Num(2, MAX_COUNT, integer=True),
        "batch_size": AT_LEAST_1,
        "eval_batch_size": AT_LEAST_1_OR_NONE,
        "num_workers": COUNT,
        "limit_train": AT_LEAST_1_OR_NONE,
        "limit_eval": AT_LEAST_1_OR_NONE,
        "seed": SEED,
        "cache_dir": TEXT_OR_NONE,
    }

    source: str  # where the examples come from; each data section has its own choices (and default)
    text_column: str = "text"  # column of the text (csv/tsv/json/jsonl/hf)
    encoding: str = "utf-8"  # of local files (../shared/data/trec needs latin-1)
    max_length: int = 64  # tokens per example, [CLS] and [SEP] included; longer ones are truncated
    batch_size: int = 32  # training batch size (per device)
    eval_batch_size: int | None = None  # defaults to batch_size
    group_by_length: bool = True  # training batches of similar length (buckets of 50 batches): ~half the padded tokens
    num_workers: int = 0  # DataLoader worker processes (0: load in the main process)
    limit_train: int | None = None  # keep a seeded random subset of N training examples
    limit_eval: int | None = None  # same for validation and test
    seed: int = 0  # held-out splits (embedded demo, val_from_train, validation_fraction), limit_*, training order
    cache_dir: str | None = ".cache/tokenized"  # tokenized splits on disk; None: memory only


@dataclass
class DataConfig(LoaderConfig):
    RULES = {
        **LoaderConfig.RULES,
        "name": TEXT_OR_NONE,
        "subset": TEXT_OR_NONE,
        "hf_splits": Check(
            lambda v: v is None or (bool(v) and all(k in SPLITS and text_ok(s) for k, s in v.items())),
            "None or a mapping from train/validation/test to the dataset's split names",
        ),
        **dict.fromkeys(["train", "test", "train_labels", "test_labels", "label_names_file"], TEXT_OR_NONE),
        **dict.fromkeys(
            ["validation", "validation_labels"],
            Check(
                _sets_ok, "None, a file, or a mapping from a set name (letters, digits, _ - .) to a file (or hf split)"
            ),
        ),
        "label_names": Check(
            lambda v: v is None or (len(v) >= 2 and all(map(text_ok, v)) and len(set(v)) == len(v)),
            "None or a list of at least 2 distinct non-empty names",
        ),
        "text_pair_column": TEXT_OR_NONE,
        "label_column": TEXT,
        "val_from_train": Num(0, 1, lo_open=True, hi_open=True, none=True),
        "transfer": TEXT_OR_NONE,
        "text_files": Check(
            lambda v: (
                v is None
                or all(text_ok(c) and v[c] and all(k in SPLITS and text_ok(p) for k, p in v[c].items()) for c in v)
            ),
            "None or a mapping from a column name to a mapping from train/validation/test to text files",
        ),
    }

    # "rotten_tomatoes" (embedded demo), "hf" (datasets.load_dataset), "csv"/"tsv"/"json"/"jsonl",
    # "label_text" (`LABEL text` lines, as ../shared/data/sst2), "parallel" (text file + label file per split)
    source: Literal["rotten_tomatoes", "hf", "csv", "tsv", "json", "jsonl", "label_text", "parallel"] = (
        "rotten_tomatoes"  # where the examples come from
    )
    name: str | None = None  # hf: dataset name or local directory, e.g. "glue"
    subset: str | None = None  # hf: dataset config, e.g. "sst2"
    # hf: our split -> the dataset's split, e.g. {train: train, validation: validation_matched}. Every split named must
    # exist. Default: train / validation / test, each when the dataset has it.
    hf_splits: dict[str, str] | None = None  # hf: our split -> the dataset's split; default: same names
    # Per-split file (csv/tsv/json/jsonl/label_text) or text file (parallel); "test" is optional.
    train: str | None = None  # training file (text file for parallel)
    # Several validation sets: a mapping name -> file (hf: name -> split; parallel: validation_labels the same keys).
    # Each is logged as val/<name>/<metric>; the first is also val/<metric>.
    validation: str | dict[str, str] | None = None  # validation file, or several as {name: file}
    test: str | None = None  # test file (optional)
    # parallel: label file per split
    train_labels: str | None = None  # parallel: label file of train
    validation_labels: str | dict[str, str] | None = None  # parallel: label file of validation ({name: file})
    test_labels: str | None = None  # parallel: label file of test
    # id -> name. Default: the source's names (hf ClassLabel, embedded demo), else the sorted labels seen in train.
    label_names: list[str] | None = None  # id -> name; default: the source's, else the sorted labels of train
    label_names_file: str | None = None  # one `id<TAB>name` (or just `name`) a line, as tweet_emotion/mapping.txt
    text_pair_column: str | None = None  # second sentence, for pair tasks
    label_column: str = "label"  # column of the label (csv/tsv/json/jsonl/hf)
    # Without a validation split (trec), hold out this stratified, seeded fraction of train as validation.
    val_from_train: float | None = None  # no validation split: hold out this stratified fraction of train
    # Distillation only: a parquet file written by transfer_set.py. Its rows (except `original`, which repeat the
    # training set) join the TRAIN split, each with the teacher's stored logits; rows with no gold label get label -1.
    transfer: str | None = None  # transfer set (transfer_set.py's parquet) appended to the train split
    # parallel: more text files, line-aligned with train/validation/test, each under a column name that a model reads
    # through its `text_column` (several teachers and students), e.g. {de: {train: train.de, validation: dev.de}}
    text_files: dict[str, dict[str, str]] | None = None  # parallel: column -> split -> text file (other languages)

    def validation_sets(self) -> dict[str, DataConfig]:
        """{set name: this config reading that set as its validation split}; {} for one validation set."""
        if not isinstance(self.validation, dict):
            return {}
        labels = self.validation_labels
        if labels is not None and (not isinstance(labels, dict) or set(labels) != set(self.validation)):
            self.fail("validation_labels", f"{labels!r} must map the same names as data.validation")
        out = {}
        for name, where in self.validation.items():
            splits = {**(self.hf_splits or {"train": "train"}), "validation": where}
            out[name] = dataclasses.replace(
                self,
                validation=where,
                validation_labels=labels[name] if labels else None,
                hf_splits=splits if self.source == "hf" else self.hf_splits,
            )
        return out


@dataclass
class TextDataConfig(LoaderConfig):
    """Unlabelled text for task-agnostic ("general") distillation (the `data:` section of `distillation_general.py`)."""

    RULES = {
        **LoaderConfig.RULES,
        "train": TEXT_OR_NONE,
        "validation": TEXT_OR_NONE,
        "name": TEXT_OR_NONE,
        "subset": TEXT_OR_NONE,
        "hf_split": TEXT,
        "hf_validation_split": TEXT_OR_NONE,
        "validation_fraction": Num(0, 1, lo_open=True, hi_open=True),
        "max_length": Num(3, MAX_COUNT, integer=True),  # [CLS] + at least one token + [SEP]
        "text_files": Check(
            lambda v: v is None or (bool(v) and all(name_ok(c) and _split_files_ok(f) for c, f in v.items())),
            "None or a mapping from a language (letters, digits, _ - .) to a mapping from train/validation/test to "
            "text files",
        ),
    }

    # "text": a plain text file, one text a line (blank lines skipped); "hf": datasets.load_dataset(name, subset);
    # "transfer": the `text` column of a transfer-set Parquet file (transfer_set.py); "parallel": line-aligned files,
    # one per language and split (`text_files`), each model reading its language of the same example
    source: Literal["text", "hf", "transfer", "parallel"] = "text"  # where the unlabelled text comes from
    train: str | None = None  # text: the text file; transfer: the Parquet file
    validation: str | None = None  # a text file (one text a line) to validate on; default: hold out a fraction
    name: str | None = None  # hf: dataset name or local directory
    subset: str | None = None  # hf: dataset config
    hf_split: str = "train"  # hf: the split to read
    hf_validation_split: str | None = None  # hf: a split to validate on; default: hold out a fraction
    # Without a validation file or split, this seeded fraction of the texts (not windows) is held out.
    validation_fraction: float = 0.05  # fraction of the texts held out for validation (when none is given)
    # Longer texts are cut into consecutive windows of max_length tokens ([CLS] and [SEP] included), not truncated.
    max_length: int = 128  # tokens per window; longer texts become several windows
    # parallel: language -> {train: file, validation: file, test: file}, line i of every file one example; the language
    # the teacher reads is data.text_column (e.g. en). Texts are truncated to max_length, not cut into windows.
    text_files: dict[str, dict[str, str]] | None = None  # parallel: language -> split -> text file

    def check(self) -> None:
        if self.source != "parallel":
            if self.text_files is not None:
                self.fail("text_files", f"is read by data.source=parallel only (source is {self.source})")
            return
        if not self.text_files:
            self.fail("text_files", "required for data.source=parallel: {language: {train: file, validation: file}}")
        if self.text_column not in self.text_files:
            self.fail(
                "text_column",
                f"{self.text_column!r} is not a language of data.text_files ({', '.join(self.text_files)}); name the "
                "language the teacher reads",
            )
        first, splits = next(iter(self.text_files.items()))
        for lang, files in self.text_files.items():
            for split in ("train", "validation"):
                if split not in files:
                    self.fail(f"text_files.{lang}", f"no {split} file (parallel text needs train and validation)")
            if set(files) != set(splits):
                self.fail(f"text_files.{lang}", f"has splits {sorted(files)} but {first} has {sorted(splits)}")
        for key in ("train", "validation", "name"):
            if getattr(self, key) is not None:
                self.fail(key, "not read by data.source=parallel (its files are in data.text_files)")
