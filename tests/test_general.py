"""General (task-agnostic) distillation on tiny models: the stage end to end and the fine-tune hand-off, differing
widths and head counts, chunked windows, the MLM option, unlabelled text sources, and bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertModel

import distillation_general
import finetune
from bert.errors import UserError
from data.config import TextDataConfig
from data.text import TextDataModule, tokenize_windows
from data.transfer import write_transfer
from helper.config import FinetuneConfig, GeneralRunConfig, load_config
from helper.distiller import mask_tokens
from tests.conftest import NEGATIVE, POSITIVE, ROOT, run_overrides, tiny_bert_config

WORDS = [w for text in POSITIVE + NEGATIVE for w in text.split()]
LONG = " ".join(WORDS * 4)  # ~100 tokens: several windows at max_length 16
RELATIONS = "[{name: QQMiniLMv2, relation_heads: 4}, {name: KKMiniLMv2, relation_heads: 4}, {name: VVMiniLMv2, relation_heads: 4}]"  # noqa: E501
NARROW = (
    "{num_hidden_layers: 1, hidden_size: 24, num_attention_heads: 2, intermediate_size: 37}"  # teacher: 32, 4 heads
)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    lines = [f"{POSITIVE[i % 4]} and {NEGATIVE[i % 3]} {i}" for i in range(40)] + ["", LONG]
    path = tmp_path_factory.mktemp("text") / "unlabelled.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def tiny_general(tmp_path, base: dict, extra: dict) -> list[str]:
    """The settings every tiny general run shares, then `base` (the test group's), then `extra` (the test's)."""
    common = {
        "data.max_length": 16,
        "data.batch_size": 8,
        "data.cache_dir": str(tmp_path / "cache"),
        "optim.lr": 1e-3,
        "trainer.max_epochs": 1,
        "trainer.accelerator": "cpu",
        "trainer.devices": 1,
        "trainer.log_every_n_steps": 1,
        "logger.loggers": "[csv]",
        "logger.output_dir": str(tmp_path),
    }
    return [f"{k}={v}" for k, v in {**common, **base, **extra}.items()]


def general_overrides(tmp_path, teacher: str, train: str, **extra) -> list[str]:
    base = {
        "teacher.name": teacher,
        "student.config": NARROW,
        "student.init_from_teacher": "null",
        "distill.adaptors": RELATIONS,
        "data.train": train,
        "data.validation_fraction": 0.2,
    }
    return tiny_general(tmp_path, base, extra)


def run(tmp_path, teacher: str, train: str, **extra) -> dict:
    cfg = load_config(
        GeneralRunConfig,
        ROOT / "configs" / "distillation_general.yaml",
        general_overrides(tmp_path, teacher, train, **extra),
    )
    return distillation_general.main(cfg)


def val_losses(run_dir) -> list[float]:
    with open(next(run_dir.glob("csv/version_0/metrics.csv"))) as f:
        return [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]


def test_general_distillation_then_finetune(tmp_path, tiny_model_dir, text_file, clf_csv):
    # the teacher is a classifier's directory: AutoModel takes its encoder; the student is narrower with fewer heads
    metrics = run(tmp_path, tiny_model_dir, text_file, **{"trainer.max_epochs": 3})
    assert {"val/loss", "val/QQMiniLMv2", "val/KKMiniLMv2", "val/VVMiniLMv2"} <= set(metrics)
    losses = val_losses(tmp_path / "distill_general")
    assert len(losses) >= 3 and losses[-1] < losses[0]
    export = tmp_path / "distill_general" / "student"
    encoder = AutoModel.from_pretrained(export)
    assert isinstance(encoder, BertModel) and encoder.config.hidden_size == 24 and encoder.config.num_hidden_layers == 1
    clf = AutoModelForSequenceClassification.from_pretrained(export, num_labels=2)  # a fresh head on the encoder
    assert torch.equal(
        clf.bert.encoder.layer[0].attention.self.query.weight, encoder.encoder.layer[0].attention.self.query.weight
    )
    assert (export / "tokenizer.json").is_file() or (export / "vocab.txt").is_file()

    cfg = load_config(
        FinetuneConfig,
        ROOT / "configs" / "finetune.yaml",
        run_overrides(tmp_path, clf_csv, **{"model.name": str(export)}),
    )
    assert {"val/acc", "test/acc"} <= set(finetune.main(cfg))
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "finetune" / "model").config.hidden_size == 24


def test_mlm_student_cut_from_the_teacher(tmp_path, tiny_model_dir, text_file):
    metrics = run(
        tmp_path, tiny_model_dir, text_file,
        **{"student.config": "null", "student.init_from_teacher.layers": "[1]",
           "distill.adaptors": "[AttnMiniLM, ValMiniLM]", "distill.mlm": "{weight: 0.5, probability: 0.3}"},
    )  # fmt: skip
    assert {"val/loss", "val/mlm", "val/AttnMiniLM", "val/ValMiniLM"} <= set(metrics)
    export = tmp_path / "distill_general" / "student"
    encoder = AutoModel.from_pretrained(export)  # the encoder alone: no MLM head in the export
    assert encoder.config.architectures == ["BertModel"] and encoder.config.num_hidden_layers == 1


def test_mask_tokens_leaves_special_tokens_and_padding():
    ids = torch.tensor([[101, 5, 6, 7, 8, 9, 102, 0], [101, 5, 6, 102, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    gen = torch.Generator().manual_seed(0)
    special = torch.tensor([0, 101, 102, 103])
    masked, labels = mask_tokens(ids, mask, special, 103, 200, 0.999, gen)
    chosen = labels != -100
    assert torch.equal(chosen, mask.bool() & ~torch.isin(ids, special))  # every real, non-special token, nothing else
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    assert (masked[chosen] == 103).any()


def test_long_texts_become_windows(tokenizer):
    texts = ["short one", LONG]
    enc = tokenize_windows(texts, tokenizer, {"t": 1}, 16, None)
    offsets, ids = enc["offsets"], enc["input_ids"].tolist()
    windows = [ids[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    full = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    assert len(windows) == 1 + -(-len(full) // 14) and all(len(w) <= 16 for w in windows)
    assert all(w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id for w in windows)
    assert [t for w in windows[1:] for t in w[1:-1]] == full  # nothing truncated, nothing repeated
    assert enc["text_index"].tolist() == [0] + [1] * (len(windows) - 1)


def test_text_sources_and_held_out_texts(tmp_path, tokenizer, text_file):
    cfg = TextDataConfig(train=text_file, validation_fraction=0.25, max_length=16, cache_dir=None)
    dm = TextDataModule(cfg, tokenizer)
    dm.setup()
    again = TextDataModule(cfg, tokenizer)
    again.setup()
    assert len(dm.texts["validation"]) == round(0.25 * 41) and not set(dm.texts["validation"]) & set(dm.texts["train"])
    assert dm.texts == again.texts  # seeded
    batch = next(iter(dm.train_dataloader()))
    assert {"input_ids", "attention_mask", "idx", "labels"} <= set(batch) and (batch["labels"] == -1).all()

    rows = {
        "text": ["a text", "another text"],
        "text_pair": [None, None],
        "label": [-1, -1],
        "source": ["unlabelled"] * 2,
    }
    parquet = write_transfer(tmp_path / "t.parquet", rows, [[0.0, 1.0], [1.0, 0.0]], ["neg", "pos"])
    val = tmp_path / "val.txt"
    val.write_text("held out\n")
    dm = TextDataModule(
        TextDataConfig(source="transfer", train=str(parquet), validation=str(val), cache_dir=None), tokenizer
    )
    dm.setup()
    assert dm.texts == {"train": ["a text", "another text"], "validation": ["held out"]}

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "train.csv").write_text("sentence\nfirst one\nsecond one\nthird one\nfourth one\n")
    dm = TextDataModule(
        TextDataConfig(source="hf", name=str(hf_dir), text_column="sentence", validation_fraction=0.25, cache_dir=None),
        tokenizer,
    )
    dm.setup()
    assert sorted(dm.texts["train"] + dm.texts["validation"]) == ["first one", "fourth one", "second one", "third one"]


@pytest.mark.parametrize("adaptors", ["[HardCE]", "[AttnMiniLM, {name: LogitMSE, temperature: 2}]"])
def test_labelled_only_adaptors_are_refused(tmp_path, tiny_model_dir, text_file, adaptors):
    with pytest.raises(UserError) as err:
        run(tmp_path, tiny_model_dir, text_file, **{"distill.adaptors": adaptors})
    message = str(err.value)
    assert "\n" not in message and ("HardCE" in message or "LogitMSE" in message)
    assert "allowed: " in message and "QQMiniLMv2" in message and "AttnMiniLM" not in message.split("need")[0]


def test_bad_text_sources(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    no_text = write_transfer(
        tmp_path / "no_text.parquet",
        {"text": ["x"], "text_pair": [None], "label": [0], "source": ["original"]},
        [[0.0, 1.0]],
        ["a", "b"],
    )
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(no_text).drop(["text"]), no_text)
    cases = [
        ({"data.train": str(empty)}, "no text"),
        ({"data.train": str(tmp_path / "missing.txt")}, "cannot read"),
        ({"data.source": "transfer", "data.train": str(no_text)}, "no column 'text'"),
        ({"data.source": "transfer", "data.train": str(empty)}, "cannot read it as Parquet"),
    ]
    for extra, expected in cases:
        with pytest.raises(UserError, match=expected) as err:
            run(tmp_path, tiny_model_dir, "unused", **extra)
        assert "\n" not in str(err.value)


def test_max_length_beyond_roberta_positions_is_refused(tmp_path, minilm_path, text_file):
    """RoBERTa-like position ids start after pad_token_id: 514 embeddings with pad id 1 take 512 tokens, not 513."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    teacher = tmp_path / "roberta"
    config = RobertaConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=514, pad_token_id=1,
    )  # fmt: skip
    RobertaModel(config).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(teacher)
    with pytest.raises(UserError, match=r"data.max_length: 513 is more than the teacher's .* \(512,"):
        run(tmp_path, str(teacher), text_file, **{"data.max_length": 513})


