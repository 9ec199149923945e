from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import predict
from data.padding import pad_batch
from data.progress import Progress
from helper import inference
from tests.conftest import ROOT

WORDS = "the film is a gorgeous witty mess that drags on far too long but moving and funny at times".split()


def varied_texts(n: int = 37) -> list[str]:
    """Texts of 1 to ~40 words in no length order (so sorting by length really permutes them)."""
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + (i * 13) % 41)) for i in range(n)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return inference.load_model(tiny_model_dir, "cpu")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = predict.main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@torch.inference_mode()
def loop_probs(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """The straightforward reference: one unpadded text at a time, in input order."""
    rows = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=128, return_tensors="pt")
        rows.append(model(**enc).logits.softmax(-1)[0])
    return torch.stack(rows)  # (N, C)


def test_predict_keeps_input_order(tiny):
    model, tokenizer = tiny
    texts = varied_texts()
    label_ids, probs = inference.predict(
        model, tokenizer, texts, batch_size=4, max_length=512, device="cpu", chunk_size=16
    )
    expected = loop_probs(model, tokenizer, texts)
    assert probs.shape == expected.shape == (len(texts), 2)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    assert label_ids.tolist() == expected.argmax(-1).tolist()


def test_truncation_and_max_length_cap(tiny):
    model, tokenizer = tiny
    long_text = " ".join(WORDS * 20)  # > 128 tokens: the tiny model has 128 positions, --max-length 512 is capped
    _, probs = inference.predict(model, tokenizer, [long_text, "short"], batch_size=2, max_length=512, device="cpu")
    assert torch.isfinite(probs).all()
    _, probs8 = inference.predict(model, tokenizer, [long_text], batch_size=1, max_length=8, device="cpu")
    enc = tokenizer(long_text, truncation=True, max_length=8, return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(probs8, model(**enc).logits.softmax(-1), atol=1e-5, rtol=0)


def write_input(path: Path, texts: list[str]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    elif path.suffix in (".csv", ".tsv"):
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="," if path.suffix == ".csv" else "\t", lineterminator="\n")
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(texts))
        path.write_text(buf.getvalue())
    else:
        path.write_text("\n".join(texts) + "\n")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".tsv"])
def test_cli_inputs(tmp_path, tiny, tiny_model_dir, capsys, suffix):
    texts = varied_texts(11) + ['a "quoted" text, with a comma', "tab\there"]
    if suffix == ".txt":
        texts = texts[:-1]  # a tab is fine, but keep the plain-text case simple
    src = tmp_path / f"in{suffix}"
    write_input(src, texts)
    rc, out, err = run_cli(["--model", tiny_model_dir, "--input", str(src), "--batch-size", "3"], capsys)
    assert rc == 0, err
    rows = read_jsonl(out)
    assert [r["text"] for r in rows] == texts
    _, probs = inference.predict(*tiny, texts, batch_size=64, device="cpu")
    got = torch.tensor([[r["probs"]["LABEL_0"], r["probs"]["LABEL_1"]] for r in rows])
    torch.testing.assert_close(got, probs, atol=1e-5, rtol=0)
    assert [r["label_id"] for r in rows] == probs.argmax(-1).tolist()
    assert {r["label"] for r in rows} <= {"LABEL_0", "LABEL_1"}


@pytest.mark.parametrize(("output", "fmt", "delimiter"), [("out.csv", None, ","), ("out.txt", "tsv", "\t")])
def test_cli_csv_tsv_output(tmp_path, tiny_model_dir, capsys, output, fmt, delimiter):
    texts = ["good, really", "bad", 'so "so"']
    src = tmp_path / "in.txt"
    write_input(src, texts)
    args = ["--model", tiny_model_dir, "--input", str(src), "--output", str(tmp_path / output)]
    rc, out, err = run_cli(args + (["--format", fmt] if fmt else []), capsys)
    assert rc == 0 and out == "", err
    with open(tmp_path / output, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=delimiter))
    assert [r["text"] for r in rows] == texts
    assert list(rows[0]) == ["text", "label_id", "label", "prob_LABEL_0", "prob_LABEL_1"]
    for r in rows:
        assert abs(float(r["prob_LABEL_0"]) + float(r["prob_LABEL_1"]) - 1) < 1e-5
        assert r["label"] == f"LABEL_{r['label_id']}"
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place


