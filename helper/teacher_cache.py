"""`TeacherCache`: what the teacher gives depends only on the example, so it is kept per training example."""

from __future__ import annotations

import warnings

import torch

from bert.families import model_inputs
from bert.features import TOKEN_AXES, Features, storage_dtype


class TeacherCache:
    """Teacher features per training example, keyed by the batch's `idx` (never its position), in CPU memory.

    Stored without padding (the collator pads on the right, so an example's n real tokens come first), in
    `storage_dtype`. Rebuilt for any padding length: positions past an example's tokens are 0, like the teacher's
    attention to padding keys; padded query rows and padded tokens are 0 too (every adaptor ignores them). Features of
    a live teacher pass go through the same rounding, so a hit and a miss give the same values. Once `max_mb` of
    tensors is held nothing more is added: the examples left out keep running through the teacher.
    """

    def __init__(self, max_mb: float):
        self.max_bytes = int(max_mb * 2**20)
        self.rows: dict[int, dict[tuple[str, int | None], torch.Tensor]] = {}
        self.nbytes = 0
        self.full = False
        self.hits = self.misses = 0  # examples, since the start

    @property
    def hit_rate(self) -> float:
        return self.hits / max(1, self.hits + self.misses)

    def features(self, batch: dict, run_teacher, dtype: torch.dtype) -> Features:
        """Features of `batch` as the teacher gives them; `run_teacher(**inputs)` runs only for uncached examples.

        Token features come back in `dtype`, logits in float32.
        """
        mask = batch["attention_mask"]
        keys = batch["idx"].tolist()
        missing = [b for b, i in enumerate(keys) if i not in self.rows]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        fresh = {}
        if missing:
            sub = torch.tensor(missing, device=mask.device)
            n = int(mask[sub].sum(1).max())  # the uncached examples' own padding length
            feats = run_teacher(**{k: v[sub, :n] for k, v in model_inputs(batch).items()})
            fresh = dict(zip(missing, self._split(feats)))
            for b, row in fresh.items():
                self._add(keys[b], row)
        return self._assemble([fresh[b] if b in fresh else self.rows[i] for b, i in enumerate(keys)], mask, dtype)

    @staticmethod
    def _split(feats: Features) -> list[dict]:
        """One dict per example of its unpadded tensors, copied to the CPU in `storage_dtype`."""
        lengths = feats.attention_mask.sum(1).tolist()
        rows = [{} for _ in lengths]
        for (name, layer), x in feats.entries().items():
            x = x.to("cpu", storage_dtype(name))
            axes = TOKEN_AXES[name]
            for row, x_b, n in zip(rows, x, lengths):
                cut = tuple(slice(n) if a in axes else slice(None) for a in range(x_b.dim()))
                row[name, layer] = x_b[cut].clone()  # its own storage, not a view of the batch
        return rows

    def _add(self, key: int, row: dict) -> None:
        size = sum(t.nbytes for t in row.values())
        if not self.full and self.nbytes + size > self.max_bytes:
            self.full = True
            warnings.warn(
                f"teacher cache full ({self.nbytes / 2**20:.0f} MB, {len(self.rows)} examples; distill.cache_max_mb "
                "sets the limit): the teacher runs for the other examples",
                stacklevel=1,
            )
        if not self.full:
            self.rows[key] = row
            self.nbytes += size

    @staticmethod
    def _assemble(rows: list[dict], mask: torch.Tensor, dtype: torch.dtype) -> Features:
        """The rows padded to the batch's length T, on the mask's device.

        One scatter per feature, not one copy per row: the rows' tensors are concatenated flat and written where a
        (B, ...) mask of real tokens is true; a row-major mask visits each row's (..., n, n) block in the order of its
        flattening. For CUDA the padded batch is built in pinned memory and copied without blocking.
        """
        feats = Features(attention_mask=mask)
        pin = mask.device.type == "cuda"
        steps = torch.arange(mask.shape[1])  # (T,)
        for (name, layer), first in rows[0].items():
            parts = [row[name, layer] for row in rows]
            axes = TOKEN_AXES[name]
            if not axes:  # logits: (C,) per row
                out = torch.stack(parts)  # (B, C)
            else:
                shape = [mask.shape[1] if a in axes else s for a, s in enumerate(first.shape)]
                lengths = torch.tensor([x.shape[axes[0]] for x in parts])  # (B,)
                real = steps < lengths[:, None]  # (B, T)
                where = torch.ones((), dtype=torch.bool)
                for a in axes:  # (B, ...) real tokens on every token axis, e.g. (B, 1, T, T)
                    view = [len(parts)] + [1] * len(shape)
                    view[a + 1] = mask.shape[1]
                    where = where & real.view(view)
                out = first.new_zeros(len(parts), *shape, pin_memory=pin)  # (B, ...) e.g. (B, h, T, T)
                out.masked_scatter_(where, torch.cat([x.reshape(-1) for x in parts]))
            out = out.to(mask.device, non_blocking=pin)
            feats.put(name, layer, out.to(torch.float32 if name == "logits" else dtype))
        return feats


def with_stored_logits(batch: dict, teacher_features) -> Features:
    """Logits-only teacher features of `batch` when some rows carry the teacher's logits already (`teacher_logits`
    (B, C), NaN rows where not: transfer-set rows from `data.transfer`). `teacher_features(sub_batch)` (the teacher,
    through the cache when it is on) runs only for the other rows, on their own padding length; logits in float32."""
    stored = batch["teacher_logits"]  # (B, C)
    have = ~stored.isnan().any(1)
    if not bool(have.any()):
        return teacher_features(batch)
    mask = batch["attention_mask"]
    logits = stored.float().clone()
    rest = (~have).nonzero().squeeze(1)
    if len(rest):
        n = int(mask[rest].sum(1).max())
        sub = {k: v[rest, :n] for k, v in model_inputs(batch).items()}
        sub.update({k: batch[k][rest] for k in ("idx", "labels") if k in batch})
        logits[rest] = teacher_features(sub).logits.float()
    return Features(attention_mask=mask, logits=logits)
