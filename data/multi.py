"""`MultiDataModule`: the same examples read by several models, each through its own *view*: a tokenizer and a text
column (`text_en`, `text_de`, ... of a csv/jsonl/hf source, or line-aligned files of `source: parallel` with
`data.text_files`). Example indices (`idx`), labels and batches are shared, so per-example teacher caches stay valid.

`ParallelDataModule`: the same for unlabelled parallel text (general distillation, `TextDataConfig` with
`source: parallel`): one file per language and split, line i of every file one example, a view per (tokenizer,
language); the teacher cache keeps one entry per example, that is per sentence of the teacher's language.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass

import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from bert.errors import UserError
from bert.loading import load_tokenizer
from data.config import TextDataConfig
from data.data_module import (
    ClfDataModule,
    _example,
    tokenize_cached,
    tokenizer_id,
    train_batches,
)
from data.padding import pad_batch
from data.readers import read_lines

# Sources whose examples are rows with named columns; the others have one text (or a file per column: parallel).
COLUMN_SOURCES = ("hf", "csv", "tsv", "json", "jsonl")


class MultiSplit(Dataset):
    """Examples of one split with one tokenization per view; items: {"views": {view: example}, labels, idx}."""

    def __init__(self, encs: dict[str, dict[str, torch.Tensor]], labels: list[int]):
        self.encs = encs
        self.labels = torch.tensor(labels, dtype=torch.long)
        per_view = [(enc["offsets"][1:] - enc["offsets"][:-1]) for enc in encs.values()]
        self.lengths = torch.stack(per_view).amax(0).tolist()  # the longest tokenization: what a batch pads to

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"views": {k: _example(enc, i) for k, enc in self.encs.items()}, "labels": self.labels[i], "idx": i}


@dataclass
class MultiCollator:
    """Pads each view to its own longest example. The batch holds every view under `views`, and the first view's
    tensors at the top level too (what single-model code reads), with `labels` and `idx`."""

    pad_ids: dict[str, int]

    def __call__(self, items: list[dict]) -> dict:
        views = {k: pad_batch([it["views"][k] for it in items], pad) for k, pad in self.pad_ids.items()}
        batch = dict(views[next(iter(views))])
        batch["views"] = views
        batch["labels"] = torch.stack([it["labels"] for it in items])  # (B,)
        batch["idx"] = torch.tensor([it["idx"] for it in items], dtype=torch.long)  # (B,)
        return batch


class MultiDataModule(ClfDataModule):
    """`ClfDataModule` with several views. `views`: name -> (tokenizer or its name, text column or None for
    `data.text_column`); the first view is also the batch's top level. Everything else as `ClfDataModule`."""

    def __init__(self, data, views: Mapping[str, tuple], **settings):
        if not views:
            raise UserError("MultiDataModule: at least one view (tokenizer, text column) is needed")
        loaded = {}
        for name, (tok, column) in views.items():
            loaded[name] = (load_tokenizer(tok) if isinstance(tok, str) else tok, column)
            if loaded[name][0].pad_token_id is None:
                raise UserError(f"tokenizer {loaded[name][0].name_or_path}: has no pad token")
        super().__init__(data, next(iter(loaded.values()))[0], None, **settings)
        self.views = {name: (tok, column or self.cfg.text_column) for name, (tok, column) in loaded.items()}

    def columns(self) -> list[str]:
        """The text columns the source offers (None: any column of its rows, known once read)."""
        if self.cfg.source == "parallel":
            return [self.cfg.text_column, *(self.cfg.text_files or {})]
        return None if self.cfg.source in COLUMN_SOURCES else [self.cfg.text_column]

    def _column_config(self, column: str, who: str):
        """`data` for one text column: the column itself (row sources), or its files (`source: parallel`)."""
        cfg = self.cfg
        if column == cfg.text_column:
            return cfg
        if cfg.source in COLUMN_SOURCES or self.dataset is not None:  # the reader names the columns present
            return dataclasses.replace(cfg, text_column=column)
        present = self.columns()
        if column not in present:
            hint = "; data.text_files adds line-aligned files as columns" if cfg.source == "parallel" else ""
            raise UserError(
                f"{who}: no text column {column!r} in data.source={cfg.source} (columns: {', '.join(present)}{hint})"
            )
        files = cfg.text_files[column]
        missing = [s for s in ("train", "validation", "test") if getattr(cfg, s) and s not in files]
        if missing:
            raise UserError(f"data.text_files.{column}: no {missing[0]} file (data.{missing[0]} has one)")
        return dataclasses.replace(cfg, **files)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cfg = self.cfg
        if cfg.transfer:
            raise UserError("data.transfer: a transfer set is read by one teacher and one student, not by several")
        raw, ids = {}, {}
        try:
            for name, (tok, column) in self.views.items():
                if column not in raw:
                    self.cfg, self.datasets = self._column_config(column, f"view {name!r}"), {}
                    try:
                        super().setup(stage)  # reads, splits and limits the examples exactly as one model would
                    except UserError as err:
                        raise UserError(f"text column {column!r}: {err}") from None
                    raw[column] = self.raw
                ids[name] = tokenizer_id(tok)
        finally:
            self.cfg = cfg
        first = raw[next(iter(raw))]
        for column, splits in raw.items():
            for split, part in splits.items():
                if len(part) != len(first[split]) or part.labels != first[split].labels:
                    raise UserError(
                        f"text column {column!r}: its {split} split does not line up with the others' "
                        f"({len(part)} vs {len(first[split])} examples, or other labels)"
                    )
        self.raw_by_column = raw
        self.datasets = {}
        for split in first:
            encs = {}
            for name, (tok, column) in self.views.items():
                part = raw[column][split]
                encs[name] = tokenize_cached(part.texts, part.pairs, tok, ids[name], cfg.max_length, cfg.cache_dir)
            self.datasets[split] = MultiSplit(encs, first[split].labels)
        self.raw = first
        self.splits = list(self.datasets)
        self.has_test = "test" in self.datasets

    def _loader(self, dataset, **kw) -> DataLoader:
        workers = self.cfg.num_workers
        collate = MultiCollator({name: tok.pad_token_id for name, (tok, _) in self.views.items()})
        return DataLoader(dataset, collate_fn=collate, num_workers=workers, persistent_workers=workers > 0, **kw)


