"""Sweeps and searches over stage runs: a grid, seeds and/or an Optuna search, each trial a real stage run
(docs/sweeps.md). `python sweep.py sweeps/transfer_sst2.yaml [key=value ...] [--workers N] [--storage URL]`."""

from __future__ import annotations

import sys

from bert.errors import UserError

if __name__ == "__main__":
    from helper.sweep import main

    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
