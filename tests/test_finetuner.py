from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import finetune
from bert.errors import UserError
from helper.config import FinetuneConfig, load_config
from tests.conftest import ROOT, run_overrides


def cfg_for(tmp_path, clf_csv, model_dir, **extra) -> FinetuneConfig:
    overrides = run_overrides(tmp_path, clf_csv, **{"model.name": model_dir, **extra})
    return load_config(FinetuneConfig, ROOT / "configs" / "finetune.yaml", overrides)


def test_finetune_exports_a_plain_hf_model_with_label_names(tmp_path, clf_csv, tiny_model_dir):
    metrics = finetune.main(cfg_for(tmp_path, clf_csv, tiny_model_dir, **{"trainer.max_epochs": 2}))
    run = tmp_path / "finetune"
    assert {"val/acc", "val/f1", "test/acc", "test/f1"} <= set(metrics)
    assert json.loads((run / "metrics.json").read_text()) == pytest.approx(metrics)
    assert (run / "config.yaml").is_file() and (run / "csv" / "version_0" / "metrics.csv").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.label2id == {"neg": 0, "pos": 1}
    # the exported model is the best checkpoint's weights: it reproduces the logged validation accuracy
    tok = AutoTokenizer.from_pretrained(run / "model")
    import csv

    rows = list(csv.DictReader(open(clf_csv["validation"])))
    enc = tok([r["text"] for r in rows], padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        pred = model(**enc).logits.argmax(-1)
    acc = (pred == torch.tensor([r["label"] == "pos" for r in rows]).long()).float().mean().item()
    assert acc == pytest.approx(metrics["val/acc"])


def test_model_trains_in_train_mode(tmp_path, clf_csv, tiny_model_dir):
    from helper.checkpoint import load_classifier
    from helper.config import OptimConfig
    from helper.finetuner import ClfFinetune

    module = ClfFinetune(load_classifier(tiny_model_dir, ["neg", "pos"]), optim=OptimConfig())
    assert module.model.training  # dropout on during training


def test_resume_from_last_checkpoint(tmp_path, clf_csv, tiny_model_dir):
    finetune.main(cfg_for(tmp_path, clf_csv, tiny_model_dir, **{"trainer.max_epochs": 1}))
    steps_per_epoch = torch.load(tmp_path / "finetune" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    finetune.main(cfg_for(tmp_path, clf_csv, tiny_model_dir, **{"trainer.max_epochs": 2, "trainer.resume": "last"}))
    resumed = torch.load(tmp_path / "finetune" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 2 * steps_per_epoch
    import csv

    first, second = (
        list(csv.DictReader(open(tmp_path / "finetune" / "csv" / v / "metrics.csv")))
        for v in ("version_0", "version_1")
    )
    assert {r["epoch"] for r in first if r["train/loss"]} == {"0"}
    assert {r["epoch"] for r in second if r["train/loss"]} == {"1"}  # epoch 0 was not trained again


def test_resume_without_checkpoint_is_one_line(tmp_path, clf_csv, tiny_model_dir):
    with pytest.raises(UserError, match="trainer.resume: no checkpoint at"):
        finetune.main(cfg_for(tmp_path, clf_csv, tiny_model_dir, **{"trainer.resume": "last"}))
