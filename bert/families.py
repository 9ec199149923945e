"""Where each supported encoder family keeps the modules the recorder hooks and the distiller copies."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

import bert.bilstm  # noqa: F401  (registers model_type "bilstm" with the Auto classes)
from bert.errors import UserError
from bert.features import FEATURES


@dataclass(frozen=True)
class Family:
    """Module paths of one family in the installed transformers. Paths are dotted `get_submodule` names."""

    name: str
    model_types: tuple[str, ...]  # `config.model_type` values
    layers_path: str | None = None  # base model -> nn.ModuleList of encoder layers; None: no attention layers
    embeddings_path: str | None = None  # base model -> embeddings module
    attention_path: str | None = None  # encoder layer -> self-attention module (owner of the q/k/v Linears)
    # self-attention module -> query, key, value nn.Linear; or one fused Linear whose output is [q; k; v]
    qkv: tuple[str, ...] = ()
    dropout_keys: tuple[str, ...] = ()  # config keys of the hidden and the attention-probability dropout
    score_bias_arg: str | None = None  # self-attention forward argument added to the scores before softmax
    sdpa: bool = True  # transformers has an sdpa attention path for it (else eager is used)
    # model -> the module whose input is the sentence representation (B, H); for encoders: [CLS] of the last layer
    pooled_path: str | None = None
    position_offset: bool = False  # position ids start after pad_token_id (RoBERTa-like): pad_token_id + 1 fewer
    ffn: tuple[str, ...] = ()  # encoder layer -> the feed-forward block's first and second nn.Linear
    ffn_size_key: str = "intermediate_size"  # config key of the feed-forward width

    @property
    def features(self) -> tuple[str, ...]:
        """What distillation can read from a model of this kind."""
        if self.layers_path is not None:
            return FEATURES
        return ("logits", "pooled") if self.pooled_path is not None else ("logits",)

    def attn_implementation(self, wanted: str) -> str | None:
        """`wanted` ("sdpa" or "eager"); eager where the family has no sdpa path; None for a model without attention."""
        if self.layers_path is None:
            return None
        return wanted if self.sdpa else "eager"

    def set_dropout(self, config, p: float) -> None:
        """Set hidden and attention dropout of a config of this family to `p`."""
        for key in self.dropout_keys:
            setattr(config, key, p)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        if self.layers_path is None:
            raise UserError(
                f"{type(model).__name__} has no attention layers (a {self.name}); it offers only "
                f"{', '.join(self.features)} to distillation"
            )
        layers = _submodule(model.base_model, self.layers_path, self, model)
        if not isinstance(layers, nn.ModuleList):
            raise UserError(f"{type(model).__name__}.{self.layers_path} is {type(layers).__name__}, not nn.ModuleList")
        return layers

    def embeddings(self, model: nn.Module) -> nn.Module:
        return _submodule(model.base_model, self.embeddings_path, self, model)

    def self_attention(self, model: nn.Module, layer: int) -> nn.Module:
        return _submodule(self.layers(model)[layer], self.attention_path, self, model)

    def projections(self, model: nn.Module, layer: int) -> tuple[nn.Linear, ...]:
        """The query, key and value Linears of one layer (one Linear when they are fused)."""
        attn = self.self_attention(model, layer)
        mods = tuple(_submodule(attn, name, self, model) for name in self.qkv)  # 3 Linears, or 1 fused
        for name, mod in zip(self.qkv, mods):
            if not isinstance(mod, nn.Linear):
                raise UserError(
                    f"{type(model).__name__} layer {layer}: {self.attention_path}.{name} is {type(mod).__name__}, "
                    "not nn.Linear; the installed transformers layout does not match bert/families.py"
                )
        return mods

    def cut(self, model: nn.Module, layers: list[int]) -> None:
        """Keep only encoder `layers` of `model` (in that order), in place; its config says the new depth."""
        kept = nn.ModuleList(copy.deepcopy(self.layers(model)[i]) for i in layers)  # a layer may be kept twice
        parent, _, attr = self.layers_path.rpartition(".")
        setattr(model.base_model.get_submodule(parent) if parent else model.base_model, attr, kept)
        model.config.num_hidden_layers = len(layers)  # DistilBERT's n_layers through its attribute_map
        for i, layer in enumerate(kept):  # per-layer indices (caches, masks) follow the new depth
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = i

    def ffn_size(self, model: nn.Module) -> int:
        """The feed-forward width (neurons per layer) of a model of this family."""
        return getattr(model.config, self.ffn_size_key)

    def narrow_ffn(self, model: nn.Module, size: int) -> None:
        """Keep `size` feed-forward neurons in every encoder layer of `model`, in place; its config says the new width.

        Each layer keeps its neurons with the largest importance, ‖w_in‖·‖w_out‖ (the norms of the neuron's row of the
        first Linear and column of the second), in their original order: DynaBERT's width cut (Hou et al.,
        "DynaBERT: Dynamic BERT with Adaptive Width and Depth", NeurIPS 2020, arXiv:2004.04037) with a magnitude
        score in place of its gradient-based one, so that no data is needed."""
        for layer in self.layers(model):
            first, second = (_submodule(layer, path, self, model) for path in self.ffn)
            score = first.weight.norm(dim=1) * second.weight.norm(dim=0)  # (I,)
            keep = score.topk(size).indices.sort().values  # (size,)
            first.weight = nn.Parameter(first.weight.detach()[keep].clone())  # (size, H)
            first.bias = nn.Parameter(first.bias.detach()[keep].clone())
            second.weight = nn.Parameter(second.weight.detach()[:, keep].clone())  # (H, size)
            first.out_features = second.in_features = size
        setattr(model.config, self.ffn_size_key, size)


_BERT_DROPOUT = ("hidden_dropout_prob", "attention_probs_dropout_prob")
_BERT_QKV = ("query", "key", "value")
_BERT_FFN = ("intermediate.dense", "output.dense")

# One entry per family: adding a family is one line here plus its row in update_transformers.py's check.
FAMILIES = (
    Family("BERT", ("bert",), "encoder.layer", "embeddings", "attention.self", _BERT_QKV, _BERT_DROPOUT, ffn=_BERT_FFN),
    Family(
        "RoBERTa",
        ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"),  # CamemBERT and XLM-R XL: RoBERTa's layout
        "encoder.layer",
        "embeddings",
        "attention.self",
        _BERT_QKV,
        _BERT_DROPOUT,
        position_offset=True,
        ffn=_BERT_FFN,
    ),
    Family(
        "ELECTRA",
        ("electra",),
        "encoder.layer",
        "embeddings",
        "attention.self",
        _BERT_QKV,
        _BERT_DROPOUT,
        ffn=_BERT_FFN,
    ),
    Family(
        "DistilBERT",
        ("distilbert",),
        "transformer.layer",
        "embeddings",
        "attention",
        ("q_lin", "k_lin", "v_lin"),
        ("dropout", "attention_dropout"),
        ffn=("ffn.lin1", "ffn.lin2"),
        ffn_size_key="hidden_dim",
    ),
    Family(
        "MPNet",
        ("mpnet",),
        "encoder.layer",
        "embeddings",
        "attention.attn",
        ("q", "k", "v"),
        _BERT_DROPOUT,
        "position_bias",
        sdpa=False,
        position_offset=True,
        ffn=_BERT_FFN,
    ),
)


# Models without attention layers: they offer logits, and the sentence representation where `pooled_path` names it.
MODULES = (Family("BiLSTM", ("bilstm",), dropout_keys=("dropout",), pooled_path="classifier"),)
ANY_MODULE = Family("module", ())  # any other nn.Module returning logits: logits only


def family_of(config) -> Family:
    """The kind of a model config (`config.model_type`): a transformer family, a known module, or `ANY_MODULE`."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES + MODULES:
        if model_type in family.model_types:
            return family
    return ANY_MODULE


