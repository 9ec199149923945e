"""Mix-step distillation: every adaptor at once (default [AttnMiniLM, ValMiniLM, LogitMSE])."""

from __future__ import annotations

from helper.config import DistillationRunConfig, run_cli


def main(cfg: DistillationRunConfig) -> dict:
    from helper.stages import run_distillation  # heavy imports only once the config is checked

    return run_distillation(cfg, "distill_ms")


if __name__ == "__main__":
    run_cli(DistillationRunConfig, "distillation_ms.yaml", main)
