"""BiLSTM student of Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks"
(arXiv:1903.12136), as a `transformers` model that `save_pretrained` / `Auto*.from_pretrained` handle.

Word embeddings -> one bidirectional LSTM over the real (unpadded) tokens -> the last forward and the last backward
state, concatenated -> ReLU MLP classifier. The paper initialises the
embeddings from 300-d word2vec; here they can come from a word2vec text file (`load_word2vec_text`) or, offline, from
the teacher's own input word embeddings (`from_teacher_embeddings`, `bilstm_student`).

Importing this module registers `model_type` "bilstm" with `AutoConfig` and `AutoModelForSequenceClassification`.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import SequenceClassifierOutput

from bert.errors import UserError

_POSITIVE_INTS = ("vocab_size", "embedding_dim", "hidden_size", "num_layers", "mlp_hidden")


def _check_fields(values: Mapping[str, object]) -> None:
    """One-line UserErrors for the size fields among `values` (constructor keywords or a loaded config.json)."""
    for name in _POSITIVE_INTS:
        if name in values:
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"BiLSTMConfig: {name} must be a positive integer, got {value!r}")
    if "dropout" in values:
        value = values["dropout"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise UserError(f"BiLSTMConfig: dropout must be a number in [0, 1), got {value!r}")
    if "initializer_range" in values:
        value = values["initializer_range"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise UserError(f"BiLSTMConfig: initializer_range must be a positive number, got {value!r}")


def _validated_init(cls):
    """Check the sizes before the strict dataclass `__init__` runs, so bad values give one-line UserErrors instead of
    huggingface_hub's multi-line validation errors."""
    strict_init = cls.__init__

    @functools.wraps(strict_init)
    def __init__(self, **kwargs):
        _check_fields(kwargs)
        defaults = cls.__dataclass_fields__
        pad = kwargs.get("pad_token_id", defaults["pad_token_id"].default)
        vocab = kwargs.get("vocab_size", defaults["vocab_size"].default)
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < vocab):
            raise UserError(f"BiLSTMConfig: pad_token_id must be None or in [0, {vocab}) (vocab_size), got {pad!r}")
        strict_init(self, **kwargs)

    cls.__init__ = __init__
    return cls


@_validated_init
@strict
class BiLSTMConfig(PretrainedConfig):
    """Sizes of the BiLSTM student (Tang et al. 2019, arXiv:1903.12136).

    vocab_size: embedding rows (the tokenizer's vocabulary); embedding_dim: word vector width (300 for word2vec);
    hidden_size: LSTM units per direction; num_layers: stacked BiLSTM layers (the paper uses 1); mlp_hidden: width of
    the ReLU layer of the classifier; dropout: in the classifier (and between LSTM layers when num_layers > 1);
    pad_token_id: the embedding's padding row. num_labels / id2label / label2id come from `PretrainedConfig`.
    """

    model_type = "bilstm"

    vocab_size: int = 30522
    embedding_dim: int = 300
    hidden_size: int = 300
    num_layers: int = 1
    mlp_hidden: int = 400
    dropout: float | int = 0.1
    initializer_range: float = 0.02
    pad_token_id: int | None = 0

    @property
    def pooled_size(self) -> int:
        """Width of the sentence representation the classifier reads: both directions' final states."""
        return 2 * self.hidden_size


