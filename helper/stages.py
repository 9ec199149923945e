"""The wiring every stage shares: data, models, the module, fit, then one after-training sequence (best weights,
validation and test metrics, export, metrics.json, report)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl

from bert.errors import UserError
from data.datamodule import ClfDataModule
from helper.checkpoint import load_classifier, load_tokenizer, resolve_model_path
from helper.config import DistillationRunConfig, FinetuneConfig
from helper.distiller import BaseDistiller, InterDistiller, PredDistiller
from helper.finetuner import ClfFinetune
from helper.heatmap import AttentionHeatmap
from helper.students import build_student
from helper.training import best_checkpoint, build_trainer, load_best, run_dir, start_loggers_early

DISTILLERS: dict[str, type[BaseDistiller]] = {
    "distill_ms": BaseDistiller,
    "distill_ts_1st": InterDistiller,
    "distill_ts_2nd": PredDistiller,
}


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune `cfg.model` on `cfg.data`; export it to `<run dir>/model`."""
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # the new classifier head too
    start_loggers_early(cfg, "finetune")  # wandb starts while data and model load
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    dm = ClfDataModule(cfg.data, tokenizer)
    dm.setup("fit")
    model = load_classifier(cfg.model.name, dm.label_names, cfg.model.attn_implementation, cfg.model.dropout)
    module = ClfFinetune(model, dm, optim=cfg.optim)
    metrics, _, _ = fit_and_export(cfg, "finetune", module, dm, "model", "teacher")
    return metrics


def run_distillation(cfg: DistillationRunConfig, stage: str) -> dict:
    """Distil `cfg.teacher` into the student; export it to `<run dir>/student` and write the report."""
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # a random-init student and projections too
    start_loggers_early(cfg, stage)  # wandb starts while data and models load
    tok_t = load_tokenizer(cfg.teacher.tokenizer or cfg.teacher.name)
    name_s = cfg.student.tokenizer or (cfg.student.name if has_tokenizer(cfg.student.name) else None)
    dm = ClfDataModule(cfg.data, tok_t, load_tokenizer(name_s) if name_s else None)
    dm.setup("fit")
    teacher = load_classifier(cfg.teacher.name, dm.label_names, cfg.teacher.attn_implementation)
    student = build_student(cfg.student, teacher, cfg.teacher.name, dm.label_names)
    check_vocab(tok_t, teacher, "teacher")
    check_vocab(dm.student_tokenizer or tok_t, student, "student")
    distiller = DISTILLERS[stage](teacher, student, dm=dm, optim=cfg.optim, distill=cfg.distill)
    heatmap = AttentionHeatmap(run_dir(cfg.logger, stage) / "attention")
    metrics, out, student_dir = fit_and_export(cfg, stage, distiller, dm, "student", "student", [heatmap])
    if student_dir is not None and cfg.distill.report:
        from helper.report import write_report

        split = "test" if dm.has_test else "validation"
        loader = dm.test_dataloader() if dm.has_test else dm.val_dataloader()
        metrics["summary"] = write_report(
            teacher,
            student,
            resolve_model_path(cfg.teacher.name),
            student_dir,
            loader,
            split,
            out,
            n_latency=cfg.distill.report_batches,
        )
    return metrics


def fit_and_export(
    cfg, stage: str, module: pl.LightningModule, dm: ClfDataModule, export_name: str, what: str, callbacks=()
) -> tuple[dict, Path, Path | None]:
    """Fit, take the best weights, validate and test, export to `<run dir>/<export_name>`, write metrics.json.

    Returns the metrics, the run directory and the export (None on ranks other than 0).
    """
    trainer, out, resume = build_trainer(cfg, stage, list(callbacks))
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    if module.export_best:
        load_best(module, best_checkpoint(trainer))  # on every rank: the metrics below are the exported weights'
    metrics = {k: float(v) for k, v in trainer.validate(module, datamodule=dm, verbose=False)[0].items()}
    if dm.has_test:
        metrics.update({k: float(v) for k, v in trainer.test(module, datamodule=dm, verbose=False)[0].items()})
    exported = None
    if trainer.is_global_zero:
        exported = module.export(out / export_name)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"{what}: {', '.join(f'{k} {v:.4f}' for k, v in sorted(metrics.items()))} -> {exported}")
    return metrics, out, exported


def has_tokenizer(name: str | None) -> bool:
    """Whether model `name` comes with its own tokenizer (a directory with tokenizer files, or a hub name)."""
    if name is None:
        return False
    path = Path(resolve_model_path(name)).expanduser()
    if not path.is_dir():
        return True  # a hub name: its tokenizer loads with it
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json"))


def check_vocab(tokenizer, model, role: str) -> None:
    """Every token id the tokenizer can give must have an embedding row."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(
            f"{role}.tokenizer: {tokenizer.name_or_path} has {len(tokenizer)} tokens but the {role}'s embeddings have "
            f"{rows} rows; use the {role}'s own tokenizer or give it a matching vocab_size"
        )
