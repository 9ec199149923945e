"""Mix-step distillation: every adaptor at once (default [AttnMiniLM, ValMiniLM, LogitMSE])."""

from __future__ import annotations

from helper.config import DistillationRunConfig, parse_cli
from helper.distiller import BaseDistiller
from helper.errors import run_cli
from helper.stages import run_distillation


def main(cfg: DistillationRunConfig) -> dict:
    return run_distillation(cfg, BaseDistiller, "distill_ms")


if __name__ == "__main__":
    run_cli(lambda: main(parse_cli(DistillationRunConfig, "configs/distillation_ms.yaml")))
