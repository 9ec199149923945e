"""General (task-agnostic) distillation: a bare encoder student learns the teacher's self-attention relations on
unlabelled text (default MiniLMv2 [QQMiniLMv2, KKMiniLMv2, VVMiniLMv2]); then `finetune.py model.name=<its export>`."""

from __future__ import annotations

from helper.config import GeneralRunConfig, run_cli


def main(cfg: GeneralRunConfig) -> dict:
    from helper.stages import run_general  # heavy imports only once the config is checked

    return run_general(cfg)


if __name__ == "__main__":
    run_cli(GeneralRunConfig, "distillation_general.yaml", main)