def read_parallel_texts(cfg: TextDataConfig) -> dict[str, dict[str, list[str]]]:
    """{split: {language: its lines}} of `cfg.text_files`; every language of a split has as many lines (else one
    line naming both files and their counts), no line is blank; `limit_train`/`limit_eval` keep the same seeded
    examples in every language."""
    out: dict[str, dict[str, list[str]]] = {}
    for split in ("train", "validation", "test"):
        files = {lang: f[split] for lang, f in cfg.text_files.items() if split in f}
        if not files:
            continue
        texts = {lang: [line.strip() for line in read_lines(path, cfg.encoding)] for lang, path in files.items()}
        (lang0, first), path0 = next(iter(texts.items())), next(iter(files.values()))
        for lang, lines in texts.items():
            if len(lines) != len(first):
                raise UserError(
                    f"data.text_files: {files[lang]} has {len(lines)} lines but {path0} has {len(first)}; parallel "
                    "files must be line-aligned"
                )
            blank = next((n for n, line in enumerate(lines, 1) if not line), None)
            if blank is not None:
                raise UserError(f"data.text_files.{lang}.{split}: {files[lang]} line {blank} is blank")
        if not first:
            raise UserError(f"data.text_files.{lang0}.{split}: {path0} is empty")
        limit = cfg.limit_train if split == "train" else cfg.limit_eval
        if limit is not None and limit < len(first):
            keep = sorted(random.Random(cfg.seed).sample(range(len(first)), limit))
            texts = {lang: [lines[i] for i in keep] for lang, lines in texts.items()}
        out[split] = texts
    return out


class ParallelDataModule(L.LightningDataModule):
    """Unlabelled parallel text, each model reading its view: `views` maps a view name to (tokenizer, language of
    `cfg.text_files`); the first view is also the batch's top level. After `setup()`: `datasets` (train,
    validation[, test]), `texts` ({split: {language: lines}}), `has_test`; `label_names` None, labels -1."""

    label_names = None
    student_tokenizer = None
    validation_names: list[str] = []

    def __init__(self, cfg: TextDataConfig, views: Mapping[str, tuple]):
        super().__init__()
        if cfg.source != "parallel" or not cfg.text_files:
            raise UserError("ParallelDataModule: needs data.source=parallel with data.text_files")
        for name, (tok, lang) in views.items():
            if lang not in cfg.text_files:
                raise UserError(
                    f"view {name!r}: language {lang!r} has no files in data.text_files "
                    f"(languages: {', '.join(cfg.text_files)})"
                )
            if tok.pad_token_id is None:
                raise UserError(f"tokenizer {tok.name_or_path}: has no pad token")
        self.cfg, self.views = cfg, dict(views)
        self.tokenizer = next(iter(self.views.values()))[0]
        self.datasets: dict[str, MultiSplit] = {}
        self.texts: dict[str, dict[str, list[str]]] = {}
        self.has_test = "test" in next(iter(cfg.text_files.values()))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cfg = self.cfg
        self.texts = read_parallel_texts(cfg)
        for split, texts in self.texts.items():
            encs = {
                name: tokenize_cached(texts[lang], None, tok, tokenizer_id(tok), cfg.max_length, cfg.cache_dir)
                for name, (tok, lang) in self.views.items()
            }
            self.datasets[split] = MultiSplit(encs, [-1] * len(texts[cfg.text_column]))

    def _loader(self, dataset, **kw) -> DataLoader:
        workers = self.cfg.num_workers
        collate = MultiCollator({name: tok.pad_token_id for name, (tok, _) in self.views.items()})
        return DataLoader(dataset, collate_fn=collate, num_workers=workers, persistent_workers=workers > 0, **kw)

    def train_dataloader(self) -> DataLoader:
        ds, cfg = self.datasets["train"], self.cfg
        start, self.train_start = getattr(self, "train_start", None), None
        return self._loader(
            ds, batch_sampler=train_batches(ds, cfg, start), generator=torch.Generator().manual_seed(cfg.seed)
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["validation"], batch_size=self.cfg.eval_batch_size or self.cfg.batch_size)

    def test_dataloader(self) -> DataLoader | list:
        if not self.has_test:
            return []
        return self._loader(self.datasets["test"], batch_size=self.cfg.eval_batch_size or self.cfg.batch_size)
