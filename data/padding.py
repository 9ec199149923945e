"""`pad_batch`: examples of token ids padded into one batch of tensors with an attention mask."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence


# Not `tokenizer.pad` / `DataCollatorWithPadding`: they need the tokenizer in every DataLoader worker and convert the
# cached tensors back to lists per example; `pad_sequence` pads them as they are.
def pad_batch(
    examples: Sequence[Mapping[str, Sequence[int] | torch.Tensor]], pad_id: int, left: bool = False
) -> dict[str, torch.Tensor]:
    """`input_ids` (padded with `pad_id`), `attention_mask` and, where the examples have them, `token_type_ids`
    (padded with 0), each (B, T) int64, padded to the longest example: on the right, or on the `left`."""
    side = "left" if left else "right"
    ids = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
    out = {
        "input_ids": pad_sequence(ids, batch_first=True, padding_value=pad_id, padding_side=side),  # (B, T)
        "attention_mask": pad_sequence([torch.ones_like(x) for x in ids], batch_first=True, padding_side=side),
    }
    if "token_type_ids" in examples[0]:
        tt = [torch.as_tensor(e["token_type_ids"], dtype=torch.long) for e in examples]
        out["token_type_ids"] = pad_sequence(tt, batch_first=True, padding_side=side)  # (B, T)
    return out
