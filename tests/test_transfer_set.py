"""The transfer-set stage (Tang et al. 2019) on tiny data and a tiny teacher; distilling from its Parquet file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytorch_lightning as pl
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

import distillation_ms
import finetune
import transfer_set
from bert.errors import UserError
from bert.features import Features, ModelDims
from data.config import DataConfig
from data.data_module import ClfDataModule
from data.transfer import COLUMNS, SOURCES, write_transfer
from helper.adaptors import build_adaptors
from helper.config import (
    DistillationRunConfig,
    FinetuneConfig,
    InitFromConfig,
    OptimConfig,
    StudentConfig,
    TransferSetConfig,
    load_config,
)
from helper.distiller import BaseDistiller
from helper.students import build_student
from tests.conftest import ROOT, run_overrides
from tests.test_generate import lm_dir, train_texts  # noqa: F401  (fixtures: a tiny GPT-2)

LABELS = ["neg", "pos"]


def stage_overrides(tmp_path, clf_csv, teacher: str, **extra) -> list[str]:
    """`run_overrides` without the trainer keys (the stage does not train)."""
    return [o for o in run_overrides(tmp_path, clf_csv, **{"teacher.name": teacher, **extra}) if "trainer." not in o]


def run_stage(tmp_path, clf_csv, teacher: str, **extra):
    cfg = load_config(
        TransferSetConfig, ROOT / "configs" / "transfer_set.yaml", stage_overrides(tmp_path, clf_csv, teacher, **extra)
    )
    return transfer_set.main(cfg)


@pytest.fixture(scope="module")
def built(tmp_path_factory, clf_csv, tiny_model_dir):
    """The stage run once: 3 d-lite samples per sentence and a 3-line unlabelled file."""
    out = tmp_path_factory.mktemp("transfer")
    unlabelled = out / "unlabelled.txt"
    unlabelled.write_text("a film with no label\n\nanother sentence nobody rated\nthird one\n")
    path = run_stage(out, clf_csv, tiny_model_dir, **{"transfer.augment.n_iter": 3, "transfer.unlabelled": unlabelled})
    return path, pq.read_table(path)


def test_stage_writes_one_parquet_with_the_schema(built, tmp_path_factory):
    path, table = built
    assert path.name == "transfer.parquet" and path.parent.name == "transfer_set"
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # written via a temp file
    assert tuple(table.column_names) == COLUMNS
    schema = table.schema
    assert schema.field("text").type == pa.string() and schema.field("text_pair").type == pa.string()
    assert schema.field("label").type == pa.int64() and schema.field("source").type == pa.string()
    assert schema.field("logits").type == pa.list_(pa.float32())
    assert schema.metadata[b"label_names"] == b'["neg", "pos"]'
    sources = table.column("source").to_pylist()
    assert set(sources) <= set(SOURCES)
    assert sources.count("original") == 32 and sources.count("unlabelled") == 3
    assert {"mask", "ngram"} <= set(sources)
    assert all(p is None for p in table.column("text_pair").to_pylist())


def test_labels_are_gold_for_original_rows_and_minus_one_otherwise(built, clf_csv):
    _, table = built
    rows = table.to_pylist()
    gold = {f"{t}": y for t, y in (line.rsplit(",", 1) for line in open(clf_csv["train"]).read().split("\n")[1:-1])}
    for row in rows:
        if row["source"] == "original":
            assert row["label"] == LABELS.index(gold[f'"{row["text"]}"'])
        else:
            assert row["label"] == -1


def test_logits_are_the_teachers_own(built, tiny_model_dir):
    _, table = built
    teacher = BertForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = table.column("text").to_pylist()
    with torch.inference_mode():
        expected = torch.cat(
            [teacher(**tok(t, truncation=True, max_length=16, return_tensors="pt")).logits for t in texts]
        )
    stored = torch.tensor(table.column("logits").to_pylist())
    tol = 3e-2 if torch.cuda.is_available() else 1e-5  # the stage labels under bf16 autocast on CUDA
    torch.testing.assert_close(stored, expected, atol=tol, rtol=tol)


def test_generated_rows_from_a_causal_lm(tmp_path, clf_csv, tiny_model_dir, lm_dir):  # noqa: F811
    path = run_stage(
        tmp_path, clf_csv, tiny_model_dir,
        **{"transfer.augment": "null", "transfer.original": "false", "transfer.generate.model": lm_dir,
           "transfer.generate.count": 4, "transfer.generate.max_new_tokens": 4, "transfer.generate.device": "cpu"},
    )  # fmt: skip
    table = pq.read_table(path)
    assert table.column("source").to_pylist() == ["generated"] * 4
    assert table.column("label").to_pylist() == [-1] * 4


# -- distilling from a transfer set ----------------------------------------------------------------------------------


def data_module(clf_csv, tokenizer, transfer) -> ClfDataModule:
    cfg = DataConfig(
        source="csv", train=clf_csv["train"], validation=clf_csv["validation"], batch_size=8, max_length=16,
        cache_dir=None, transfer=str(transfer),
    )  # fmt: skip
    dm = ClfDataModule(cfg, tokenizer)
    dm.setup("fit")
    return dm


def test_transfer_rows_join_the_train_split_only(built, clf_csv, tokenizer):
    path, table = built
    dm = data_module(clf_csv, tokenizer, path)
    extra = table.num_rows - 32  # the original rows are the training set itself: not added again
    train = dm.datasets["train"]
    assert len(train) == 32 + extra and dm.transfer_rows == extra and len(dm.datasets["validation"]) == 16
    assert train.labels[32:].eq(-1).all() and train.labels[:32].ge(0).all()
    assert train.teacher_logits[:32].isnan().all()
    stored = torch.tensor([r["logits"] for r in table.to_pylist() if r["source"] != "original"])
    torch.testing.assert_close(train.teacher_logits[32:], stored, atol=0, rtol=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["teacher_logits"].shape == (len(batch["labels"]), 2)


def distiller(tiny_model_dir, dm, adaptors, **kwargs) -> BaseDistiller:
    torch.manual_seed(0)
    teacher = BertForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    student = build_student(StudentConfig(init_from_teacher=InitFromConfig(layers=[1])), teacher, "t", LABELS)
    built = build_adaptors(adaptors, ModelDims.of(teacher.config), ModelDims.of(student.config))
    return BaseDistiller(teacher, student, built, dm=dm, optim=OptimConfig(lr=1e-3, warmup_ratio=0.0), **kwargs)


def fit_counting_teacher_rows(module: BaseDistiller, dm, epochs: int) -> tuple[list[int], pl.Trainer]:
    rows: list[int] = []
    module.teacher.register_forward_hook(lambda m, a, kw, out: rows.append(len(kw["input_ids"])), with_kwargs=True)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, max_epochs=epochs,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return rows, trainer


@pytest.mark.parametrize(
    ("adaptors", "cache", "teacher_rows"),
    [
        (["LogitMSE"], True, 32),  # originals once (epoch 2 from the cache); transfer rows never
        (["LogitKL"], False, 64),  # no cache: originals every epoch; transfer rows still never
        ([{"name": "HardCE", "teacher_labels": True}], True, 32),
        (["AttnMiniLM", "LogitMSE"], True, None),  # token features: the teacher runs on every row once
    ],
)
def test_teacher_skips_transfer_rows_when_only_logits_are_read(
    built, clf_csv, tokenizer, tiny_model_dir, adaptors, cache, teacher_rows
):
    dm = data_module(clf_csv, tokenizer, built[0])
    module = distiller(tiny_model_dir, dm, adaptors, cache_teacher=cache)
    rows, trainer = fit_counting_teacher_rows(module, dm, epochs=2)
    assert sum(rows) == (teacher_rows if teacher_rows is not None else len(dm.datasets["train"]))
    assert trainer.callback_metrics["train/unlabelled_rows"] == dm.transfer_rows  # per epoch


def test_stored_logits_reach_the_losses(built, clf_csv, tokenizer, tiny_model_dir):
    dm = data_module(clf_csv, tokenizer, built[0])
    module = distiller(tiny_model_dir, dm, ["LogitMSE"], cache_teacher=False)
    train = dm.datasets["train"]
    batch = dm.train_dataloader().collate_fn([train[i] for i in (0, 33, 1, 40)])
    feats = module.teacher_features(batch)[0]
    torch.testing.assert_close(feats.logits[[1, 3]], train.teacher_logits[[33, 40]], atol=0, rtol=0)
    with torch.no_grad():
        live = module.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(feats.logits[[0, 2]], live[[0, 2]], atol=1e-5, rtol=1e-5)


def test_hard_ce_skips_unlabelled_rows():
    dims = ModelDims(2, 32, 4)
    (hard,) = build_adaptors(["HardCE"], dims, dims)
    (teacher_labels,) = build_adaptors([{"name": "HardCE", "teacher_labels": True}], dims, dims)
    mask = torch.ones(4, 3)
    logits_s = torch.randn(4, 2, requires_grad=True)
    feats_s = Features(attention_mask=mask, logits=logits_s)
    feats_t = Features(attention_mask=mask, logits=torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]))
    labels = torch.tensor([-1, 1, 0, -1])
    expected = torch.nn.functional.cross_entropy(logits_s[1:3], labels[1:3])
    torch.testing.assert_close(hard(feats_t, feats_s, labels), expected)
    all_teacher = torch.nn.functional.cross_entropy(logits_s, torch.tensor([1, 1, 0, 0]))
    torch.testing.assert_close(teacher_labels(feats_t, feats_s, labels), all_teacher)
    none = hard(feats_t, feats_s, torch.full((4,), -1))
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(logits_s.grad).all() and not logits_s.grad.any()
    assert hard.request() == ({}, {"logits": frozenset()})
    assert teacher_labels.request() == ({"logits": frozenset()}, {"logits": frozenset()})


def test_distillation_stage_reads_the_transfer_set(built, tmp_path, clf_csv, tiny_model_dir):
    overrides = run_overrides(
        tmp_path, clf_csv, **{"teacher.name": tiny_model_dir, "distill.report": False, "data.transfer": built[0],
                              "student.init_from_teacher.layers": "[1]", "distill.adaptors": "[LogitMSE, HardCE]"},
    )  # fmt: skip
    cfg = load_config(DistillationRunConfig, ROOT / "configs" / "distillation_ms.yaml", overrides)
    metrics = distillation_ms.main(cfg)
    assert "val/acc" in metrics


# -- bad input: one line each ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("transfer.augment.p_mask=2", "transfer.augment.p_mask: 2.0 must be a finite number in [0, 1]"),
        ("transfer.augment.n_iter=0", "transfer.augment.n_iter: 0 must be an integer in [1, 2147483647]"),
        ("transfer.batch_size=0", "transfer.batch_size: 0 must be an integer in [1, 2147483647]"),
        ("transfer.generate.top_p=2", "transfer.generate.top_p: 2.0 must be a finite number in (0, 1]"),
    ],
)
def test_bad_settings(override, message):
    with pytest.raises(UserError) as err:
        load_config(TransferSetConfig, ROOT / "configs" / "transfer_set.yaml", [override])
    assert str(err.value).endswith(message) and "\n" not in str(err.value)


def test_cli_reads_the_config_before_heavy_imports():
    proc = subprocess.run(
        [sys.executable, "transfer_set.py", "transfer.augment.p_mask=2"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "transfer.augment.p_mask: 2.0 must be a finite number in [0, 1]" in proc.stderr


@pytest.mark.parametrize("content", [None, ""])
def test_unlabelled_file_missing_or_empty(tmp_path, clf_csv, tiny_model_dir, content):
    path = tmp_path / "unlabelled.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=str(path)) as err:
        run_stage(tmp_path, clf_csv, tiny_model_dir, **{"transfer.unlabelled": path})
    assert "\n" not in str(err.value)


def test_finetune_refuses_a_transfer_set(tmp_path, clf_csv):
    overrides = run_overrides(tmp_path, clf_csv, **{"data.transfer": tmp_path / "t.parquet"})
    with pytest.raises(UserError, match="data.transfer: only the distillation stages read a transfer set"):
        finetune.main(load_config(FinetuneConfig, ROOT / "configs" / "finetune.yaml", overrides))


def test_causal_lm_that_does_not_load(tmp_path, clf_csv, tiny_model_dir):
    with pytest.raises(UserError, match="transfer.generate.model: cannot load '/nonexistent' as a causal LM"):
        run_stage(
            tmp_path, clf_csv, tiny_model_dir, **{"transfer.augment": "null", "transfer.generate.model": "/nonexistent"}
        )


def _rows(n: int, sources=None) -> dict:
    return {"text": [f"text {i}" for i in range(n)], "text_pair": [None] * n, "label": [-1] * n,
            "source": sources or ["mask"] * n}  # fmt: skip


def _write_table(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: write_transfer(p, _rows(3), np.zeros((3, 3)), LABELS),
            "row 0 has 3 logits, but the data has 2 labels",
        ),
        (
            lambda p: write_transfer(p, _rows(3), np.zeros((3, 2)), ["a", "b"]),
            "made for labels ['a', 'b'], but the data",
        ),
        (lambda p: write_transfer(p, _rows(0), np.zeros((0, 2)), LABELS), "the file has no rows"),
        (lambda p: _write_table(p, text=["x"], label=[0]), "missing column(s) text_pair, logits, source"),
        (lambda p: p.write_bytes(b"not parquet at all"), "cannot read it as Parquet"),
        (lambda p: None, "cannot read it as Parquet"),
    ],
)
def test_bad_transfer_files(tmp_path, clf_csv, tokenizer, make, message):
    path = tmp_path / "transfer.parquet"
    make(path)
    with pytest.raises(UserError) as err:
        data_module(clf_csv, tokenizer, path)
    text = str(err.value)
    assert text.startswith(f"data.transfer: {path}: ") and message in text and "\n" not in text
