"""Record per-layer features of a transformers encoder with forward hooks; its attention kernel stays (sdpa stays sdpa).

Attention probabilities are recomputed from the recorded queries and keys as softmax(q·kᵀ·scaling [+ bias] + mask):
exactly the pre-dropout probabilities of the eager path, while the model's own forward is left untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping

import torch
from torch import nn
from transformers.utils import ModelOutput

from bert.errors import UserError
from bert.families import check_features, get_family, logits_of
from bert.features import FEATURES, MODEL_FEATURES, POOLINGS, Features, ModelDims

QKV = ("queries", "keys", "values")


class FeatureRecorder:
    """Hooks only the requested layers/features of `model`; `close()` (or leaving the `with` block) removes them."""

    def __init__(self, model: nn.Module, request: Mapping[str, Collection[int]], pooling: str | None = None):
        """`pooling` (`POOLINGS`; None: cls) is how `pooled` is made of an encoder's last layer."""
        self.model = model
        self.pooling = pooling or "cls"
        self.family = get_family(model)
        check_features(model, request)
        layers = self.family.layers(model) if self.family.layers_path is not None else []
        self.request = _validated(request, len(layers), type(model).__name__)
        self._heads = ModelDims.of(getattr(model, "config", None)).num_heads
        self._store: dict[tuple[str, int], object] = {}
        self._active = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._scaling: dict[int, float | None] = {}

        wanted = self._wanted
        for i in sorted(wanted("queries") | wanted("keys") | wanted("values") | wanted("attentions")):
            needs_qk = i in wanted("attentions")
            projections = self.family.projections(model, i)
            if len(projections) == 1:  # one fused Linear: its output is [q; k; v]
                self._handles.append(projections[0].register_forward_hook(self._keep_fused(i)))
                continue
            for name, linear in zip(QKV, projections):
                if i in wanted(name) or (needs_qk and name != "values"):
                    self._handles.append(linear.register_forward_hook(self._keep_output(name, i)))
        for i in sorted(wanted("attentions")):
            attn = self.family.self_attention(model, i)
            self._scaling[i] = getattr(attn, "scaling", None)
            hook = self._keep_score_terms(i, inspect.signature(attn.forward))
            self._handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
        for i in sorted(wanted("hidden_states")):
            self._handles.append(layers[i].register_forward_hook(self._keep_output("hidden_states", i)))
        if "embeddings" in self.request:
            self._handles.append(layers[0].register_forward_pre_hook(self._keep_layer_input, with_kwargs=True))
        if self.pooling not in POOLINGS:
            raise UserError(f"pooling: {pooling!r} is not one of {', '.join(POOLINGS)}")
        if layers and self.pooling == "pooler" and getattr(model.base_model, "pooler", None) is None:
            raise UserError(
                f"pooling: {type(model).__name__} has no pooler (a masked LM, or built without one); use mean or cls"
            )
        if not layers and pooling is not None:
            raise UserError(
                f"pooling: {type(model).__name__} has no encoder layers to pool; it offers only its own sentence "
                "representation (leave pooling unset)"
            )
        if "pooled" in self.request:
            if layers and self.pooling == "pooler":  # the pooler's output
                self._handles.append(model.base_model.pooler.register_forward_hook(self._keep_output("pooled", 0)))
            elif layers:  # an encoder: its last layer, pooled in `_features`
                self._handles.append(layers[-1].register_forward_hook(self._keep_output("pooled", 0)))
            else:  # a module: the input of its classifier
                head = model.get_submodule(self.family.pooled_path)
                self._handles.append(head.register_forward_pre_hook(self._keep_head_input))

    def __call__(self, **inputs) -> tuple[ModelOutput, Features]:
        """Run `model(**inputs)` and return its output together with the requested features."""
        self._store.clear()
        self._active = True
        try:
            output = self.model(**inputs)
            return output, self._features(output, inputs)
        finally:
            self._active = False
            self._store.clear()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wanted(self, name: str) -> frozenset[int]:
        return self.request.get(name, frozenset())

    def _keep_output(self, name: str, layer: int):
        def hook(module, args, output):
            if self._active:
                self._store[name, layer] = output[0] if isinstance(output, tuple) else output

        return hook

    def _keep_fused(self, layer: int):
        def hook(module, args, output):
            if self._active:
                for name, x in zip(QKV, output.chunk(3, dim=-1)):  # (B, T, 3H) -> 3 x (B, T, H)
                    self._store[name, layer] = x

        return hook

    def _keep_score_terms(self, layer: int, signature: inspect.Signature):
        def hook(module, args, kwargs):
            if self._active:
                bound = signature.bind_partial(*args, **kwargs).arguments
                self._store["mask", layer] = bound.get("attention_mask")
                if self.family.score_bias_arg is not None:
                    self._store["bias", layer] = bound.get(self.family.score_bias_arg)

        return hook

    def _keep_layer_input(self, module, args, kwargs):
        if self._active:
            self._store["embeddings", 0] = args[0] if args else kwargs["hidden_states"]

    def _keep_head_input(self, module, args):
        if self._active:
            self._store["pooled", 0] = args[0]  # (B, H)

    def _take(self, name: str, layer: int):
        try:
            return self._store[name, layer]
        except KeyError:
            raise UserError(
                f"{type(self.model).__name__}: no {name} recorded for layer {layer} during forward; the installed "
                f"transformers layout does not match the {self.family.name} entry of bert/families.py"
            ) from None

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self._heads, -1)).transpose(1, 2)  # (B, T, H) -> (B, h, T, d)

    def _features(self, output: ModelOutput, inputs: Mapping[str, object]) -> Features:
        mask = inputs.get("attention_mask")
        if mask is None:
            ids = inputs.get("input_ids")
            shape = ids.shape if ids is not None else inputs["inputs_embeds"].shape[:2]
            device = ids.device if ids is not None else inputs["inputs_embeds"].device
            mask = torch.ones(shape, dtype=torch.long, device=device)  # (B, T)
        feats = Features(attention_mask=mask)
        for name in ("queries", "keys", "values", "hidden_states"):
            for i in sorted(self._wanted(name)):
                x = self._take(name, i)
                getattr(feats, name)[i] = x if name == "hidden_states" else self._split_heads(x)
        additive: dict[int, torch.Tensor] = {}  # id(mask) -> additive mask; all layers usually share one mask
        for i in sorted(self._wanted("attentions")):
            q, k = self._split_heads(self._take("queries", i)), self._split_heads(self._take("keys", i))
            # In place where autograd allows it: one (B, h, T, T) buffer instead of one per term.
            scores = torch.matmul(q, k.transpose(2, 3)).mul_(self._scaling[i] or q.size(-1) ** -0.5)  # (B, h, T, T)
            bias = self._store.get(("bias", i))
            if bias is not None:
                scores.add_(bias)
            mask = self._take("mask", i)
            if mask is not None:
                if id(mask) not in additive:
                    additive[id(mask)] = _additive(mask, scores.dtype)
                scores.add_(additive[id(mask)])
            feats.attentions[i] = scores.softmax(dim=-1)  # (B, h, T, T)
        if "embeddings" in self.request:
            feats.embeddings = self._take("embeddings", 0)
        if "pooled" in self.request:
            pooled = self._take("pooled", 0)  # (B, T, H) of the last layer, or (B, H)
            if pooled.dim() == 3 and self.pooling == "cls":
                pooled = pooled[:, 0]  # (B, H)
            elif pooled.dim() == 3:  # mean over the real tokens
                weights = feats.attention_mask.to(pooled.dtype)[..., None]  # (B, T, 1)
                pooled = (pooled * weights).sum(1) / weights.sum(1).clamp_min(1)  # (B, H)
            feats.pooled = pooled
        if "logits" in self.request:
            feats.logits = logits_of(output, self.model)
        return feats


def _additive(mask: object, dtype: torch.dtype) -> torch.Tensor:
    """The mask the self-attention module received as an additive term: 2D padding (flash), 4D bool (sdpa) or
    4D additive (eager)."""
    if not isinstance(mask, torch.Tensor):
        raise UserError(f"attention mask of type {type(mask).__name__} is not supported; use attn_implementation sdpa")
    if mask.dim() == 2:
        mask = mask[:, None, None, :].bool()  # (B, 1, 1, T)
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def _validated(request: Mapping[str, Collection[int]], num_layers: int, model_name: str) -> dict[str, frozenset[int]]:
    out = {}
    for name, layers in request.items():
        if name not in FEATURES:
            raise UserError(f"unknown feature {name!r}; choices: {', '.join(FEATURES)}")
        if name in MODEL_FEATURES:
            out[name] = frozenset()
            continue
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers:
                raise UserError(
                    f"feature {name!r}: layer {i!r} is out of range for {model_name} with {num_layers} layers "
                    f"(valid: 0..{num_layers - 1})"
                )
        out[name] = frozenset(layers)
    return out
