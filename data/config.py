"""`DataConfig`: where the text and labels come from and how they are batched (the `data:` section of every stage).

It lives in data/ so that data/ needs nothing from helper/; `helper.config` puts it into the stage configs. The checks
every config section runs in `__post_init__` (`Section`, the rules `Num`, `Text`, `Rule`) live here for the same
reason. Like `helper.config`, this module imports only the standard library and `bert.errors`: reading and checking a
config never loads torch.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bert.errors import UserError

# ---------------------------------------------------------------------------------------------------------------------
# Checks shared by every config section


class ConfigError(UserError):
    """A bad value found by a section's own checks; `key` is relative to the section ("" for the section itself).

    Built directly (`OptimConfig(lr=-1)`) the message reads `optim.lr: -1.0 must be ...`; the YAML loader re-raises it
    with the file and the section's real dotted place (`configs/x.yaml: teacher.dropout: ...`).
    """

    def __init__(self, section: str, key: str, problem: str):
        self.section, self.key, self.problem = section, key, problem
        super().__init__(f"{'.'.join(p for p in (section, key) if p)}: {problem}")


class Rule:
    """What a value must be: `ok(value)`, and `str(rule)` reads after "must be" in the error and in `--help`."""

    text = "valid"

    def ok(self, value: Any) -> bool:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.text

    def __or__(self, other: Rule) -> Rule:
        return Check(lambda v: self.ok(v) or other.ok(v), f"{self} or {other}")


class Check(Rule):
    def __init__(self, ok: Callable[[Any], bool], text: str):
        self._ok, self.text = ok, text

    def ok(self, value: Any) -> bool:
        return bool(self._ok(value))


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Num(Rule):
    """A finite number (an int where `integer`; never a bool, NaN or inf) within [lo, hi] (ends open where asked)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    none: bool = False  # None is allowed too
    also: tuple = ()  # values allowed outside the bounds, e.g. (-1,)

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.none
        if isinstance(v, bool) or not isinstance(v, int if self.integer else (int, float)):
            return False
        if v in self.also:
            return True
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        if self.lo is not None and self.hi is not None:
            what += f" in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            what += f" {'>' if self.lo_open else '>='} {_num(self.lo)}"
        elif self.hi is not None:
            what += f" {'<' if self.hi_open else '<='} {_num(self.hi)}"
        return " or ".join([*(["None"] if self.none else []), *map(_num, self.also), what])


def _name_ok(v: Any) -> bool:
    """A name usable in metric keys: letters, digits, `_`, `-`, `.`."""
    return isinstance(v, str) and bool(v) and v not in (".", "..") and all(c.isalnum() or c in "_-." for c in v)


def _sets_ok(v: Any) -> bool:
    if v is None or isinstance(v, str):
        return v is None or _text_ok(v)
    return isinstance(v, dict) and bool(v) and all(_name_ok(k) and _text_ok(p) for k, p in v.items())


