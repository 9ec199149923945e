"""Loss adaptors: float64 loop references, registry-wide properties (minimum, sign, gradients, padding), bad input."""

from __future__ import annotations

import math

import pytest
import torch

import helper.adaptors as adaptors_mod
from bert.errors import UserError
from bert.features import Features, ModelDims, merge_requests
from helper.adaptors import ADAPTORS, Adaptor, adaptor_settings, build_adaptors, register_adaptor, resolve_layer_map

MASKS = {
    "full": [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]],
    "ragged": [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]],
    "empty": [[1, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]],  # example 1 is all padding
}
RTOL, ATOL = 1e-5, 1e-6


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention probabilities as BERT records them: padding keys get finfo.min before the softmax."""
    return scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min).softmax(-1)


def make_feats(
    dims: ModelDims, mask: list, seed: int, *, grad: bool = False, labels: torch.Tensor | None = None
) -> tuple[Features, list[torch.Tensor]]:
    """Every feature on every layer, each computed from a random leaf (returned) as a model output would be.

    The same (dims, mask, seed) gives the same values; `labels` adds 40·one-hot to the logits (a confident model).
    """
    g = torch.Generator().manual_seed(seed)
    m = torch.tensor(mask)
    b, t = m.shape
    h, d, n = dims.num_heads, dims.hidden_size // dims.num_heads, dims.hidden_size
    leaves: list[torch.Tensor] = []

    def leaf(*shape: int) -> torch.Tensor:
        leaves.append(torch.randn(*shape, generator=g).requires_grad_(grad))
        return leaves[-1]

    layers = range(dims.num_layers)
    feats = Features(
        attention_mask=m,
        attentions={i: masked_softmax(leaf(b, h, t, t), m) for i in layers},  # (B, h, T, T)
        queries={i: leaf(b, h, t, d) * 1.0 for i in layers},  # (B, h, T, d)
        keys={i: leaf(b, h, t, d) * 1.0 for i in layers},
        values={i: leaf(b, h, t, d) * 1.0 for i in layers},
        hidden_states={i: leaf(b, t, n) * 1.0 for i in layers},  # (B, T, H)
        embeddings=leaf(b, t, n) * 1.0,
        pooled=leaf(b, n) * 1.0,  # (B, H)
        logits=leaf(b, 3) * 1.0,  # (B, C)
    )
    if labels is not None:
        feats.logits = feats.logits + 40.0 * torch.nn.functional.one_hot(labels, 3)
    return feats, leaves


def only_requested(feats: Features, request: dict) -> Features:
    """A copy holding only what `request` asks for, so an adaptor reading anything else fails."""
    layer = {
        name: {i: x for i, x in getattr(feats, name).items() if i in request.get(name, ())}
        for name in ("attentions", "queries", "keys", "values", "hidden_states")
    }
    return Features(
        attention_mask=feats.attention_mask,
        embeddings=feats.embeddings if "embeddings" in request else None,
        pooled=feats.pooled if "pooled" in request else None,
        logits=feats.logits if "logits" in request else None,
        **layer,
    )


def build_one(spec, dims_t: ModelDims, dims_s: ModelDims, **kw) -> Adaptor:
    return build_adaptors([spec], dims_t, dims_s, **kw)[0]


def lists(*xs: torch.Tensor) -> list:
    return [x.detach().double().tolist() for x in xs]


# ---------------------------------------------------------------------------------------------------------------------
# float64 references (explicit loops on nested lists)


def ref_row_kl(p_t: list, p_s: list, mask: list) -> float:
    """Σ_k p_t·log(p_t/p_s) over valid keys with 0·log 0 = 0, mean over valid (example, head, query) rows."""
    total, rows = 0.0, 0
    for b, (pt_b, ps_b) in enumerate(zip(p_t, p_s)):
        keys = [k for k, on in enumerate(mask[b]) if on]
        for pt_h, ps_h in zip(pt_b, ps_b):
            for q in keys:
                rows += 1
                total += sum(pt_h[q][k] * math.log(pt_h[q][k] / ps_h[q][k]) for k in keys if pt_h[q][k] > 0)
    return total / rows if rows else 0.0


def ref_relation(x: list, mask: list) -> list:
    """softmax over valid keys of x·xᵀ/√d per (example, head): (B, n, T, d) -> (B, n, T, T), 0 at padding keys."""
    out = []
    for b, x_b in enumerate(x):
        keys = [k for k, on in enumerate(mask[b]) if on]
        heads = []
        for x_h in x_b:
            rows = []
            for q in range(len(x_h)):
                s = {k: sum(u * v for u, v in zip(x_h[q], x_h[k])) / math.sqrt(len(x_h[q])) for k in keys}
                top = max(s.values(), default=0.0)
                z = sum(math.exp(v - top) for v in s.values())
                rows.append([math.exp(s[k] - top) / z if k in s else 0.0 for k in range(len(x_h))])
            heads.append(rows)
        out.append(heads)
    return out


def ref_split(x: list, r: int) -> list:
    """(B, h, T, d) -> (B, r, T, H/r): heads concatenated per token, then cut into r equal slices."""
    out = []
    for x_b in x:
        cat = [[v for x_h in x_b for v in x_h[t]] for t in range(len(x_b[0]))]  # (T, H)
        size = len(cat[0]) // r
        out.append([[row[i * size : (i + 1) * size] for row in cat] for i in range(r)])
    return out


def ref_token_mse(h_t: list, h_s: list, mask: list, proj=None) -> float:
    total, count = 0.0, 0
    for b, (ht_b, hs_b) in enumerate(zip(h_t, h_s)):
        for t, on in enumerate(mask[b]):
            if on:
                y = proj(hs_b[t]) if proj else hs_b[t]
                total += sum((u - v) ** 2 for u, v in zip(y, ht_b[t]))
                count += len(y)
    return total / count if count else 0.0


def linear_ref(layer: torch.nn.Linear):
    w, bias = lists(layer.weight, layer.bias)
    return lambda x: [sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(w, bias)]


def mean(values: list) -> float:
    return sum(values) / len(values)


def softmax_list(z: list, tau: float = 1.0) -> list:
    top = max(z)
    e = [math.exp((v - top) / tau) for v in z]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------------------------------------------------------------
# Each adaptor against its reference, with and without padding

D2 = ModelDims(num_layers=2, hidden_size=8, num_heads=2)
D3 = ModelDims(num_layers=3, hidden_size=8, num_heads=2)
CROSS = [[2, 0], [0, 1]]  # teacher layer 2 <-> student 0, teacher 0 <-> student 1


@pytest.fixture(params=sorted(MASKS))
def mask(request) -> list:
    return MASKS[request.param]


def test_logit_mse(mask):
    feats_t, _ = make_feats(D3, mask, 0)
    feats_s, _ = make_feats(D2, mask, 1)
    zt, zs = lists(feats_t.logits, feats_s.logits)
    ref = mean([((s - t) / 2.0) ** 2 for rt, rs in zip(zt, zs) for t, s in zip(rt, rs)])
    loss = build_one({"name": "LogitMSE", "temperature": 2.0}, D3, D2)(feats_t, feats_s, None)
    assert loss.item() == pytest.approx(ref, rel=RTOL, abs=ATOL)


def test_logit_kl_is_batchmean_times_t_squared(mask):
    feats_t, _ = make_feats(D3, mask, 0)
    feats_s, _ = make_feats(D2, mask, 1)
    tau = 3.0
    zt, zs = lists(feats_t.logits, feats_s.logits)
    total = 0.0
    for rt, rs in zip(zt, zs):
        pt, ps = softmax_list(rt, tau), softmax_list(rs, tau)
        total += sum(a * math.log(a / c) for a, c in zip(pt, ps))
    ref = tau**2 * total / len(zt)
    loss = build_one("LogitKL", D3, D2, temperature=tau)(feats_t, feats_s, None)
    assert loss.item() == pytest.approx(ref, rel=RTOL, abs=ATOL)
    # reduction "mean" would divide by B·C instead of B: the check above tells them apart
    assert ref * len(zt) / (len(zt) * len(zt[0])) != pytest.approx(ref, rel=0.1)


def test_hard_ce(mask):
    feats_s, _ = make_feats(D2, mask, 1)
    labels = torch.tensor([0, 2, 1])
    ref = -mean([math.log(softmax_list(row)[y]) for row, y in zip(lists(feats_s.logits)[0], labels.tolist())])
    loss = build_one("HardCE", D3, D2)(Features(attention_mask=torch.tensor(mask)), feats_s, labels)
    assert loss.item() == pytest.approx(ref, rel=RTOL, abs=ATOL)


def test_attn_minilm(mask):
    feats_t, _ = make_feats(D3, mask, 0)
    feats_s, _ = make_feats(D2, mask, 1)
    adaptor = build_one({"name": "AttnMiniLM", "layer_map": CROSS}, D3, D2)
    ref = mean([ref_row_kl(*lists(feats_t.attentions[t], feats_s.attentions[s]), mask) for t, s in CROSS])
    assert adaptor(feats_t, feats_s, None).item() == pytest.approx(ref, rel=RTOL, abs=ATOL)
    default = build_one("AttnMiniLM", D3, D2)  # last layer
    ref_last = ref_row_kl(*lists(feats_t.attentions[2], feats_s.attentions[1]), mask)
    assert default(feats_t, feats_s, None).item() == pytest.approx(ref_last, rel=RTOL, abs=ATOL)


def test_attn_minilm_ignores_padding_keys_even_with_mass_on_them():
    mask = MASKS["ragged"]
    g = torch.Generator().manual_seed(5)
    p_t, p_s = torch.randn(2, 3, 2, 5, 5, generator=g).softmax(-1)  # (B, h, T, T), padding keys not masked
    m = torch.tensor(mask)
    loss = build_one("AttnMiniLM", D2, D2)(Features(m, attentions={1: p_t}), Features(m, attentions={1: p_s}), None)
    assert loss.item() == pytest.approx(ref_row_kl(*lists(p_t, p_s), mask), rel=RTOL, abs=ATOL)


def test_attn_minilm_exact_zeros_and_tiny_probabilities():
    """Bug 1 of the original code: `attn + 1e-6 / attn.sum()` (precedence slip) shifted every probability."""
    mask = MASKS["ragged"]
    m = torch.tensor(mask)
    g = torch.Generator().manual_seed(3)
    p_t = masked_softmax(torch.randn(3, 2, 5, 5, generator=g), m)  # (B, h, T, T)
    p_t[:, :, :, 1] = 0.0  # exact zeros at a real key
    p_t = p_t / p_t.sum(-1, keepdim=True)
    scores_s = torch.randn(3, 2, 5, 5, generator=g)
    scores_s[:, :, :, 2] -= 20.0  # student probabilities ~1e-9 where the teacher has mass
    p_s = masked_softmax(scores_s, m)
    adaptor = build_one("AttnMiniLM", D2, D2)
    same = adaptor(Features(m, attentions={1: p_t}), Features(m, attentions={1: p_t.clone()}), None)
    assert same.item() == 0.0
    ref = ref_row_kl(*lists(p_t, p_s), mask)
    loss = adaptor(Features(m, attentions={1: p_t}), Features(m, attentions={1: p_s}), None)
    assert loss.item() == pytest.approx(ref, rel=RTOL, abs=ATOL)
    eps = 1e-6 / p_s.sum().item()
    buggy = ref_row_kl(*lists(p_t, p_s + eps), mask)
    assert buggy != pytest.approx(ref, rel=1e-3)


def test_val_minilm(mask):
    feats_t, _ = make_feats(D3, mask, 0)
    feats_s, _ = make_feats(D2, mask, 1)
    adaptor = build_one({"name": "ValMiniLM", "layer_map": CROSS}, D3, D2)
    refs = []
    for t, s in CROSS:
        v_t, v_s = lists(feats_t.values[t], feats_s.values[s])
        refs.append(ref_row_kl(ref_relation(v_t, mask), ref_relation(v_s, mask), mask))
    assert adaptor(feats_t, feats_s, None).item() == pytest.approx(mean(refs), rel=RTOL, abs=ATOL)


@pytest.mark.parametrize("name, feature", [("QQMiniLMv2", "queries"), ("KKMiniLMv2", "keys"), ("VVMiniLMv2", "values")])
def test_minilmv2_relations(name, feature, mask):
    dims_t = ModelDims(num_layers=3, hidden_size=8, num_heads=4)  # head size 2
    dims_s = ModelDims(num_layers=2, hidden_size=6, num_heads=3)  # head size 2
    feats_t, _ = make_feats(dims_t, mask, 0)
    feats_s, _ = make_feats(dims_s, mask, 1)
    adaptor = build_one({"name": name, "layer_map": CROSS, "relation_heads": 2}, dims_t, dims_s)
    refs = []
    for t, s in CROSS:
        x_t, x_s = lists(getattr(feats_t, feature)[t], getattr(feats_s, feature)[s])
        refs.append(ref_row_kl(ref_relation(ref_split(x_t, 2), mask), ref_relation(ref_split(x_s, 2), mask), mask))
    assert adaptor(feats_t, feats_s, None).item() == pytest.approx(mean(refs), rel=RTOL, abs=ATOL)


@pytest.mark.parametrize("name", ["AttnMiniLM", "ValMiniLM", "VVMiniLMv2"])
def test_padding_mask_follows_each_example(name):
    """Bug 3 of the original code: a mask repeated in another order than the (batch × heads × layers) reshape."""
    mask = MASKS["ragged"]
    feats_t, _ = make_feats(D3, mask, 0)
    feats_s, _ = make_feats(D2, mask, 1)
    adaptor = build_one({"name": name, "layer_map": CROSS}, D3, D2)
    feature = adaptor.feature

    def ref(m: list) -> float:
        out = []
        for t, s in CROSS:
            x_t, x_s = lists(getattr(feats_t, feature)[t], getattr(feats_s, feature)[s])
            if feature == "attentions":
                out.append(ref_row_kl(x_t, x_s, m))
            else:
                out.append(ref_row_kl(ref_relation(x_t, m), ref_relation(x_s, m), m))
        return mean(out)

    permuted = [mask[1], mask[2], mask[0]]
    assert ref(permuted) != pytest.approx(ref(mask), rel=1e-3)
    assert adaptor(feats_t, feats_s, None).item() == pytest.approx(ref(mask), rel=RTOL, abs=ATOL)


def test_attn_tinybert(mask):
    feats_t, _ = make_feats(D3, mask, 0)
    feats_s, _ = make_feats(D2, mask, 1)
    adaptor = build_one({"name": "AttnTinyBERT", "layer_map": CROSS}, D3, D2)
    refs = []
    for t, s in CROSS:
        a_t, a_s = lists(feats_t.attentions[t], feats_s.attentions[s])
        total, count = 0.0, 0
        for b, row in enumerate(mask):
            for h in range(2):
                for q in range(5):
                    for k in range(5):
                        if row[q] and row[k]:
                            total += (a_s[b][h][q][k] - a_t[b][h][q][k]) ** 2
                            count += 1
        refs.append(total / count)
    assert adaptor(feats_t, feats_s, None).item() == pytest.approx(mean(refs), rel=RTOL, abs=ATOL)


@pytest.mark.parametrize("width_s", [8, 6])
def test_hidn_tinybert(mask, width_s):
    dims_s = ModelDims(num_layers=2, hidden_size=width_s, num_heads=2)
    feats_t, _ = make_feats(D3, mask, 0)
    feats_s, _ = make_feats(dims_s, mask, 1)
    adaptor = build_one({"name": "HidnTinyBERT", "layer_map": CROSS}, D3, dims_s)
    assert (adaptor.projection is None) == (width_s == 8)
    proj = adaptor.projection and linear_ref(adaptor.projection)
    refs = [ref_token_mse(*lists(feats_t.hidden_states[t], feats_s.hidden_states[s]), mask, proj) for t, s in CROSS]
    assert adaptor(feats_t, feats_s, None).item() == pytest.approx(mean(refs), rel=RTOL, abs=ATOL)


@pytest.mark.parametrize("width_s", [8, 6])
def test_embd_tinybert(mask, width_s):
    dims_s = ModelDims(num_layers=2, hidden_size=width_s, num_heads=2)
    feats_t, _ = make_feats(D3, mask, 0)
    feats_s, _ = make_feats(dims_s, mask, 1)
    adaptor = build_one("EmbdTinyBERT", D3, dims_s)
    proj = adaptor.projection and linear_ref(adaptor.projection)
    ref = ref_token_mse(*lists(feats_t.embeddings, feats_s.embeddings), mask, proj)
    assert adaptor(feats_t, feats_s, None).item() == pytest.approx(ref, rel=RTOL, abs=ATOL)


@pytest.mark.parametrize("width_s", [8, 6])
def test_hidn_pkd(mask, width_s):
    dims_t = ModelDims(num_layers=6, hidden_size=8, num_heads=2)
    dims_s = ModelDims(num_layers=3, hidden_size=width_s, num_heads=2)
    feats_t, _ = make_feats(dims_t, mask, 0)
    feats_s, _ = make_feats(dims_s, mask, 1)
    adaptor = build_one("HidnPKD", dims_t, dims_s)
    assert adaptor.layer_map == ((1, 0), (3, 1))  # skip
    proj = adaptor.projection and linear_ref(adaptor.projection)

    def unit(v: list) -> list:
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    refs = []
    for t, s in adaptor.layer_map:
        h_t, h_s = lists(feats_t.hidden_states[t], feats_s.hidden_states[s])
        total, count = 0.0, 0
        for b, row in enumerate(mask):
            if row[0]:
                u, v = unit(h_t[b][0]), unit(proj(h_s[b][0]) if proj else h_s[b][0])
                total += sum((x - y) ** 2 for x, y in zip(u, v))
                count += len(u)
        refs.append(total / count)
    assert adaptor(feats_t, feats_s, None).item() == pytest.approx(mean(refs), rel=RTOL, abs=ATOL)


def test_cos_hidden(mask):
    feats_t, _ = make_feats(D3, mask, 0)
    feats_s, _ = make_feats(D2, mask, 1)
    adaptor = build_one({"name": "CosHidden", "layer_map": CROSS}, D3, D2)
    refs = []
    for t, s in CROSS:
        h_t, h_s = lists(feats_t.hidden_states[t], feats_s.hidden_states[s])
        cos = [
            sum(u * v for u, v in zip(h_t[b][i], h_s[b][i]))
            / math.sqrt(sum(u * u for u in h_t[b][i]) * sum(v * v for v in h_s[b][i]))
            for b, row in enumerate(mask)
            for i, on in enumerate(row)
            if on
        ]
        refs.append(mean([1 - c for c in cos]))
    assert adaptor(feats_t, feats_s, None).item() == pytest.approx(mean(refs), rel=RTOL, abs=ATOL)


# ---------------------------------------------------------------------------------------------------------------------
# Properties of every registered adaptor

DIMS_T = ModelDims(num_layers=4, hidden_size=32, num_heads=4)
STUDENTS = [ModelDims(num_layers=2, hidden_size=16, num_heads=2), ModelDims(num_layers=2, hidden_size=32, num_heads=4)]
LABELS = torch.tensor([0, 2, 1])


def smallest_student(name: str) -> tuple[Adaptor, ModelDims]:
    """The adaptor with the narrowest student it accepts (a projection where it has one)."""
    for dims_s in STUDENTS:
        try:
            return build_one(name, DIMS_T, dims_s), dims_s
        except UserError:
            continue
    raise AssertionError(f"{name} accepts none of the test students")


@pytest.mark.parametrize("name", sorted(ADAPTORS))
@pytest.mark.parametrize("mask_name", sorted(MASKS))
def test_zero_when_equal_positive_otherwise(name, mask_name):
    mask = MASKS[mask_name]
    adaptor = build_one(name, DIMS_T, DIMS_T)
    feats_t, _ = make_feats(DIMS_T, mask, 0, labels=LABELS)
    same, _ = make_feats(DIMS_T, mask, 0, labels=LABELS)
    assert adaptor(feats_t, same, LABELS).item() == pytest.approx(0.0, abs=1e-6)
    other, _ = make_feats(DIMS_T, mask, 1)
    assert adaptor(feats_t, other, LABELS).item() > 1e-4


@pytest.mark.parametrize("name", sorted(ADAPTORS))
@pytest.mark.parametrize("teacher_mode", ["plain", "no_grad", "requires_grad"])
def test_gradients_reach_student_and_projection_never_teacher(name, teacher_mode):
    """Teacher tensors: plain, from a forward under torch.no_grad, or still attached to a graph (must be detached)."""
    adaptor, dims_s = smallest_student(name)
    mask = MASKS["empty"]
    if teacher_mode == "no_grad":
        with torch.no_grad():
            feats_t, leaves_t = make_feats(DIMS_T, mask, 0, grad=True)
    else:
        feats_t, leaves_t = make_feats(DIMS_T, mask, 0, grad=teacher_mode == "requires_grad")
    feats_s, leaves_s = make_feats(dims_s, mask, 1, grad=True)
    loss = adaptor(feats_t, feats_s, LABELS)
    assert loss.requires_grad and torch.isfinite(loss)
    loss.backward()
    assert all(x.grad is None for x in leaves_t)
    grads = [x.grad for x in leaves_s if x.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    assert any(gr.abs().sum() > 0 for gr in grads)
    for p in adaptor.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(ADAPTORS))
def test_all_padding_batch_is_finite(name):
    adaptor, dims_s = smallest_student(name)
    mask = [[0] * 5] * 3
    feats_t, _ = make_feats(DIMS_T, mask, 0)
    feats_s, leaves_s = make_feats(dims_s, mask, 1, grad=True)
    loss = adaptor(feats_t, feats_s, LABELS)
    loss.backward()
    assert torch.isfinite(loss)
    if not adaptor.request()[1].keys() & {"logits"}:  # nothing but padding to compare
        assert loss.item() == 0.0
    assert all(torch.isfinite(x.grad).all() for x in leaves_s if x.grad is not None)


@pytest.mark.parametrize("name", sorted(ADAPTORS))
def test_reads_only_what_it_requests(name):
    adaptor, dims_s = smallest_student(name)
    req_t, req_s = adaptor.request()
    merge_requests(req_t, req_s)  # valid feature names
    feats_t, _ = make_feats(DIMS_T, MASKS["ragged"], 0)
    feats_s, _ = make_feats(dims_s, MASKS["ragged"], 1)
    full = adaptor(feats_t, feats_s, LABELS)
    assert torch.equal(adaptor(only_requested(feats_t, req_t), only_requested(feats_s, req_s), LABELS), full)
    assert adaptor.stage in ("inter", "pred")
    assert adaptor.key == name and adaptor.weight == 1.0


def test_request_follows_layer_map():
    adaptor = build_one({"name": "AttnMiniLM", "layer_map": [[0, 1], [3, 1]]}, DIMS_T, STUDENTS[1])
    assert adaptor.request() == ({"attentions": frozenset({0, 3})}, {"attentions": frozenset({1})})
    assert build_one("HardCE", DIMS_T, DIMS_T).request() == ({}, {"logits": frozenset()})


@pytest.mark.parametrize("name", sorted(ADAPTORS))
def test_sentence_level_accepts_different_tokenizers(name):
    adaptor, dims_s = smallest_student(name)
    feats_t, _ = make_feats(DIMS_T, [[1] * 7] * 3, 0)
    feats_s, _ = make_feats(dims_s, MASKS["ragged"], 1)
    if adaptor.sentence_level:
        assert torch.isfinite(adaptor(feats_t, feats_s, LABELS))
    else:
        with pytest.raises(UserError) as err:
            adaptor(feats_t, feats_s, LABELS)
        assert "\n" not in str(err.value) and "tokenizer" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------------
# Layer maps


@pytest.mark.parametrize(
    "spec, n_t, n_s, expected",
    [
        ("last", 12, 4, [(11, 3)]),
        ("uniform", 12, 4, [(2, 0), (5, 1), (8, 2), (11, 3)]),
        ("uniform", 6, 4, [(1, 0), (2, 1), (4, 2), (5, 3)]),  # round half up: 1.5 -> 2, 4.5 -> 5
        ("uniform", 3, 3, [(0, 0), (1, 1), (2, 2)]),
        ("skip", 12, 6, [(1, 0), (3, 1), (5, 2), (7, 3), (9, 4)]),
        ("skip", 12, 4, [(2, 0), (5, 1), (8, 2)]),
        ([[0, 0], [5, 1]], 6, 2, [(0, 0), (5, 1)]),
    ],
)
def test_layer_maps(spec, n_t, n_s, expected):
    assert resolve_layer_map(spec, ModelDims(n_t, 8, 2), ModelDims(n_s, 8, 2)) == tuple(expected)


@pytest.mark.parametrize(
    "spec, n_t, n_s, culprit, in_range",
    [
        ([[6, 0]], 6, 2, "pair [6, 0] out of range", False),
        ([[0, -1]], 6, 2, "pair [0, -1] out of range", False),
        ("uniform", 1, 3, "pair [-1, 0] out of range", False),
        ("skip", 6, 1, "maps no layer", False),
        ("middle", 6, 2, "got 'middle'", True),
        ([[0, True]], 6, 2, "got [[0, True]]", True),
        ([], 6, 2, "got []", True),
    ],
)
def test_bad_layer_maps(spec, n_t, n_s, culprit, in_range):
    with pytest.raises(UserError) as err:
        build_one({"name": "HidnTinyBERT", "layer_map": spec}, ModelDims(n_t, 8, 2), ModelDims(n_s, 8, 2))
    msg = str(err.value)
    assert "\n" not in msg and culprit in msg and "HidnTinyBERT" in msg
    assert in_range or f"teacher has {n_t} layers, student has {n_s}" in msg


# ---------------------------------------------------------------------------------------------------------------------
# Building: settings, temperature, keys, errors


def test_settings_weight_key_and_temperature():
    mods = build_adaptors(
        [
            "AttnMiniLM",
            {"name": "HidnTinyBERT", "weight": 0.5, "layer_map": "uniform"},
            {"name": "LogitKL", "weight": 1.0, "temperature": 4.0},
            {"name": "LogitKL", "key": "kl_t1", "temperature": 1},
            "LogitMSE",
            "HardCE",
        ],
        DIMS_T,
        STUDENTS[1],
        temperature=2.0,
    )
    assert [m.key for m in mods] == ["AttnMiniLM", "HidnTinyBERT", "LogitKL", "kl_t1", "LogitMSE", "HardCE"]
    assert [m.weight for m in mods] == [1.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert [mods[2].temperature, mods[3].temperature, mods[4].temperature] == [4.0, 1.0, 2.0]
    assert mods[1].layer_map == ((1, 0), (3, 1))
    assert [m.stage for m in mods] == ["inter", "inter", "pred", "pred", "pred", "pred"]
    assert adaptor_settings(ADAPTORS["QQMiniLMv2"]) == ["relation_heads", "layer_map", "weight", "key"]


def test_projection_is_a_submodule_only_when_widths_differ():
    narrow = build_adaptors(["HidnTinyBERT", "EmbdTinyBERT", "HidnPKD"], DIMS_T, STUDENTS[0])
    assert [tuple(m.projection.weight.shape) for m in narrow] == [(32, 16)] * 3
    assert sum(p.numel() for p in narrow.parameters()) == 3 * (32 * 16 + 32)
    same = build_adaptors(["HidnTinyBERT", "EmbdTinyBERT", "HidnPKD"], DIMS_T, STUDENTS[1])
    assert [m.projection for m in same] == [None] * 3


def one_line_error(specs, dims_s: ModelDims = STUDENTS[1], **kw) -> str:
    with pytest.raises(UserError) as err:
        build_adaptors(specs, DIMS_T, dims_s, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_unknown_name_lists_registered():
    msg = one_line_error(["LogitKL", "AttnMiniLm"])
    assert "adaptors[1]" in msg and "'AttnMiniLm'" in msg and all(name in msg for name in ADAPTORS)


def test_unknown_setting_names_adaptor_and_valid_settings():
    msg = one_line_error([{"name": "HidnTinyBERT", "layermap": "last"}])
    assert "HidnTinyBERT" in msg and "'layermap'" in msg and "layer_map, weight, key" in msg
    msg = one_line_error([{"name": "HardCE", "temperature": 2.0}])
    assert "'temperature'" in msg and "HardCE" in msg


def test_duplicate_key():
    msg = one_line_error(["LogitKL", {"name": "LogitKL", "temperature": 4}])
    assert "'LogitKL'" in msg and "adaptors[0]" in msg and "adaptors[1]" in msg and "key" in msg
    msg = one_line_error(["LogitKL", {"name": "LogitMSE", "key": "LogitKL"}])
    assert "'LogitKL'" in msg and "LogitMSE" in msg


@pytest.mark.parametrize(
    "spec, dims_s, culprits",
    [
        ("CosHidden", STUDENTS[0], ["CosHidden", "hidden sizes", "teacher 32, student 16"]),
        ("AttnMiniLM", STUDENTS[0], ["AttnMiniLM", "attention head counts", "teacher 4, student 2"]),
        ("AttnTinyBERT", STUDENTS[0], ["AttnTinyBERT", "attention head counts", "teacher 4, student 2"]),
        ("ValMiniLM", STUDENTS[0], ["ValMiniLM", "attention head counts", "teacher 4, student 2"]),
        ({"name": "VVMiniLMv2", "relation_heads": 3}, STUDENTS[0], ["VVMiniLMv2", "relation_heads 3", "32", "16"]),
        ({"name": "QQMiniLMv2", "relation_heads": 0}, STUDENTS[0], ["QQMiniLMv2", "relation_heads", "0"]),
    ],
)
def test_incompatible_shapes_without_projection(spec, dims_s, culprits):
    msg = one_line_error([spec], dims_s)
    assert all(c in msg for c in culprits), msg


@pytest.mark.parametrize(
    "specs, culprit",
    [
        ([3], "3"),
        ([{"weight": 1.0}], "name"),
        ([["LogitKL"]], "['LogitKL']"),
        ([], "non-empty list"),
        ("LogitKL", "'LogitKL'"),
        ([{"name": "LogitKL", "weight": "high"}], "weight"),
        ([{"name": "LogitKL", "weight": -1}], "weight"),
        ([{"name": "LogitKL", "temperature": 0}], "temperature"),
        ([{"name": "LogitKL", "key": ""}], "key"),
    ],
)
def test_bad_spec(specs, culprit):
    assert culprit in one_line_error(specs)


# ---------------------------------------------------------------------------------------------------------------------
# Registering a user adaptor (the README example)


def test_register_user_adaptor(monkeypatch):
    monkeypatch.setattr(adaptors_mod, "ADAPTORS", dict(ADAPTORS))

    @register_adaptor
    class LogitL1(Adaptor):
        """L1 distance between teacher and student logits."""

        stage = "pred"
        sentence_level = True

        def __init__(self, dims_t, dims_s, *, scale: float = 1.0, **kwargs):
            super().__init__(dims_t, dims_s, **kwargs)
            self.scale = scale

        def request(self):
            return {"logits": frozenset()}, {"logits": frozenset()}

        def forward(self, feats_t, feats_s, labels=None):
            return self.scale * (feats_s.logits - feats_t.logits.detach()).abs().mean()

    (adaptor,) = build_adaptors([{"name": "LogitL1", "scale": 2.0, "weight": 0.1}], DIMS_T, DIMS_T)
    assert adaptor.scale == 2.0 and adaptor.weight == 0.1 and adaptor.key == "LogitL1"
    assert "scale, weight, key" in one_line_error([{"name": "LogitL1", "scal": 2.0}])
    assert "LogitL1" in one_line_error(["LogitL2"])
    with pytest.raises(UserError, match="'LogitL1' is already registered"):
        register_adaptor(type("LogitL1", (LogitL1,), {}))
    with pytest.raises(TypeError):
        register_adaptor(torch.nn.Linear)


def test_sentence_embedding_adaptors():
    x_t, x_s = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    feats_t = Features(attention_mask=torch.ones(2, 3), pooled=x_t)
    feats_s = Features(attention_mask=torch.ones(2, 5), pooled=x_s.requires_grad_())  # other tokenizer, other length
    dims = ModelDims(num_layers=2, hidden_size=2, num_heads=1)
    assert build_one("SentMSE", dims, dims)(feats_t, feats_s).item() == pytest.approx((1 + 0 + 1 + 1) / 4)
    cos = build_one("SentCos", dims, dims)(feats_t, feats_s)
    assert cos.item() == pytest.approx((0 + (1 - 1 / math.sqrt(2))) / 2)
    cos.backward()
    assert x_s.grad is not None and x_t.grad is None
    with pytest.raises(UserError, match="sentence-embedding widths differ .teacher 8, student 2."):
        build_one("SentMSE", D3, dims)
