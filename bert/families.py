"""Where each supported encoder family keeps the modules the recorder hooks and the distiller copies."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bert.errors import UserError


@dataclass(frozen=True)
class Family:
    """Module paths of one family in the installed transformers. Paths are dotted `get_submodule` names."""

    name: str
    model_types: tuple[str, ...]  # `config.model_type` values
    layers_path: str  # base model -> nn.ModuleList of encoder layers
    embeddings_path: str  # base model -> embeddings module
    attention_path: str  # encoder layer -> self-attention module (owner of the q/k/v Linears)
    qkv: tuple[str, str, str]  # self-attention module -> query, key, value nn.Linear
    score_bias_arg: str | None = None  # self-attention forward argument added to the scores before softmax

    def layers(self, model: nn.Module) -> nn.ModuleList:
        layers = _submodule(model.base_model, self.layers_path, self, model)
        if not isinstance(layers, nn.ModuleList):
            raise UserError(f"{type(model).__name__}.{self.layers_path} is {type(layers).__name__}, not nn.ModuleList")
        return layers

    def embeddings(self, model: nn.Module) -> nn.Module:
        return _submodule(model.base_model, self.embeddings_path, self, model)

    def self_attention(self, model: nn.Module, layer: int) -> nn.Module:
        return _submodule(self.layers(model)[layer], self.attention_path, self, model)

    def projections(self, model: nn.Module, layer: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        """The query, key and value Linears of one layer."""
        attn = self.self_attention(model, layer)
        mods = tuple(_submodule(attn, name, self, model) for name in self.qkv)
        for name, mod in zip(self.qkv, mods):
            if not isinstance(mod, nn.Linear):
                raise UserError(
                    f"{type(model).__name__} layer {layer}: {self.attention_path}.{name} is {type(mod).__name__}, "
                    "not nn.Linear; the installed transformers layout does not match bert/families.py"
                )
        return mods


FAMILIES = (
    Family("BERT", ("bert",), "encoder.layer", "embeddings", "attention.self", ("query", "key", "value")),
    Family("RoBERTa", ("roberta",), "encoder.layer", "embeddings", "attention.self", ("query", "key", "value")),
    Family("ELECTRA", ("electra",), "encoder.layer", "embeddings", "attention.self", ("query", "key", "value")),
    Family("DistilBERT", ("distilbert",), "transformer.layer", "embeddings", "attention", ("q_lin", "k_lin", "v_lin")),
    Family("MPNet", ("mpnet",), "encoder.layer", "embeddings", "attention.attn", ("q", "k", "v"), "position_bias"),
)


def get_family(model: nn.Module) -> Family:
    """The family of a bare encoder or of a task wrapper around one (e.g. `BertForSequenceClassification`)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = ", ".join(f.name for f in FAMILIES)
    raise UserError(f"unsupported model {type(model).__name__} (model_type {model_type!r}); supported: {supported}")


def _submodule(root: nn.Module, path: str, family: Family, model: nn.Module) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise UserError(
            f"{type(model).__name__} has no module {path!r} under {type(root).__name__}; the installed transformers "
            f"layout does not match the {family.name} entry of bert/families.py"
        ) from None
