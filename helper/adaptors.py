"""Distillation losses ("adaptors"): a registry, `build_adaptors` for YAML specs, and the built-in adaptors.

An adaptor declares the features it needs (`request()`), reads them from the teacher's and the student's `Features` and
returns its UNWEIGHTED scalar loss; the distiller multiplies by `adaptor.weight` and logs under `adaptor.key`.

Conventions shared by every adaptor:
- Teacher features are detached, so no gradient ever reaches the teacher.
- Token-level losses ignore padding (`attention_mask == 0`) as query and as key; averages are taken over the valid
  positions of the whole batch and the loss is 0 (with zero gradient) when there is none.
- Layer losses are averaged over the mapped layer pairs (`layer_map`).
- Logs of probabilities are taken of `p.clamp_min(finfo.tiny)`: a zero probability contributes 0·log 0 = 0 in value
  and in gradient, and no probability above ~1e-38 is changed.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bert.errors import UserError
from bert.features import FeatureRequest, Features, ModelDims

LAYER_MAPS = ("last", "uniform", "skip")


class Adaptor(nn.Module, metaclass=abc.ABCMeta):
    """A distillation loss between teacher and student features.

    stage: "inter" (intermediate layers) or "pred" (prediction layer), so two-step distillers pick theirs.
    sentence_level: uses only logits or [CLS] vectors, so teacher and student may use different tokenizers.
    """

    stage: ClassVar[Literal["inter", "pred"]]
    sentence_level: ClassVar[bool] = False

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, *, weight: float = 1.0, key: str | None = None) -> None:
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise UserError(f"weight must be a number >= 0, got {weight!r}")
        if key is not None and (not isinstance(key, str) or not key):
            raise UserError(f"key must be a non-empty string, got {key!r}")
        self.weight = float(weight)
        self.key = key or type(self).__name__

    @abc.abstractmethod
    def request(self) -> tuple[FeatureRequest, FeatureRequest]:
        """(teacher, student) features this adaptor reads."""

    @abc.abstractmethod
    def forward(self, feats_t: Features, feats_s: Features, labels: Tensor | None = None) -> Tensor:
        """The unweighted scalar loss."""

    def valid_mask(self, feats_t: Features, feats_s: Features) -> Tensor:
        """(B, T) bool: positions that are real tokens in both models (token-level adaptors share the tokenizer)."""
        mask_t, mask_s = feats_t.attention_mask, feats_s.attention_mask
        if mask_t.shape != mask_s.shape:
            raise UserError(
                f"{self.key}: token-level adaptor needs teacher and student to share the tokenizer "
                f"(attention masks {tuple(mask_t.shape)} vs {tuple(mask_s.shape)}); use sentence-level adaptors"
            )
        return mask_t.bool() & mask_s.bool()


def resolve_layer_map(spec: Any, dims_t: ModelDims, dims_s: ModelDims) -> tuple[tuple[int, int], ...]:
    """(teacher layer, student layer) pairs, 0-based, validated against both layer counts.

    last:    [(T-1, S-1)]
    uniform: TinyBERT's g(m): student layer s <-> teacher layer round((s+1)·T/S) - 1 (half rounded up), s = 0..S-1
    skip:    PKD-Skip: student layer s <-> teacher layer (s+1)·(T//S) - 1, s = 0..S-2 (the last is left to the logits)
    [[t, s], ...]: explicit pairs
    """
    n_t, n_s = dims_t.num_layers, dims_s.num_layers
    for role, n in (("teacher", n_t), ("student", n_s)):
        if n == 0:
            raise UserError(
                f"the {role} has no encoder layers (a BiLSTM or another module offers only logits and pooled "
                "features); use sentence-level adaptors such as LogitMSE, LogitKL, PooledMSE"
            )
    counts = f"teacher has {n_t} layers, student has {n_s}"
    if spec == "last":
        pairs = [(n_t - 1, n_s - 1)]
    elif spec == "uniform":
        pairs = [((2 * (s + 1) * n_t + n_s) // (2 * n_s) - 1, s) for s in range(n_s)]
    elif spec == "skip":
        pairs = [((s + 1) * (n_t // n_s) - 1, s) for s in range(n_s - 1)]
    elif isinstance(spec, (list, tuple)) and spec and all(_is_pair(p) for p in spec):
        pairs = [tuple(p) for p in spec]
    else:
        raise UserError(
            f"layer_map: expected one of {', '.join(LAYER_MAPS)} or a list of [teacher, student] pairs, got {spec!r}"
        )
    if not pairs:
        raise UserError(f"layer_map {spec!r} maps no layer ({counts})")
    for t, s in pairs:
        if not (0 <= t < n_t and 0 <= s < n_s):
            raise UserError(f"layer_map {spec!r}: pair [{t}, {s}] out of range ({counts}, 0-based)")
    return tuple(pairs)


def _is_pair(p: Any) -> bool:
    return (
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in p)
    )


def _need_same(what: str, n_t: int, n_s: int, hint: str) -> None:
    if n_t != n_s:
        raise UserError(f"{what} differ (teacher {n_t}, student {n_s}) and there is no projection; {hint}")


def _projection(dims_t: ModelDims, dims_s: ModelDims) -> nn.Linear | None:
    """Learned student -> teacher width map, or None when the widths already match."""
    if dims_t.hidden_size == dims_s.hidden_size:
        return None
    return nn.Linear(dims_s.hidden_size, dims_t.hidden_size)


def _temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UserError(f"temperature must be a number > 0, got {value!r}")
    return float(value)


def _log(p: Tensor) -> Tensor:
    """log p with 0·log 0 = 0 kept finite in value and gradient."""
    return p.clamp_min(torch.finfo(p.dtype).tiny).log()


def _row_kl(p_t: Tensor, logp_t: Tensor, logp_s: Tensor, valid: Tensor) -> Tensor:
    """KL(teacher ‖ student) per row, summed over valid keys, averaged over valid query rows and heads.

    p_t, logp_t, logp_s: (B, n, T, T); valid: (B, T) bool.
    """
    kl = torch.where(valid[:, None, None, :], p_t * (logp_t - logp_s), 0).sum(-1)  # (B, n, T)
    rows = valid.sum() * p_t.shape[1]
    return torch.where(valid[:, None, :], kl, 0).sum() / rows.clamp_min(1)


def _relation_log_probs(x: Tensor, valid: Tensor) -> Tensor:
    """log softmax(x·xᵀ/√d) over valid keys. x: (B, n, T, d); valid: (B, T) bool -> (B, n, T, T)."""
    scores = x @ x.transpose(-1, -2) / math.sqrt(x.shape[-1])  # (B, n, T, T)
    scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.log_softmax(-1)


def _relation_kl(x_t: Tensor, x_s: Tensor, valid: Tensor) -> Tensor:
    logp_t, logp_s = _relation_log_probs(x_t, valid), _relation_log_probs(x_s, valid)
    return _row_kl(logp_t.exp(), logp_t, logp_s, valid)


def _token_mse(h_t: Tensor, h_s: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error over valid tokens and hidden units. h_*: (B, T, H); valid: (B, T) bool."""
    sq = torch.where(valid[..., None], (h_s - h_t) ** 2, 0).sum()
    return sq / (valid.sum() * h_t.shape[-1]).clamp_min(1)


# ---------------------------------------------------------------------------------------------------------------------
# Schedules of an adaptor's weight and temperature over the training steps (as TextBrewer's schedulers)

SCHEDULES = ("constant", "linear", "cosine")


def scheduled(start: float, end: float, kind: str, progress: float) -> float:
    """The value at `progress` (0 at the first training step, 1 at the last) going from `start` to `end`: constant
    (stays `start`), linear, or cosine (half a cosine: slow, fast, slow)."""
    p = min(max(progress, 0.0), 1.0)
    if kind == "constant":
        return start
    frac = p if kind == "linear" else (1 - math.cos(math.pi * p)) / 2
    return start + (end - start) * frac


def parse_schedule(spec: Any, adaptor: Adaptor, where: str) -> dict[str, tuple[float, float, str]]:
    """An adaptor spec's `schedule: {weight: {to: 0.0, kind: linear}, temperature: {to: 1.0, kind: cosine}}` as
    {setting: (start: its value now, end, kind)}; only the adaptor's `weight` and, where it has one, `temperature`."""
    if not isinstance(spec, dict) or not spec:
        raise UserError(f"{where}: schedule {spec!r}; give {{weight: {{to: 0.0, kind: linear}}}} (or temperature)")
    out = {}
    for name, rule in spec.items():
        if name not in ("weight", "temperature") or not hasattr(adaptor, name):
            have = "weight, temperature" if hasattr(adaptor, "temperature") else "weight"
            raise UserError(f"{where}: schedule.{name}: {adaptor.key} can schedule only {have}")
        if not isinstance(rule, dict) or set(rule) - {"to", "kind"} or "to" not in rule:
            raise UserError(f"{where}: schedule.{name} {rule!r}; give {{to: <number>, kind: {'|'.join(SCHEDULES)}}}")
        end, kind = rule["to"], rule.get("kind", "linear")
        low = 0 if name == "weight" else 1e-6
        if isinstance(end, bool) or not isinstance(end, (int, float)) or not end >= low or not math.isfinite(end):
            raise UserError(f"{where}: schedule.{name}.to {end!r} must be a number {'>= 0' if low == 0 else '> 0'}")
        if kind not in SCHEDULES:
            raise UserError(f"{where}: schedule.{name}.kind {kind!r} is not one of {', '.join(SCHEDULES)}")
        out[name] = (float(getattr(adaptor, name)), float(end), kind)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Registry

ADAPTORS: dict[str, type[Adaptor]] = {}


def register_adaptor(cls: type[Adaptor]) -> type[Adaptor]:
    """Class decorator: make `cls` available to configs under its class name."""
    if not (isinstance(cls, type) and issubclass(cls, Adaptor)):
        raise TypeError(f"register_adaptor expects an Adaptor subclass, got {cls!r}")
    name = cls.__name__
    if name in ADAPTORS:
        raise UserError(f"adaptor {name!r} is already registered (by {ADAPTORS[name].__module__}); rename the class")
    ADAPTORS[name] = cls
    return cls


def adaptor_settings(cls: type[Adaptor]) -> list[str]:
    """Settings a spec may give `cls`: keyword-only constructor parameters, up the MRO while `**kwargs` is forwarded."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def build_adaptors(
    specs: Sequence[str | dict], dims_t: ModelDims, dims_s: ModelDims, *, temperature: float = 1.0
) -> nn.ModuleList:
    """Adaptors from YAML specs: names (`LogitKL`) or mappings (`{name: LogitKL, weight: 0.5, temperature: 4.0}`).

    `temperature` is the default of every adaptor that takes one and whose spec does not set it.
    """
    if not isinstance(specs, (list, tuple)) or not specs:
        raise UserError(f"adaptors: expected a non-empty list of adaptor names or mappings, got {specs!r}")
    out = nn.ModuleList()
    keys: dict[str, int] = {}
    for i, spec in enumerate(specs):
        where = f"adaptors[{i}]"
        if isinstance(spec, str):
            name, settings = spec, {}
        elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
            settings = dict(spec)
            name = settings.pop("name")
        else:
            raise UserError(f"{where}: expected an adaptor name or a mapping with a `name:` key, got {spec!r}")
        if name not in ADAPTORS:
            raise UserError(f"{where}: unknown adaptor {name!r} (registered: {', '.join(sorted(ADAPTORS))})")
        cls = ADAPTORS[name]
        valid = adaptor_settings(cls)
        unknown = [k for k in settings if k not in valid]
        if unknown:
            raise UserError(f"{where} ({name}): unknown setting {unknown[0]!r} (valid: name, {', '.join(valid)})")
        if "temperature" in valid:
            settings.setdefault("temperature", temperature)
        try:
            adaptor = cls(dims_t, dims_s, **settings)
        except UserError as err:
            raise UserError(f"{where} ({name}): {err}") from None
        if adaptor.key in keys:
            raise UserError(
                f"{where} ({name}): log key {adaptor.key!r} is already used by adaptors[{keys[adaptor.key]}]; "
                "give one of them a distinct `key:`"
            )
        keys[adaptor.key] = i
        out.append(adaptor)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Prediction-layer adaptors


@register_adaptor
class LogitMSE(Adaptor):
    """MSE between teacher and student logits, each divided by the temperature (mean over batch and classes).

    Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NIPS 2014, arXiv:1312.6184; used for BERT by Tang et al.,
    "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", 2019, arXiv:1903.12136.
    """

    stage = "pred"
    sentence_level = True

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, *, temperature: float = 1.0, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        self.temperature = _temperature(temperature)

    def request(self) -> tuple[FeatureRequest, FeatureRequest]:
        return {"logits": frozenset()}, {"logits": frozenset()}

    def forward(self, feats_t: Features, feats_s: Features, labels: Tensor | None = None) -> Tensor:
        return F.mse_loss(feats_s.logits / self.temperature, feats_t.logits.detach() / self.temperature)


@register_adaptor
class LogitKL(Adaptor):
    """Soft targets: T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes, averaged over the batch.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep Learning Workshop,
    arXiv:1503.02531.
    """

    stage = "pred"
    sentence_level = True

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, *, temperature: float = 1.0, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        self.temperature = _temperature(temperature)

    def request(self) -> tuple[FeatureRequest, FeatureRequest]:
        return {"logits": frozenset()}, {"logits": frozenset()}

    def forward(self, feats_t: Features, feats_s: Features, labels: Tensor | None = None) -> Tensor:
        tau = self.temperature
        logp_t = (feats_t.logits.detach() / tau).log_softmax(-1)  # (B, C)
        logp_s = (feats_s.logits / tau).log_softmax(-1)  # (B, C)
        return F.kl_div(logp_s, logp_t, reduction="batchmean", log_target=True) * tau**2


@register_adaptor
class HardCE(Adaptor):
    """Cross-entropy of the student logits on the gold labels (mean over the labelled rows), to mix hard and soft
    targets. Rows with label -1 (transfer-set rows without a gold label) are skipped; a batch of only such rows gives
    0. `teacher_labels: true` trains those rows on the teacher's argmax instead (a hard-label student on the same text).

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep Learning Workshop,
    arXiv:1503.02531.
    """

    stage = "pred"
    sentence_level = True

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, *, teacher_labels: bool = False, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        if not isinstance(teacher_labels, bool):
            raise UserError(f"teacher_labels must be true or false, got {teacher_labels!r}")
        self.teacher_labels = teacher_labels

    def request(self) -> tuple[FeatureRequest, FeatureRequest]:
        return ({"logits": frozenset()} if self.teacher_labels else {}), {"logits": frozenset()}

    def forward(self, feats_t: Features, feats_s: Features, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            raise ValueError(f"{self.key}: HardCE needs labels")
        if self.teacher_labels:
            labels = torch.where(labels < 0, feats_t.logits.detach().argmax(-1), labels)
        logits = feats_s.logits
        valid = labels >= 0
        per_row = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")  # (B,)
        return torch.where(valid, per_row, 0).sum() / valid.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------------------------------
# Intermediate-layer adaptors


class LayerAdaptor(Adaptor):
    """Loss over (teacher layer, student layer) pairs of one per-layer feature: the mean of `pair_loss` over pairs."""

    stage = "inter"
    feature: ClassVar[str]
    default_layer_map: ClassVar[str]

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, *, layer_map: Any = None, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        self.layer_map = resolve_layer_map(self.default_layer_map if layer_map is None else layer_map, dims_t, dims_s)

    def request(self) -> tuple[FeatureRequest, FeatureRequest]:
        return (
            {self.feature: frozenset(t for t, _ in self.layer_map)},
            {self.feature: frozenset(s for _, s in self.layer_map)},
        )

    def forward(self, feats_t: Features, feats_s: Features, labels: Tensor | None = None) -> Tensor:
        valid = self.valid_mask(feats_t, feats_s)
        x_t, x_s = getattr(feats_t, self.feature), getattr(feats_s, self.feature)
        return torch.stack([self.pair_loss(x_t[t].detach(), x_s[s], valid) for t, s in self.layer_map]).mean()

    @abc.abstractmethod
    def pair_loss(self, x_t: Tensor, x_s: Tensor, valid: Tensor) -> Tensor:
        """Loss of one layer pair; `valid` is what `valid_mask` returns."""


def _same_heads(dims_t: ModelDims, dims_s: ModelDims) -> None:
    _need_same("attention head counts", dims_t.num_heads, dims_s.num_heads, "use QQMiniLMv2/KKMiniLMv2/VVMiniLMv2")


@register_adaptor
class AttnMiniLM(LayerAdaptor):
    """KL(teacher ‖ student) between attention distributions; needs equal head counts. Default layer_map: last.

    Normalisation: KL summed over valid keys, averaged over valid query rows of the batch, heads and layer pairs.
    Wang, Wei, Dong, Bao, Yang & Zhou, "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
    Pre-Trained Transformers", NeurIPS 2020, arXiv:2002.10957.
    """

    feature = "attentions"
    default_layer_map = "last"

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        _same_heads(dims_t, dims_s)

    def pair_loss(self, x_t: Tensor, x_s: Tensor, valid: Tensor) -> Tensor:
        return _row_kl(x_t, _log(x_t), _log(x_s), valid)


@register_adaptor
class ValMiniLM(LayerAdaptor):
    """Value relation: KL between softmax(V·Vᵀ/√d) of teacher and student, per head; needs equal head counts.

    Keys are masked before the softmax; normalisation as AttnMiniLM. Default layer_map: last.
    Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers",
    NeurIPS 2020, arXiv:2002.10957.
    """

    feature = "values"
    default_layer_map = "last"

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        _same_heads(dims_t, dims_s)

    def pair_loss(self, x_t: Tensor, x_s: Tensor, valid: Tensor) -> Tensor:
        return _relation_kl(x_t, x_s, valid)


class MiniLMv2Relation(LayerAdaptor):
    """Self-attention relation of one of queries/keys/values with `relation_heads` relation heads.

    All heads are concatenated to (B, T, H) and re-split into `relation_heads` heads of size H/relation_heads, so
    teacher and student may differ in head count and width; relation = softmax(X·Xᵀ/√(H/relation_heads)) over valid
    keys, loss = KL(teacher ‖ student), normalised as AttnMiniLM. relation_heads defaults to the teacher's head count
    and must divide both hidden sizes. Default layer_map: last.
    Wang, Bao, Huang, Dong & Wei, "MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing
    Pretrained Transformers", Findings of ACL 2021, arXiv:2012.15828.
    """

    default_layer_map = "last"

    def __init__(
        self, dims_t: ModelDims, dims_s: ModelDims, *, relation_heads: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        heads = dims_t.num_heads if relation_heads is None else relation_heads
        if isinstance(heads, bool) or not isinstance(heads, int) or heads <= 0:
            raise UserError(f"relation_heads must be a positive integer, got {relation_heads!r}")
        if dims_t.hidden_size % heads or dims_s.hidden_size % heads:
            raise UserError(
                f"relation_heads {heads} must divide both hidden sizes (teacher {dims_t.hidden_size}, "
                f"student {dims_s.hidden_size})"
            )
        self.relation_heads = heads

    def pair_loss(self, x_t: Tensor, x_s: Tensor, valid: Tensor) -> Tensor:
        return _relation_kl(self._split(x_t), self._split(x_s), valid)

    def _split(self, x: Tensor) -> Tensor:
        b, h, t, d = x.shape
        x = x.transpose(1, 2).reshape(b, t, self.relation_heads, h * d // self.relation_heads)  # (B, T, r, H/r)
        return x.transpose(1, 2)  # (B, r, T, H/r)


@register_adaptor
class QQMiniLMv2(MiniLMv2Relation):
    """Query-query relation of MiniLMv2 (see MiniLMv2Relation).

    Wang et al., "MiniLMv2", Findings of ACL 2021, arXiv:2012.15828.
    """

    feature = "queries"


@register_adaptor
class KKMiniLMv2(MiniLMv2Relation):
    """Key-key relation of MiniLMv2 (see MiniLMv2Relation).

    Wang et al., "MiniLMv2", Findings of ACL 2021, arXiv:2012.15828.
    """

    feature = "keys"


@register_adaptor
class VVMiniLMv2(MiniLMv2Relation):
    """Value-value relation of MiniLMv2 (see MiniLMv2Relation).

    Wang et al., "MiniLMv2", Findings of ACL 2021, arXiv:2012.15828.
    """

    feature = "values"


@register_adaptor
class AttnTinyBERT(LayerAdaptor):
    """MSE between attention probabilities per mapped layer; needs equal head counts. Default layer_map: uniform.

    Averaged over (query, key) pairs where both are real tokens, heads and layer pairs. The paper uses pre-softmax
    scores; `Features` carries the probabilities.
    Jiao, Yin, Shang, Jiang, Chen, Li, Wang & Liu, "TinyBERT: Distilling BERT for Natural Language Understanding",
    Findings of EMNLP 2020, arXiv:1909.10351.
    """

    feature = "attentions"
    default_layer_map = "uniform"

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        _same_heads(dims_t, dims_s)

    def pair_loss(self, x_t: Tensor, x_s: Tensor, valid: Tensor) -> Tensor:
        pairs = valid[:, None, :, None] & valid[:, None, None, :]  # (B, 1, T, T)
        sq = torch.where(pairs, (x_s - x_t) ** 2, 0).sum()
        return sq / (pairs.sum() * x_t.shape[1]).clamp_min(1)


@register_adaptor
class HidnTinyBERT(LayerAdaptor):
    """MSE between hidden states, the student's mapped by a learned `projection` (nn.Linear(H_s, H_t), None when the
    widths match; shared by all layer pairs, trained with the student, not exported). Averaged over valid tokens,
    hidden units and layer pairs. Default layer_map: uniform.

    Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP 2020,
    arXiv:1909.10351.
    """

    feature = "hidden_states"
    default_layer_map = "uniform"

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        self.projection = _projection(dims_t, dims_s)

    def pair_loss(self, x_t: Tensor, x_s: Tensor, valid: Tensor) -> Tensor:
        return _token_mse(x_t, x_s if self.projection is None else self.projection(x_s), valid)


@register_adaptor
class EmbdTinyBERT(Adaptor):
    """MSE between embedding outputs, with the same projection rule as HidnTinyBERT (its own projection).

    Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP 2020,
    arXiv:1909.10351.
    """

    stage = "inter"

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        self.projection = _projection(dims_t, dims_s)

    def request(self) -> tuple[FeatureRequest, FeatureRequest]:
        return {"embeddings": frozenset()}, {"embeddings": frozenset()}

    def forward(self, feats_t: Features, feats_s: Features, labels: Tensor | None = None) -> Tensor:
        e_s = feats_s.embeddings if self.projection is None else self.projection(feats_s.embeddings)
        return _token_mse(feats_t.embeddings.detach(), e_s, self.valid_mask(feats_t, feats_s))


@register_adaptor
class HidnPKD(LayerAdaptor):
    """Patient KD: MSE between L2-normalised [CLS] (position 0) hidden states of mapped layers, the student's
    projected first when widths differ (rule of HidnTinyBERT). Mean over examples, hidden units and layer pairs;
    examples whose position 0 is padding are skipped. Default layer_map: skip.

    Sun, Cheng, Gan & Liu, "Patient Knowledge Distillation for BERT Model Compression", EMNLP-IJCNLP 2019,
    arXiv:1908.09355.
    """

    feature = "hidden_states"
    default_layer_map = "skip"
    sentence_level = True

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        self.projection = _projection(dims_t, dims_s)

    def valid_mask(self, feats_t: Features, feats_s: Features) -> Tensor:
        """(B,) bool: examples whose [CLS] is a real token in both models."""
        return feats_t.attention_mask[:, 0].bool() & feats_s.attention_mask[:, 0].bool()

    def pair_loss(self, x_t: Tensor, x_s: Tensor, valid: Tensor) -> Tensor:
        cls_s = x_s[:, 0] if self.projection is None else self.projection(x_s[:, 0])  # (B, H_t)
        cls_t, cls_s = F.normalize(x_t[:, 0], dim=-1), F.normalize(cls_s, dim=-1)  # (B, H_t)
        sq = torch.where(valid[:, None], (cls_s - cls_t) ** 2, 0).sum()
        return sq / (valid.sum() * cls_t.shape[-1]).clamp_min(1)


@register_adaptor
class PooledMSE(Adaptor):
    """MSE between the sentence representations: the teacher's last-layer [CLS] vector and the student's own (an
    encoder's [CLS], or a module's classifier input such as the BiLSTM's final states), the student's projected to the
    teacher's width when they differ. Mean over hidden units and the examples with at least one real token in both
    models. Works for any student that offers `pooled`.

    Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015, arXiv:1412.6550 (a hint on an intermediate
    representation through a learned regressor); for BERT students, Sun et al. 2019, arXiv:1908.09355.
    """

    stage = "inter"
    sentence_level = True

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        self.projection = _projection(dims_t, dims_s)

    def request(self) -> tuple[FeatureRequest, FeatureRequest]:
        return {"pooled": frozenset()}, {"pooled": frozenset()}

    def forward(self, feats_t: Features, feats_s: Features, labels: Tensor | None = None) -> Tensor:
        x_s = feats_s.pooled if self.projection is None else self.projection(feats_s.pooled)  # (B, H_t)
        valid = feats_t.attention_mask.any(1) & feats_s.attention_mask.any(1)  # (B,)
        sq = torch.where(valid[:, None], (x_s.float() - feats_t.pooled.detach().float()) ** 2, 0).sum()
        return sq / (valid.sum() * x_s.shape[-1]).clamp_min(1)


@register_adaptor
class CosHidden(LayerAdaptor):
    """Cosine embedding loss 1 - cos(h_s, h_t) per valid token (mean over valid tokens and layer pairs); needs equal
    hidden sizes. Default layer_map: last.

    Sanh, Debut, Chaumond & Wolf, "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and lighter",
    NeurIPS 2019 EMC² Workshop, arXiv:1910.01108.
    """

    feature = "hidden_states"
    default_layer_map = "last"

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        _need_same("hidden sizes", dims_t.hidden_size, dims_s.hidden_size, "use HidnTinyBERT (it has a projection)")

    def pair_loss(self, x_t: Tensor, x_s: Tensor, valid: Tensor) -> Tensor:
        cos = F.cosine_similarity(x_s, x_t, dim=-1)  # (B, T)
        return torch.where(valid, 1 - cos, 0).sum() / valid.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------------------------------
# Sentence-embedding adaptors: the student's sentence embedding of its own language learns the teacher's of the
# teacher's language (each model's `pooled`, made by the pooling declared for it)


class SentenceAdaptor(Adaptor):
    """A loss between the teacher's and the student's sentence embeddings (`pooled`), which may come from different
    languages and tokenizers. No projection: the student's embedding is used as it is, in the teacher's space, so the
    widths must match. Averaged over the examples with at least one real token in both models (0 when none)."""

    stage = "inter"
    sentence_level = True

    def __init__(self, dims_t: ModelDims, dims_s: ModelDims, **kwargs: Any) -> None:
        super().__init__(dims_t, dims_s, **kwargs)
        _need_same(
            "sentence-embedding widths",
            dims_t.hidden_size,
            dims_s.hidden_size,
            "the student's embedding must live in the teacher's space (give the student the teacher's hidden_size)",
        )

    def request(self) -> tuple[FeatureRequest, FeatureRequest]:
        return {"pooled": frozenset()}, {"pooled": frozenset()}

    def forward(self, feats_t: Features, feats_s: Features, labels: Tensor | None = None) -> Tensor:
        valid = feats_t.attention_mask.any(1) & feats_s.attention_mask.any(1)  # (B,)
        per_example = self.per_example(feats_t.pooled.detach().float(), feats_s.pooled.float())  # (B,)
        return torch.where(valid, per_example, 0).sum() / valid.sum().clamp_min(1)

    @abc.abstractmethod
    def per_example(self, x_t: Tensor, x_s: Tensor) -> Tensor:
        """(B,) loss of each example; x_*: (B, H)."""


@register_adaptor
class SentMSE(SentenceAdaptor):
    """MSE between the student's and the teacher's sentence embeddings (mean over the batch and the dimensions): on
    parallel text, student(translation) ≈ teacher(source) and student(source) ≈ teacher(source).

    Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation", EMNLP 2020,
    arXiv:2004.09813.
    """

    def per_example(self, x_t: Tensor, x_s: Tensor) -> Tensor:
        return ((x_s - x_t) ** 2).mean(-1)


@register_adaptor
class SentCos(SentenceAdaptor):
    """1 - cos(student embedding, teacher embedding), averaged over the batch: the direction only, which is what
    cosine retrieval reads.

    Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation", EMNLP 2020,
    arXiv:2004.09813 (their loss is the MSE, `SentMSE`; this is its cosine variant).
    """

    def per_example(self, x_t: Tensor, x_s: Tensor) -> Tensor:
        return 1 - F.cosine_similarity(x_s, x_t, dim=-1)
