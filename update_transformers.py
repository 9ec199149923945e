"""Check that the installed transformers matches bert/families.py, so that feature recording is exact.

For every supported family this builds a tiny random classifier (eval mode, the default attention kernel: sdpa where
the family supports it), records every feature on every layer with `FeatureRecorder`, and compares with an eager
reference of the same weights (`output_attentions`, `output_hidden_states`, the q/k/v projections split into heads),
and checks the feed-forward paths and width key that a narrow student cut uses (`ffn`). Nothing is written anywhere:
the recorder only adds forward hooks at run time.

Run: .venv/bin/python update_transformers.py   (exit status 0 when every family passes)
"""

from __future__ import annotations

import copy
import sys

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from bert import families
from bert.features import FEATURES, LAYER_FEATURES
from bert.recorder import FeatureRecorder

TOLERANCE = 1e-5
# "outputs": the model's own logits with and without the recorder (must be equal); "ffn": a narrowed copy against the
# same model with the dropped neurons zeroed (`ffn_diff`)
CHECKS = (*FEATURES, "outputs", "ffn")


def tiny_model(family: families.Family, attn_implementation: str | None = None, **config) -> nn.Module:
    """A random `*ForSequenceClassification` of the family: hidden 32, 2 layers, 4 heads; eval mode."""
    model_type = family.model_types[0]
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=99, max_position_embeddings=64)
    sizes["hidden_dim" if model_type == "distilbert" else "intermediate_size"] = 37
    cfg = AutoConfig.for_model(model_type, **sizes, **config)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(cfg, attn_implementation=attn_implementation).eval()


def padded_batch(batch: int = 3, seq: int = 9) -> dict[str, torch.Tensor]:
    """Random ids with rows of 9, 6 and 2 real tokens (the rest is padding)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 99, (batch, seq), generator=g)  # (B, T)
    lengths = torch.tensor([seq, 6, 2][:batch])
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()  # (B, T)
    return {"input_ids": ids, "attention_mask": mask}


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, T, H) -> (B, h, T, d)


def check_family(family: families.Family) -> tuple[str, str, dict[str, float]]:
    """(model class, attention implementation, max abs difference per check) for one family."""
    model = tiny_model(family)
    impl = model.config._attn_implementation
    eager = tiny_model(family, attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    inputs = padded_batch()
    n = len(family.layers(model))
    heads = model.config.num_attention_heads

    with torch.no_grad():
        plain = model(**inputs)
        with FeatureRecorder(model, {name: range(n) for name in FEATURES}) as recorder:
            out, feats = recorder(**inputs)
        ref = eager(**inputs, output_attentions=True, output_hidden_states=True)
        hidden = model(**inputs, output_hidden_states=True).hidden_states  # same kernel as the recorded pass
        projected = {name: {} for name in ("queries", "keys", "values")}
        for i in range(n):
            for name, linear in zip(projected, family.projections(model, i)):
                projected[name][i] = split_heads(linear(hidden[i]), heads)  # (B, h, T, d)

    if model.config._attn_implementation != impl:
        raise RuntimeError(
            f"recording switched {type(model).__name__} from {impl} to {model.config._attn_implementation}"
        )
    refs = {
        "attentions": dict(enumerate(ref.attentions)),
        "hidden_states": {i: hidden[i + 1] for i in range(n)},
        **projected,
    }
    diffs = {name: max(_diff(getattr(feats, name)[i], refs[name][i]) for i in range(n)) for name in LAYER_FEATURES}
    diffs["embeddings"] = _diff(feats.embeddings, hidden[0])
    diffs["pooled"] = _diff(feats.pooled, hidden[n][:, 0])  # the last layer's [CLS] vector
    diffs["logits"] = _diff(feats.logits, plain.logits)
    diffs["outputs"] = 0.0 if torch.equal(out.logits, plain.logits) else float("inf")
    diffs["ffn"] = ffn_diff(family, model, inputs)
    return type(model).__name__, impl, diffs


@torch.no_grad()
def ffn_diff(family: families.Family, model: nn.Module, inputs: dict) -> float:
    """`narrow_ffn` to half the neurons, the model rebuilt from its config (as a student is), against the same model
    with the other neurons' input weights zeroed (GELU(0) = 0): the same function when the paths and key are right."""
    size = family.ffn_size(model) // 2
    narrow = copy.deepcopy(model)
    family.narrow_ffn(narrow, size)
    rebuilt = type(model)(narrow.config).eval()
    rebuilt.load_state_dict(narrow.state_dict())
    masked = copy.deepcopy(model)
    for layer in family.layers(masked):
        first, second = (layer.get_submodule(path) for path in family.ffn)
        dropped = (first.weight.norm(dim=1) * second.weight.norm(dim=0)).argsort(descending=True)[size:]  # (I - size,)
        first.weight[dropped] = 0.0
        first.bias[dropped] = 0.0
    return _diff(rebuilt(**inputs).logits, masked(**inputs).logits)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return (a - b).abs().max().item()


def main() -> int:
    print(f"transformers {transformers.__version__} (torch {torch.__version__})")
    header = ["family", "model class", "attn impl", *CHECKS, "ok"]
    rows, failed = [], []
    for family in families.FAMILIES:
        try:
            cls, impl, diffs = check_family(family)
        except Exception as err:  # a layout mismatch can surface as any exception; report it per family
            rows.append([family.name, "-", "-", *["-"] * len(CHECKS), "FAIL"])
            failed.append(f"{family.name}: {type(err).__name__}: {err}")
            continue
        ok = all(d <= TOLERANCE for d in diffs.values())
        rows.append([family.name, cls, impl, *(f"{diffs[c]:.1e}" for c in CHECKS), "ok" if ok else "FAIL"])
        if not ok:
            bad = ", ".join(f"{c} {diffs[c]:.1e}" for c in CHECKS if diffs[c] > TOLERANCE)
            failed.append(f"{family.name}: recorded features differ from the eager reference ({bad})")
    widths = [max(len(str(r[j])) for r in [header, *rows]) for j in range(len(header))]
    for row in [header, *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    if failed:
        print(
            f"error: transformers {transformers.__version__} does not match bert/families.py; update the family "
            "table (module paths, q/k/v names, score bias) for:",
            file=sys.stderr,
        )
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"all {len(rows)} families record exactly (max abs diff <= {TOLERANCE:g}); nothing was modified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
