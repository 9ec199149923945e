"""The transfer set (Tang et al. 2019, arXiv:1903.12136, §3.3): build the rows (the training set, d-lite augmentation,
LM samples, unlabelled text) and label all of them with one pass of the fine-tuned teacher; `helper.stages` writes them
to one Parquet file (`data/transfer.py` has the schema)."""

from __future__ import annotations

import sys
import time

import torch

from bert.errors import UserError
from data.data_module import ClfDataModule
from data.progress import Progress
from helper.config import TransferSetConfig
from helper.inference import iter_logits


def say(line: str) -> None:
    print(f"transfer_set: {line}", file=sys.stderr, flush=True)


def build_rows(cfg: TransferSetConfig, dm: ClfDataModule, tokenizer, unlabelled=None) -> tuple[dict, dict]:
    """The transfer set's rows (no logits yet) and timings {part: (count, seconds)}. `unlabelled`: (texts, pairs)."""
    t = cfg.transfer
    train = dm.raw["train"]
    with_pairs = train.pairs is not None
    rows: dict[str, list] = {"text": [], "text_pair": [], "label": [], "source": []}
    timings: dict[str, tuple[int, float]] = {}

    def add(texts, pairs, labels, sources):
        rows["text"] += list(texts)
        rows["text_pair"] += list(pairs) if pairs is not None else [None] * len(texts)
        rows["label"] += list(labels)
        rows["source"] += list(sources) if not isinstance(sources, str) else [sources] * len(texts)

    if t.original:
        add(train.texts, train.pairs, train.labels, "original")
    if t.augment is not None:
        from data.augment import augment

        mask_token = tokenizer.mask_token
        if mask_token is None and t.augment.p_mask > 0:
            raise UserError(f"transfer.augment.p_mask: the tokenizer of {cfg.teacher.name} has no mask token; set 0")
        start = time.perf_counter()
        out = augment(train.texts, train.pairs, t.augment, mask_token or "[MASK]")
        seconds = time.perf_counter() - start
        add([a.text for a in out], [a.pair for a in out] if with_pairs else None, [-1] * len(out), [a.op for a in out])
        timings["augment"] = (len(out), seconds)
        rate = len(out) / max(seconds, 1e-9)
        say(f"augment: {len(out)} sentences from {len(train)} in {seconds:.1f} s ({rate:.0f}/s)")
    if t.generate is not None:
        if with_pairs:
            raise UserError("transfer.generate: the LM writes single sentences; the data has pairs (set it to null)")
        from data.generate import generate

        start = time.perf_counter()
        out = generate(train.texts, t.generate)
        seconds = time.perf_counter() - start
        add(out, None, [-1] * len(out), "generated")
        timings["generate"] = (len(out), seconds)
        say(f"generate: {len(out)} sentences in {seconds:.1f} s ({len(out) / max(seconds, 1e-9):.1f}/s)")
    if unlabelled is not None:
        add(*unlabelled, [-1] * len(unlabelled[0]), "unlabelled")
    if not rows["text"]:
        raise UserError("transfer: the transfer set is empty (augmentation and generation produced nothing)")
    return rows, timings


def label(teacher, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, batch_size: int):
    """The teacher's logits (N, C) float32 for every row, and the seconds it took: one pass of `iter_logits`
    (length-sorted batches, inference mode, bf16 autocast on CUDA, fp32 on CPU), with progress lines."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    out = torch.empty(len(texts), teacher.config.num_labels, dtype=torch.float32)
    progress = Progress("transfer_set: label", len(texts), "rows")
    for rows, logits in iter_logits(
        teacher, tokenizer, texts, pairs, batch_size=batch_size, max_length=max_length, device=device, bf16=True,
        progress=progress.advance,
    ):  # fmt: skip
        out[rows] = logits.cpu()
    return out, time.perf_counter() - start