# ---------------------------------------------------------------------------------------------------------------------
# Cross-lingual students on parallel text (`data.source: parallel`)


def xling_overrides(tmp_path, teacher: str, files: dict, **extra) -> list[str]:
    text_files = (
        "{"
        + ", ".join(f"{lang}: {{{', '.join(f'{k}: {v}' for k, v in f.items())}}}" for lang, f in files.items())
        + "}"
    )  # noqa: E501
    base = {
        "teacher.name": teacher,
        "teacher.pooling": "mean",
        "distill.adaptors": "[SentMSE]",
        "data.source": "parallel",
        "data.text_column": "en",
        "data.text_files": text_files,
        "distill.report_batches": 2,
    }
    return tiny_general(tmp_path, base, extra)


def run_xling(tmp_path, teacher: str, files: dict, **extra) -> dict:
    cfg = load_config(GeneralRunConfig, ROOT / "configs" / "distillation_general.yaml",
                      xling_overrides(tmp_path, teacher, files, **extra))  # fmt: skip
    return distillation_general.main(cfg)


def test_cross_lingual_students_are_scored_and_export_sentence_transformers_models(
    tmp_path, tiny_model_dir, parallel_text
):
    students = (
        "[{key: multi, init_from_teacher: {layers: [1]}},"  # every language
        " {key: de, init_from_teacher: {layers: [0]}, languages: [en, de], adaptors: [SentCos]}]"  # bilingual
    )
    metrics = run_xling(tmp_path, tiny_model_dir, parallel_text, students=students,
                        **{"trainer.monitor": "val/de/retrieval/de", "trainer.max_epochs": 2})  # fmt: skip
    for split in ("val", "test"):
        for lang in ("de", "fr"):
            assert 0 <= metrics[f"{split}/multi/retrieval/{lang}"] <= 1
            assert 0 <= metrics[f"teacher/{split}/retrieval_rev/{lang}"] <= 1
        assert metrics[f"{split}/multi/mse/en"] >= 0 and f"{split}/de/retrieval_rev/de" in metrics
        assert f"{split}/de/retrieval/fr" not in metrics
    assert {"val/multi/SentMSE/fr", "val/de/SentCos/en", "val/de/loss"} <= set(metrics)
    losses = val_losses(tmp_path / "distill_general")
    assert len(losses) >= 2 and losses[1] < losses[0]
    export = tmp_path / "distill_general" / "students" / "multi"
    assert AutoModel.from_pretrained(export).config.num_hidden_layers == 1
    modules = json.loads((export / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == [
        "Transformer",
        "Pooling",
    ]  # the tiny teacher: no Normalize
    assert [m["path"] for m in modules] == ["", "1_Pooling"]
    pooling = json.loads((export / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32 and pooling["pooling_mode_mean_tokens"]
    assert not pooling["pooling_mode_cls_token"]
    assert json.loads((export / "sentence_bert_config.json").read_text())["max_seq_length"] == 16
    report = (tmp_path / "distill_general" / "report" / "report.md").read_text()
    assert "| multi | fr |" in report and "| de | de |" in report and "throughput" in report


def test_cross_lingual_bad_input(tmp_path, tiny_model_dir, parallel_text):
    ONE = "[{key: a, init_from_teacher: {layers: [0]}}]"  # noqa: N806
    with pytest.raises(UserError, match=r"students\[0\].vocab_size: 5 is not larger than the 5 special tokens"):
        run_xling(tmp_path, tiny_model_dir, parallel_text, students=ONE.replace("}}", "}, vocab_size: 5}"))
    with pytest.raises(UserError, match=r"students\[0\].languages: 'it' has no files in data.text_files") as err:
        run_xling(
            tmp_path,
            tiny_model_dir,
            parallel_text,
            students="[{key: a, init_from_teacher: {layers: [0]}, languages: [en, it]}]",
        )
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"trainer.monitor: 'val/b/retrieval/de' names no student"):
        run_xling(tmp_path, tiny_model_dir, parallel_text, students=ONE, **{"trainer.monitor": "val/b/retrieval/de"})
    with pytest.raises(UserError, match=r"pooling: BertForMaskedLM has no pooler"):  # a masked LM has no pooler
        pooler = "[{key: a, init_from_teacher: {layers: [0]}, pooling: pooler}]"
        run_xling(tmp_path, tiny_model_dir, parallel_text, students=pooler, **{"distill.mlm": "{weight: 1.0}"})
    with pytest.raises(UserError, match=r"compares tokens, but teacher 0 reads view 'en' and the student 'de'"):
        run_xling(tmp_path, tiny_model_dir, parallel_text, students=ONE, **{"distill.adaptors": "[AttnMiniLM]"})


def test_monolingual_students_sharing_a_layer_and_embeddings_per_language(tmp_path, tiny_model_dir, parallel_text):
    students = (
        "[{key: de, init_from_teacher: {layers: [0, 1], transformer_blocks: false}, languages: [en, de]},"
        " {key: fr, init_from_teacher: {layers: [0, 1]}, languages: [en, fr], vocab_size: 60},"
        " {key: multi, init_from_teacher: {layers: [0, 1]}, embeddings_per_language: true}]"
    )
    metrics = run_xling(tmp_path, tiny_model_dir, parallel_text, students=students,
                        **{"share.layers": "[1]", "distill.report": "false"})  # fmt: skip
    assert {"test/de/retrieval/de", "test/fr/retrieval/fr", "test/multi/retrieval/fr"} <= set(metrics)
    root = tmp_path / "distill_general" / "students"
    assert sorted(p.name for p in root.iterdir()) == ["de", "fr", "multi-de", "multi-en", "multi-fr"]
    de, fr, multi_de, multi_fr = (AutoModel.from_pretrained(root / k) for k in ("de", "fr", "multi-de", "multi-fr"))
    layer = "encoder.layer.{}.attention.self.query.weight"
    assert torch.equal(de.state_dict()[layer.format(1)], fr.state_dict()[layer.format(1)])  # shared layer 1
    assert not torch.equal(de.state_dict()[layer.format(0)], fr.state_dict()[layer.format(0)])
    words = "embeddings.word_embeddings.weight"
    assert not torch.equal(multi_de.state_dict()[words], multi_fr.state_dict()[words])  # one matrix per language
    assert torch.equal(multi_de.state_dict()[layer.format(0)], multi_fr.state_dict()[layer.format(0)])
    tok = AutoTokenizer.from_pretrained(root / "fr")  # the export carries its trained tokenizer
    # 60 asked; the trainer keeps every character of the text as a token, which here makes a few more
    assert 60 <= len(tok) < 80 and fr.config.vocab_size == len(tok) and de.config.vocab_size == 30522
    assert tok.convert_ids_to_tokens(tok("GOOD FILM")["input_ids"])[0] == "[CLS]" and tok.pad_token_id == 0


def test_trained_vocabulary_keeps_the_teachers_rows(tokenizer):
    from helper.students import adopt_vocabulary, train_wordpiece

    tok = train_wordpiece(["good film", "dull film", "a tedious mess"] * 5, 40, tokenizer)
    torch.manual_seed(0)
    student = BertModel(tiny_bert_config())
    teacher_rows = student.get_input_embeddings().weight.detach().clone()
    copied = adopt_vocabulary(student, tok, tokenizer)
    rows = student.get_input_embeddings().weight
    assert rows.shape[0] == len(tok) >= 40 and copied >= 10
    film_s, film_t = tok.convert_tokens_to_ids("film"), tokenizer.convert_tokens_to_ids("film")
    assert torch.equal(rows[film_s], teacher_rows[film_t]) and film_s != film_t