class BiLSTMForSequenceClassification(PreTrainedModel):
    """BiLSTM sentence classifier of Tang et al. 2019 (arXiv:1903.12136; single-sentence model).

    `classifier` receives the sentence representation (B, 2*hidden_size): the concatenated final states of the two
    directions. A forward pre-hook on `classifier` reads these "pooled" features.
    """

    config_class = BiLSTMConfig
    base_model_prefix = "bilstm"
    main_input_name = "input_ids"
    _no_split_modules: list[str] = []

    def __init__(self, config: BiLSTMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.embeddings = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.pad_token_id)
        self.lstm = nn.LSTM(
            config.embedding_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
            bidirectional=True,
        )
        self.classifier = nn.Sequential(
            nn.Linear(2 * config.hidden_size, config.mlp_hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.mlp_hidden, config.num_labels),
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def _init_weights(self, module: nn.Module) -> None:
        """Embeddings and Linears: N(0, initializer_range), zero biases and padding row (`PreTrainedModel`). LSTM:
        Xavier-uniform input weights, orthogonal recurrent weights, zero biases except a forget-gate bias of 1
        (Jozefowicz et al. 2015, "An Empirical Exploration of Recurrent Network Architectures")."""
        if not isinstance(module, nn.LSTM):
            super()._init_weights(module)
            return
        hidden = module.hidden_size
        for name, param in module.named_parameters():
            if name.startswith("weight_ih"):
                init.xavier_uniform_(param)
            elif name.startswith("weight_hh"):
                init.orthogonal_(param)
            elif name.startswith("bias"):
                init.zeros_(param)
                # gates are stacked (input, forget, cell, output); the slice loses the flag, so check it here
                if name.startswith("bias_ih") and not getattr(param, "_is_hf_initialized", False):
                    with torch.no_grad():
                        param[hidden : 2 * hidden].fill_(1.0)

    def sentence_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The classifier's input (B, 2*hidden_size): final forward state, then final backward state.

        Only tokens with attention_mask 1 are read, in order, wherever the padding is (left, right or both), so the
        result of a sentence does not depend on the batch it is padded into. A row with no token reads one padding
        token. Each direction runs on its own, the backward one on every row reversed within its length, so both read
        the real tokens first and the padding after them: the same states as a packed sequence, and a graph that
        exports to ONNX (`pack_padded_sequence` does not).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)  # (B, T)
        keep = attention_mask.bool()  # (B, T)
        steps = torch.arange(keep.shape[1], device=keep.device)  # (T,)
        order = ((~keep).long() * keep.shape[1] + steps).argsort(dim=1)  # (B, T): real tokens first, in order
        lengths = keep.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
        reverse = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (B, T): each row reversed in its length
        hidden = self.embeddings(input_ids.gather(1, order))  # (B, T, E), right-padded
        for layer in range(self.config.num_layers):
            if layer:
                hidden = nn.functional.dropout(hidden, self.lstm.dropout, self.training)
            out_f = self._direction(hidden, layer, "")  # (B, T, H)
            out_b = self._direction(_gather_steps(hidden, reverse), layer, "_reverse")  # (B, T, H), reversed order
            hidden = torch.cat([out_f, _gather_steps(out_b, reverse)], dim=-1)  # (B, T, 2H), token order
        last_f = _gather_steps(out_f, lengths - 1).squeeze(1)  # (B, H): after the last real token
        return torch.cat([last_f, hidden[:, 0, self.config.hidden_size :]], dim=-1)  # (B, 2H): backward ends at 0

    def _direction(self, hidden: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
        """One direction of one layer of `self.lstm` (its own weights) over `hidden` (B, T, in), from zero states."""
        lstm = self.lstm
        weights = [
            getattr(lstm, f"{kind}_l{layer}{suffix}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        zeros = hidden.new_zeros(1, hidden.shape[0], lstm.hidden_size)  # (1, B, H)
        out, _, _ = torch.lstm(hidden, (zeros, zeros), weights, True, 1, 0.0, self.training, False, True)
        return out  # (B, T, H)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        """Logits (B, num_labels), and the loss of `PreTrainedModel.loss_function` (cross-entropy for integer labels,
        MSE for num_labels 1) when `labels` is given. `token_type_ids` and other keywords are accepted and ignored."""
        logits = self.classifier(self.sentence_features(input_ids, attention_mask))  # (B, C)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _gather_steps(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, T, H) at time steps index (B, T') per row: (B, T', H)."""
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


AutoConfig.register(BiLSTMConfig.model_type, BiLSTMConfig, exist_ok=True)
AutoModelForSequenceClassification.register(BiLSTMConfig, BiLSTMForSequenceClassification, exist_ok=True)


def _label_kwargs(label_names: Sequence[str] | None, teacher_config) -> dict:
    if label_names is None:
        names = [teacher_config.id2label[i] for i in range(teacher_config.num_labels)]
    else:
        names = list(label_names)
    if not names:
        raise UserError("bilstm_student: label_names is empty; give at least one label name")
    return dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})


def from_teacher_embeddings(model: BiLSTMForSequenceClassification, teacher: nn.Module) -> None:
    """Copy the teacher's input word embeddings into `model` in place (an offline stand-in for the word2vec
    initialisation of Tang et al. 2019, arXiv:1903.12136)."""
    source = teacher.get_input_embeddings().weight  # (V, D)
    target = model.get_input_embeddings().weight  # (V', E)
    if source.shape[1] != target.shape[1]:
        raise UserError(
            f"teacher word embeddings are {source.shape[1]} wide but the student's embedding_dim is "
            f"{target.shape[1]}; set embedding_dim={source.shape[1]} or leave it unset in bilstm_student"
        )
    if source.shape[0] != target.shape[0]:
        raise UserError(
            f"teacher has {source.shape[0]} word embeddings but the student's vocab_size is {target.shape[0]}; "
            "they must match"
        )
    with torch.no_grad():
        target.copy_(source.to(dtype=target.dtype, device=target.device))


