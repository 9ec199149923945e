"""Two-step distillation, step 2: prediction layer (default [LogitMSE]) on the student written by step 1."""

from __future__ import annotations

from helper.config import DistillationRunConfig, parse_cli
from helper.distiller import PredDistiller
from helper.errors import run_cli
from helper.stages import run_distillation


def main(cfg: DistillationRunConfig) -> dict:
    return run_distillation(cfg, PredDistiller, "distill_ts_2nd")


if __name__ == "__main__":
    run_cli(lambda: main(parse_cli(DistillationRunConfig, "configs/distillation_ts_2nd.yaml")))
