"""`MultiDataModule`: the same examples read by several models, each through its own *view*: a tokenizer and a text
column (`text_en`, `text_de`, ... of a csv/jsonl/hf source, or line-aligned files of `source: parallel` with
`data.text_files`). Example indices (`idx`), labels and batches are shared, so per-example teacher caches stay valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from bert.errors import UserError
from bert.loading import load_tokenizer
from data.data_module import ClfDataModule, _example, tokenize_cached, tokenizer_id
from data.padding import pad_batch

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