_BUILDER_SIZES = ("embedding_dim", "hidden_size", "num_layers", "mlp_hidden", "dropout", "initializer_range")


def bilstm_student(
    teacher: PreTrainedModel,
    tokenizer,
    label_names: Sequence[str] | None = None,
    *,
    teacher_embeddings: bool = True,
    **sizes,
) -> BiLSTMForSequenceClassification:
    """A BiLSTM student (Tang et al. 2019, arXiv:1903.12136) for `teacher` and its `tokenizer`.

    vocab_size is the teacher's number of word embeddings, embedding_dim defaults to their width, and with
    `teacher_embeddings` (default) they are copied in. Labels default to the teacher's. `sizes`: any other
    `BiLSTMConfig` field (hidden_size, num_layers, mlp_hidden, dropout, ...).
    """
    rows, width = teacher.get_input_embeddings().weight.shape
    if len(tokenizer) > rows:
        raise UserError(f"tokenizer has {len(tokenizer)} tokens but the teacher has only {rows} word embeddings")
    unknown = sorted(set(sizes) - set(_BUILDER_SIZES))
    if unknown:
        raise UserError(f"bilstm_student: unknown size {unknown[0]!r} (choices: {', '.join(_BUILDER_SIZES)})")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else teacher.config.pad_token_id
    config = BiLSTMConfig(
        vocab_size=rows,
        **{"embedding_dim": width, "pad_token_id": pad, **sizes},
        **_label_kwargs(label_names, teacher.config),
    )
    model = BiLSTMForSequenceClassification(config)
    if teacher_embeddings:
        from_teacher_embeddings(model, teacher)
    return model


def load_word2vec_text(
    path: str | os.PathLike,
    tokenizer,
    dim: int,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Word vectors for `tokenizer`'s vocabulary from a word2vec text file (Mikolov et al. 2013; Tang et al. 2019,
    arXiv:1903.12136, initialise their BiLSTM from 300-d word2vec).

    Format: an optional header line `count dim`, then one `word v1 ... vd` line per word. The row of each vocabulary
    token found in the file (exact match, first occurrence) is set; the other rows keep their values: `weight`
    (vocab, dim) when given, filled in place, else a new N(0, 0.02) tensor. Returns (weight, number of tokens found).
    Every line is checked for its number of values; the values are parsed only for vocabulary words.
    """
    vocab = tokenizer.get_vocab()
    if weight is None:
        weight = torch.empty(len(tokenizer), dim).normal_(0.0, 0.02)  # (V, D)
    if weight.shape[0] != len(tokenizer):
        raise UserError(f"tokenizer has {len(tokenizer)} tokens but the embedding has {weight.shape[0]} rows")
    if weight.shape[1] != dim:
        raise UserError(f"embedding is {weight.shape[1]} wide but embedding_dim is {dim}")
    found: set[int] = set()
    seen_vector = False
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                fields = line.split()
                if not fields:
                    continue
                if number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                    if int(fields[1]) != dim:
                        raise UserError(f"{path}: header says {fields[1]} dimensions but embedding_dim is {dim}")
                    continue
                if len(fields) - 1 != dim:
                    raise UserError(f"{path} line {number}: expected {dim} values, got {len(fields) - 1}")
                seen_vector = True
                row = vocab.get(fields[0])
                if row is None or row in found:
                    continue
                try:
                    values = [float(v) for v in fields[1:]]
                except ValueError:
                    bad = next(v for v in fields[1:] if not _is_float(v))
                    raise UserError(f"{path} line {number}: value {bad!r} is not a number") from None
                if not all(math.isfinite(v) for v in values):
                    raise UserError(f"{path} line {number}: values must be finite numbers (found inf or nan)")
                with torch.no_grad():
                    weight[row] = torch.tensor(values, dtype=weight.dtype)
                found.add(row)
    except OSError as err:
        raise UserError(f"cannot read word vectors {path}: {err.strerror or type(err).__name__}") from None
    if not seen_vector:
        raise UserError(f"{path}: no word vectors in the file")
    return weight, len(found)


def init_from_word2vec(model: BiLSTMForSequenceClassification, path: str | os.PathLike, tokenizer) -> int:
    """Fill `model`'s embeddings in place from a word2vec text file (see `load_word2vec_text`); rows of tokens not
    in the file keep their random initialisation. Returns the number of tokens found."""
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        _, found = load_word2vec_text(path, tokenizer, model.config.embedding_dim, weight=weight)
    return found


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
