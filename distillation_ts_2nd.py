"""Two-step distillation, step 2: prediction-layer adaptors (default [LogitMSE]) on step 1's student."""

from __future__ import annotations

from helper.config import DistillationRunConfig, run_cli


def main(cfg: DistillationRunConfig) -> dict:
    from helper.stages import run_distillation  # heavy imports only once the config is checked

    return run_distillation(cfg, "distill_ts_2nd")


if __name__ == "__main__":
    run_cli(DistillationRunConfig, "distillation_ts_2nd.yaml", main)
