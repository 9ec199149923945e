"""BiLSTM student (Tang et al. 2019, arXiv:1903.12136): shapes, padding invariance, HF round trip, embedding init."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from bert.bilstm import (
    BiLSTMConfig,
    BiLSTMForSequenceClassification,
    bilstm_student,
    from_teacher_embeddings,
    init_from_word2vec,
    load_word2vec_text,
)
from bert.errors import UserError
from tests.conftest import NEGATIVE, POSITIVE


def small(vocab_size: int = 50, **kw) -> BiLSTMForSequenceClassification:
    torch.manual_seed(0)
    base = dict(vocab_size=vocab_size, embedding_dim=8, hidden_size=6, mlp_hidden=5, num_labels=3)
    return BiLSTMForSequenceClassification(BiLSTMConfig(**{**base, **kw})).eval()


def test_forward_shapes_loss_and_pooled_features():
    model = small()
    ids = torch.randint(1, 50, (4, 7))  # (B, T)
    seen = []
    model.classifier.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    out = model(ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids), labels=ids[:, 0] % 3)
    assert out.logits.shape == (4, 3)
    assert out.loss.ndim == 0 and out.loss > 0
    assert seen[0].shape == (4, 12)  # (B, 2 * hidden_size)
    assert torch.equal(model(ids).logits, out.logits)  # no mask = every token counts
    assert model.embeddings.padding_idx == 0 and not model.embeddings.weight[0].any()


@pytest.mark.parametrize("num_layers", [1, 2])
def test_padding_does_not_change_logits(num_layers):
    model = small(num_layers=num_layers)
    sentence = torch.tensor([[5, 9, 3, 17]])  # (1, 4)
    alone = model(sentence, attention_mask=torch.ones_like(sentence)).logits
    batch = torch.tensor([[5, 9, 3, 17, 0, 0, 0], [8, 1, 2, 3, 4, 6, 7], [0, 0, 0, 5, 9, 3, 17]])  # right, full, left
    mask = (batch != 0).long()
    mask[1] = 1
    logits = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(logits[0:1], alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits[2:3], alone, atol=1e-6, rtol=0)
    assert not torch.allclose(logits[1], alone[0])


def test_save_and_load_with_auto_classes(tmp_path, tokenizer):
    model = small(vocab_size=len(tokenizer), num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, BiLSTMConfig) and config.hidden_size == 6 and config.id2label == {0: "neg", 1: "pos"}
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, BiLSTMForSequenceClassification)
    batch = AutoTokenizer.from_pretrained(tmp_path)(POSITIVE + NEGATIVE, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)


def test_student_from_teacher_copies_embeddings(tiny_model, tokenizer):
    student = bilstm_student(tiny_model, tokenizer, hidden_size=8, mlp_hidden=8)
    teacher_rows = tiny_model.get_input_embeddings().weight
    assert student.config.embedding_dim == 32 and student.config.vocab_size == teacher_rows.shape[0]
    assert torch.equal(student.get_input_embeddings().weight, teacher_rows)
    assert student.config.id2label == tiny_model.config.id2label
    assert student.config.pad_token_id == tokenizer.pad_token_id
    relabelled = bilstm_student(tiny_model, tokenizer, ["neg", "mid", "pos"], teacher_embeddings=False, hidden_size=4)
    assert relabelled.config.num_labels == 3 and relabelled.config.label2id["pos"] == 2
    assert not torch.equal(relabelled.get_input_embeddings().weight, teacher_rows)


def test_teacher_embedding_errors(tiny_model, tokenizer):
    narrow = small(vocab_size=tiny_model.config.vocab_size, embedding_dim=16)
    with pytest.raises(UserError, match=r"32 wide but the student's embedding_dim is 16"):
        from_teacher_embeddings(narrow, tiny_model)
    with pytest.raises(UserError, match=r"teacher has 30522 word embeddings but the student's vocab_size is 50"):
        from_teacher_embeddings(small(embedding_dim=32), tiny_model)
    with pytest.raises(UserError, match=r"32 wide but the student's embedding_dim is 16"):
        bilstm_student(tiny_model, tokenizer, embedding_dim=16)
    with pytest.raises(UserError, match=r"unknown size 'hidden' \(choices: embedding_dim, hidden_size"):
        bilstm_student(tiny_model, tokenizer, hidden=8)


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_word2vec_text_fills_found_rows(tmp_path, tokenizer):
    vocab = tokenizer.get_vocab()
    path = write(tmp_path / "vec.txt", "4 3\nthe 1 2 3\nmovie 0.5 -1e-1 7\nzzqxnotaword 9 9 9\nthe 4 4 4 \n")
    model = small(vocab_size=len(tokenizer), embedding_dim=3)
    before = model.get_input_embeddings().weight.detach().clone()
    assert init_from_word2vec(model, path, tokenizer) == 2
    after = model.get_input_embeddings().weight
    assert after[vocab["the"]].tolist() == [1.0, 2.0, 3.0]  # first occurrence wins
    torch.testing.assert_close(after[vocab["movie"]], torch.tensor([0.5, -0.1, 7.0]))
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted([vocab["the"], vocab["movie"]])
    no_header = write(tmp_path / "plain.txt", "movie 1 1 1\n\nfilm 2 2 2\n")
    weight, found = load_word2vec_text(no_header, tokenizer, 3)
    assert found == 2 and weight.shape == (len(tokenizer), 3) and weight[vocab["film"]].tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"vec\.txt: no word vectors in the file"),
        ("2 3\n", r"vec\.txt: no word vectors in the file"),
        ("2 5\nthe 1 2 3\n", r"vec\.txt: header says 5 dimensions but embedding_dim is 3"),
        ("the 1 2 3\nmovie 1 2\n", r"vec\.txt line 2: expected 3 values, got 2"),
        ("2 3\nthe 1 2 3\nmovie 1 2 3 4\n", r"vec\.txt line 3: expected 3 values, got 4"),
        ("the 1 2 3\nmovie 1 two 3\n", r"vec\.txt line 2: value 'two' is not a number"),
        ("the 1 nan 3\n", r"vec\.txt line 1: values must be finite numbers"),
    ],
)
def test_word2vec_text_bad_files(tmp_path, tokenizer, text, message):
    path = write(tmp_path / "vec.txt", text)
    with pytest.raises(UserError, match=message) as err:
        load_word2vec_text(path, tokenizer, 3)
    assert "\n" not in str(err.value)


def test_word2vec_text_bad_paths_and_sizes(tmp_path, tokenizer):
    with pytest.raises(UserError, match=r"cannot read word vectors .*missing\.txt: No such file"):
        load_word2vec_text(tmp_path / "missing.txt", tokenizer, 3)
    with pytest.raises(UserError, match=r"cannot read word vectors"):
        load_word2vec_text(tmp_path, tokenizer, 3)
    path = write(tmp_path / "vec.txt", "the 1 2 3\n")
    with pytest.raises(UserError, match=rf"tokenizer has {len(tokenizer)} tokens but the embedding has 50 rows"):
        init_from_word2vec(small(embedding_dim=3), path, tokenizer)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(hidden_size=0), r"hidden_size must be a positive integer, got 0"),
        (dict(embedding_dim="300"), r"embedding_dim must be a positive integer, got '300'"),
        (dict(num_layers=1.5), r"num_layers must be a positive integer, got 1\.5"),
        (dict(mlp_hidden=True), r"mlp_hidden must be a positive integer, got True"),
        (dict(vocab_size=-3), r"vocab_size must be a positive integer, got -3"),
        (dict(dropout=1.0), r"dropout must be a number in \[0, 1\), got 1\.0"),
        (dict(vocab_size=10, pad_token_id=10), r"pad_token_id must be None or in \[0, 10\)"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(UserError, match=message) as err:
        BiLSTMConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_defaults():
    config = BiLSTMConfig()
    assert (config.embedding_dim, config.hidden_size, config.num_layers, config.mlp_hidden) == (300, 300, 1, 400)
    assert config.model_type == "bilstm" and config.num_labels == 2


def test_it_trains(tokenizer):
    texts, labels = POSITIVE + NEGATIVE, torch.tensor([1] * len(POSITIVE) + [0] * len(NEGATIVE))
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    model = small(vocab_size=len(tokenizer), num_labels=2, hidden_size=16, mlp_hidden=16).train()
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = model(**batch, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (model.eval()(**batch).logits.argmax(-1) == labels).all()
