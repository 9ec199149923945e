"""Two-step distillation, step 1: intermediate layers (default [AttnMiniLM, ValMiniLM]); writes an HF student."""

from __future__ import annotations

from helper.config import DistillationRunConfig, parse_cli
from helper.distiller import InterDistiller
from helper.errors import run_cli
from helper.stages import run_distillation


def main(cfg: DistillationRunConfig) -> dict:
    return run_distillation(cfg, InterDistiller, "distill_ts_1st")


if __name__ == "__main__":
    run_cli(lambda: main(parse_cli(DistillationRunConfig, "configs/distillation_ts_1st.yaml")))
