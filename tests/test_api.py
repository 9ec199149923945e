"""The Python API as kd-clf's README uses it (only the model and data paths adapted), and any nn.Module student."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from transformers import AutoModelForSequenceClassification

from bert.errors import UserError
from data.data_module import ClfDataModule
from helper.distiller import BaseDistiller, InterDistiller, PredDistiller
from helper.finetuner import ClfFinetune
from helper.hgckpt import HgCkptIO

datasets = pytest.importorskip("datasets")

TRAINER = dict(
    max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
)


@pytest.fixture
def dataset_dict(clf_csv):
    """What `load_dataset(...)` returns, built from the tiny csv splits (labels neg/pos as ClassLabel ids)."""
    dd = datasets.load_dataset("csv", data_files=clf_csv)
    return dd.class_encode_column("label")


def models(teacher_dir):
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    student = AutoModelForSequenceClassification.from_pretrained(teacher_dir)  # same architecture, as a start
    return teacher, student


def test_mix_step_as_in_kd_clf(tmp_path, dataset_dict, tiny_model_dir):
    teacher, student = models(tiny_model_dir)
    dm = ClfDataModule(dataset_dict, tokenizer=tiny_model_dir, batch_size=8, max_length=16, cache_dir=None)
    distiller = BaseDistiller(teacher, student, ["AttnMiniLM", "ValMiniLM", "LogitMSE"], dm)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", mode="min")
    trainer = Trainer(plugins=[HgCkptIO()], callbacks=[checkpoint], **TRAINER)
    trainer.fit(distiller, dm)

    assert "val_loss" in trainer.callback_metrics and "val/loss" in trainer.callback_metrics
    best = checkpoint.best_model_path
    hf = AutoModelForSequenceClassification.from_pretrained(best.removesuffix(".ckpt") + "_hf")
    state = torch.load(best, weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[f"students.student.{k}"]) for k, v in hf.state_dict().items())
    assert hf.config.id2label == {0: "neg", 1: "pos"}

    out = distiller.export(tmp_path / "student")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_two_step_and_finetuning_as_in_kd_clf(tmp_path, dataset_dict, tiny_model_dir):
    teacher, student = models(tiny_model_dir)
    dm = ClfDataModule(dataset_dict, tokenizer=tiny_model_dir, batch_size=8, max_length=16, cache_dir=None)
    Trainer(**TRAINER, enable_checkpointing=False).fit(
        InterDistiller(teacher, student, ["AttnMiniLM", "ValMiniLM"], dm), dm
    )
    head = PredDistiller(teacher, student, ["LogitMSE"], dm, lr=1e-3)
    Trainer(**TRAINER, enable_checkpointing=False).fit(head, dm)
    assert head.optim.lr == 1e-3 and not head.distill.train_encoder

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    finetune = ClfFinetune(model, dm)
    trainer = Trainer(**TRAINER, enable_checkpointing=False)
    trainer.fit(finetune, dm)
    assert {"val/acc", "val_loss"} <= set(trainer.callback_metrics)


def test_data_module_from_a_dataset_directory_and_a_config(tmp_path, clf_csv, tiny_model_dir, tokenizer):
    directory = tmp_path / "ds"
    directory.mkdir()
    for split, path in clf_csv.items():
        (directory / f"{split}.csv").write_text(open(path).read())
    dm = ClfDataModule(str(directory), tokenizer, cache_dir=None)  # load_dataset(<local dir>), like a hub name
    dm.setup()
    assert dm.splits == ["train", "validation", "test"] and dm.label_names == ["neg", "pos"]
    with pytest.raises(UserError, match=r"unknown setting 'batchsize' \(choices: source, .*batch_size"):
        ClfDataModule(str(directory), tokenizer, batchsize=4)
    with pytest.raises(UserError, match="data.batch_size: 0"):
        ClfDataModule(str(directory), tokenizer, batch_size=0)
    with pytest.raises(UserError, match="DataConfig, a datasets.DatasetDict or a dataset name, not int"):
        ClfDataModule(3, tokenizer)


class MeanPool(nn.Module):
    """A user's own student: mean of token embeddings, then a linear layer; returns a plain tensor of logits."""

    def __init__(self, vocab: int, width: int = 16, classes: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.classifier = nn.Linear(width, classes)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask[..., None].float()  # (B, T, 1)
        return self.classifier((self.embed(input_ids) * mask).sum(1) / mask.sum(1))  # (B, C)


def test_any_module_student_with_sentence_level_adaptors(tmp_path, dataset_dict, tiny_model_dir):
    teacher, _ = models(tiny_model_dir)
    dm = ClfDataModule(dataset_dict, tokenizer=tiny_model_dir, batch_size=8, max_length=16, cache_dir=None)
    student = MeanPool(teacher.config.vocab_size)
    before = student.classifier.weight.detach().clone()
    distiller = BaseDistiller(teacher, student, [{"name": "LogitKL", "temperature": 2.0}, "HardCE"], dm, lr=1e-2)
    trainer = Trainer(**TRAINER, enable_checkpointing=False)
    trainer.fit(distiller, dm)
    assert not torch.equal(before, student.classifier.weight) and "val/acc" in trainer.callback_metrics
    with pytest.raises(UserError, match=r"AttnMiniLM\): the student has no encoder layers"):
        BaseDistiller(teacher, student, ["LogitMSE", "AttnMiniLM"], dm)
    with pytest.raises(UserError, match=r"student MeanPool .* offers only logits to distillation, not pooled"):
        BaseDistiller(teacher, student, ["PooledMSE"], dm)


class NoLogits(MeanPool):
    def forward(self, input_ids, attention_mask):
        return {"scores": super().forward(input_ids, attention_mask)}


def test_a_module_without_logits_is_one_line(dataset_dict, tiny_model_dir):
    teacher, _ = models(tiny_model_dir)
    dm = ClfDataModule(dataset_dict, tokenizer=tiny_model_dir, batch_size=8, max_length=16, cache_dir=None)
    distiller = BaseDistiller(teacher, NoLogits(teacher.config.vocab_size), ["HardCE"], dm)
    with pytest.raises(UserError, match=r"NoLogits returned dict without \(batch, classes\) logits") as err:
        Trainer(**TRAINER, enable_checkpointing=False, fast_dev_run=True).fit(distiller, dm)
    assert "\n" not in str(err.value)


def test_keyword_settings_are_checked(dataset_dict, tiny_model_dir):
    teacher, student = models(tiny_model_dir)
    with pytest.raises(UserError, match=r"BaseDistiller: unknown setting 'learning_rate' \(choices: name, lr"):
        BaseDistiller(teacher, student, ["LogitMSE"], learning_rate=1e-3)
    for bad, key in (({"lr": -1.0}, "optim.lr"), ({"temperature": float("nan")}, "distill.temperature")):
        with pytest.raises(UserError, match=key):
            BaseDistiller(teacher, student, ["LogitMSE"], **bad)


def test_batches_without_idx_turn_the_cache_off_with_one_warning(dataset_dict, tiny_model_dir):
    teacher, student = models(tiny_model_dir)
    dm = ClfDataModule(dataset_dict, tokenizer=tiny_model_dir, batch_size=8, max_length=16, cache_dir=None)
    dm.setup()
    distiller = BaseDistiller(teacher, student, ["AttnMiniLM", "LogitMSE"], dm)
    batch = next(iter(dm.train_dataloader()))
    del batch["idx"]  # as a user's own collator gives it
    with pytest.warns(UserWarning, match="teacher cache off"):
        feats = distiller.teacher_features(batch)[0]
    assert distiller.teacher_cache is None and feats.logits.shape == (len(batch["labels"]), 2)


def test_two_validation_sets_metrics_by_name_and_a_custom_scorer(tmp_path, clf_csv, tiny_model_dir):
    from data.config import DataConfig

    cfg = DataConfig(
        source="csv", train=clf_csv["train"], validation={"dev": clf_csv["validation"], "other": clf_csv["test"]},
        batch_size=8, max_length=16, cache_dir=None,
    )  # fmt: skip
    dm = ClfDataModule(cfg, tiny_model_dir)
    calls = []

    def errors(logits, labels):  # a user's own scoring: the number of wrong predictions
        calls.append(len(labels))
        return int((logits.argmax(-1) != labels).sum())

    teacher, student = models(tiny_model_dir)
    distiller = BaseDistiller(
        teacher, student, ["LogitMSE"], dm, metrics=["accuracy", "mcc"], scorers={"errors": errors}
    )
    trainer = Trainer(**TRAINER, enable_checkpointing=False)
    trainer.fit(distiller, dm)
    logged = trainer.callback_metrics
    assert {"val/acc", "val/mcc", "val/errors", "val/dev/acc", "val/other/acc", "val/other/errors"} <= set(logged)
    assert "val/f1" not in logged and "teacher/val/other/acc" in logged
    assert torch.equal(logged["val/acc"], logged["val/dev/acc"]) and set(calls) == {16}  # each set: 16 examples
    with pytest.raises(UserError, match=r"trainer.metrics: unknown metric 'auc' \(choices: accuracy, f1_macro"):
        BaseDistiller(teacher, student, ["LogitMSE"], dm, metrics=["auc"])


def test_any_module_teacher(dataset_dict, tiny_model_dir):
    """A teacher may be any module that returns logits, as a student may; one without `.config` and no data module
    to tell the label count is one line."""
    _, student = models(tiny_model_dir)
    dm = ClfDataModule(dataset_dict, tokenizer=tiny_model_dir, batch_size=8, max_length=16, cache_dir=None)
    teacher = MeanPool(student.config.vocab_size)
    distiller = BaseDistiller(teacher, student, ["LogitMSE"], dm, lr=1e-2)
    trainer = Trainer(**TRAINER, enable_checkpointing=False)
    trainer.fit(distiller, dm)
    assert {"val/acc", "teacher/val/acc"} <= set(trainer.callback_metrics)
    with pytest.raises(UserError, match=r"AttnMiniLM\): the teacher has no encoder layers"):
        BaseDistiller(teacher, student, ["AttnMiniLM"], dm)
    with pytest.raises(UserError, match="the number of labels is unknown: no model has a `.config`") as err:
        BaseDistiller(teacher, MeanPool(student.config.vocab_size), ["LogitMSE"])
    assert "\n" not in str(err.value)


# kd-clf's README snippets as written there (fine-tune, mix-step, two-step); only the model names and the data set
# (`load_dataset` returns an in-memory DatasetDict) differ. Trainer defaults are shortened by the test.
KD_CLF_FINETUNE = """
from datasets import load_dataset
from pytorch_lightning import Trainer
from data.data_module import ClfDataModule
from helper.finetuner import ClfFinetune, HgCkptIO
from pytorch_lightning.callbacks import ModelCheckpoint
from transformers import AutoModelForSequenceClassification

model_name = TEACHER

dataset = load_dataset('tweet_eval', 'sentiment')
model = AutoModelForSequenceClassification.from_pretrained(model_name, num_labels=3)
dm = ClfDataModule(dataset, tokenizer=model_name)

fintuner = ClfFinetune(model, dm)

trainer = Trainer(
    plugins=[HgCkptIO()],
    callbacks=[ModelCheckpoint(monitor='val_loss',mode='min')]
)

trainer.fit(fintuner, dm)
"""

GET_MODEL = """
def get_model(name, num_labels):
    model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=num_labels)
    model.config.output_attentions = True
    model.config.output_hidden_states = True
    model.config.output_values = True

    return model
"""

KD_CLF_MIX_STEP = (
    """
from datasets import load_dataset
from pytorch_lightning import Trainer
from data.data_module import ClfDataModule
from helper.distiller import BaseDistiller, HgCkptIO
from pytorch_lightning.callbacks import ModelCheckpoint
from transformers import AutoModelForSequenceClassification
"""
    + GET_MODEL
    + """
teacher_model = TEACHER
student_model = STUDENT

adaptors = [
  'AttnMiniLM',
  'ValMiniLM',
  'LogitMSE',
]

dataset = load_dataset('tweet_eval', 'sentiment')
teacher = get_model(teacher_model, num_labels=3)
student = get_model(student_model, num_labels=3)

dm = ClfDataModule(dataset, tokenizer=teacher_model)

distiller = BaseDistiller(teacher, student, adaptors, dm)

trainer = Trainer(
    plugins=[HgCkptIO()],
    callbacks=[ModelCheckpoint(monitor='val_loss',mode='min')]
)

trainer.fit(distiller, dm)
"""
)

KD_CLF_TWO_STEP = (
    """
from datasets import load_dataset
from pytorch_lightning import Trainer
from data.data_module import ClfDataModule
from helper.distiller import InterDistiller, PredDistiller, HgCkptIO
from pytorch_lightning.callbacks import ModelCheckpoint
from transformers import AutoModelForSequenceClassification
"""
    + GET_MODEL
    + """
teacher_model = TEACHER
student_model = STUDENT

adaptors_1 = ['AttnMiniLM','ValMiniLM',]
adaptors_2 = ['LogitMSE']

dataset = load_dataset('tweet_eval', 'sentiment')
teacher = get_model(teacher_model, num_labels=3)
student = get_model(student_model, num_labels=3)

dm = ClfDataModule(dataset, tokenizer=teacher_model)

distiller_1 = InterDistiller(teacher, student, adaptors_1, dm)

trainer_1 = Trainer(
    plugins=[HgCkptIO()],
    callbacks=[ModelCheckpoint(dirpath='student_1st', monitor='val_loss',mode='min', save_last=True)]
)

trainer_1.fit(distiller_1, dm)

distiller_2 = PredDistiller(teacher, student, ['LogitMSE'], dm)

trainer_2 = Trainer(
    plugins=[HgCkptIO()],
    callbacks=[ModelCheckpoint(dirpath='student_2nd', monitor='val_loss',mode='min', save_last=True)]
)

trainer_2.fit(distiller_2, dm)
"""
)


@pytest.fixture
def kd_clf(tmp_path, monkeypatch, minilm_path):
    """Eager tiny models (kd-clf's `get_model` sets `output_attentions`, which transformers 5 allows on eager models
    only), a 3-label in-memory data set for `load_dataset`, short Trainer defaults, and the run in `tmp_path`."""
    import pytorch_lightning
    from transformers import AutoTokenizer, BertForSequenceClassification

    from tests.conftest import NEGATIVE, POSITIVE, tiny_bert_config

    names = {}
    for role, layers in (("TEACHER", 2), ("STUDENT", 1)):
        out = tmp_path / role.lower()
        torch.manual_seed(0)
        BertForSequenceClassification(tiny_bert_config(num_hidden_layers=layers, num_labels=3)).save_pretrained(out)
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, "attn_implementation": "eager"}))
        AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
        names[role] = str(out)
    texts = POSITIVE + NEGATIVE + ["it is a film", "some scenes, some actors"]
    labels = [2] * len(POSITIVE) + [0] * len(NEGATIVE) + [1, 1]
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "neu", "pos"])}
    )
    split = datasets.Dataset.from_dict({"text": texts * 2, "label": labels * 2}, features=features)
    dataset = datasets.DatasetDict(train=split, validation=split, test=split)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: dataset)
    short = {**TRAINER, "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1}
    short.pop("logger")
    monkeypatch.setattr(pytorch_lightning, "Trainer", functools.partial(pytorch_lightning.Trainer, **short))
    monkeypatch.chdir(tmp_path)
    return names


@pytest.mark.parametrize("snippet", [KD_CLF_FINETUNE, KD_CLF_MIX_STEP, KD_CLF_TWO_STEP], ids=["finetune", "mix", "two"])
def test_kd_clf_readme_snippets_run_as_written(snippet, kd_clf, tmp_path, capsys):
    namespace = dict(kd_clf)
    exec(compile(snippet, "kd-clf README", "exec"), namespace)
    if snippet is not KD_CLF_FINETUNE:  # get_model's flags: one line each model saying they are not needed
        said = capsys.readouterr().err
        assert "teacher: config.output_attentions, config.output_hidden_states, config.output_values set" in said
        assert "drop those lines" in said
    hf_dirs = sorted(p.name for p in tmp_path.rglob("*_hf") if (p / "model.safetensors").is_file())
    assert hf_dirs  # HgCkptIO wrote a loadable Hugging Face directory beside the checkpoints
    if snippet is KD_CLF_TWO_STEP:
        assert (tmp_path / "student_1st" / "last_hf").is_dir() and (tmp_path / "student_2nd" / "last_hf").is_dir()
