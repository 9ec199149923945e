"""No change of behaviour: a fixed-seed tiny run of every stage (fine-tune, mix-step, two-step, general, transfer set,
two teachers + two students, predict) gives the exports and metrics recorded in `tests/stage_hashes.json`.

The record was written on the code before the architecture refactor (issue 21) with
`STAGE_HASHES_WRITE=1 python -m pytest tests/test_stage_hashes.py`, and written again (2026-12-05) for one intended
change: the MLM loss projects only the masked positions onto the vocabulary (`bert.families.masked_logits`), the
same arithmetic in another summation order, which moved the general stage's last bits (val/mlm 10.1757011 ->
10.1757021) and nothing else. Bit-identical weights need the same float
arithmetic: where the torch version or the CPU's kernel set differ from the record's, weights are not compared
bit for bit, and the metrics are compared within 1e-6 instead of exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import distillation_general
import distillation_ms
import distillation_ts_1st
import distillation_ts_2nd
import finetune
import predict
import transfer_set
from helper.config import DistillationRunConfig, FinetuneConfig, GeneralRunConfig, TransferSetConfig, load_config
from tests.conftest import NEGATIVE, POSITIVE, ROOT, run_overrides

RECORD = Path(__file__).with_name("stage_hashes.json")
WRITE = os.environ.get("STAGE_HASHES_WRITE") == "1"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def platform() -> dict:
    return {"torch": torch.__version__.split("+")[0], "cpu": torch.backends.cpu.get_cpu_capability()}


def export_record(run: Path, export: Path) -> dict:
    """sha256 of the export's weights, and the run's metrics (rounded: metrics.json's text is compared as numbers)."""
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "weights": sha256((export / "model.safetensors").read_bytes()),
        "metrics": {k: round(v, 7) for k, v in sorted(metrics.items()) if k != "summary"},
    }


