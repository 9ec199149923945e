"""The transfer set (Tang et al. 2019, arXiv:1903.12136, §3.3): build the rows (the training set, d-lite augmentation,
LM samples, unlabelled text) and label all of them with one pass of the fine-tuned teacher; `helper.stages` writes them
to one Parquet file (`data/transfer.py` has the schema)."""

from __future__ import annotations

import sys
import time

import torch

from bert.errors import UserError
from bert.families import model_inputs
from data.datamodule import ClfDataModule
from data.sources import read_text, split_lines
from helper.config import TransferSetConfig

PROGRESS_EVERY_S = 5.0


def say(line: str) -> None:
    print(f"transfer_set: {line}", file=sys.stderr, flush=True)


def read_unlabelled(path: str, encoding: str, with_pairs: bool) -> tuple[list[str], list[str] | None]:
    """One example a line (`text<TAB>pair` for pair data); blank lines skipped."""
    texts, pairs = [], [] if with_pairs else None
    for n, line in enumerate(split_lines(read_text(path, encoding)), 1):
        if not line.strip():
            continue
        if with_pairs:
            text, tab, pair = line.partition("\t")
            if not tab or not text.strip() or not pair.strip():
                raise UserError(f"transfer.unlabelled: {path} line {n}: expected `text<TAB>pair` (pair data)")
            texts.append(text.strip())
            pairs.append(pair.strip())
        else:
            texts.append(line.strip())
    if not texts:
        raise UserError(f"transfer.unlabelled: {path}: no examples (the file is empty)")
    return texts, pairs


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
    """The teacher's logits (N, C) float32 for every row: one pass, length-sorted batches, inference mode, bf16
    autocast on CUDA (fp32 on CPU). Progress lines every PROGRESS_EVERY_S seconds."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(device).eval()
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, return_attention_mask=False)
    ids = enc["input_ids"]
    tt = enc.get("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: padding is small, OOM shows early
    out = torch.empty(len(ids), teacher.config.num_labels, dtype=torch.float32)
    pad = tokenizer.pad_token_id
    start = last = time.perf_counter()
    done = 0
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
        for b in range(0, len(order), batch_size):
            chunk = order[b : b + batch_size]
            width = len(ids[chunk[0]])
            batch = {
                "input_ids": torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in chunk]),
                "attention_mask": torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in chunk]),
            }
            if tt is not None:
                batch["token_type_ids"] = torch.tensor([tt[i] + [0] * (width - len(tt[i])) for i in chunk])
            inputs = {k: v.to(device, non_blocking=True) for k, v in model_inputs(batch, teacher).items()}
            out[torch.tensor(chunk)] = teacher(**inputs).logits.float().cpu()
            done += len(chunk)
            now = time.perf_counter()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                say(f"label {done}/{len(ids)} rows, {done / (now - start):.0f} rows/s")
    return out, time.perf_counter() - start
