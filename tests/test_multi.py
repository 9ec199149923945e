"""Several teachers and students in one run (helper/multi.py, data/multi.py) on tiny models."""

from __future__ import annotations

import csv

import pytest
import pytorch_lightning as pl
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

import distillation_ms
from bert.errors import UserError
from data.config import DataConfig, TextDataConfig
from data.data_module import ClfDataModule
from data.multi import MultiDataModule, ParallelDataModule
from helper.config import DistillationRunConfig, InitFromConfig, OptimConfig, StudentConfig, load_config
from helper.distiller import MultiDistiller, Student, Teacher, tie_shared
from helper.students import build_student
from tests.conftest import ROOT, run_overrides, tiny_bert_config

LABELS = ["neg", "pos"]


def cipher(text: str) -> str:
    """A deterministic word substitution: every word reversed (a 'second language' with the same labels)."""
    return " ".join(w[::-1] for w in text.split())


@pytest.fixture(scope="module")
def two_column_csv(clf_csv, tmp_path_factory) -> dict[str, str]:
    """clf_csv with two text columns: text_a (English) and text_b (its cipher)."""
    out = tmp_path_factory.mktemp("two_columns")
    paths = {}
    for split, path in clf_csv.items():
        rows = list(csv.DictReader(open(path)))
        with open(out / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text_a", "text_b", "label"])
            w.writerows([r["text"], cipher(r["text"]), r["label"]] for r in rows)
        paths[split] = str(out / f"{split}.csv")
    return paths


def data_cfg(paths: dict[str, str], **kw) -> DataConfig:
    base = dict(
        source="csv", train=paths["train"], validation=paths["validation"], batch_size=8, max_length=16, cache_dir=None
    )
    return DataConfig(**{**base, **kw})


def teacher(seed: int, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(num_hidden_layers=layers)).eval()


def cut(source, layers: list[int]):
    return build_student(StudentConfig(init_from_teacher=InitFromConfig(layers=layers)), source, "t", LABELS)


def fit(module, dm, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, max_epochs=1, **kwargs,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return trainer


def one_line(err) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


def test_two_teachers_give_the_weighted_mean_targets(clf_csv, tokenizer):
    dm = ClfDataModule(data_cfg(clf_csv, text_column="text"), tokenizer)
    dm.setup("fit")
    t1, t2 = teacher(1), teacher(2)
    adaptors = [{"name": "LogitKL", "temperature": 2.0}, "LogitMSE"]
    module = MultiDistiller([Teacher(t1, 0.7), Teacher(t2, 0.3)], [Student("s", cut(t1, [0]), adaptors)], dm)
    batch = next(iter(dm.train_dataloader()))
    feats = module.teacher_features(batch)
    with torch.no_grad():
        z1, z2 = (
            t(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits for t in (t1, t2)
        )
    torch.testing.assert_close(feats[0].logits, z1)
    kl, mse = module.adaptors["s"]
    target_kl = module.target(feats, kl, None, {})
    mixture = 0.7 * (z1 / 2).softmax(-1) + 0.3 * (z2 / 2).softmax(-1)
    torch.testing.assert_close((target_kl.logits / 2).softmax(-1), mixture, rtol=0, atol=1e-7)
    torch.testing.assert_close(module.target(feats, mse, None, {}).logits, 0.7 * z1 + 0.3 * z2, rtol=0, atol=1e-6)
    # the loss is KL(mixture || student) at T = 2, times T^2
    module.students.eval()  # no dropout: the same student logits twice
    z_s = module.students["s"](**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    expected = (mixture * (mixture.log() - (z_s / 2).log_softmax(-1))).sum(-1).mean() * 4
    _, feats_s = module.rec_s["s"](**module.student_inputs(batch, "s"))
    torch.testing.assert_close(kl(target_kl, feats_s, batch["labels"]), expected, rtol=1e-5, atol=1e-6)


def test_students_on_gold_labels_alone_need_no_teacher_pass(clf_csv, tokenizer):
    dm = ClfDataModule(data_cfg(clf_csv), tokenizer)
    t1, t2 = teacher(1), teacher(2)
    module = MultiDistiller([t1, t2], [Student("a", cut(t1, [0]), ["HardCE"]), Student("b", cut(t1, [1]), ["HardCE"])])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert module.teacher_features(batch) == [None, None]
    assert module.training_step(batch, 0).requires_grad  # outside a Trainer: nothing logged, no warning


def test_three_students_share_one_embedding_tensor(clf_csv, tokenizer, tmp_path):
    dm = ClfDataModule(data_cfg(clf_csv), tokenizer)
    t = teacher(0)
    students = [Student(k, cut(t, layers), ["LogitMSE"]) for k, layers in (("a", [0]), ("b", [1]), ("c", [0, 1]))]
    module = MultiDistiller([t], students, dm, share={"embeddings": True}, optim=OptimConfig(lr=1e-2, warmup_ratio=0.0))
    words = [s.bert.embeddings.word_embeddings.weight for s in module.students.values()]
    assert words[0] is words[1] is words[2]
    before = words[0].detach().clone()
    trainer = fit(module, dm, limit_train_batches=2, limit_val_batches=1)
    optimised = [p for g in trainer.optimizers[0].param_groups for p in g["params"]]
    assert len({id(p) for p in optimised}) == len(optimised)  # nothing twice
    assert sum(p is words[0] for p in optimised) == 1
    assert len(optimised) == len({id(p) for p in module.parameters()})
    assert not torch.equal(before, words[0])  # trained
    assert words[0] is module.students["c"].bert.embeddings.word_embeddings.weight  # still one tensor
    assert module.students["a"].bert.encoder.layer[0] is not module.students["c"].bert.encoder.layer[0]

    out = module.export(tmp_path / "students")
    loaded = {k: AutoModelForSequenceClassification.from_pretrained(out / k) for k in "abc"}
    assert [m.config.num_hidden_layers for m in loaded.values()] == [1, 1, 2]
    for m in loaded.values():
        emb = m.bert.embeddings.state_dict()
        assert all(torch.equal(v, module.students["a"].bert.embeddings.state_dict()[k]) for k, v in emb.items())


def test_teachers_run_once_per_batch_for_any_number_of_students(clf_csv, tokenizer):
    dm = ClfDataModule(data_cfg(clf_csv), tokenizer)
    t1, t2 = teacher(1), teacher(2)
    calls: list[int] = []
    for i, t in enumerate((t1, t2)):
        t.register_forward_hook(lambda *_, i=i: calls.append(i))
    students = [Student(k, cut(t1, [0]), ["LogitKL", {"name": "AttnMiniLM", "teacher": 1}]) for k in "abc"]
    module = MultiDistiller([t1, t2], students, dm, cache_teacher=False)
    during_training = []

    class Snapshot(pl.Callback):
        def on_validation_start(self, *_):
            during_training.append(list(calls))

    fit(module, dm, limit_train_batches=3, limit_val_batches=1, callbacks=[Snapshot()])
    assert during_training[0].count(0) == 3 and during_training[0].count(1) == 3  # one pass per teacher and batch


def test_stage_with_two_teachers_and_two_students_logs_and_exports_each(tmp_path, clf_csv, tiny_model_dir):
    extra = {
        "teacher": f"[{{name: {tiny_model_dir}, weight: 0.7}}, {{name: {tiny_model_dir}, weight: 0.3}}]",
        "students": "[{key: one, init_from_teacher: {layers: [0]}}, {key: two, init_from_teacher: {layers: [0, 1]}}]",
        "distill.adaptors": "[LogitKL, {name: AttnMiniLM, teacher: 0}]",
        "share.embeddings": True,
        "trainer.monitor": "val/two/acc",
        "trainer.metrics": "[accuracy, f1_macro, mcc]",
        "distill.report": False,
    }
    cfg = load_config(
        DistillationRunConfig, ROOT / "configs" / "distillation_ms.yaml", run_overrides(tmp_path, clf_csv, **extra)
    )
    metrics = distillation_ms.main(cfg)
    assert {"val/one/acc", "val/two/f1", "val/mean/acc", "test/one/acc", "test/mean/f1", "val/mean/mcc"} <= set(metrics)
    run = tmp_path / "distill_ms"
    logged = open(next(run.glob("csv/version_*/metrics.csv"))).readline()
    assert all(k in logged for k in ("val/one/acc", "val/two/acc", "train/one/LogitKL", "teacher/1/val/acc"))
    for key, depth in (("one", 1), ("two", 2)):
        model = AutoModelForSequenceClassification.from_pretrained(run / "students" / key)
        assert model.config.num_hidden_layers == depth and model.config.id2label == {0: "neg", 1: "pos"}


def test_students_are_scored_per_validation_set_with_chosen_metrics_and_scorers(clf_csv, tokenizer):
    validation = {"first": clf_csv["validation"], "second": clf_csv["test"]}
    dm = ClfDataModule(data_cfg(clf_csv, validation=validation), tokenizer)
    t = teacher(0)
    seen = []

    def errors(logits, labels):
        seen.append(len(labels))
        return float((logits.argmax(-1) != labels).sum())

    students = [Student(k, cut(t, [0]), ["LogitKL"]) for k in ("one", "two")]
    module = MultiDistiller([t], students, dm, metrics=["accuracy", "mcc"], scorers={"errors": errors})
    trainer = fit(module, dm, limit_train_batches=2)
    logged = trainer.callback_metrics
    for key in ("one", "two"):
        assert {f"val/{key}/mcc", f"val/{key}/errors", f"val/{key}/second/acc", f"val/{key}/loss"} <= set(logged)
        assert logged[f"val/{key}/acc"] == logged[f"val/{key}/first/acc"]
    assert "val/one/f1" not in logged and "val/mean/second/acc" not in logged
    mean = (logged["val/one/mcc"] + logged["val/two/mcc"]) / 2
    assert float(logged["val/mean/mcc"]) == pytest.approx(float(mean))
    assert float(logged["val/mean/errors"]) == pytest.approx(
        float(logged["val/one/errors"] + logged["val/two/errors"]) / 2
    )
    assert {"teacher/0/val/acc", "teacher/0/val/second/mcc"} <= set(logged)
    assert len(seen) == 4  # two students, two sets, once per validation


def test_student_reads_another_column_than_the_teacher(tmp_path, two_column_csv, tiny_model_dir, tokenizer):
    dm = MultiDataModule(
        data_cfg(two_column_csv, text_column="text_a"), {"a": (tokenizer, None), "b": (tokenizer, "text_b")}
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    a, b = batch["views"]["a"], batch["views"]["b"]
    assert torch.equal(batch["input_ids"], a["input_ids"]) and not torch.equal(a["input_ids"], b["input_ids"])
    assert (
        tokenizer.decode(b["input_ids"][0], skip_special_tokens=True).split()
        != tokenizer.decode(a["input_ids"][0], skip_special_tokens=True).split()
    )
    extra = {
        "data.train": two_column_csv["train"], "data.validation": two_column_csv["validation"],
        "data.test": two_column_csv["test"], "data.text_column": "text_a", "teacher.name": tiny_model_dir,
        "students": "[{key: b, text_column: text_b, init_from_teacher: {layers: [0]}, adaptors: [LogitKL]}]",
        "distill.report": False,
    }  # fmt: skip
    cfg = load_config(
        DistillationRunConfig,
        ROOT / "configs" / "distillation_ms.yaml",
        run_overrides(tmp_path, two_column_csv, **extra),
    )
    metrics = distillation_ms.main(cfg)
    assert "val/b/acc" in metrics and (tmp_path / "distill_ms" / "students" / "b" / "model.safetensors").is_file()


def test_parallel_files_are_columns(tmp_path, tokenizer):
    files = {}
    for split, n in (("train", 8), ("validation", 4)):
        en = [f"good film {i}" if i % 2 else f"bad film {i}" for i in range(n)]
        for name, lines in (("en", en), ("xx", [cipher(t) for t in en]), ("labels", [str(i % 2) for i in range(n)])):
            files[split, name] = tmp_path / f"{split}.{name}"
            files[split, name].write_text("\n".join(lines) + "\n")
    cfg = DataConfig(
        source="parallel", train=str(files["train", "en"]), train_labels=str(files["train", "labels"]),
        validation=str(files["validation", "en"]), validation_labels=str(files["validation", "labels"]),
        text_files={"xx": {"train": str(files["train", "xx"]), "validation": str(files["validation", "xx"])}},
        batch_size=4, cache_dir=None,
    )  # fmt: skip
    dm = MultiDataModule(cfg, {"en": (tokenizer, None), "xx": (tokenizer, "xx")})
    dm.setup("fit")
    assert dm.raw_by_column["xx"]["train"].texts[1] == cipher(dm.raw_by_column["text"]["train"].texts[1])
    batch = next(iter(dm.val_dataloader()))
    assert not torch.equal(batch["views"]["en"]["input_ids"], batch["views"]["xx"]["input_ids"])
    with pytest.raises(UserError, match=r"no text column 'de' in data.source=parallel \(columns: text, xx") as err:
        MultiDataModule(cfg, {"en": (tokenizer, None), "de": (tokenizer, "de")}).setup("fit")
    one_line(err)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one line each


def test_weights_that_do_not_sum_to_a_positive_number(tmp_path, clf_csv, tiny_model_dir):
    extra = {"teacher": f"[{{name: {tiny_model_dir}, weight: 0}}, {{name: {tiny_model_dir}, weight: 0}}]"}
    cfg = load_config(DistillationRunConfig, None, run_overrides(tmp_path, clf_csv, **extra))
    with pytest.raises(
        UserError, match=r"teacher\[\]\.weight: \[0.0, 0.0\] sum to 0; they must sum to a positive"
    ) as err:
        distillation_ms.main(cfg)
    one_line(err)
    with pytest.raises(UserError, match="weight of teacher 1 is -0.5") as err:
        MultiDistiller([Teacher(teacher(0), 1.0), Teacher(teacher(1), -0.5)], [Student("s", cut(teacher(0), [0]))])
    one_line(err)


def test_token_level_adaptor_with_several_teachers_needs_a_teacher_index():
    t1, t2 = teacher(1), teacher(2)
    with pytest.raises(UserError, match=r"adaptors\[1\] \(AttnMiniLM\): reads attentions of one teacher; with 2 "
                                        r"teachers give it `teacher: <index>` \(0..1\)") as err:  # fmt: skip
        MultiDistiller([t1, t2], [Student("s", cut(t1, [0]), ["LogitKL", "AttnMiniLM"])])
    one_line(err)
    with pytest.raises(UserError, match=r"adaptors\[0\]: teacher 2 is not a teacher index \(0..1\)") as err:
        MultiDistiller([t1, t2], [Student("s", cut(t1, [0]), [{"name": "AttnMiniLM", "teacher": 2}])])
    one_line(err)


def test_a_shared_layer_whose_shapes_differ():
    t = teacher(0)
    wide = build_student(
        StudentConfig(config={"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 37}), t, "t", LABELS
    )
    with pytest.raises(UserError, match=r"share.layers\[0\]: student 'wide' has other shapes than student 'a'") as err:
        MultiDistiller([t], [Student("a", cut(t, [0]), ["LogitMSE"]), Student("wide", wide, ["LogitMSE"])],
                       share={"layers": [0]})  # fmt: skip
    one_line(err)
    with pytest.raises(UserError, match=r"share.layers: layer 1 is out of range for student 'a' with 1 layers"):
        tie_shared({"a": cut(t, [0]), "b": cut(t, [0, 1])}, layers=[1])


def test_a_missing_text_column(tmp_path, clf_csv, tiny_model_dir):
    extra = {
        "teacher.name": tiny_model_dir,
        "students": "[{key: s, text_column: text_de, init_from_teacher: {layers: [0]}}]",
        "distill.report": False,
    }
    cfg = load_config(DistillationRunConfig, None, run_overrides(tmp_path, clf_csv, **extra))
    with pytest.raises(
        UserError, match=r"text column 'text_de': .*has no column 'text_de' \(columns: text, label\)"
    ) as err:
        distillation_ms.main(cfg)
    one_line(err)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"trainer.monitor": "val/one/acc"}, "'val/one/acc' names no validation set"),
        (
            {"trainer.monitor": "val/three/f1", "students": "[{key: one, name: a}, {key: two, name: b}]"},
            r"'val/three/f1' names no student \(keys: one, two; or mean\)",
        ),
        ({"students": "[{key: one, name: a}, {key: one, name: b}]"}, "key 'one' is used twice"),
    ],
)
def test_a_monitor_or_key_that_names_no_student(extra, message, tmp_path, clf_csv, tiny_model_dir):
    cfg = load_config(
        DistillationRunConfig, None, run_overrides(tmp_path, clf_csv, **{"teacher.name": tiny_model_dir, **extra})
    )
    with pytest.raises(UserError, match=message) as err:
        distillation_ms.main(cfg)
    one_line(err)


# ---------------------------------------------------------------------------------------------------------------------
# Unlabelled parallel text (general distillation): ParallelDataModule


def test_parallel_text_views_share_the_example_index(parallel_text, tokenizer):
    cfg = TextDataConfig(source="parallel", text_column="en", text_files=parallel_text, batch_size=4, cache_dir=None,
                         max_length=16, limit_eval=6)  # fmt: skip
    dm = ParallelDataModule(cfg, {"en": (tokenizer, "en"), "de": (tokenizer, "de")})
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 24, "validation": 6, "test": 6} and dm.has_test
    assert dm.texts["validation"]["de"][0] == " ".join(w[::-1] for w in dm.texts["validation"]["en"][0].split())
    batch = next(iter(dm.val_dataloader()))
    assert set(batch["views"]) == {"en", "de"} and torch.equal(batch["input_ids"], batch["views"]["en"]["input_ids"])
    assert (batch["labels"] == -1).all() and batch["idx"].tolist() == [0, 1, 2, 3]
    de = tokenizer(dm.texts["validation"]["de"][1])["input_ids"]
    assert batch["views"]["de"]["input_ids"][1, : len(de)].tolist() == de


def test_parallel_files_of_different_lengths_and_missing_languages(parallel_text, tokenizer, tmp_path):
    short = tmp_path / "train.de"
    short.write_text("\n".join(["ein satz"] * 23) + "\n")
    files = {**parallel_text, "de": {**parallel_text["de"], "train": str(short)}}
    cfg = TextDataConfig(source="parallel", text_column="en", text_files=files, cache_dir=None)
    with pytest.raises(UserError, match=rf"{short} has 23 lines but .*train.en has 24") as err:
        ParallelDataModule(cfg, {"en": (tokenizer, "en"), "de": (tokenizer, "de")}).setup("fit")
    one_line(err)
    with pytest.raises(UserError, match=r"view 'it': language 'it' has no files in data.text_files \(languages: en"):
        ParallelDataModule(cfg, {"en": (tokenizer, "en"), "it": (tokenizer, "it")})
    with pytest.raises(UserError, match=r"data.text_column: 'text' is not a language of data.text_files"):
        TextDataConfig(source="parallel", text_files=parallel_text)
    no_val = {lang: {"train": f["train"]} for lang, f in parallel_text.items()}
    with pytest.raises(UserError, match=r"data.text_files.en: no validation file"):
        TextDataConfig(source="parallel", text_column="en", text_files=no_val)
