"""`TextDataModule`: unlabelled text for general distillation, tokenized once (cached), long texts cut into windows.

Sources (`TextDataConfig.source`): a plain text file (one text a line, blank lines skipped), a `datasets` dataset
(name or local directory, a text column), or the `text` column of a transfer-set Parquet file. Without a validation
file or split, a seeded fraction of the *texts* is held out (so that no text has windows on both sides). Every text is
tokenized without truncation and cut into consecutive windows of `max_length` tokens, special tokens included: each
window is one example, with its own `idx`. Batches are padded to their longest window; `labels` are -1.
"""

from __future__ import annotations

import random

import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader

from bert.errors import UserError
from data.config import TextDataConfig
from data.data_module import (
    Collator,
    EpochShuffle,
    LengthGroupedBatchSampler,
    TokenizedSplit,
    cached_tokens,
    tokenizer_id,
)
from data.readers import read_text_file
from data.sources import fingerprint, load_hf_dataset

# ---------------------------------------------------------------------------------------------------------------------
# Reading


def read_transfer_texts(path: str) -> list[str]:
    """The `text` column of a transfer-set Parquet file (its other columns are not needed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = f"data.train: {path}"
    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except (OSError, pa.ArrowException) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{where}: cannot read it as Parquet ({why})") from None
    if "text" not in names:
        raise UserError(f"{where}: no column 'text' (columns: {', '.join(names)}); write it with transfer_set.py")
    texts = [t.strip() for t in pq.read_table(path, columns=["text"]).column("text").to_pylist() if t]
    texts = [t for t in texts if t]
    if not texts:
        raise UserError(f"{where}: no text (the file has no rows with text)")
    return texts


def read_hf_texts(cfg: TextDataConfig, split: str) -> list[str]:
    """Column `cfg.text_column` of split `split` of `datasets.load_dataset(cfg.name, cfg.subset)`."""
    dd = load_hf_dataset(cfg)
    label = cfg.name + (f"/{cfg.subset}" if cfg.subset else "")
    if split not in dd:
        raise UserError(f"data: {label} has no split {split!r} (splits: {', '.join(dd)})")
    ds = dd[split]
    if cfg.text_column not in ds.column_names:
        raise UserError(
            f"data.text_column: {label} [{split}] has no column {cfg.text_column!r} "
            f"(columns: {', '.join(ds.column_names)})"
        )
    texts = [t.strip() for t in ds[cfg.text_column] if isinstance(t, str)]
    texts = [t for t in texts if t]
    if not texts:
        raise UserError(f"data: {label} [{split}] has no text in column {cfg.text_column!r}")
    return texts


def read_texts(cfg: TextDataConfig) -> tuple[list[str], list[str] | None]:
    """(training texts, validation texts or None) of `cfg`, before the held-out split and limits."""
    if cfg.source == "hf":
        if not cfg.name:
            raise UserError("data.name: required for data.source=hf (a hub dataset or a local directory)")
        train = read_hf_texts(cfg, cfg.hf_split)
        val = read_hf_texts(cfg, cfg.hf_validation_split) if cfg.hf_validation_split else None
    else:
        if not cfg.train:
            raise UserError(f"data.train: required for data.source={cfg.source} (the {cfg.source} file)")
        train = read_transfer_texts(cfg.train) if cfg.source == "transfer" else read_text_file(cfg.train, cfg.encoding)
        val = None
    if cfg.validation:
        if val is not None:
            raise UserError("data.validation and data.hf_validation_split: set only one")
        val = read_text_file(cfg.validation, cfg.encoding)
    return train, val


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizing into windows


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a single text gets before and after its own tokens ([CLS] and [SEP] for BERT)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    raise UserError(f"tokenizer {tokenizer.name_or_path}: cannot tell its special tokens from the text")


def chunk_ids(ids: list[int], frame: tuple[list[int], list[int]], max_length: int) -> list[list[int]]:
    """`ids` (no special tokens) cut into consecutive pieces that fit `max_length` inside the special-token `frame`."""
    before, after = frame
    room = max_length - len(before) - len(after)
    if room < 1:
        raise UserError(f"data.max_length: {max_length} leaves no room for text next to the special tokens")
    return [before + ids[i : i + room] + after for i in range(0, len(ids), room)]


def tokenize_windows(
    texts: list[str], tokenizer, tok_id: dict, max_length: int, cache_dir: str | None
) -> dict[str, torch.Tensor]:
    """Windows of every text, flattened: `input_ids` (N_tokens,), `offsets` (N_windows + 1,), `text_index`
    (N_windows,) (which text each window comes from), [`token_type_ids`]. Cached (`cached_tokens`), keyed by the
    texts' content, the tokenizer and `max_length`."""

    def build() -> dict[str, torch.Tensor]:
        pieces = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        windows, owner, frame = [], [], special_frame(tokenizer)
        for t, ids in enumerate(pieces):
            for window in chunk_ids(ids, frame, max_length) if ids else []:
                windows.append(window)
                owner.append(t)
        if not windows:
            raise UserError("data: no text left after tokenization (every text is empty for this tokenizer)")
        lengths = torch.tensor([len(w) for w in windows])
        flat = [i for w in windows for i in w]
        enc = {
            "input_ids": torch.tensor(flat, dtype=torch.int32),
            "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
            "text_index": torch.tensor(owner, dtype=torch.long),
        }
        if "token_type_ids" in tokenizer.model_input_names:
            enc["token_type_ids"] = torch.zeros(len(flat), dtype=torch.int8)  # one sentence per window
        return enc

    meta = {"content": fingerprint(texts, None), "tokenizer": tok_id, "max_length": max_length, "kind": "windows"}
    return cached_tokens(meta, cache_dir, build)


