"""FeatureRecorder against the eager reference on tiny random models of every supported family."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from bert.errors import UserError
from bert.families import FAMILIES, Family, get_family, masked_logits
from bert.features import FEATURES, LAYER_FEATURES
from bert.recorder import FeatureRecorder, _additive
from update_transformers import padded_batch, split_heads, tiny_model

ALL = {name: range(2) for name in FEATURES}
BERT = FAMILIES[0]


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def eager_twin(model: nn.Module, family: Family) -> nn.Module:
    eager = tiny_model(family, attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    return eager


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_attentions_match_eager_with_padding(family):
    model = tiny_model(family)
    inputs = padded_batch()
    with torch.no_grad(), FeatureRecorder(model, {"attentions": [0, 1]}) as rec:
        _, feats = rec(**inputs)
        ref = eager_twin(model, family)(**inputs, output_attentions=True).attentions
    for i in range(2):
        assert feats.attentions[i].shape == (3, 4, 9, 9)
        torch.testing.assert_close(feats.attentions[i], ref[i], atol=1e-5, rtol=0)
        pad_keys = inputs["attention_mask"][:, None, None, :].expand_as(feats.attentions[i]) == 0  # (B, h, T, T)
        assert feats.attentions[i][pad_keys].abs().max() == 0


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_bert_without_attention_mask(impl):
    """No mask at all (sdpa then passes None to the layers) still matches eager."""
    model = tiny_model(BERT, attn_implementation=impl)
    ids = padded_batch()["input_ids"]
    with torch.no_grad(), FeatureRecorder(model, {"attentions": [1]}) as rec:
        _, feats = rec(input_ids=ids)
        ref = eager_twin(model, BERT)(input_ids=ids, output_attentions=True).attentions
    torch.testing.assert_close(feats.attentions[1], ref[1], atol=1e-5, rtol=0)
    assert torch.equal(feats.attention_mask, torch.ones_like(ids))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_train_mode_attentions_are_pre_dropout(family):
    model = tiny_model(family, **{family.dropout_keys[1]: 0.5}).train()
    inputs = padded_batch()
    with FeatureRecorder(model, {"attentions": [0, 1]}) as rec:
        _, feats = rec(**inputs)
    for att in feats.attentions.values():
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]), atol=1e-5, rtol=0)
        assert (att > 0).any(-1).all()  # dropout with p=0.5 would zero whole rows of 9 keys now and then


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_projections_hidden_states_embeddings_and_logits(family):
    model = tiny_model(family)
    inputs = padded_batch()
    with torch.no_grad(), FeatureRecorder(model, ALL) as rec:
        out, feats = rec(**inputs)
        ref = model(**inputs, output_hidden_states=True)
        for i in range(2):
            for name, linear in zip(("queries", "keys", "values"), family.projections(model, i)):
                expected = split_heads(linear(ref.hidden_states[i]), 4)  # (B, h, T, d)
                assert getattr(feats, name)[i].shape == (3, 4, 9, 8)
                torch.testing.assert_close(getattr(feats, name)[i], expected, atol=1e-6, rtol=0)
            torch.testing.assert_close(feats.hidden_states[i], ref.hidden_states[i + 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(feats.embeddings, ref.hidden_states[0], atol=1e-6, rtol=0)
    assert feats.logits is out.logits
    assert feats.attention_mask is inputs["attention_mask"]


def test_electra_embeddings_are_the_projected_layer_input():
    """ELECTRA projects embedding_size -> hidden_size: `embeddings` is the (B, T, H) input of layer 0."""
    electra = next(f for f in FAMILIES if f.name == "ELECTRA")
    model = tiny_model(electra, embedding_size=16)
    with torch.no_grad(), FeatureRecorder(model, {"embeddings": []}) as rec:
        _, feats = rec(**padded_batch())
        ref = model(**padded_batch(), output_hidden_states=True).hidden_states[0]
    assert feats.embeddings.shape == (3, 9, 32)
    torch.testing.assert_close(feats.embeddings, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_outputs_bit_identical_and_kernel_kept(family):
    model = tiny_model(family)
    impl = model.config._attn_implementation
    inputs = padded_batch()
    with torch.no_grad():
        before = model(**inputs).logits
        with FeatureRecorder(model, ALL) as rec:
            out, _ = rec(**inputs)
    assert torch.equal(out.logits, before)
    assert model.config._attn_implementation == impl
    assert impl == ("eager" if family.name == "MPNet" else "sdpa")  # MPNet has no sdpa path in transformers


def test_grads_reach_student_parameters():
    model = tiny_model(BERT).train()
    with FeatureRecorder(model, {"attentions": [1], "values": [0], "hidden_states": [0], "embeddings": []}) as rec:
        _, feats = rec(**padded_batch())
    loss = feats.attentions[1].square().sum() + feats.values[0].sum() + feats.hidden_states[0].sum()
    loss = loss + feats.embeddings.sum()
    loss.backward()
    attn = BERT.self_attention(model, 1)
    for param in (attn.query.weight, attn.key.weight, BERT.self_attention(model, 0).value.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert BERT.embeddings(model).word_embeddings.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_grads():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(BERT).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        torch.manual_seed(1)
        with FeatureRecorder(model, {"attentions": [0, 1], "hidden_states": [0]}) as rec:
            _, feats = rec(**padded_batch())
        (
            feats.attentions[0].square().sum() + feats.attentions[1].square().sum() + feats.hidden_states[0].sum()
        ).backward()
        grads.append(BERT.self_attention(model, 0).query.weight.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_teacher_contexts(context):
    model = tiny_model(BERT)
    with FeatureRecorder(model, ALL) as rec:
        _, expected = rec(**padded_batch())
        with context():
            _, feats = rec(**padded_batch())
    for name in LAYER_FEATURES:
        for i in range(2):
            assert not getattr(feats, name)[i].requires_grad
            assert torch.equal(getattr(feats, name)[i], getattr(expected, name)[i].detach())


def test_nothing_requested_registers_no_hooks():
    model = tiny_model(BERT)
    for request in ({}, {"logits": []}, {"attentions": [], "values": ()}):
        with FeatureRecorder(model, request) as rec:
            assert hook_count(model) == 0
            _, feats = rec(**padded_batch())
        assert feats.attentions == {} and feats.values == {} and feats.embeddings is None


def test_only_requested_layers_and_features_are_hooked_and_returned():
    model = tiny_model(BERT)
    with FeatureRecorder(model, {"attentions": [1]}) as rec:
        attn0, attn1 = BERT.self_attention(model, 0), BERT.self_attention(model, 1)
        assert hook_count(attn0) == 0
        assert len(attn1.query._forward_hooks) == len(attn1.key._forward_hooks) == 1
        assert len(attn1.value._forward_hooks) == 0 and len(attn1._forward_pre_hooks) == 1
        _, feats = rec(**padded_batch())
    assert list(feats.attentions) == [1]
    assert feats.queries == {} and feats.keys == {} and feats.values == {}


def test_close_removes_every_hook_and_is_idempotent():
    model = tiny_model(BERT)
    rec = FeatureRecorder(model, ALL)
    assert hook_count(model) > 0
    rec.close()
    assert hook_count(model) == 0
    rec.close()
    with FeatureRecorder(model, ALL):
        assert hook_count(model) > 0
    assert hook_count(model) == 0


def test_two_recorders_at_once():
    distilbert = next(f for f in FAMILIES if f.name == "DistilBERT")
    teacher, student = tiny_model(BERT), tiny_model(distilbert)
    inputs = padded_batch()
    with FeatureRecorder(teacher, {"hidden_states": [1]}) as rec_t, FeatureRecorder(student, ALL) as rec_s:
        _, feats_t = rec_t(**inputs)
        _, feats_s = rec_s(**inputs)
        _, again_t = rec_t(**inputs)
        ref_t = teacher(**inputs, output_hidden_states=True).hidden_states
        ref_s = student(**inputs, output_hidden_states=True).hidden_states
    assert list(feats_t.hidden_states) == [1] and feats_t.attentions == {}
    torch.testing.assert_close(feats_t.hidden_states[1], ref_t[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(again_t.hidden_states[1], ref_t[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(feats_s.hidden_states[1], ref_s[2], atol=1e-6, rtol=0)


def test_nothing_leaks_between_passes():
    model = tiny_model(BERT)
    with FeatureRecorder(model, ALL) as rec:
        _, first = rec(**padded_batch(3, 9))
        assert rec._store == {}
        model(**padded_batch())  # a plain forward while hooked records nothing
        assert rec._store == {}
        _, second = rec(**padded_batch(2, 5))
    assert first.attentions[0].shape == (3, 4, 9, 9)
    assert second.attentions[0].shape == (2, 4, 5, 5) and second.embeddings.shape == (2, 5, 32)


def test_mask_forms_agree():
    """The 2D (flash), 4D bool (sdpa) and 4D additive (eager) forms of one padding mask give the same term."""
    keep = padded_batch()["attention_mask"]  # (B, T)
    bool4d = keep[:, None, None, :].bool().expand(3, 1, 9, 9)  # (B, 1, T, T)
    additive = torch.zeros(3, 1, 9, 9).masked_fill(~bool4d, torch.finfo(torch.float32).min)
    for mask in (keep, bool4d, additive):
        assert torch.equal(_additive(mask, torch.float32).expand(3, 1, 9, 9), additive)
    with pytest.raises(UserError, match="BlockMask"):
        _additive(type("BlockMask", (), {})(), torch.float32)


def test_get_family_bare_encoder_and_wrapper():
    wrapper = tiny_model(BERT)
    bare = AutoModel.from_config(wrapper.config)
    for model in (wrapper, bare):
        assert get_family(model) is BERT
        assert BERT.layers(model) is model.base_model.encoder.layer
        assert BERT.embeddings(model) is model.base_model.embeddings
    with torch.no_grad(), FeatureRecorder(bare, {"attentions": [0]}) as rec:
        _, feats = rec(**padded_batch())
    assert feats.logits is None and feats.attentions[0].shape == (3, 4, 9, 9)
    with torch.no_grad(), FeatureRecorder(bare, {"logits": []}) as rec, pytest.raises(UserError, match="without"):
        rec(**padded_batch())  # a bare encoder gives no logits


def test_unsupported_model_is_a_one_line_user_error():
    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=4))
    for model in (gpt2, nn.Linear(2, 2)):
        with pytest.raises(UserError) as err:
            FeatureRecorder(model, {"attentions": [0]})
        msg = str(err.value)
        assert "\n" not in msg and type(model).__name__ in msg
        assert all(f.name in msg for f in FAMILIES)


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        ({"attention": [0]}, ["'attention'", "attentions", "hidden_states"]),
        ({"values": [2]}, ["'values'", "layer 2", "0..1"]),
        ({"hidden_states": [-1]}, ["'hidden_states'", "layer -1"]),
        ({"keys": ["0"]}, ["'keys'", "layer '0'"]),
    ],
)
def test_bad_request_is_a_one_line_user_error(request_, words):
    model = tiny_model(BERT)
    with pytest.raises(UserError) as err:
        FeatureRecorder(model, request_)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words)
    assert hook_count(model) == 0


def test_layout_mismatch_fails_loudly():
    broken = dataclasses.replace(BERT, qkv=("q", "key", "value"))
    model = tiny_model(BERT)
    with pytest.raises(UserError, match=r"'q'.*BERT entry of bert/families.py"):
        broken.projections(model, 0)


def test_pooled_by_the_declared_pooling():
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=37)).eval()  # fmt: skip
    ids = torch.tensor([[101, 7, 8, 102], [101, 9, 102, 0]])
    mask = (ids != 0).long()
    out = model(input_ids=ids, attention_mask=mask)
    last = out.last_hidden_state  # (B, T, H)
    want = {
        None: last[:, 0],
        "cls": last[:, 0],
        "mean": torch.stack([last[0].mean(0), last[1, :3].mean(0)]),  # padding left out
        "pooler": out.pooler_output,
    }
    for pooling, expected in want.items():
        with FeatureRecorder(model, {"pooled": []}, pooling) as rec:
            torch.testing.assert_close(rec(input_ids=ids, attention_mask=mask)[1].pooled, expected)
    with pytest.raises(UserError, match="pooling: 'max' is not one of cls, mean, pooler"):
        FeatureRecorder(model, {"pooled": []}, "max")
    masked_lm = AutoModelForMaskedLM.from_config(model.config)
    with pytest.raises(UserError, match="pooling: BertForMaskedLM has no pooler"):
        FeatureRecorder(masked_lm, {"pooled": []}, "pooler")


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert", "electra"])
def test_masked_logits_projects_only_the_chosen_positions(model_type):
    config = AutoConfig.for_model(model_type, vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=37, n_layers=1, dim=32, n_heads=4, hidden_dim=37)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config).eval()
    ids = torch.randint(5, 50, (3, 7))  # (B, T)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    chosen = torch.rand(3, 7) < 0.3  # (B, T)
    calls = []
    model.get_output_embeddings().register_forward_hook(lambda _m, args, out: calls.append(tuple(args[0].shape)))
    got = masked_logits(model, inputs, chosen)  # (N, V)
    full = model(**inputs).logits  # (B, T, V): the hook is gone
    width = model.get_output_embeddings().in_features
    assert calls == [(int(chosen.sum()), width), (3, 7, width)]
    torch.testing.assert_close(got, full[chosen], rtol=1e-5, atol=1e-6)
    got.sum().backward()  # a training loss reaches the weights through it
    assert model.get_input_embeddings().weight.grad is not None