def get_family(model: nn.Module) -> Family:
    """The kind of a bare encoder, a task wrapper around one (e.g. `BertForSequenceClassification`), or a module."""
    return family_of(getattr(model, "config", None))


def max_positions(config) -> int | None:
    """The longest input (in tokens) the position embeddings of a model config take; None: no limit known."""
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or n <= 0:
        return None
    return n - (config.pad_token_id or 0) - 1 if family_of(config).position_offset else n


def check_max_length(max_length: int, config, role: str, name: str) -> None:
    """One line if `max_length` is more than the model's position embeddings take."""
    limit = max_positions(config)
    if limit is not None and max_length > limit:
        raise UserError(
            f"data.max_length: {max_length} is more than the {role}'s max_position_embeddings ({limit}, {name}); "
            f"set data.max_length to at most {limit}"
        )


def check_features(model: nn.Module, wanted, role: str = "model") -> None:
    """One line naming what `model` cannot give of the features in `wanted`."""
    family = get_family(model)
    missing = [name for name in wanted if name in FEATURES and name not in family.features]
    if missing:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise UserError(
            f"{role} {type(model).__name__} (model_type {model_type!r}) offers only {', '.join(family.features)} to "
            f"distillation, not {', '.join(missing)}; layer features need a model of the families "
            f"{', '.join(f.name for f in FAMILIES)}"
        )