def _text_ok(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != "" and not any(c in v for c in "\n\r\0")


TEXT = Check(_text_ok, "a non-empty one-line string")
TEXT_OR_NONE = Check(lambda v: v is None or _text_ok(v), "None or a non-empty one-line string")
POSITIVE = Num(0, lo_open=True)
NON_NEGATIVE = Num(0)
FRACTION = Num(0, 1, hi_open=True)  # [0, 1)
DROPOUT = Num(0, 1, hi_open=True, none=True)
AT_LEAST_1 = Num(1, integer=True)
SEED = Num(0, 2**32 - 1, integer=True)  # what numpy and Lightning's seed_everything accept


def _encoding_ok(v: Any) -> bool:
    try:
        codecs.lookup(v)
    except (LookupError, TypeError):
        return False
    return _text_ok(v)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _typed(value: Any, tp: Any) -> tuple[bool, Any]:
    """(whether `value` fits the annotation `tp`, the value normalised: int -> float, 32 -> "32" for a Literal)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            fits, out = _typed(value, arg)
            if fits:
                return True, out
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is Literal:
        for choice in args:
            if value == choice or (not isinstance(value, (bool, list, dict)) and str(value) == str(choice)):
                return True, choice
        return False, value
    if origin is list:
        return isinstance(value, list) and (not args or all(_typed(v, args[0])[0] for v in value)), value
    if origin is dict:
        return isinstance(value, dict), value
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp), value
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), (
            float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        )
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, tp), value


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    return str(tp).replace("typing.", "") if not isinstance(tp, type) else tp.__name__


class Section:
    """Base of the config dataclasses: `__post_init__` checks every field's type and its rule in `RULES`, then the
    cross-field `check()`. Errors are `ConfigError`s naming `SECTION.key`."""

    SECTION = ""  # dotted place in the stage config, e.g. "optim", "student.init_from_teacher"
    RULES: dict[str, Rule] = {}

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            fits, normal = _typed(value, hints[f.name])
            if not fits:
                self.fail(f.name, f"expected {_describe(hints[f.name])}, got {value!r}")
            if normal is not value:
                setattr(self, f.name, normal)
            rule = self.RULES.get(f.name)
            if rule is not None and not rule.ok(normal):
                self.fail(f.name, f"{normal!r} must be {rule}")
        self.check()

    def check(self) -> None:
        """Checks that involve several fields (override)."""

    def fail(self, key: str, problem: str) -> typing.NoReturn:
        raise ConfigError(self.SECTION, key, problem)


# ---------------------------------------------------------------------------------------------------------------------


# The batching and caching settings that every data section shares (`data:` of the classification and the general
# distillation stages).
LOADER_RULES = {
    "batch_size": AT_LEAST_1,
    "eval_batch_size": Num(1, integer=True, none=True),
    "num_workers": Num(0, integer=True),
    "limit_train": Num(1, integer=True, none=True),
    "limit_eval": Num(1, integer=True, none=True),
    "seed": SEED,
    "cache_dir": TEXT_OR_NONE,
}


@dataclass
class DataConfig(Section):
    SECTION = "data"
    RULES = {
        "name": TEXT_OR_NONE,
        "subset": TEXT_OR_NONE,
        "hf_splits": Check(
            lambda v: v is None or (bool(v) and all(k in SPLITS and _text_ok(s) for k, s in v.items())),
            "None or a mapping from train/validation/test to the dataset's split names",
        ),
        **dict.fromkeys(["train", "test", "train_labels", "test_labels", "label_names_file"], TEXT_OR_NONE),
        **dict.fromkeys(
            ["validation", "validation_labels"],
            Check(
                _sets_ok, "None, a file, or a mapping from a set name (letters, digits, _ - .) to a file (or hf split)"
            ),
        ),
        "encoding": Check(_encoding_ok, "a text encoding Python knows (utf-8, latin-1, ...)"),
        "label_names": Check(
            lambda v: v is None or (len(v) >= 2 and all(map(_text_ok, v)) and len(set(v)) == len(v)),
            "None or a list of at least 2 distinct non-empty names",
        ),
        "text_column": TEXT,
        "text_pair_column": TEXT_OR_NONE,
        "label_column": TEXT,
        "val_from_train": Num(0, 1, lo_open=True, hi_open=True, none=True),
        "max_length": Num(2, integer=True),  # [CLS] + [SEP]; the model's own limit is checked when it is loaded
        **LOADER_RULES,
        "transfer": TEXT_OR_NONE,
        "text_files": Check(
            lambda v: (
                v is None
                or all(_text_ok(c) and v[c] and all(k in SPLITS and _text_ok(p) for k, p in v[c].items()) for c in v)
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
    encoding: str = "utf-8"  # of local files (../shared/data/trec needs latin-1)
    # id -> name. Default: the source's names (hf ClassLabel, embedded demo), else the sorted labels seen in train.
    label_names: list[str] | None = None  # id -> name; default: the source's, else the sorted labels of train
    label_names_file: str | None = None  # one `id<TAB>name` (or just `name`) a line, as tweet_emotion/mapping.txt
    text_column: str = "text"  # column of the text (csv/tsv/json/jsonl/hf)
    text_pair_column: str | None = None  # second sentence, for pair tasks
    label_column: str = "label"  # column of the label (csv/tsv/json/jsonl/hf)
    # Without a validation split (trec), hold out this stratified, seeded fraction of train as validation.
    val_from_train: float | None = None  # no validation split: hold out this stratified fraction of train
    max_length: int = 64  # tokens per example, [CLS] and [SEP] included; longer ones are truncated
    batch_size: int = 32  # training batch size (per device)
    eval_batch_size: int | None = None  # defaults to batch_size
    group_by_length: bool = True  # training batches of similar length (buckets of 50 batches): ~half the padded tokens
    num_workers: int = 0  # DataLoader worker processes (0: load in the main process)
    limit_train: int | None = None  # keep a seeded random subset of N training examples
    limit_eval: int | None = None  # same for validation and test
    seed: int = 0  # embedded-demo split, val_from_train, limit_*, training order
    cache_dir: str | None = ".cache/tokenized"  # tokenized splits on disk; None: memory only
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


SPLITS = ("train", "validation", "test")
