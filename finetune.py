"""Stage 0: fine-tune the teacher and export it in Hugging Face format to <run dir>/model."""

from __future__ import annotations

from helper.config import FinetuneConfig, run_cli


def main(cfg: FinetuneConfig) -> dict:
    from helper.stages import run_finetune  # torch, Lightning and transformers load only once the config is checked

    return run_finetune(cfg)


if __name__ == "__main__":
    run_cli(FinetuneConfig, "finetune.yaml", main)
