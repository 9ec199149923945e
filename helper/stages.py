"""The wiring every distillation script shares: data, teacher, student, adaptors, distiller, fit, export, report."""

from __future__ import annotations

import json

import lightning.pytorch as pl

from bert.features import ModelDims
from data.datamodule import ClfDataModule
from helper.adaptors import build_adaptors
from helper.checkpoint import export_hf, load_classifier, load_tokenizer, resolve_model_path
from helper.config import DistillationRunConfig
from helper.distiller import BaseDistiller, InterDistiller, PredDistiller
from bert.errors import UserError
from helper.students import build_student
from helper.training import best_checkpoint, build_trainer, load_best


def same_tokenizer(tok_a, tok_b) -> bool:
    return type(tok_a) is type(tok_b) and tok_a.get_vocab() == tok_b.get_vocab()


STAGES: dict[str, type[BaseDistiller]] = {
    "distill_ms": BaseDistiller,
    "distill_ts_1st": InterDistiller,
    "distill_ts_2nd": PredDistiller,
}


def run_distillation(cfg: DistillationRunConfig, stage: str) -> dict:
    """Distil `cfg.teacher` into the student; export it to `<run dir>/student` and write the report."""
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # a random-init student and projections too
    tok_t = load_tokenizer(cfg.teacher.tokenizer or cfg.teacher.name)
    tok_s = load_tokenizer(cfg.student.tokenizer) if cfg.student.tokenizer else tok_t
    two_tokenizers = not same_tokenizer(tok_t, tok_s)
    dm = ClfDataModule(cfg.data, tok_t, tok_s if two_tokenizers else None)
    dm.setup("fit")
    teacher = load_classifier(cfg.teacher.name, dm.label_names, cfg.teacher.attn_implementation)
    student = build_student(cfg.student, teacher, cfg.teacher.name, dm.label_names)
    if two_tokenizers and len(tok_s) > student.config.vocab_size:
        raise UserError(
            f"student.tokenizer: {cfg.student.tokenizer} has {len(tok_s)} tokens but the student's embeddings only "
            f"{student.config.vocab_size}; give the student a matching vocab_size"
        )
    try:
        adaptors = build_adaptors(
            cfg.distill.adaptors,
            ModelDims.of(teacher.config),
            ModelDims.of(student.config),
            temperature=cfg.distill.temperature,
        )
    except UserError as err:
        raise UserError(f"distill.{err}") from None
    token_level = [a.key for a in adaptors if not a.sentence_level]
    if two_tokenizers and token_level:
        raise UserError(
            f"distill.adaptors: {', '.join(token_level)} compare tokens, but teacher and student tokenize differently "
            f"(student.tokenizer={cfg.student.tokenizer}); only sentence-level adaptors (logits, [CLS]) are allowed"
        )
    distiller_cls = STAGES[stage]
    trainer, out, resume = build_trainer(cfg, stage)
    extra = {"train_encoder": cfg.distill.train_encoder} if issubclass(distiller_cls, PredDistiller) else {}
    distiller = distiller_cls(
        teacher,
        student,
        adaptors,
        cfg.optim,
        cache_teacher=cfg.distill.cache_teacher,
        tokenizer=tok_t,
        student_tokenizer=tok_s if two_tokenizers else None,
        attention_plot_dir=out / "attention",
        **extra,
    )
    trainer.fit(distiller, datamodule=dm, ckpt_path=resume)
    if distiller.export_best:
        load_best(distiller, best_checkpoint(trainer))
    metrics = {k: float(v) for k, v in trainer.validate(distiller, datamodule=dm, verbose=False)[0].items()}
    if dm.has_test:
        metrics.update({k: float(v) for k, v in trainer.test(distiller, datamodule=dm, verbose=False)[0].items()})
    if trainer.is_global_zero:
        student_dir = export_hf(student, tok_s, out / "student")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"student: {', '.join(f'{k} {v:.4f}' for k, v in sorted(metrics.items()))} -> {student_dir}")
        if cfg.distill.report:
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


def run_finetune(cfg) -> dict:
    from helper.finetuner import ClfFinetune

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
