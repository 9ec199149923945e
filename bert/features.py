"""The fixed structure a recorded forward pass hands back, shared by `bert/` (producer) and the adaptors (consumer)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Per-layer features, keyed by 0-based encoder layer index.
LAYER_FEATURES = ("attentions", "queries", "keys", "values", "hidden_states")
# Whole-model features.
MODEL_FEATURES = ("embeddings", "pooled", "logits")
FEATURES = LAYER_FEATURES + MODEL_FEATURES

# How a model makes its sentence embedding (`pooled`) of its last layer: the [CLS] vector, the mean over the real
# tokens (sentence-transformers' mean pooling, all-MiniLM-L6-v2's), or its pooler's output (dense + tanh on [CLS]).
POOLINGS = ("cls", "mean", "pooler")

# Axes of one example's feature tensor (batch axis removed) that run over its tokens: what padding changes.
TOKEN_AXES = {
    "attentions": (1, 2),  # (h, n, n)
    "queries": (1,),  # (h, n, d)
    "keys": (1,),
    "values": (1,),
    "hidden_states": (0,),  # (n, H)
    "embeddings": (0,),
    "pooled": (),  # (H,)
    "logits": (),  # (C,)
}


def storage_dtype(name: str) -> torch.dtype:
    """How a stored feature is kept: logits and sentence embeddings float32; attention probabilities (in [0, 1])
    float16; other token features bfloat16 (cannot overflow)."""
    return torch.float32 if name in ("logits", "pooled") else torch.float16 if name == "attentions" else torch.bfloat16


# What to record: feature name -> layer indices. For "embeddings" and "logits" the presence of the key is what counts.
FeatureRequest = dict[str, frozenset[int]]


@dataclass
class Features:
    """Tensors of one forward pass. Layer dicts hold only the layers that were asked for.

    attentions:    layer -> (B, h, T, T) softmax probabilities before dropout, padding keys masked
    queries/keys/values: layer -> (B, h, T, d)
    hidden_states: layer -> (B, T, H) output of that encoder layer
    embeddings:    (B, T, H) embedding output (input of layer 0)
    pooled:        (B, H) sentence representation: the model's pooling of its last layer (default [CLS]), or a
                   module's classifier input
    logits:        (B, C)
    attention_mask: (B, T) 1 for real tokens, 0 for padding
    """

    attention_mask: torch.Tensor
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)
    embeddings: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def entries(self) -> dict[tuple[str, int | None], torch.Tensor]:
        """Every recorded tensor keyed by (feature, layer); layer is None for embeddings and logits."""
        out = {(name, i): x for name in LAYER_FEATURES for i, x in getattr(self, name).items()}
        out.update({(name, None): getattr(self, name) for name in MODEL_FEATURES if getattr(self, name) is not None})
        return out

    def put(self, name: str, layer: int | None, x: torch.Tensor) -> None:
        """The inverse of `entries`: store `x` as feature `name` of `layer` (None for embeddings and logits)."""
        if layer is None:
            setattr(self, name, x)
        else:
            getattr(self, name)[layer] = x


def merge_requests(*requests: FeatureRequest) -> FeatureRequest:
    """Union of several requests (one per adaptor)."""
    out: dict[str, set[int]] = {}
    for req in requests:
        for name, layers in req.items():
            if name not in FEATURES:
                raise ValueError(f"unknown feature {name!r} (choices: {', '.join(FEATURES)})")
            out.setdefault(name, set()).update(layers)
    return {k: frozenset(v) for k, v in out.items()}


@dataclass(frozen=True)
class ModelDims:
    """The sizes adaptors need to validate layer maps and build projections."""

    num_layers: int
    hidden_size: int
    num_heads: int

    @classmethod
    def of(cls, config) -> ModelDims:
        """From any BERT-family `PretrainedConfig` (DistilBERT's `n_layers`/`dim` are reached via attribute_map); a
        model without attention layers has 0 layers and heads, and the width of its sentence representation."""
        if config is None:
            return cls(0, 0, 0)
        width = getattr(config, "pooled_size", None) or getattr(config, "hidden_size", 0)
        return cls(getattr(config, "num_hidden_layers", 0), width, getattr(config, "num_attention_heads", 0))