@pytest.mark.slow
def test_cli_stdin_subprocess(tiny_model_dir):
    texts = ["a delight from start to finish", "", "a tedious mess"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), "--model", tiny_model_dir, "--input", "-", "--output", "-"],
        input="\n".join(texts) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(proc.stdout)
    assert [r["text"] for r in rows] == [t for t in texts if t]  # blank lines are not texts
    assert "Traceback" not in proc.stderr


def error_cases(tmp: Path, model_dir: str) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, a piece of the expected message)."""
    good = tmp / "good.txt"
    good.write_text("fine\n")
    (tmp / "empty.txt").write_text("")
    (tmp / "blank.txt").write_text("\n  \n")
    (tmp / "header_only.csv").write_text("text,label\n")
    (tmp / "cols.csv").write_text("sentence,label\nhello,1\n")
    (tmp / "cols.jsonl").write_text('{"sentence": "hello"}\n')
    (tmp / "bad.jsonl").write_text('{"text": "x"\n')
    (tmp / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp / "not_a_model").mkdir(exist_ok=True)
    (tmp / "not_a_model" / "config.json").write_text('{"model_type": "bert"}')  # config, no weights
    m = ["--model", model_dir]
    return {
        "model_missing": (["--model", str(tmp / "nope"), "--input", str(good)], "no such directory"),
        "model_no_config": (["--model", str(tmp), "--input", str(good)], "cannot load model"),
        "model_no_weights": (["--model", str(tmp / "not_a_model"), "--input", str(good)], "cannot load model"),
        "column_csv": ([*m, "--input", str(tmp / "cols.csv")], "no column 'text' (columns: sentence, label)"),
        "column_jsonl": ([*m, "--input", str(tmp / "cols.jsonl")], "line 1: no column 'text' (columns: sentence)"),
        "bad_json": ([*m, "--input", str(tmp / "bad.jsonl")], "line 1: not valid JSON"),
        "empty": ([*m, "--input", str(tmp / "empty.txt")], "empty.txt is empty"),
        "blank": ([*m, "--input", str(tmp / "blank.txt")], "blank.txt is empty"),
        "header_only": ([*m, "--input", str(tmp / "header_only.csv")], "header_only.csv has no rows"),
        "missing_file": ([*m, "--input", str(tmp / "missing.txt")], "cannot read"),
        "directory": ([*m, "--input", str(tmp)], "cannot read"),
        "not_utf8": ([*m, "--input", str(tmp / "latin1.txt")], "line 1: not valid utf-8"),
        "batch_zero": ([*m, "--input", str(good), "--batch-size", "0"], "--batch-size must be a positive integer"),
        "batch_text": ([*m, "--input", str(good), "--batch-size", "x"], "invalid int value"),
        "format": ([*m, "--input", str(good), "--format", "xml"], "invalid choice"),
        "no_model": (["--input", str(good)], "--model"),
        "device": ([*m, "--input", str(good), "--device", "tpu"], "--device"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "model_missing",
        "model_no_config",
        "model_no_weights",
        "column_csv",
        "column_jsonl",
        "bad_json",
        "empty",
        "blank",
        "header_only",
        "missing_file",
        "directory",
        "not_utf8",
        "batch_zero",
        "batch_text",
        "format",
        "no_model",
        "device",
    ],
)
def test_cli_errors(tmp_path, tiny_model_dir, capsys, case):
    argv, expected = error_cases(tmp_path, tiny_model_dir)[case]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2
    assert out == ""
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert expected in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_cli_error_subprocess(tmp_path):
    """The real process: exit status 2, one line, no traceback (the model is never loaded)."""
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), "--model", str(tmp_path), "--input", str(empty)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: {empty} is empty: no texts to score\n"


def test_progress_line():
    stream = io.StringIO()
    progress = Progress("predict:", 100, "rows", every_s=0.0, stream=stream)
    progress.advance(40)
    progress.advance(60)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("predict: 40/100 rows (40%), ") and " rows/s, ETA 0:00:" in lines[0]
    assert lines[1].startswith("predict: 100/100 rows (100%), ")
    assert lines[2].startswith("predict: 100 rows in ")
    assert len(lines) == 3


@pytest.mark.realdata
def test_sst2_accuracy_matches_direct_evaluation(tmp_path, tiny, tiny_model_dir, shared_data, capsys):
    lines = (shared_data / "sst2" / "stsa.binary.test").read_text().splitlines()[:300]
    pairs = [(int(line.split(" ", 1)[0]), line.split(" ", 1)[1]) for line in lines if line.strip()]
    labels, texts = [p[0] for p in pairs], [p[1] for p in pairs]
    src = tmp_path / "sst2.txt"
    src.write_text("\n".join(texts) + "\n")
    rc, out, err = run_cli(["--model", tiny_model_dir, "--input", str(src), "--batch-size", "32"], capsys)
    assert rc == 0, err
    rows = read_jsonl(out)
    assert [r["text"] for r in rows] == texts
    ours = [r["label_id"] for r in rows]

    model, tokenizer = tiny
    direct = []
    with torch.inference_mode():
        for i in range(0, len(texts), 32):  # input order, padded batches, no sorting
            enc = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt")
            direct += model(**enc).logits.argmax(-1).tolist()
    accuracy = sum(p == y for p, y in zip(ours, labels)) / len(labels)
    direct_accuracy = sum(p == y for p, y in zip(direct, labels)) / len(labels)
    assert accuracy == direct_accuracy
    assert ours == direct


@pytest.mark.parametrize("left", [False, True])
def test_pad(left):
    batch = pad_batch([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], pad_id=0, left=left)
    ids, mask = batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    if left:
        assert ids == [[5, 6, 7], [0, 0, 8]] and mask == [[1] * 3, [0, 0, 1]]
    else:
        assert ids == [[5, 6, 7], [8, 0, 0]] and mask == [[1] * 3, [1, 0, 0]]


def test_backends_same_format_order_and_batching(tmp_path, tiny_onnx_dir, tiny_model_dir, capsys):
    pytest.importorskip("onnxruntime")
    texts = varied_texts(13)
    src = tmp_path / "in.txt"
    write_input(src, texts)
    rows = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        args = ["--model", str(tiny_onnx_dir), "--input", str(src), "--batch-size", "4", "--backend", backend]
        rc, out, err = run_cli(args, capsys)
        assert rc == 0, err
        rows[backend] = read_jsonl(out)
        assert [r["text"] for r in rows[backend]] == texts and list(rows[backend][0]) == list(rows["torch"][0])
    probs = {b: torch.tensor([list(r["probs"].values()) for r in rs]) for b, rs in rows.items()}
    torch.testing.assert_close(probs["onnx"], probs["torch"], atol=1e-5, rtol=0)
    assert [r["label_id"] for r in rows["onnx"]] == [r["label_id"] for r in rows["torch"]]
    torch.testing.assert_close(probs["onnx-int8"], probs["torch"], atol=0.02, rtol=0)
    onnx_dir = f"{tiny_onnx_dir}_onnx"  # the ONNX directory itself works as --model too
    assert run_cli(["--model", onnx_dir, "--input", str(src), "--backend", "onnx"], capsys)[1] == rows_text(
        rows["onnx"]
    )
    rc, _, err = run_cli(["--model", tiny_model_dir, "--input", str(src), "--backend", "onnx"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "no model.onnx in" in err and "python export_onnx.py --model" in err
    rc, _, err = run_cli(["--model", onnx_dir, "--input", str(src), "--backend", "onnx", "--device", "cuda"], capsys)
    assert rc == 2 and "--backend onnx runs on CPU (ONNX Runtime); use --device cpu or auto" in err


def rows_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
