"""Run a stage script (`python benchmarks/first_step.py finetune.py [overrides]`) and stop it at its first step.

Prints `STARTUP <phase> <unix time>` lines (fit start, first step start, first step end), then leaves at once with
`os._exit(0)` (no checkpoint, export or wandb tear-down). With FIRST_STEP_PROFILE=<path>, a cProfile of everything
before the first step is written to <path>. `bench_startup.py` runs it; the parent notes the time before
starting the process, so start-up = first step start - that time. Lightning is imported here only to add the
callback; every stage imports it before its first step anyway. Not a benchmark, and it imports nothing from
benchmarks/ (common.py would load torch and transformers before the stage does, into the time measured).
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

PROFILE = os.environ.get("FIRST_STEP_PROFILE")  # a path: cProfile from here to the first step, written there
_profiler = None


def stamp(phase: str) -> None:
    print(f"STARTUP {phase} {time.time():.6f}", flush=True)
    if phase == "first_step_start" and _profiler is not None:
        _profiler.disable()
        _profiler.dump_stats(PROFILE)


def install() -> None:
    """Every Trainer built from now on gets a callback that stamps the first step and then ends the process."""
    import pytorch_lightning as pl

    class FirstStep(pl.Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            stamp("fit_start")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            stamp("first_step_start")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            stamp("first_step_end")
            sys.stdout.flush()
            os._exit(0)

    init = pl.Trainer.__init__

    def patched(self, *args, callbacks=None, **kwargs):
        callbacks = [callbacks] if isinstance(callbacks, pl.Callback) else list(callbacks or [])
        init(self, *args, callbacks=[*callbacks, FirstStep()], **kwargs)

    pl.Trainer.__init__ = patched


if __name__ == "__main__":
    if PROFILE:
        import cProfile

        _profiler = cProfile.Profile()
        _profiler.enable()
    script = Path(sys.argv[1]).resolve()
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path.insert(0, str(script.parent))
    install()
    stamp("imports_for_hook_done")
    runpy.run_path(str(script), run_name="__main__")
    stamp("exited_without_training")