def parquet_record(path: Path) -> dict:
    """The transfer set's rows and logits (not the file: its metadata names the run's temporary paths)."""
    table = pq.read_table(path)
    rows = {c: table.column(c).to_pylist() for c in ("text", "text_pair", "label", "source")}
    logits = [[round(x, 5) for x in row] for row in table.column("logits").to_pylist()]
    return {"rows": sha256(json.dumps(rows).encode()), "logits": sha256(json.dumps(logits).encode()), "n": len(logits)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, clf_csv, tiny_model_dir) -> dict:
    """Every stage once, in order, into one output directory; {stage: its record}."""
    out = tmp_path_factory.mktemp("stage_hashes")
    record: dict = {}

    def cfg(cls, yaml: str, **extra):
        return load_config(cls, ROOT / "configs" / yaml, run_overrides(out, clf_csv, **extra))

    finetune.main(cfg(FinetuneConfig, "finetune.yaml", **{"model.name": tiny_model_dir, "optim.lr": 1e-3}))
    teacher = out / "finetune" / "model"
    record["finetune"] = export_record(out / "finetune", teacher)

    transfer = [
        o
        for o in run_overrides(out, clf_csv, **{"teacher.name": teacher, "transfer.augment.n_iter": 2})
        if "trainer." not in o
    ]
    path = transfer_set.main(load_config(TransferSetConfig, ROOT / "configs" / "transfer_set.yaml", transfer))
    record["transfer_set"] = parquet_record(Path(path))

    common = {"teacher.name": teacher, "distill.report": False, "trainer.max_epochs": 2}
    mix = {"student.init_from_teacher.layers": "[1]", "data.transfer": path}
    distillation_ms.main(cfg(DistillationRunConfig, "distillation_ms.yaml", **common, **mix))
    record["distill_ms"] = export_record(out / "distill_ms", out / "distill_ms" / "student")

    distillation_ts_1st.main(
        cfg(DistillationRunConfig, "distillation_ts_1st.yaml", **common, **{"student.init_from_teacher.layers": "[1]"})
    )
    record["distill_ts_1st"] = export_record(out / "distill_ts_1st", out / "distill_ts_1st" / "student")
    distillation_ts_2nd.main(
        cfg(
            DistillationRunConfig,
            "distillation_ts_2nd.yaml",
            **common,
            **{"student.name": out / "distill_ts_1st" / "student", "distill.adaptors": "[LogitMSE, HardCE]"},
        )
    )
    record["distill_ts_2nd"] = export_record(out / "distill_ts_2nd", out / "distill_ts_2nd" / "student")

    text = out / "unlabelled.txt"
    text.write_text("\n".join(f"{POSITIVE[i % 4]} and {NEGATIVE[i % 3]} {i}" for i in range(40)) + "\n")
    general = [
        o
        for o in run_overrides(
            out,
            clf_csv,
            **{
                "teacher.name": teacher,
                "student.config": "{num_hidden_layers: 1, hidden_size: 24, num_attention_heads: 2}",
                "student.init_from_teacher": "null",
                "distill.adaptors": "[{name: QQMiniLMv2, relation_heads: 4}, {name: VVMiniLMv2, relation_heads: 4}]",
                "distill.mlm": "{weight: 0.5}",
                "data.source": "text",
                "data.train": text,
                "data.validation_fraction": 0.2,
                "optim.lr": 1e-3,
                "trainer.max_epochs": 2,
            },
        )
        if not o.startswith(("data.validation=", "data.test="))
    ]
    distillation_general.main(load_config(GeneralRunConfig, ROOT / "configs" / "distillation_general.yaml", general))
    record["distill_general"] = export_record(out / "distill_general", out / "distill_general" / "student")

    multi = {
        "teacher": f"[{{name: {teacher}, weight: 0.7}}, {{name: {tiny_model_dir}, weight: 0.3}}]",
        "students": "[{key: one, init_from_teacher: {layers: [0]}}, {key: two, init_from_teacher: {layers: [0, 1]}}]",
        "distill.adaptors": "[LogitKL, {name: AttnMiniLM, teacher: 0}]",
        "distill.report": False,
        "share.embeddings": True,
        "trainer.monitor": "val/mean/acc",
        "logger.run_name": "multi",
    }
    distillation_ms.main(cfg(DistillationRunConfig, "distillation_ms.yaml", **multi))
    for key in ("one", "two"):
        record[f"multi/{key}"] = export_record(out / "multi", out / "multi" / "students" / key)

    texts = out / "texts.txt"
    texts.write_text("\n".join(f"{p} {n}" for p, n in zip(POSITIVE, NEGATIVE)) + "\n")
    predictions = out / "predictions.jsonl"
    args = ["--model", str(out / "distill_ms" / "student"), "--input", str(texts), "--output", str(predictions)]
    assert predict.main([*args, "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    for r in rows:
        r["probs"] = {k: round(v, 5) for k, v in r["probs"].items()}
    record["predict"] = {"predictions": sha256(json.dumps(rows).encode()), "n": len(rows)}
    return record


@pytest.mark.slow
def test_every_stage_gives_the_recorded_exports_and_metrics(runs):
    if WRITE:
        RECORD.write_text(json.dumps({"platform": platform(), "stages": runs}, indent=2) + "\n")
        pytest.skip(f"wrote {RECORD}")
    want = json.loads(RECORD.read_text())
    same_arithmetic = want["platform"] == platform()
    assert set(runs) == set(want["stages"])
    for stage, got in runs.items():
        expected = want["stages"][stage]
        if "metrics" in got:
            assert set(got["metrics"]) == set(expected["metrics"]), stage
            for key, value in got["metrics"].items():
                assert value == pytest.approx(expected["metrics"][key], abs=0 if same_arithmetic else 1e-6), (
                    stage,
                    key,
                )
            if same_arithmetic:
                assert got["weights"] == expected["weights"], f"{stage}: the exported weights changed"
        elif same_arithmetic:
            assert got == expected, stage
        else:
            assert got["n"] == expected["n"], stage
