"""The wiring every stage shares: data, models, the module, fit, then one after-training sequence (best weights,
validation and test metrics, export, metrics.json, report)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl

from bert.errors import UserError
from bert.families import check_max_length, get_family
from bert.loading import load_model_config, load_tokenizer, resolve_model_path
from data.datamodule import ClfDataModule
from helper.checkpoint import load_classifier
from helper.config import DistillationRunConfig, FinetuneConfig
from helper.distiller import BaseDistiller, InterDistiller, PredDistiller
from helper.finetuner import ClfFinetune
from helper.heatmap import AttentionHeatmap
from helper.students import build_student
from helper.training import (
    best_checkpoint,
    build_trainer,
    check_resume,
    load_best,
    prepare_run,
    release_run_dir,
    run_dir,
    start_loggers_early,
)

DISTILLERS: dict[str, type[BaseDistiller]] = {
    "distill_ms": BaseDistiller,
    "distill_ts_1st": InterDistiller,
    "distill_ts_2nd": PredDistiller,
}


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune `cfg.model` on `cfg.data`; export it to `<run dir>/model`."""
    if cfg.data.transfer:
        raise UserError("data.transfer: only the distillation stages read a transfer set (its rows have no gold label)")
    one_model_monitor(cfg)
    out = prepare_run(cfg, "finetune")  # before heavy work: writable run directory, its lock
    try:
        return _run_finetune(cfg)
    finally:
        release_run_dir(out)


def _run_finetune(cfg: FinetuneConfig) -> dict:
    check_max_length(cfg.data.max_length, load_model_config(cfg.model.name), "model", cfg.model.name)
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # the new classifier head too
    start_loggers_early(cfg, "finetune")  # wandb starts while data and model load
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    dm = ClfDataModule(cfg.data, tokenizer)
    dm.setup("fit")
    model = load_classifier(cfg.model.name, dm.label_names, cfg.model.attn_implementation, cfg.model.dropout)
    module = ClfFinetune(model, dm, optim=cfg.optim, metrics=cfg.trainer.metrics)
    metrics, _, _ = fit_and_export(cfg, "finetune", module, dm, "model", "teacher")
    return metrics


def run_distillation(cfg: DistillationRunConfig, stage: str) -> dict:
    """Distil `cfg.teacher` into the student; export it to `<run dir>/student` and write the report."""
    several = isinstance(cfg.teacher, list) or cfg.students is not None
    if not several:
        one_model_monitor(cfg)
    out = prepare_run(cfg, stage)  # before heavy work: writable run directory, its lock
    try:
        if several:  # several teachers or students: helper/multi.py
            from helper.multi import run_multi

            return run_multi(cfg, stage)
        return _run_distillation(cfg, stage)
    finally:
        release_run_dir(out)


def _run_distillation(cfg: DistillationRunConfig, stage: str) -> dict:
    check_max_length(cfg.data.max_length, load_model_config(cfg.teacher.name), "teacher", cfg.teacher.name)
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # a random-init student and projections too
    start_loggers_early(cfg, stage)  # wandb starts while data and models load
    tok_t = load_tokenizer(cfg.teacher.tokenizer or cfg.teacher.name)
    name_s = cfg.student.tokenizer or (cfg.student.name if has_tokenizer(cfg.student.name) else None)
    dm = ClfDataModule(cfg.data, tok_t, load_tokenizer(name_s) if name_s else None)
    dm.setup("fit")
    teacher = load_classifier(cfg.teacher.name, dm.label_names, cfg.teacher.attn_implementation, None, "teacher", True)
    student = build_student(cfg.student, teacher, cfg.teacher.name, dm.label_names, tok_t)
    check_max_length(cfg.data.max_length, student.config, "student", cfg.student.name or "the student")
    check_vocab(tok_t, teacher, "teacher")
    check_vocab(dm.student_tokenizer or tok_t, student, "student")
    distiller = DISTILLERS[stage](
        teacher, student, dm=dm, optim=cfg.optim, distill=cfg.distill, metrics=cfg.trainer.metrics
    )
    both_attend = all("attentions" in get_family(m).features for m in (teacher, student))
    heatmap = [AttentionHeatmap(run_dir(cfg.logger, stage) / "attention")] if both_attend else []
    metrics, out, student_dir = fit_and_export(cfg, stage, distiller, dm, "student", "student", heatmap)
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
            validation_sets=dict(zip(dm.validation_names, dm.val_dataloader())) if dm.validation_names else None,
        )
    return metrics


def one_model_monitor(cfg) -> None:
    """`trainer.monitor` of a one-model run: val/<name>/<metric> must name one of its validation sets."""
    parts = cfg.trainer.monitor.split("/")
    sets = list(cfg.data.validation) if isinstance(cfg.data.validation, dict) else []
    if len(parts) == 3 and parts[1] not in sets:
        raise UserError(
            f"trainer.monitor: {cfg.trainer.monitor!r} names no validation set (sets: {', '.join(sets) or 'one'}); "
            "use val/<metric>, val/<set>/<metric> or val/loss"
        )


def fit_and_export(
    cfg, stage: str, module: pl.LightningModule, dm: ClfDataModule, export_name: str, what: str, callbacks=()
) -> tuple[dict, Path, Path | None]:
    """Fit, take the best weights, validate and test, export to `<run dir>/<export_name>`, write metrics.json.

    Returns the metrics, the run directory and the export (None on ranks other than 0).
    """
    trainer, out, resume = build_trainer(cfg, stage, list(callbacks))
    check_resume(resume, module, dm, cfg)
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
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
