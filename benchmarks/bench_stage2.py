"""Two-step distillation, step 2: what the teacher still costs once its logits are cached.

`PredDistiller` with `LogitMSE` and the teacher cache on, against the same student trained alone on the hard labels,
same data path (SST-2 train, length-grouped batches of 32, dynamic padding), same optimiser; 2 epochs each, no
validation. Epoch 1 of the distiller fills the cache; epoch 2 should cost what training the student alone costs.

  head:    PredDistiller(LogitMSE) vs PredDistiller(HardCE), both training the prediction layer only (stage 2 default)
  encoder: PredDistiller(LogitMSE, train_encoder=True) vs ClfFinetune, both training the whole student

Teacher and student as in bench_e2e.py (the SST-2 fine-tuned MiniLM-L6 teacher, 2 layers cut from its layers [1, 5]).
Reported: epoch-2 seconds and the ratio distiller / student alone (target <= 1.10).

Full run (about 5 minutes on 2 cores):  .venv/bin/python benchmarks/bench_stage2.py
Smoke run:                              .venv/bin/python benchmarks/bench_stage2.py --limit 256 --out /tmp/stage2.json
On a machine shared with other jobs add `--threads 1` (see bench_e2e.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import (  # noqa: E402
    OPTIM,
    ROOT,
    THREADS_HELP,
    data_module,
    environment,
    fit,
    models,
    rounded,
    teacher_source,
)

from bert.features import ModelDims  # noqa: E402
from helper.adaptors import build_adaptors  # noqa: E402
from helper.checkpoint import load_tokenizer  # noqa: E402
from helper.distiller import PredDistiller  # noqa: E402
from helper.finetuner import ClfFinetune  # noqa: E402

PAIRS = {"head": False, "encoder": True}  # pair -> train_encoder


def build(path: str, labels: list[str], alone: bool, train_encoder: bool):
    """The distiller (LogitMSE, cache on) or the student alone on hard labels, training the same parameters."""
    teacher, student = models(path, labels, "sdpa")
    if alone and train_encoder:
        return ClfFinetune(student, OPTIM)
    spec = ["HardCE"] if alone else ["LogitMSE"]
    adaptors = build_adaptors(spec, ModelDims.of(teacher.config), ModelDims.of(student.config))
    return PredDistiller(teacher, student, adaptors, OPTIM, cache_teacher=True, train_encoder=train_encoder)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="training examples (smoke run); default: all")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stage2.json")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    transformers.logging.set_verbosity_error()
    path, note = teacher_source()
    dm = data_module(load_tokenizer(path), args.limit, seed=0)
    n = len(dm.datasets["train"])
    load_before = os.getloadavg()[0]
    seconds = {}
    for pair, train_encoder in PAIRS.items():  # back to back within a pair: the student alone first
        for alone in (True, False):
            seconds[pair, alone] = fit(build(path, dm.label_names, alone, train_encoder), dm)

    result = {
        "what": "step-2 distillation (PredDistiller, LogitMSE, teacher cache on) vs the student alone on hard labels, "
        "same parameters trained; seconds per training epoch, ratio of epoch 2",
        "teacher": note,
        "student": "2 layers cut from the teacher's layers [1, 5]",
        "train_examples": n,
        "batch_size": dm.cfg.batch_size,
        "seed": dm.cfg.seed,
        "pairs": {},
        "command": " ".join(["python", "benchmarks/bench_stage2.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(f"{'pair':<8} {'alone e1 s':>10} {'alone e2 s':>10} {'KD e1 s':>8} {'KD e2 s':>8} {'e2 ratio':>9}")
    for pair in PAIRS:
        alone, kd = seconds[pair, True], seconds[pair, False]
        ratio = kd[1] / alone[1]
        print(f"{pair:<8} {alone[0]:>10.1f} {alone[1]:>10.1f} {kd[0]:>8.1f} {kd[1]:>8.1f} {ratio:>9.3f}")
        result["pairs"][pair] = {
            "student_alone": "ClfFinetune" if PAIRS[pair] else "PredDistiller(HardCE)",
            "distiller": f"PredDistiller(LogitMSE, train_encoder={PAIRS[pair]})",
            "alone_epoch_s": rounded(alone),
            "distiller_epoch_s": rounded(kd),
            "epoch2_ratio": round(ratio, 3),
            "examples_per_s_epoch2": {"alone": round(n / alone[1], 1), "distiller": round(n / kd[1], 1)},
        }
    print("target: epoch-2 ratio <= 1.10")
    result |= environment(load_before)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
