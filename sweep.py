"""Sweeps and searches over stage runs: a grid over keys or recipes x seeds and/or an Optuna search, each trial a real
stage run; a table, a summary over seeds, a Pareto plot and the best configuration (docs/sweeps.md)."""

from __future__ import annotations

import argparse
import sys

from bert.errors import UserError


def main(argv: list[str] | None = None):
    """`sweep.py FILE [key=value ...] [--workers N] [--storage URL] [--results] [--retry-failed]`; returns the plan."""
    from helper.sweep import load_plan, run_sweep  # optuna and the stages load only once the file is checked
    from helper.sweep_results import write_results

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file", help="the sweep file (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the sweep file")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///<output_dir>/<name>/optuna.db)")
    parser.add_argument("--results", action="store_true", help="only write the results of what has run")
    parser.add_argument(
        "--retry-failed", action="store_true", help="run the failed trials' points again (once what failed is fixed)"
    )
    args = parser.parse_args(argv)
    plan = load_plan(args.file, args.overrides)
    write_results(plan, run_sweep(plan, args.storage, args.workers, not args.results, args.retry_failed))
    return plan


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the same command goes on where the sweep stopped", file=sys.stderr)
        sys.exit(130)
