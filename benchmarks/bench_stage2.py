"""Two-step distillation, step 2: what the teacher still costs once its logits are cached.

`PredDistiller` with `LogitMSE` and the teacher cache on, against the same student trained alone on the hard labels
(same data path: SST-2 train, length-grouped batches of 32, dynamic padding; same optimiser; same parameters trained):

  head:    PredDistiller(LogitMSE) vs PredDistiller(HardCE): the prediction layer only (stage 2's default)
  encoder: PredDistiller(LogitMSE, train_encoder=True) vs ClfFinetune: the whole student

Both runs of a pair do epoch 1 (the distiller fills its cache), then `--rounds` more epochs each, alternating which
goes first, so that other jobs on the machine weigh on both alike. Reported: the median of those later epochs and the
ratio distiller / student alone (target <= 1.10). Teacher and student as in bench_e2e.py (the SST-2 fine-tuned
MiniLM-L6 teacher, 2 layers cut from its layers [1, 5]).

Full run (about 13 minutes with 1 thread):  .venv/bin/python benchmarks/bench_stage2.py --threads 1
Smoke run:  .venv/bin/python benchmarks/bench_stage2.py --limit 256 --out /tmp/stage2.json [--tiny]
`--threads 1` because the machine is shared with other jobs (see bench_e2e.py); `--pairs head` alone takes 3 minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    OPTIM,
    ROOT,
    TimedFit,
    add_threads,
    command,
    loadavg,
    quiet,
    rounded,
    save_result,
    set_threads,
    sst2_data,
    teacher_and_student,
    teacher_source,
    tiny_model_dir,
    turns,
)
from bert.loading import load_tokenizer  # noqa: E402
from helper.distiller import PredDistiller  # noqa: E402
from helper.finetuner import ClfFinetune  # noqa: E402

PAIRS = {"head": False, "encoder": True}  # pair -> train_encoder


def build(path: str, labels: list[str], alone: bool, train_encoder: bool):
    """The distiller (LogitMSE, cache on) or the student alone on hard labels, training the same parameters."""
    teacher, student = teacher_and_student(path, labels, "sdpa")
    if alone and train_encoder:
        return ClfFinetune(student, optim=OPTIM)
    spec = ["HardCE"] if alone else ["LogitMSE"]
    return PredDistiller(teacher, student, spec, optim=OPTIM, cache_teacher=True, train_encoder=train_encoder)


def measure(path: str, dm, train_encoder: bool, rounds: int) -> dict[str, list[float]]:
    """Seconds of every epoch of the student alone and of the distiller, later epochs alternating."""
    runs = {name: TimedFit(build(path, dm.label_names, name == "alone", train_encoder), dm) for name in ("alone", "kd")}
    for run in runs.values():
        run.fit(1)
    for r in range(rounds):
        for name in turns(["alone", "kd"], r):
            runs[name].fit(1)
    return {name: run.seconds for name, run in runs.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="training examples (smoke run); default: all")
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS), help="default: both")
    parser.add_argument("--rounds", type=int, default=2, help="epochs after the first, per run (default: 2)")
    add_threads(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stage2.json")
    parser.add_argument("--tiny", action="store_true", help="smoke run: a random 6-layer BERT of hidden 32 as teacher")
    args = parser.parse_args(argv)
    set_threads(args.threads)

    quiet()
    tmp = tempfile.TemporaryDirectory()
    path, note = (tiny_model_dir(Path(tmp.name), 6), "TINY random BERT") if args.tiny else teacher_source()
    dm = sst2_data(load_tokenizer(path), args.limit, seed=0)
    n = len(dm.datasets["train"])
    load_before = loadavg()
    result = {
        "what": "step-2 distillation (PredDistiller, LogitMSE, teacher cache on) vs the student alone on hard labels, "
        "same parameters trained; seconds per training epoch; ratio of the medians of the epochs after the first",
        "teacher": note,
        "student": "2 layers cut from the teacher's layers [1, 5]",
        "train_examples": n,
        "batch_size": dm.cfg.batch_size,
        "seed": dm.cfg.seed,
        "rounds": args.rounds,
        "pairs": {},
        "command": command(__file__, argv),
    }
    print(f"{'pair':<8} {'alone e1 s':>10} {'KD e1 s':>8} {'alone later s':>13} {'KD later s':>10} {'ratio':>6}")
    for pair in args.pairs:
        seconds = measure(path, dm, PAIRS[pair], args.rounds)
        later = {name: statistics.median(s[1:]) for name, s in seconds.items()}
        ratio = later["kd"] / later["alone"]
        alone_e1, kd_e1 = seconds["alone"][0], seconds["kd"][0]
        print(f"{pair:<8} {alone_e1:>10.1f} {kd_e1:>8.1f} {later['alone']:>13.1f} {later['kd']:>10.1f} {ratio:>6.3f}")
        result["pairs"][pair] = {
            "student_alone": "ClfFinetune" if PAIRS[pair] else "PredDistiller(HardCE)",
            "distiller": f"PredDistiller(LogitMSE, train_encoder={PAIRS[pair]})",
            "alone_epoch_s": rounded(seconds["alone"]),
            "distiller_epoch_s": rounded(seconds["kd"]),
            "later_epochs_median_s": rounded(later),
            "ratio": round(ratio, 3),
            "examples_per_s_later": {name: round(n / s, 1) for name, s in later.items()},
        }
    print("target: ratio <= 1.10 (epochs after the first, medians)")
    save_result(args.out, result, load_before)
    return result


if __name__ == "__main__":
    main()
