"""helper/serving.py: ONNX fp32 and int8 exports, their parity check, OnnxClassifier, export_onnx.py."""

from __future__ import annotations

import sys

import pytest
import torch

import export_onnx
from bert.errors import UserError
from helper import serving
from helper.inference import load_model

pytest.importorskip("onnxruntime")


def test_exports_load_and_match_the_pytorch_model(tiny_onnx_dir, tiny_model_dir):
    out = serving.onnx_dir(tiny_onnx_dir)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == ["model.onnx", "model_int8.onnx"]
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    assert (out / "model_int8.onnx").stat().st_size < 0.5 * (out / "model.onnx").stat().st_size
    model, tokenizer = load_model(tiny_model_dir)
    batches = serving.random_batches(tokenizer, max_length=20, rows=24, seed=1)  # other rows than the export's check
    for backend in serving.ONNX_FILES:
        served = serving.OnnxClassifier(out, backend, threads=1)
        assert served.input_names == ["input_ids", "attention_mask", "token_type_ids"]
        found = serving.compare(model, served, batches, backend)
        assert found["max_abs_diff"] <= found["tolerance"] and found["rows"] == 24
    one = {k: v[:1] for k, v in batches[0].items()}  # batch 1, another sequence length: the axes are dynamic
    fp32 = serving.OnnxClassifier(out, "onnx")(**one)
    torch.testing.assert_close(fp32, model(**one).logits.detach(), atol=serving.FP32_TOL, rtol=0)


def test_a_broken_export_fails_with_one_line_and_writes_nothing(tmp_path, tiny_model_dir, monkeypatch):
    real = serving._Logits.forward
    monkeypatch.setattr(serving._Logits, "forward", lambda self, *inputs: real(self, *inputs) + 0.01)  # traced in
    model, tokenizer = load_model(tiny_model_dir)
    batches = serving.random_batches(tokenizer, max_length=12, rows=16)
    with pytest.raises(
        UserError, match=r"model\.onnx does not match the PyTorch model: max \|logit difference\| 0\.01"
    ):
        serving.export_onnx(model, tokenizer, tmp_path / "out", batches)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_int8_tolerance_is_relative_to_the_logits_size(tiny_onnx_dir, tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    batches = serving.random_batches(tokenizer, max_length=12, rows=16)
    served = serving.OnnxClassifier(serving.onnx_dir(tiny_onnx_dir), "onnx-int8")
    assert serving.compare(model, served, batches, "onnx-int8")["tolerance"] == serving.INT8_MIN_TOL  # small logits
    with torch.no_grad():
        model.classifier.bias.add_(torch.tensor([10.0, -10.0]))  # logits of about 10: the relative bound holds
    found = serving.compare(model, served, batches, "onnx-int8")
    ref = torch.cat([model(**b).logits.detach() for b in batches])
    assert found["tolerance"] == pytest.approx(serving.INT8_REL_TOL * float(ref.abs().max()))
    with pytest.raises(UserError, match="model_int8.onnx does not match"):  # and the int8 file is not this model's
        serving.check_parity(model, served, batches, "onnx-int8")


def test_without_onnxruntime_export_and_backend_are_one_line(tmp_path, tiny_onnx_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    assert not serving.onnx_available()
    assert export_onnx.main(["--model", str(tiny_onnx_dir)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: export_onnx.py: onnx and onnxruntime are not installed (pip install onnx onnxruntime)"
    ]
    with pytest.raises(UserError, match=r"--backend onnx-int8: .*not installed \(pip install onnx onnxruntime\)"):
        serving.OnnxClassifier(serving.onnx_dir(tiny_onnx_dir), "onnx-int8")


def test_export_command_and_its_bad_input(tmp_path, tiny_onnx_dir, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("a gorgeous film\na tedious mess that goes on\nfine\n")
    assert export_onnx.main(["--model", str(tiny_onnx_dir), "--texts", str(texts), "--max-length", "16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"onnx export -> {serving.onnx_dir(tiny_onnx_dir)}: model.onnx ") and "over 3 rows" in out
    assert export_onnx.main(["--model", str(tmp_path)]) == 2
    assert "not an exported classifier directory (no config.json)" in capsys.readouterr().err


def test_the_bilstm_student_exports(tmp_path, tiny_model_dir):
    from bert.bilstm import bilstm_student

    teacher, tokenizer = load_model(tiny_model_dir)
    student = bilstm_student(teacher, tokenizer, ["a", "b"], hidden_size=8, mlp_hidden=8, num_layers=2).eval()
    batches = serving.random_batches(tokenizer, max_length=12, rows=32)
    checks = serving.export_onnx(student, tokenizer, tmp_path / "out", serving.check_batches(batches, student))
    assert checks["onnx"]["max_abs_diff"] < 1e-5 and checks["onnx-int8"]["rows"] == 32
    served = serving.OnnxClassifier(tmp_path / "out", "onnx")
    left = {"input_ids": torch.tensor([[0, 0, 7, 8, 9]]), "attention_mask": torch.tensor([[0, 0, 1, 1, 1]])}
    right = {"input_ids": torch.tensor([[7, 8, 9]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    torch.testing.assert_close(served(**left), served(**right))  # padding on either side reads the same tokens
    torch.testing.assert_close(served(**right), student(**right).logits, atol=1e-5, rtol=0)


class _CumProd(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.cumprod(-1)  # no ONNX form


def test_a_model_that_does_not_export_is_one_line(tmp_path, tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    model.classifier = torch.nn.Sequential(model.classifier, _CumProd())
    batches = serving.random_batches(tokenizer, max_length=8, rows=4)
    with pytest.raises(UserError, match="BertForSequenceClassification does not export to ONNX: .*aten::cumprod"):
        serving.export_onnx(model, tokenizer, tmp_path / "out", serving.check_batches(batches, model))
    assert not (tmp_path / "out").exists()
