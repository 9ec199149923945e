"""Wall time and peak memory of `make demo` (fine-tune the teacher, then distil the student), stage by stage.

The stages are the `$(PY) script.py` lines of the Makefile's `demo` recipe, run in order with their default configs
plus: logger.output_dir=<tmp dir> (runs/ is left alone), data.cache_dir=<tmp dir>/cache (a cold tokenizer cache, as on
a fresh machine) and, after fine-tuning, teacher.name=<tmp dir>/<finetune run>/model. `make setup` (pip) is not timed.
Memory: ru_maxrss of each stage's process from os.wait4, i.e. the peak RSS of its largest process. Each stage's output
goes to <dir>/<script>.log.

Run: .venv/bin/python benchmarks/bench_demo.py [--keep DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, loadavg, quiet, save_result, smoke_csv, tiny_model_dir  # noqa: E402
from helper.config import FinetuneConfig, load_config  # noqa: E402

TARGET_S = 15 * 60


def demo_scripts(makefile: Path = ROOT / "Makefile") -> list[str]:
    """The scripts `make demo` runs, in order."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n?)+)", makefile.read_text(), re.MULTILINE)
    scripts = re.findall(r"\$\(PY\) (\S+\.py)", recipe.group(1)) if recipe else []
    if not scripts:
        raise SystemExit(f"{makefile}: no `$(PY) script.py` line in the demo recipe")
    return scripts


def overrides(script: str, out: Path, teacher_dir: Path, smoke: dict | None) -> list[str]:
    """What differs from `make demo`: the output and cache directories (and, with --smoke, everything tiny)."""
    args = {"logger.output_dir": str(out), "data.cache_dir": str(out / "cache")}
    if script != "finetune.py":
        args["teacher.name"] = str(teacher_dir)
    if smoke is not None:
        args |= {f"data.{k}": v for k, v in smoke["data"].items()}
        args |= {"data.source": "csv", "data.batch_size": 8, "data.max_length": 16, "trainer.max_epochs": 1}
        args |= {"trainer.accelerator": "cpu", "trainer.devices": 1, "logger.loggers": "[csv]"}
        if script == "finetune.py":
            args["model.name"] = smoke["model"]
        else:
            args |= {"student.init_from_teacher.layers": "[1]", "distill.report_batches": 2}
    return [f"{k}={v}" for k, v in args.items()]


def run_stage(cmd: list[str], log_path: Path, env: dict) -> dict:
    """Run one stage, its output to `log_path`; its wall time, peak RSS and exit code."""
    start = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "returncode": os.waitstatus_to_exitcode(status),
        "log": str(log_path),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="write the runs here and keep them (default: a temp dir, removed)")
    parser.add_argument("--smoke", action="store_true", help="tiny random model and 64 sentences: checks the wiring")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "demo.json")
    args = parser.parse_args(argv)

    quiet()
    python = ROOT / ".venv" / "bin" / "python"
    python = str(python) if python.is_file() else sys.executable
    scripts = demo_scripts()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.smoke:
        env["OMP_NUM_THREADS"] = "1"  # tiny models: a second thread only waits
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep.resolve() if args.keep else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        smoke = None
        if args.smoke:
            smoke = {
                "data": smoke_csv(out, {"train": 32, "validation": 16, "test": 16}),
                "model": tiny_model_dir(out / "tiny_model"),
            }
        ft_cfg = load_config(FinetuneConfig, ROOT / "configs" / "finetune.yaml")
        teacher_dir = out / (ft_cfg.logger.run_name or "finetune") / "model"
        load_before = loadavg()
        stages = {}
        for script in scripts:
            cmd = [python, script, *overrides(script, out, teacher_dir, smoke)]
            print(f"$ {' '.join(cmd)}", flush=True)
            stages[script] = {"command": " ".join(cmd[1:]), **run_stage(cmd, out / f"{script}.log", env)}
            s = stages[script]
            print(f"  {s['wall_s']:.0f} s, peak RSS {s['peak_rss_mb']:.0f} MiB, exit {s['returncode']}")
            if s["returncode"]:
                print((out / f"{script}.log").read_text(errors="replace")[-3000:])
                raise SystemExit(f"{script} failed (exit {s['returncode']}); log: {s['log']}")
        total = sum(s["wall_s"] for s in stages.values())
        result = {
            "what": "make demo without setup: wall seconds and peak RSS (largest process) per stage",
            "smoke": args.smoke,
            "stages": stages,
            "total_wall_s": round(total, 1),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
            "target_s": TARGET_S,
            "target_met": total <= TARGET_S,
            "results": read_results(out),
        }
    print(f"total {total:.0f} s (target {TARGET_S} s), peak RSS {result['peak_rss_mb']:.0f} MiB")
    save_result(args.out, result, load_before)
    return result


def read_results(out: Path) -> dict:
    """Accuracy figures and the report summary the demo wrote, to show it did its job."""
    found = {}
    for path in sorted(out.glob("*/metrics.json")):
        found[path.parent.name] = json.loads(path.read_text())
    for path in sorted(out.glob("*/report.json")):
        found[f"{path.parent.name} report"] = json.loads(path.read_text())["summary"]
    return found


if __name__ == "__main__":
    main()
