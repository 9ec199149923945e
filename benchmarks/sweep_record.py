"""A sweep as a benchmark record: what `sweep.py FILE --results` writes (every trial, the summary over seeds; read from
the storage), with the trials' CPU time, the sweep's command, a note, the machine and the date, in one JSON file.

    .venv/bin/python benchmarks/sweep_record.py sweeps/ship_trec_confirm.yaml \
        overrides.teacher.name=/work/teachers/trec/model --note "teacher: ..."   # -> results/sweep_<name>.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, loadavg, rounded, save_result  # noqa: E402
from helper.sweep import load_plan, run_sweep  # noqa: E402
from helper.sweep_results import write_results  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="the sweep file (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="the sweep's overrides, as it ran")
    parser.add_argument("--storage", help="Optuna storage URL, as it ran (default: the sweep's SQLite file)")
    parser.add_argument("--note", default="", help="what a reader of the record needs to know (teacher, machine load)")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/sweep_<name>.json")
    args = parser.parse_args(argv)
    load_before = loadavg()
    plan = load_plan(args.file, args.overrides)
    results = write_results(plan, run_sweep(plan, args.storage, run=False))
    trials = results["trials"].drop(columns=["run_dir", "worker"], errors="ignore")
    record = {
        "command": " ".join(["python sweep.py", args.file, *args.overrides]),
        "note": args.note,
        "cpu_seconds_total": float(trials["cpu_seconds"].sum()) if len(trials) else 0.0,
        "summary": results["summary"],
        "trials": trials.to_dict(orient="records"),
    }
    record = rounded(record)
    save_result(args.out or ROOT / "benchmarks" / "results" / f"sweep_{plan.name}.json", record, load_before)
    return record


if __name__ == "__main__":
    main()