class WindowSplit(TokenizedSplit):
    """The windows of one split (labels -1); `text_index` says which text each window comes from."""

    def __init__(self, enc: dict[str, torch.Tensor]):
        self.text_index = enc["text_index"]
        super().__init__({k: v for k, v in enc.items() if k != "text_index"}, [-1] * len(enc["text_index"]))


# ---------------------------------------------------------------------------------------------------------------------


class TextDataModule(L.LightningDataModule):
    """Unlabelled windows for train and validation. After `setup()`: `datasets` (train, validation), `texts` (the
    texts of each split), `has_test` (False), `label_names` (None)."""

    has_test = False
    label_names = None
    student_tokenizer = None

    def __init__(self, cfg: TextDataConfig, tokenizer):
        super().__init__()
        if tokenizer.pad_token_id is None:
            raise UserError(f"tokenizer {tokenizer.name_or_path}: has no pad token")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.datasets: dict[str, WindowSplit] = {}
        self.texts: dict[str, list[str]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cfg = self.cfg
        train, val = read_texts(cfg)
        if val is None:
            order = list(range(len(train)))
            random.Random(cfg.seed).shuffle(order)
            n_val = round(cfg.validation_fraction * len(train))
            if n_val < 1 or n_val >= len(train):
                raise UserError(
                    f"data.validation_fraction: {cfg.validation_fraction} of {len(train)} texts leaves no "
                    "validation or no training text; give more text or a data.validation file"
                )
            held = set(order[:n_val])
            train, val = [t for i, t in enumerate(train) if i not in held], [train[i] for i in sorted(held)]
        self.texts = {
            "train": _limited(train, cfg.limit_train, cfg.seed),
            "validation": _limited(val, cfg.limit_eval, cfg.seed),
        }
        tok_id = tokenizer_id(self.tokenizer)
        for name, texts in self.texts.items():
            enc = tokenize_windows(texts, self.tokenizer, tok_id, cfg.max_length, cfg.cache_dir)
            self.datasets[name] = WindowSplit(enc)

    def _loader(self, dataset: WindowSplit, **kw) -> DataLoader:
        workers = self.cfg.num_workers
        collate = Collator(self.tokenizer.pad_token_id)
        return DataLoader(dataset, collate_fn=collate, num_workers=workers, persistent_workers=workers > 0, **kw)

    def train_dataloader(self) -> DataLoader:
        ds, cfg = self.datasets["train"], self.cfg
        sampler = EpochShuffle(len(ds), cfg.seed)
        if cfg.group_by_length:
            batches = LengthGroupedBatchSampler(sampler, cfg.batch_size, False, ds.lengths, cfg.seed)
            return self._loader(ds, batch_sampler=batches)
        return self._loader(ds, batch_size=cfg.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["validation"], batch_size=self.cfg.eval_batch_size or self.cfg.batch_size)

    def test_dataloader(self) -> list:
        return []


def _limited(texts: list[str], limit: int | None, seed: int) -> list[str]:
    if limit is None or limit >= len(texts):
        return texts
    return [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), limit))]
