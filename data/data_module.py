"""`ClfDataModule`: tokenized (and cached) splits, a dynamic-padding collate, and a length-grouped batch sampler."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import pytorch_lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from bert.errors import UserError
from bert.loading import load_tokenizer
from data.config import DataConfig
from data.padding import pad_batch
from data.sources import SPLITS, Split, fingerprint, load_data, stratified_split
from data.transfer import read_transfer

BUCKET_BATCHES = 50  # group_by_length sorts chunks of this many batches by length

# cache key -> tokenized split; the same tensors are on disk under cfg.cache_dir/<key>.pt
_MEMORY: dict[str, dict[str, torch.Tensor]] = {}


def tokenizer_id(tokenizer) -> dict:
    """What identifies a tokenizer for the cache: class, name_or_path, vocabulary size and a hash of the vocabulary."""
    vocab = tokenizer.get_vocab()
    tokens = "\n".join(sorted(vocab, key=vocab.__getitem__))
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(tokenizer.name_or_path),
        "vocab_size": len(tokenizer),
        "vocab_sha": hashlib.sha256(tokens.encode()).hexdigest(),
    }


def cached_tokens(meta: dict, cache_dir: str | None, build: Callable[[], dict[str, torch.Tensor]]):
    """`build()`'s tensors, cached in memory and under `cache_dir` (written atomically: DDP ranks may write the same
    key at once), keyed by a hash of `meta` (the texts' content, the tokenizer, `max_length`, ...)."""
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
    if key in _MEMORY:
        return _MEMORY[key]
    path = Path(cache_dir) / f"{key}.pt" if cache_dir else None
    if path is not None and path.is_file():
        enc = torch.load(path, weights_only=True)
    else:
        enc = build()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(enc, tmp)
            os.replace(tmp, path)
    _MEMORY[key] = enc
    return enc


def tokenize_cached(
    texts: list[str], pairs: list[str] | None, tokenizer, tok_id: dict, max_length: int, cache_dir: str | None
) -> dict[str, torch.Tensor]:
    """Token ids of every example, flattened: `input_ids` (N_tokens,), `offsets` (N + 1,), [`token_type_ids`].

    Cached (`cached_tokens`), keyed by the texts' content, the tokenizer and `max_length`.
    """

    def build() -> dict[str, torch.Tensor]:
        with_tt = "token_type_ids" in tokenizer.model_input_names
        out = tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=with_tt,
        )
        lengths = torch.tensor([len(ids) for ids in out["input_ids"]])
        enc = {
            "input_ids": torch.tensor(list(chain.from_iterable(out["input_ids"])), dtype=torch.int32),
            "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        }
        if with_tt:
            enc["token_type_ids"] = torch.tensor(list(chain.from_iterable(out["token_type_ids"])), dtype=torch.int8)
        return enc

    meta = {"content": fingerprint(texts, pairs), "tokenizer": tok_id, "max_length": max_length}
    return cached_tokens(meta, cache_dir, build)


class TokenizedSplit(Dataset):
    """Examples of one split as dicts of 1-D tensors; `idx` is the position in the split.

    `teacher_logits` (N, C) float32, where given: the teacher's stored logits (transfer-set rows), NaN for rows
    without; each item then carries its row as `teacher_logits`. Label -1: no gold label.
    """

    def __init__(
        self,
        enc: dict[str, torch.Tensor],
        labels: list[int],
        enc_s: dict[str, torch.Tensor] | None = None,
        teacher_logits: torch.Tensor | None = None,
    ):
        self.enc, self.enc_s, self.teacher_logits = enc, enc_s, teacher_logits
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.lengths = (enc["offsets"][1:] - enc["offsets"][:-1]).tolist()  # teacher tokens per example

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {**_example(self.enc, i), "labels": self.labels[i], "idx": i}
        if self.enc_s is not None:
            item["student"] = _example(self.enc_s, i)
        if self.teacher_logits is not None:
            item["teacher_logits"] = self.teacher_logits[i]
        return item

    def extended(
        self,
        enc: dict[str, torch.Tensor],
        labels: list[int],
        enc_s: dict[str, torch.Tensor] | None,
        teacher_logits: torch.Tensor,
    ) -> TokenizedSplit:
        """This split followed by more examples that come with the teacher's logits (a transfer set)."""
        mine = torch.full((len(self), teacher_logits.shape[1]), float("nan"))
        if self.teacher_logits is not None:
            mine = self.teacher_logits
        return TokenizedSplit(
            _concat(self.enc, enc),
            [*self.labels.tolist(), *labels],
            _concat(self.enc_s, enc_s) if self.enc_s is not None else None,
            torch.cat([mine, teacher_logits.float()]),
        )


def _concat(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: torch.cat([a[k], b[k].to(a[k].dtype)]) for k in a if k != "offsets"}
    out["offsets"] = torch.cat([a["offsets"], b["offsets"][1:] + a["offsets"][-1]])
    return out


def _example(enc: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    a, b = enc["offsets"][i].item(), enc["offsets"][i + 1].item()
    return {k: v[a:b] for k, v in enc.items() if k != "offsets"}


@dataclass
class Collator:
    """Pads each batch to its longest example: input_ids, attention_mask, [token_type_ids], labels, idx, [student],
    [teacher_logits]."""

    pad_id: int
    pad_id_s: int | None = None

    def __call__(self, items: list[dict]) -> dict:
        batch = pad_batch(items, self.pad_id)
        batch["labels"] = torch.stack([it["labels"] for it in items])  # (B,)
        batch["idx"] = torch.tensor([it["idx"] for it in items], dtype=torch.long)  # (B,)
        if "student" in items[0]:
            batch["student"] = pad_batch([it["student"] for it in items], self.pad_id_s)
        if "teacher_logits" in items[0]:  # transfer sets: stored teacher logits, NaN rows where there are none
            batch["teacher_logits"] = torch.stack([it["teacher_logits"] for it in items])  # (B, C)
        return batch


class EpochShuffle(Sampler[int]):
    """A permutation of range(n) that depends only on (seed, epoch); Lightning calls `set_epoch`."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())


class ResumableBatches(BatchSampler):
    """Batches of `sampler` whose order depends only on (seed, epoch), and that can start mid-epoch.

    `start=(epoch, batches_done)` (what a checkpoint recorded, see `helper.training.ResumeState`): the first pass gives
    that epoch's order without the batches already trained on; later passes start at their epoch's first batch. A pass
    reads its epoch when its first batch is asked for (the body of `__iter__` is a generator), so the loader may be
    iterated before Lightning's `set_epoch`. Plain batches here; `LengthGroupedBatchSampler` groups by length.
    """

    def __init__(self, sampler, batch_size: int, drop_last: bool, start: tuple[int, int] | None = None):
        super().__init__(sampler, batch_size, drop_last)
        self.start = start

    def _begin(self) -> tuple[int, int]:
        """(epoch, batches to skip) of the pass that starts now."""
        if self.start is None:
            return getattr(self.sampler, "epoch", 0), 0
        (epoch, skip), self.start = self.start, None
        if skip >= len(self):  # the recorded epoch was complete: the next one starts
            epoch, skip = epoch + 1, 0
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)  # EpochShuffle or DistributedSampler: that epoch's order
        return epoch, skip

    def batches(self, epoch: int) -> list[list[int]]:
        order = list(self.sampler)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self):
        epoch, skip = self._begin()
        yield from self.batches(epoch)[skip:]


class LengthGroupedBatchSampler(ResumableBatches):
    """Batches of similar length: the indices of `sampler` in chunks of 50 batches, each chunk sorted by length and cut
    into batches, then the batch order shuffled with (seed, epoch). Every index of `sampler` appears once.

    It follows the `BatchSampler` API, so under DDP Lightning swaps `sampler` for a `DistributedSampler` (shuffled,
    this rank's share): each rank then groups its own share. The epoch is read from `sampler.epoch`, which both
    `EpochShuffle` and `DistributedSampler` get from Lightning's `set_epoch`. `start`: see `ResumableBatches`.
    """

    def __init__(
        self, sampler, batch_size: int, drop_last: bool, lengths: list[int], seed: int, start: tuple | None = None
    ):
        super().__init__(sampler, batch_size, drop_last, start)
        self.lengths, self.seed = lengths, seed

    def batches(self, epoch: int) -> list[list[int]]:
        order = list(self.sampler)
        size = self.batch_size * BUCKET_BATCHES
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start : start + size], key=lambda i: -self.lengths[i])
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()  # only the last chunk's last batch can be short
        random.Random(self.seed * 100_003 + epoch).shuffle(batches)
        return batches


def train_batches(ds, cfg, start: tuple[int, int] | None) -> ResumableBatches:
    """Seeded training batches of `ds` (grouped by length when `cfg.group_by_length`), starting at `start` (epoch,
    batches done) after a resume."""
    sampler = EpochShuffle(len(ds), cfg.seed)
    if cfg.group_by_length:
        return LengthGroupedBatchSampler(sampler, cfg.batch_size, False, ds.lengths, cfg.seed, start)
    return ResumableBatches(sampler, cfg.batch_size, False, start)


def split_fingerprint(ds) -> dict:
    """What identifies a split's content: its number of examples and a hash of its token ids (of every tokenization it
    holds: `enc`/`enc_s`, or one per view in `encs`) and labels."""
    h = hashlib.sha256()
    encs = ds.encs if hasattr(ds, "encs") else {"teacher": ds.enc, "student": ds.enc_s}
    for view in sorted(encs):
        enc = encs[view]
        for key in sorted(enc or {}):
            h.update(key.encode())
            h.update(enc[key].contiguous().numpy().tobytes())
    h.update(ds.labels.numpy().tobytes())
    return {"examples": len(ds), "sha256": h.hexdigest()[:16]}


class ClfDataModule(L.LightningDataModule):
    """Text-classification splits, tokenized once (cached) by the teacher tokenizer and, when it differs, the
    student's. After `setup()`: label_names, id2label, label2id, num_labels, splits, has_test, datasets.

    `data`: a `DataConfig`; a `datasets.DatasetDict` (or any mapping split -> `datasets.Dataset`) in memory; or a hub
    dataset name or local directory for `datasets.load_dataset`. `tokenizer` and `student_tokenizer`: tokenizer
    objects or names. `settings`: `DataConfig` fields to change (`batch_size=16`, `text_column="sentence"`, ...).
    """

    def __init__(self, data, tokenizer, student_tokenizer=None, **settings):
        super().__init__()
        self.dataset = None
        if isinstance(data, DataConfig):
            cfg = data
        elif isinstance(data, str):
            cfg = DataConfig(source="hf", name=data)
        elif isinstance(data, Mapping):
            cfg, self.dataset = DataConfig(source="hf"), data
        else:
            raise UserError(
                f"ClfDataModule: data must be a DataConfig, a datasets.DatasetDict or a dataset name, "
                f"not {type(data).__name__}"
            )
        unknown = [k for k in settings if k not in {f.name for f in dataclasses.fields(DataConfig)}]
        if unknown:
            choices = ", ".join(f.name for f in dataclasses.fields(DataConfig))
            raise UserError(f"ClfDataModule: unknown setting {unknown[0]!r} (choices: {choices})")
        self.cfg = dataclasses.replace(cfg, **settings) if settings else cfg
        tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        if isinstance(student_tokenizer, str):
            student_tokenizer = load_tokenizer(student_tokenizer)
        self.tokenizer = tokenizer
        self.tok_id = tokenizer_id(tokenizer)
        self.student_tokenizer, self.tok_id_s = None, None
        if student_tokenizer is not None and tokenizer_id(student_tokenizer) != self.tok_id:
            self.student_tokenizer, self.tok_id_s = student_tokenizer, tokenizer_id(student_tokenizer)
        for tok in (tokenizer, self.student_tokenizer):
            if tok is not None and tok.pad_token_id is None:
                raise UserError(f"tokenizer {tok.name_or_path}: has no pad token")
        self.datasets: dict[str, TokenizedSplit] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cfg = self.cfg
        sets = cfg.validation_sets()  # several named validation sets: the first is read with train and test
        raw = load_data(next(iter(sets.values())) if sets else cfg, self.dataset)
        splits = raw.splits
        if cfg.val_from_train is not None:
            if "validation" in splits:
                raise UserError(f"data.val_from_train: {splits['validation'].origin} already gives a validation split")
            if not 0 < cfg.val_from_train < 1:
                raise UserError(f"data.val_from_train: {cfg.val_from_train} is not a fraction in (0, 1)")
            keep, held = stratified_split(
                splits["train"].labels, (1 - cfg.val_from_train, cfg.val_from_train), cfg.seed
            )
            splits["train"], splits["validation"] = splits["train"].take(keep), splits["train"].take(held)
        elif "validation" not in splits:
            raise UserError(
                f"data.validation: {splits['train'].origin} comes without a validation split; "
                "give one or set data.val_from_train (e.g. 0.1)"
            )
        self.label_names = raw.label_names
        self.id2label = dict(enumerate(self.label_names))
        self.label2id = {name: i for i, name in self.id2label.items()}
        self.num_labels = len(self.label_names)
        self.raw: dict[str, Split] = {}  # the examples of each split as read (after limit_*), before tokenization
        self.transfer_rows = 0  # transfer-set rows appended to train (data.transfer)
        for name in SPLITS:
            if name in splits:
                self._add_split(name, splits[name])
        for name, set_cfg in list(sets.items())[1:]:
            split = load_data(dataclasses.replace(set_cfg, test=None, test_labels=None), self.dataset)
            self._add_split(f"validation/{name}", split.splits["validation"])
        if cfg.transfer:
            self._add_transfer(cfg.transfer)
        self.splits = [name for name in self.datasets if "/" not in name]
        self.has_test = "test" in self.datasets

    @property
    def validation_names(self) -> list[str]:
        """The names of several validation sets (`data.validation` as a mapping), in order; [] for one."""
        return list(self.cfg.validation) if isinstance(self.cfg.validation, dict) else []

    def _add_split(self, name: str, split: Split) -> None:
        """Tokenize a split (a seeded subset of `limit_train`/`limit_eval` examples) into `self.datasets[name]`."""
        cfg = self.cfg
        limit = cfg.limit_train if name == "train" else cfg.limit_eval
        if limit is not None and limit < len(split):
            split = split.take(sorted(random.Random(cfg.seed).sample(range(len(split)), limit)))
        enc = tokenize_cached(split.texts, split.pairs, self.tokenizer, self.tok_id, cfg.max_length, cfg.cache_dir)
        enc_s = None
        if self.student_tokenizer is not None:
            enc_s = tokenize_cached(
                split.texts, split.pairs, self.student_tokenizer, self.tok_id_s, cfg.max_length, cfg.cache_dir
            )
        self.datasets[name] = TokenizedSplit(enc, split.labels, enc_s)
        self.raw[name] = split

    def _add_transfer(self, path: str) -> None:
        """Append the transfer set's rows (not its `original` rows: those are the training set again) to train."""
        cfg = self.cfg
        rows = read_transfer(path, self.label_names, cfg.text_pair_column is not None)
        if not rows.texts:
            warnings.warn(f"data.transfer: {path} holds only original rows; nothing is added", stacklevel=2)
            return
        enc = tokenize_cached(rows.texts, rows.pairs, self.tokenizer, self.tok_id, cfg.max_length, cfg.cache_dir)
        enc_s = None
        if self.student_tokenizer is not None:
            enc_s = tokenize_cached(
                rows.texts, rows.pairs, self.student_tokenizer, self.tok_id_s, cfg.max_length, cfg.cache_dir
            )
        self.transfer_rows = len(rows.texts)
        self.datasets["train"] = self.datasets["train"].extended(enc, rows.labels, enc_s, rows.logits)

    def _loader(self, dataset: TokenizedSplit, **kw) -> DataLoader:
        pad_s = self.student_tokenizer.pad_token_id if self.student_tokenizer is not None else None
        workers = self.cfg.num_workers
        collate = Collator(self.tokenizer.pad_token_id, pad_s)
        return DataLoader(dataset, collate_fn=collate, num_workers=workers, persistent_workers=workers > 0, **kw)

    def train_dataloader(self) -> DataLoader:
        """Seeded, resumable batches: `train_start` (set from a checkpoint on resume) is where the first pass starts.

        The loader has its own generator, so creating its iterator leaves the global torch RNG (dropout) untouched.
        """
        ds, cfg = self.datasets["train"], self.cfg
        start, self.train_start = getattr(self, "train_start", None), None
        batches = train_batches(ds, cfg, start)
        return self._loader(ds, batch_sampler=batches, generator=torch.Generator().manual_seed(cfg.seed))

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation loader; with several validation sets, one loader per set, in `validation_names` order."""
        size = self.cfg.eval_batch_size or self.cfg.batch_size
        names = ["validation", *(f"validation/{n}" for n in self.validation_names[1:])]
        loaders = [self._loader(self.datasets[name], batch_size=size) for name in names]
        return loaders if len(loaders) > 1 else loaders[0]

    def test_dataloader(self) -> DataLoader | list:
        if not self.has_test:
            return []
        return self._loader(self.datasets["test"], batch_size=self.cfg.eval_batch_size or self.cfg.batch_size)
