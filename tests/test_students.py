from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

from bert.errors import UserError
from helper.config import InitFromConfig, StudentConfig
from helper.students import build_encoder_student, build_student
from tests.conftest import tiny_bert_config

LABELS = ["neg", "pos"]


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(num_hidden_layers=4)).eval()


def test_cut_from_teacher_copies_the_named_layers(teacher):
    student = build_student(StudentConfig(init_from_teacher=InitFromConfig(layers=[3, 0])), teacher, "t", LABELS)
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    for s_idx, t_idx in ((0, 3), (1, 0)):
        s_state = student.bert.encoder.layer[s_idx].state_dict()
        t_state = teacher.bert.encoder.layer[t_idx].state_dict()
        assert all(torch.equal(s_state[k], t_state[k]) for k in t_state)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    # a copy, not shared storage: training the student cannot touch the teacher
    assert student.bert.encoder.layer[0].output.dense.weight is not teacher.bert.encoder.layer[3].output.dense.weight
    assert teacher.config.num_hidden_layers == 4
    student.eval()
    assert student(input_ids=torch.randint(0, 100, (2, 7))).logits.shape == (2, 2)


def test_cut_without_embeddings_reinitialises_them(teacher):
    cfg = StudentConfig(init_from_teacher=InitFromConfig(layers=[1], embeddings=False))
    student = build_student(cfg, teacher, "t", LABELS)
    emb_s, emb_t = student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight
    assert emb_s.shape == emb_t.shape and not torch.equal(emb_s, emb_t)


def test_random_init_student_from_config(teacher):
    cfg = StudentConfig(config={"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2})
    student = build_student(cfg, teacher, "t", LABELS)
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (1, 16)
    assert student.config.vocab_size == teacher.config.vocab_size


def test_student_by_name(tiny_model_dir, teacher):
    student = build_student(StudentConfig(name=tiny_model_dir), teacher, "t", LABELS)
    assert student.config.id2label == {0: "neg", 1: "pos"}


@pytest.mark.parametrize(
    "cfg, match",
    [
        (StudentConfig(init_from_teacher=InitFromConfig(layers=[1, 4])), r"layers: \[4\] out of range .* 4 layers"),
        (StudentConfig(config={"hiden_size": 8}), r"student.config.hiden_size: not a field"),
        (StudentConfig(config={"hidden_size": 30}), "not a multiple of num_attention_heads"),
        (StudentConfig(name="/no/such/model"), "cannot load model config '/no/such/model': no such directory"),
        (
            StudentConfig(init_from_teacher=InitFromConfig(layers=[1], intermediate_size=38)),
            r"init_from_teacher.intermediate_size: 38 is more than the 37 neurons per layer of t$",
        ),
    ],
)
def test_bad_student_is_one_line(teacher, cfg, match):
    with pytest.raises(UserError, match=match) as err:
        build_student(cfg, teacher, "t", LABELS)
    assert "\n" not in str(err.value)


def test_a_narrow_cut_keeps_each_layers_largest_feed_forward_neurons_in_order(teacher, tmp_path):
    cfg = StudentConfig(init_from_teacher=InitFromConfig(layers=[3, 0], intermediate_size=20))
    student = build_student(cfg, teacher, "t", LABELS).eval()
    assert student.config.intermediate_size == 20 and teacher.config.intermediate_size == 37
    for s_idx, t_idx in ((0, 3), (1, 0)):
        layer_t, layer_s = teacher.bert.encoder.layer[t_idx], student.bert.encoder.layer[s_idx]
        in_t, out_t = layer_t.intermediate.dense, layer_t.output.dense
        score = in_t.weight.norm(dim=1) * out_t.weight.norm(dim=0)
        keep = sorted(score.argsort(descending=True)[:20].tolist())
        assert torch.equal(layer_s.intermediate.dense.weight, in_t.weight[keep])
        assert torch.equal(layer_s.intermediate.dense.bias, in_t.bias[keep])
        assert torch.equal(layer_s.output.dense.weight, out_t.weight[:, keep])
        assert torch.equal(layer_s.output.dense.bias, out_t.bias)
        assert torch.equal(layer_s.attention.self.query.weight, layer_t.attention.self.query.weight)
    student.save_pretrained(tmp_path)  # its config says the width: it loads as it is
    again = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 100, (2, 7))
    assert torch.allclose(again(input_ids=x).logits, student(input_ids=x).logits)
    full = InitFromConfig(layers=[3, 0], intermediate_size=37)  # every neuron: the plain cut
    plain = build_student(StudentConfig(init_from_teacher=InitFromConfig(layers=[3, 0])), teacher, "t", LABELS)
    assert torch.allclose(
        build_student(StudentConfig(init_from_teacher=full), teacher, "t", LABELS).eval()(input_ids=x).logits,
        plain.eval()(input_ids=x).logits,
        atol=1e-6,
    )


def test_a_narrow_cut_of_an_encoder_and_of_distilbert():
    cfg = StudentConfig(init_from_teacher=InitFromConfig(layers=[1], intermediate_size=8))
    torch.manual_seed(0)
    bert = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=2)).eval()
    encoder = build_encoder_student(cfg, bert.bert, "t", mlm=False)
    assert encoder.config.intermediate_size == 8 and encoder.encoder.layer[0].intermediate.dense.out_features == 8
    small = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64)
    distil = DistilBertForSequenceClassification(small).eval()
    student = build_student(cfg, distil, "t", LABELS).eval()
    assert student.config.hidden_dim == 8 and student.distilbert.transformer.layer[0].ffn.lin2.in_features == 8
    assert student(input_ids=torch.randint(0, 100, (2, 5))).logits.shape == (2, 2)


def test_random_layers_with_the_teachers_embeddings(teacher):
    cfg = StudentConfig(init_from_teacher=InitFromConfig(layers=[1, 2], transformer_blocks=False))
    encoder = build_encoder_student(cfg, teacher.bert, "t", mlm=False)
    classifier = build_student(cfg, teacher, "t", LABELS)
    for student in (encoder, classifier.bert):
        assert torch.equal(student.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
        query_s, query_t = (m.encoder.layer[0].attention.self.query.weight for m in (student, teacher.bert))
        assert query_s.shape == query_t.shape and not torch.equal(
            query_s, teacher.bert.encoder.layer[1].attention.self.query.weight
        )
