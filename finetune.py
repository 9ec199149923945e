"""Stage 0: fine-tune the teacher and export it in Hugging Face format to <run dir>/model."""

from __future__ import annotations

import json

from data.datamodule import ClfDataModule
from helper.checkpoint import export_hf, load_classifier, load_tokenizer
from helper.config import FinetuneConfig, parse_cli
from helper.errors import run_cli
from helper.finetuner import ClfFinetune
from helper.training import best_checkpoint, build_trainer, load_best


def main(cfg: FinetuneConfig) -> dict:
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    dm = ClfDataModule(cfg.data, tokenizer)
    dm.setup("fit")
    model = load_classifier(cfg.model.name, dm.label_names, cfg.model.attn_implementation, cfg.model.dropout)
    module = ClfFinetune(model, cfg.optim)
    trainer, out, resume = build_trainer(cfg, "finetune")
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    load_best(module, best_checkpoint(trainer))
    metrics = trainer.test(module, datamodule=dm, verbose=False)[0] if dm.has_test else {}
    metrics.update({k: float(v) for k, v in trainer.validate(module, datamodule=dm, verbose=False)[0].items()})
    if trainer.is_global_zero:
        export_hf(module.model, tokenizer, out / "model")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"teacher: {', '.join(f'{k} {v:.4f}' for k, v in sorted(metrics.items()))} -> {out / 'model'}")
    return metrics


if __name__ == "__main__":
    run_cli(lambda: main(parse_cli(FinetuneConfig, "configs/finetune.yaml")))