def logits_of(output, model: nn.Module) -> torch.Tensor:
    """The (B, C) logits of a model's output: its `.logits`, or the output itself when it is a tensor."""
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise UserError(
            f"{type(model).__name__} returned {type(output).__name__} without (batch, classes) logits; return a "
            "tensor of logits or an object with a `.logits` tensor"
        )
    return logits


def masked_logits(model: nn.Module, inputs: Mapping, chosen: torch.Tensor) -> torch.Tensor:
    """A masked LM's (N, V) logits at the `chosen` (B, T) positions only. A forward pre-hook on its output embeddings
    (the vocabulary projection, most of an MLM step's cost) keeps the chosen rows of their (B, T, H) input, so the
    V-wide projection runs on N rows, not B * T (DistilBERT-style masking picks ~15%)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:  # no separate projection to hook: every position, then the chosen ones
        return model(**inputs).logits[chosen]  # (N, V)
    handle = head.register_forward_pre_hook(lambda _m, args: (args[0][chosen], *args[1:]))  # (B, T, H) -> (N, H)
    try:
        logits = model(**inputs).logits  # (N, V)
    finally:
        handle.remove()
    if logits.shape[0] != int(chosen.sum()):
        raise RuntimeError(f"{type(model).__name__}: its masked-LM head reshapes the projection's output")
    return logits


def _submodule(root: nn.Module, path: str, family: Family, model: nn.Module) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise UserError(
            f"{type(model).__name__} has no module {path!r} under {type(root).__name__}; the installed transformers "
            f"layout does not match the {family.name} entry of bert/families.py"
        ) from None


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: Mapping, model: nn.Module | None = None) -> dict:
    """The tokenizer outputs in `batch` that a model takes (those `model.forward` names, when `model` is given)."""
    accepted = accepted_inputs(model) if model is not None else MODEL_INPUTS
    return {k: batch[k] for k in MODEL_INPUTS if k in batch and k in accepted}


def accepted_inputs(model: nn.Module) -> frozenset[str]:
    """Which of `MODEL_INPUTS` a model's forward names (a forward taking only **kwargs gets all of them)."""
    return _forward_args(type(model))


@functools.cache
def _forward_args(cls: type) -> frozenset[str]:
    params = inspect.signature(cls.forward).parameters
    if "input_ids" not in params and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return frozenset(MODEL_INPUTS)
    return frozenset(k for k in MODEL_INPUTS if k in params)
