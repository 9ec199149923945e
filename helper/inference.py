"""Batched inference of a classifier: one loop (`forward_batches`) for prediction, the report's accuracy pass and the
teacher's labelling of a transfer set; `iter_logits` feeds it length-sorted, padded batches of texts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch

from bert.errors import UserError
from bert.families import logits_of, max_positions, model_inputs
from data.padding import pad_batch

CHUNK_SIZE = 8192  # texts tokenized in one call and length-sorted together


def forward_batches(
    model, batches: Iterable[Mapping], *, device: torch.device, bf16: bool = False, key: str | None = None
) -> Iterator[tuple[Mapping, torch.Tensor]]:
    """(batch, its logits (B, C) float32 on `device`) for each batch, under `torch.inference_mode()`, with bf16
    autocast on CUDA if `bf16`. The model reads the inputs it takes from the batch, or from its sub-dict `key`."""
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=bf16 and device.type == "cuda")
    for batch in batches:
        inputs = model_inputs(batch.get(key, batch) if key else batch, model)
        with torch.inference_mode(), autocast:
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            logits = logits_of(model(**inputs), model).float()
        yield batch, logits


def tokenized_batches(
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    *,
    batch_size: int,
    max_length: int,
    longest_first: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """The texts (and `pairs`) tokenized in one call (truncated to `max_length`), sorted by token length (longest
    first: padding is small, OOM shows early; else in their order), cut into batches of `batch_size` padded to their
    longest (on the tokenizer's `padding_side`), each with `idx` (B,): its rows."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    enc = tokenizer(
        list(texts), list(pairs) if pairs is not None else None, truncation=True, max_length=max_length,
        return_attention_mask=False,
    )  # fmt: skip
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
    ids = enc["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True) if longest_first else range(len(ids))
    order = list(order)
    for b in range(0, len(order), batch_size):
        rows = order[b : b + batch_size]
        batch = pad_batch([{k: enc[k][i] for k in keys} for i in rows], pad_id, left)
        batch["idx"] = torch.tensor(rows)  # (B,)
        yield batch


def iter_logits(
    model,
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    *,
    batch_size: int,
    max_length: int,
    device: str | torch.device,
    bf16: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(row indices (B,), logits (B, C) float32 on `device`) per batch, longest texts first.

    The batches are `tokenized_batches` (longest first), run by `forward_batches`. `progress(n)` follows each batch
    of n rows. The model is moved to `device` and put in eval mode.
    """
    device = torch.device(device)
    model.to(device).eval()
    batches = tokenized_batches(tokenizer, texts, pairs, batch_size=batch_size, max_length=max_length)
    for batch, logits in forward_batches(model, batches, device=device, bf16=bf16):
        yield batch["idx"], logits
        if progress is not None:
            progress(len(logits))


def model_device(model) -> torch.device:
    """Where a model's parameters are; CPU for one without parameters (an ONNX Runtime session)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def pick_device(device: str = "auto") -> torch.device:
    """`auto`: CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here (use --device cpu or auto)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: not a device (auto, cpu, cuda)") from None


def load_model(name: str, device: str | torch.device = "cpu"):
    """(model in eval mode, fp32, on `device`; its tokenizer) from a directory or hub name; `UserError` if it fails."""
    from transformers import AutoModelForSequenceClassification

    from bert.loading import load_named, load_tokenizer

    model = load_named("model", AutoModelForSequenceClassification.from_pretrained, name, dtype=torch.float32)
    tokenizer = load_tokenizer(name)
    return model.to(device).eval(), tokenizer


def label_names(model, num_labels: int | None = None) -> list[str]:
    """`config.id2label` as a list (`LABEL_i` where a name is missing)."""
    n = num_labels if num_labels is not None else model.config.num_labels
    id2label = {int(k): v for k, v in (getattr(model.config, "id2label", None) or {}).items()}
    return [str(id2label.get(i, f"LABEL_{i}")) for i in range(n)]


def effective_max_length(model, tokenizer, max_length: int) -> int:
    """`max_length`, capped by the tokenizer's `model_max_length` and the model's position embeddings."""
    limits = [max_length]
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:  # "no limit" is a huge sentinel
        limits.append(tok_max)
    positions = max_positions(model.config)
    if positions is not None:
        limits.append(positions)
    return min(limits)


def iter_predict(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 512,
    device: str | torch.device | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per chunk of `texts`: (start index, label ids (n,), probabilities (n, C) float32 on CPU), in input order.

    `iter_logits` in fp32 with `max_length` capped by the model's limits (`effective_max_length`); the results go back
    to the chunk's input order. `progress(n)` follows each batch of n rows. The model is moved to `device` (default:
    where it is) and put in eval mode.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size}")
    if max_length < 1:
        raise UserError(f"max length must be a positive integer, got {max_length}")
    device = torch.device(device) if device is not None else model_device(model)
    max_length = effective_max_length(model, tokenizer, max_length)
    chunk_size = max(chunk_size, batch_size)
    for start in range(0, len(texts), chunk_size):
        chunk = texts[start : start + chunk_size]
        rows, probs = [], []
        for idx, logits in iter_logits(
            model, tokenizer, chunk, batch_size=batch_size, max_length=max_length, device=device, progress=progress
        ):
            rows.append(idx)
            probs.append(logits.softmax(-1))  # (B, C)
        sorted_probs = torch.cat(probs).cpu()  # (n, C), longest first
        chunk_probs = torch.empty_like(sorted_probs)
        chunk_probs[torch.cat(rows)] = sorted_probs
        yield start, chunk_probs.argmax(-1), chunk_probs


def predict(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 512,
    device: str | torch.device | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(label ids (N,), probabilities (N, C) float32) of `texts`, in input order; see `iter_predict`."""
    parts = list(iter_predict(model, tokenizer, texts, batch_size, max_length, device, **kwargs))
    if not parts:
        return torch.empty(0, dtype=torch.long), torch.empty(0, model.config.num_labels)
    return torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
