"""Stage start-up: seconds from process start to the first training step, with the default configs, on CPU.

Runs `finetune.py` and `distillation_ms.py` through `benchmarks/first_step.py` (which stops the process at the end of
its first training step) with their default configs, changing only where they write (`logger.output_dir`,
`data.cache_dir` in a temporary directory) and, for the distillation, the teacher: the MiniLM checkpoint the
fine-tuning starts from (the default `runs/finetune/model` may not exist). Each stage runs `--repeats` times in
turn: the first run of each meets a cold tokenization cache (a fresh machine), the later ones a warm one (every run
after the first). wandb is on, as in the defaults (offline without credentials). Figures: process start -> first step
start (start-up), and -> `on_fit_start` (everything before Lightning's fit: imports, data, models, Trainer), medians of
the warm runs; the target is <= 8 s. `--smoke` runs on a tiny model and tiny csv data, with wandb off.

Run: .venv/bin/python benchmarks/bench_startup.py [--repeats N] [--label TEXT] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, loadavg, minilm, save_result, smoke_csv, tiny_model_dir  # noqa: E402

SCRIPTS = ("finetune.py", "distillation_ms.py")
TARGET_S = 8.0


def smoke_args(out: Path) -> dict[str, str]:
    """Tiny csv data (train 32, validation 16), wandb off."""
    paths = smoke_csv(out, {"train": 32, "validation": 16})
    return {"data.source": "csv", "data.max_length": "16", "logger.loggers": "[csv]"} | {
        f"data.{split}": path for split, path in paths.items()
    }


def overrides(script: str, out: Path, teacher: str, smoke: dict | None) -> list[str]:
    args = {"logger.output_dir": str(out / "runs"), "data.cache_dir": str(out / "cache")}
    args["model.name" if script == "finetune.py" else "teacher.name"] = teacher
    if smoke is not None:
        args |= smoke
        if script != "finetune.py":
            args["student.init_from_teacher.layers"] = "[1]"
    return [f"{k}={v}" for k, v in args.items()]


def run_once(script: str, args: list[str], log: Path) -> dict:
    """One process; its phase times in seconds from just before it started."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "first_step.py"), str(ROOT / script), *args]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
    wall = time.time() - start
    log.write_text(proc.stdout + proc.stderr)
    phases = {}
    for line in proc.stdout.splitlines():
        if line.startswith("STARTUP "):
            _, phase, stamp = line.split()
            phases[phase] = round(float(stamp) - start, 3)
    if proc.returncode or "first_step_start" not in phases:
        raise RuntimeError(f"{script} did not reach its first step (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"phases_s": phases, "wall_s": round(wall, 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4, help="runs per stage (the first meets a cold cache)")
    parser.add_argument("--scripts", nargs="+", default=list(SCRIPTS), choices=SCRIPTS)
    parser.add_argument("--smoke", action="store_true", help="tiny model and data, wandb off (for the tests)")
    parser.add_argument("--label", default="", help="a note stored in the JSON (e.g. before/after)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup.json")
    args = parser.parse_args(argv)
    load_before = loadavg()
    runs: dict[str, list[dict]] = {s: [] for s in args.scripts}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        smoke = smoke_args(out) if args.smoke else None
        teacher = tiny_model_dir(out / "tiny") if args.smoke else minilm()
        for r in range(args.repeats):
            for script in args.scripts:
                res = run_once(script, overrides(script, out, teacher, smoke), out / f"{script}.{r}.log")
                runs[script].append(res)
                print(f"{script:<20} run {r} ({'cold' if r == 0 else 'warm'} cache): {res['phases_s']}", flush=True)
    stages = {}
    for script, rs in runs.items():
        warm = rs[1:] or rs
        stages[script] = {
            "cold_first_step_s": rs[0]["phases_s"]["first_step_start"],
            "warm_first_step_s": round(statistics.median(r["phases_s"]["first_step_start"] for r in warm), 3),
            "warm_fit_start_s": round(statistics.median(r["phases_s"].get("fit_start", 0.0) for r in warm), 3),
            "warm_first_step_end_s": round(statistics.median(r["phases_s"]["first_step_end"] for r in warm), 3),
            "runs": rs,
        }
    result = {
        "what": "seconds from process start to the first training step (first_step_start) of each stage with the "
        "default configs on CPU (output and cache dirs in a temp dir; distillation teacher: pretrained MiniLM); "
        "cold = first run (empty tokenization cache), warm = median of the later runs",
        "label": args.label,
        "smoke": args.smoke,
        "repeats": args.repeats,
        "stages": stages,
        "targets": {
            "first_step_s_max": TARGET_S,
            "met": all(s["warm_first_step_s"] <= TARGET_S for s in stages.values()),
        },
    }
    for script, s in stages.items():
        print(
            f"{script:<20} first step: cold {s['cold_first_step_s']:.2f} s, warm {s['warm_first_step_s']:.2f} s "
            f"(fit start {s['warm_fit_start_s']:.2f} s, first step done {s['warm_first_step_end_s']:.2f} s)"
        )
    save_result(args.out, result, load_before)
    return result


if __name__ == "__main__":
    main()
