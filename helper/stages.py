"""The one stage runner. A stage is a script, a YAML file, its config class and one build function here:

run_stage(cfg, stage, build)
  prologue  checks that need no model (trainer.monitor, ...), the run directory and its lock, the seed, wandb
            started early (it overlaps the loading), then `build(cfg)`: tokenizers, data module, models, their
            checks, the module
  epilogue  fit, the best weights, validation and test metrics, export, metrics.json, the ONNX exports (`serve`,
            when asked), the report
            (a stage that trains nothing, the transfer set, writes its file instead)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import transformers

from bert.errors import UserError
from bert.families import check_max_length, get_family
from bert.loading import load_model_config, load_tokenizer, resolve_model_path
from data.data_module import ClfDataModule, tokenizer_id
from helper.adaptors import ADAPTORS
from helper.checkpoint import check_export_dir, load_classifier
from helper.config import (
    DistillationRunConfig,
    FinetuneConfig,
    GeneralRunConfig,
    GeneralStudentSpec,
    StudentConfig,
    StudentSpec,
    TeacherConfig,
    TransferSetConfig,
    save_config,
)
from helper.distiller import (
    BaseDistiller,
    GeneralDistiller,
    GeneralMultiDistiller,
    InterDistiller,
    MultiDistiller,
    PredDistiller,
    Student,
    Teacher,
    check_weights,
)
from helper.finetuner import ClfFinetune
from helper.heatmap import AttentionHeatmap
from helper.students import adopt_vocabulary, build_encoder_student, build_student, load_encoder, train_wordpiece
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


@dataclass
class Job:
    """What a stage's build function hands the runner: the data module and the module to fit, where the export goes
    (`<run dir>/<export>`), the summary line's subject, extra callbacks, and the report written after the export
    (`report(run dir, export) -> summary`), after `serve(export)` when the run exports ONNX too. A stage that trains
    nothing gives `produce(run dir) -> its file`."""

    dm: Any
    module: pl.LightningModule | None = None
    export: str = "student"
    what: str = "student"
    callbacks: list = field(default_factory=list)
    report: Callable[[Path, Path], Any] | None = None
    produce: Callable[[Path], Path] | None = None
    serve: Callable[[Path], Any] | None = None  # after the export, before the report: `serve(export)` (ONNX)


def run_stage(cfg, stage: str, build: Callable[[Any], Job], check: Callable[[Any], Any] | None = None):
    """Prologue, `build(cfg)`, epilogue (the module docstring). `check(cfg)` runs first: the checks that need no
    model, and what they resolve (here: the monitored metric). Returns the metrics, or the file a stage produces."""
    if check is not None:
        check(cfg)
    training = hasattr(cfg, "trainer")
    if not sys.stderr.isatty():  # a log or a pipe: no bars for loads that take a blink (ProgressLines shows training)
        transformers.logging.disable_progress_bar()
    out = prepare_run(cfg, stage)  # before heavy work: writable run directory, its lock
    try:
        if training:
            pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # new heads, students, projections too
            start_loggers_early(cfg, stage)  # wandb starts while data and models load
        job = build(cfg)
        if job.produce is not None:
            save_config(cfg, out / "config.yaml")
            return job.produce(out)
        metrics, exported = fit_and_export(cfg, stage, job)
        if exported is not None and job.serve is not None:
            job.serve(exported)
        if exported is not None and job.report is not None:
            metrics["summary"] = job.report(out, exported)
        return metrics
    finally:
        release_run_dir(out)


def fit_and_export(cfg, stage: str, job: Job) -> tuple[dict, Path | None]:
    """Fit, take the best weights, validate and test, export to `<run dir>/<job.export>`, write metrics.json.

    Returns the metrics and the export (None on ranks other than 0).
    """
    module, dm = job.module, job.dm
    target = run_dir(cfg.logger, stage) / job.export
    for name in module.export_names() if job.export == "students" else [None]:
        check_export_dir(target if name is None else target / name)  # before training: a refusal costs no time
    trainer, out, resume = build_trainer(cfg, stage, list(job.callbacks))
    check_resume(resume, module, dm, cfg)
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    if module.export_best:
        load_best(module, best_checkpoint(trainer))  # on every rank: the metrics below are the exported weights'
    metrics = {k: float(v) for k, v in trainer.validate(module, datamodule=dm, verbose=False)[0].items()}
    if dm.has_test:
        metrics.update({k: float(v) for k, v in trainer.test(module, datamodule=dm, verbose=False)[0].items()})
    exported = None
    if trainer.is_global_zero:
        exported = module.export(out / job.export)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"{job.what}: {', '.join(f'{k} {v:.4f}' for k, v in sorted(metrics.items()))} -> {exported}")
    return metrics, exported


# ---------------------------------------------------------------------------------------------------------------------
# Checks before heavy work


def check_monitor(cfg, students: list[str] | None = None) -> None:
    """`trainer.monitor` names what the run logs: val/<name>/<metric> one of its validation sets, or with several
    students one of their keys or `mean` (val/<metric> then means the students' mean, and is rewritten so)."""
    monitor = cfg.trainer.monitor
    parts = monitor.split("/")
    if students is None:
        sets = list(cfg.data.validation) if isinstance(cfg.data.validation, dict) else []
        if len(parts) == 3 and parts[1] not in sets:
            raise UserError(
                f"trainer.monitor: {monitor!r} names no validation set (sets: {', '.join(sets) or 'one'}); "
                "use val/<metric>, val/<set>/<metric> or val/loss"
            )
        return
    if len(parts) == 2 and monitor != "val/loss":
        cfg.trainer.monitor = monitor = monitor.replace("val/", "val/mean/")
    if monitor.split("/")[1] not in [*students, "mean"]:
        raise UserError(f"trainer.monitor: {monitor!r} names no student (keys: {', '.join(students)}; or mean)")


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


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning


def check_finetune(cfg: FinetuneConfig) -> None:
    if cfg.data.transfer:
        raise UserError("data.transfer: only the distillation stages read a transfer set (its rows have no gold label)")
    check_monitor(cfg)


def build_finetune(cfg: FinetuneConfig) -> Job:
    """Fine-tune `cfg.model` on `cfg.data`; export it to `<run dir>/model`."""
    check_max_length(cfg.data.max_length, load_model_config(cfg.model.name), "model", cfg.model.name)
    dm = ClfDataModule(cfg.data, load_tokenizer(cfg.model.tokenizer or cfg.model.name))
    dm.setup("fit")
    model = load_classifier(cfg.model.name, dm.label_names, cfg.model.attn_implementation, cfg.model.dropout)
    return Job(dm, ClfFinetune(model, dm, optim=cfg.optim, metrics=cfg.trainer.metrics), "model", "teacher")


def run_finetune(cfg: FinetuneConfig) -> dict:
    return run_stage(cfg, "finetune", build_finetune, check_finetune)


# ---------------------------------------------------------------------------------------------------------------------
# Distillation: one teacher and one student (kd-clf's three stages), or several of each (mix-step)


def model_specs(cfg: DistillationRunConfig) -> tuple[list[TeacherConfig], list[StudentSpec]]:
    """The teachers and students of a config, the single `teacher` and `student` mappings as lists of one."""
    teachers = cfg.teacher if isinstance(cfg.teacher, list) else [TeacherConfig(**dataclasses.asdict(cfg.teacher))]
    if cfg.students is not None:
        students = cfg.students
    else:
        names = [f.name for f in dataclasses.fields(type(cfg.student))]
        students = [StudentSpec(**{n: getattr(cfg.student, n) for n in names})]
    if not teachers or not students:
        raise UserError("teacher and students: each needs at least one entry")
    return teachers, students


def several(cfg: DistillationRunConfig) -> bool:
    return isinstance(cfg.teacher, list) or cfg.students is not None


def check_distillation(cfg: DistillationRunConfig, stage: str) -> None:
    if not several(cfg):
        return check_monitor(cfg)
    if cfg.distill.onnx:
        raise UserError(
            "distill.onnx: exports one student; with several, export each afterwards: "
            "python export_onnx.py --model <run dir>/students/<key>"
        )
    if stage != "distill_ms":
        raise UserError("several teachers or students train in one step: use distillation_ms.py")
    if cfg.distill.require:
        raise UserError("distill.require: bounds one student against one teacher; this run has several")
    teachers, students = model_specs(cfg)
    check_weights([t.weight for t in teachers], "teacher[].weight")
    keys = [s.key for s in students]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise UserError(f"students: key {dup!r} is used twice; give every student its own `key:`")
    check_monitor(cfg, keys)


def build_distillation(cfg: DistillationRunConfig, stage: str) -> Job:
    """Distil the teachers into the students; export to `<run dir>/student` (one) or `<run dir>/students/<key>`,
    and write the report (one per student)."""
    if several(cfg):
        return _build_several(cfg)
    check_max_length(cfg.data.max_length, load_model_config(cfg.teacher.name), "teacher", cfg.teacher.name)
    tok_t = load_tokenizer(cfg.teacher.tokenizer or cfg.teacher.name)
    name_s = cfg.student.tokenizer or (cfg.student.name if has_tokenizer(cfg.student.name) else None)
    dm = ClfDataModule(cfg.data, tok_t, load_tokenizer(name_s) if name_s else None)
    dm.setup("fit")
    teacher = load_classifier(cfg.teacher.name, dm.label_names, cfg.teacher.attn_implementation, None, "teacher", True)
    student = build_student(cfg.student, teacher, cfg.teacher.name, dm.label_names, tok_t)
    check_max_length(cfg.data.max_length, student.config, "student", cfg.student.name or "the student")
    check_vocab(tok_t, teacher, "teacher")
    check_vocab(dm.student_tokenizer or tok_t, student, "student")
    if cfg.distill.require:  # before the teacher cache, the trainer and any training step
        from helper.report import check_requirements

        loader = dm.val_dataloader()
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader
        out = run_dir(cfg.logger, stage)
        check_requirements(teacher, student, loader, cfg.distill.require, out, cfg.distill.report_batches)
    distiller = DISTILLERS[stage](
        teacher, student, dm=dm, optim=cfg.optim, distill=cfg.distill, metrics=cfg.trainer.metrics
    )
    both_attend = all("attentions" in get_family(m).features for m in (teacher, student))
    heatmap = [AttentionHeatmap(run_dir(cfg.logger, stage) / "attention")] if both_attend else []

    def serve(student_dir: Path) -> None:
        from helper import serving

        if not serving.onnx_available():
            print(f"distill.onnx: onnx and onnxruntime are not installed ({serving.INSTALL}); no ONNX export")
            return
        loader = dm.val_dataloader()
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader  # several validation sets: the first
        print(serving.summary(*serving.export_beside(student_dir, loader, "student")))

    def report(out: Path, student_dir: Path) -> str:
        from helper import serving
        from helper.report import write_report

        split = "test" if dm.has_test else "validation"
        loader = dm.test_dataloader() if dm.has_test else dm.val_dataloader()
        sets = dict(zip(dm.validation_names, dm.val_dataloader())) if dm.validation_names else None
        path_t = resolve_model_path(cfg.teacher.name)
        n = cfg.distill.report_batches
        onnx = serving.onnx_dir(student_dir)  # written by `serve` above in this run
        exported = cfg.distill.onnx and serving.onnx_available()
        served = {b: serving.OnnxClassifier(onnx, b) for b in serving.ONNX_FILES} if exported else None
        return write_report(
            teacher, student, path_t, student_dir, loader, split, out, n_latency=n, validation_sets=sets, served=served
        )

    report_fn = report if cfg.distill.report else None
    return Job(dm, distiller, "student", "student", heatmap, report_fn, serve=serve if cfg.distill.onnx else None)


def _build_several(cfg: DistillationRunConfig) -> Job:
    from data.multi import MultiDataModule

    teachers_cfg, students_cfg = model_specs(cfg)
    tokenizers: dict[str, Any] = {}  # name -> tokenizer

    def tokenizer(name: str):
        if name not in tokenizers:
            tokenizers[name] = load_tokenizer(name)
        return tokenizers[name]

    tok_t = [tokenizer(t.tokenizer or t.name) for t in teachers_cfg]
    tok_s = []
    for s in students_cfg:
        name = s.tokenizer or (s.name if has_tokenizer(s.name) else None)
        tok_s.append(tokenizer(name) if name else tok_t[0])
    views: dict[str, tuple] = {}  # view name -> (tokenizer, column); one per distinct (vocabulary, column)
    by_id: dict[tuple, str] = {}

    def view_of(tok, column: str | None) -> str:
        column = column or cfg.data.text_column
        ident = (tuple(sorted(tokenizer_id(tok).items())), column)
        if ident not in by_id:
            name = column if column not in views else f"{column}@{len(views)}"
            by_id[ident], views[name] = name, (tok, column)
        return by_id[ident]

    view_t = [view_of(tok, t.text_column) for tok, t in zip(tok_t, teachers_cfg)]
    view_s = [view_of(tok, s.text_column) for tok, s in zip(tok_s, students_cfg)]
    dm = MultiDataModule(cfg.data, views)
    dm.setup("fit")
    teachers = [load_classifier(t.name, dm.label_names, t.attn_implementation) for t in teachers_cfg]
    students = []
    for i, (s, tok) in enumerate(zip(students_cfg, tok_s)):
        students.append(build_student(s, teachers[0], teachers_cfg[0].name, dm.label_names, tok))
        check_max_length(cfg.data.max_length, students[-1].config, f"students[{i}]", s.name or s.key)
        check_vocab(tok, students[-1], f"students[{i}]")
    for i, (tok, teacher) in enumerate(zip(tok_t, teachers)):
        check_max_length(cfg.data.max_length, teacher.config, f"teacher[{i}]", teachers_cfg[i].name)
        check_vocab(tok, teacher, f"teacher[{i}]")
    distiller = MultiDistiller(
        [Teacher(m, t.weight, v) for m, t, v in zip(teachers, teachers_cfg, view_t)],
        [Student(s.key, m, s.adaptors, v) for m, s, v in zip(students, students_cfg, view_s)],
        dm,
        share=cfg.share,
        optim=cfg.optim,
        distill=cfg.distill,
        metrics=cfg.trainer.metrics,
    )

    def report(out: Path, exported: Path) -> dict:
        from helper.report import write_report

        split = "test" if dm.has_test else "validation"
        batches = list(dm.test_dataloader() if dm.has_test else dm.val_dataloader())
        summaries = {}
        for (key, student), v in zip(distiller.students.items(), view_s):
            remapped = [
                {**b["views"][view_t[0]], "labels": b["labels"], "idx": b["idx"], "student": b["views"][v]}
                for b in batches
            ]
            path_t = resolve_model_path(teachers_cfg[0].name)
            n = cfg.distill.report_batches
            summaries[key] = write_report(
                teachers[0], student, path_t, exported / key, remapped, split, out / "reports" / key, n_latency=n
            )
        return summaries

    return Job(dm, distiller, "students", "students", report=report if cfg.distill.report else None)


def run_distillation(cfg: DistillationRunConfig, stage: str) -> dict:
    return run_stage(cfg, stage, lambda c: build_distillation(c, stage), lambda c: check_distillation(c, stage))


# ---------------------------------------------------------------------------------------------------------------------
# General (task-agnostic) distillation


def general_students(cfg: GeneralRunConfig) -> list[GeneralStudentSpec]:
    """The students of a general-distillation config, a single `student:` as a list of one (key `student`)."""
    if cfg.students is not None:
        return cfg.students
    names = [f.name for f in dataclasses.fields(StudentConfig)]
    return [GeneralStudentSpec(**{n: getattr(cfg.student, n) for n in names})]


def several_general(cfg: GeneralRunConfig) -> bool:
    """Several students, or parallel text: the `Distiller` with student keys (`GeneralMultiDistiller`)."""
    return cfg.students is not None or cfg.data.source == "parallel"


def check_general(cfg: GeneralRunConfig) -> None:
    specs = general_students(cfg)
    if not specs:
        raise UserError("students: give at least one student")
    for i, spec in enumerate(specs):
        where = "student" if cfg.students is None else f"students[{i}]"
        if spec.tokenizer is not None:
            raise UserError(f"{where}.tokenizer: general distillation uses the teacher's tokenizer")
        if spec.vocab_size is not None and cfg.data.source != "parallel":
            raise UserError(f"{where}.vocab_size: a student's own vocabulary is trained on parallel text only")
        for lang in spec.languages or []:
            if cfg.data.source != "parallel" or lang not in cfg.data.text_files:
                have = ", ".join(cfg.data.text_files or []) or "none: data.source is not parallel"
                raise UserError(f"{where}.languages: {lang!r} has no files in data.text_files (languages: {have})")
    keys = [s.key for s in specs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise UserError(f"students: key {dup!r} is used twice; give every student its own `key:`")
    monitor = cfg.trainer.monitor.split("/")
    if len(monitor) == 4:
        if not several_general(cfg) or monitor[1] not in keys:
            raise UserError(
                f"trainer.monitor: {cfg.trainer.monitor!r} names no student of a parallel-text run "
                f"(keys: {', '.join(keys) if several_general(cfg) else 'none: data.source is not parallel'})"
            )
    allowed = sorted(name for name, cls in ADAPTORS.items() if cls.stage == "inter")
    names = [spec if isinstance(spec, str) else spec.get("name") for spec in cfg.distill.adaptors]
    wrong = [n for n in names if n in ADAPTORS and ADAPTORS[n].stage != "inter"]
    if wrong:
        raise UserError(
            f"distill.adaptors: {', '.join(wrong)} need logits or labels, which general distillation (bare encoders, "
            f"unlabelled text) has not; allowed: {', '.join(allowed)}"
        )


def sentence_pooling(name: str) -> tuple[str | None, bool]:
    """(the pooling, whether a Normalize module follows) of a sentence-transformers model directory
    (`1_Pooling/config.json`, `modules.json`); (None, False) for another model."""
    path = Path(resolve_model_path(name)).expanduser()
    try:
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
        modules = json.loads((path / "modules.json").read_text())
    except (OSError, ValueError):
        return None, False
    mode = (
        "mean" if pooling.get("pooling_mode_mean_tokens") else "cls" if pooling.get("pooling_mode_cls_token") else None
    )
    return mode, any(str(m.get("type", "")).endswith(".Normalize") for m in modules if isinstance(m, dict))


def build_general(cfg: GeneralRunConfig) -> Job:
    """A bare encoder student learns the teacher's encoder on unlabelled text; export to `<run dir>/student`.
    Several students, or parallel text: `_build_general_several`."""
    from data.text import TextDataModule

    if several_general(cfg):
        return _build_general_several(cfg)
    tokenizer = load_tokenizer(cfg.teacher.tokenizer or cfg.teacher.name)
    dm = TextDataModule(cfg.data, tokenizer)
    dm.setup("fit")
    soft = cfg.distill.mlm is not None and cfg.distill.mlm.soft_weight > 0
    teacher = load_encoder(cfg.teacher.name, cfg.teacher.attn_implementation, masked_lm=soft)
    check_max_length(cfg.data.max_length, teacher.config, "teacher", cfg.teacher.name)
    student = build_encoder_student(cfg.student, teacher, cfg.teacher.name, cfg.distill.mlm is not None)
    check_max_length(cfg.data.max_length, student.config, "student", cfg.student.name or "the student")
    check_vocab(tokenizer, teacher, "teacher")
    check_vocab(tokenizer, student, "student")
    module = GeneralDistiller(teacher, student, tokenizer, dm, distill=cfg.distill, optim=cfg.optim)
    n_train, n_val = (len(dm.datasets[s]) for s in ("train", "validation"))
    print(
        f"general distillation: {len(dm.texts['train'])} texts -> {n_train} windows (train), "
        f"{len(dm.texts['validation'])} -> {n_val} (validation); teacher {resolve_model_path(cfg.teacher.name)}"
    )
    return Job(dm, module)


def _build_general_several(cfg: GeneralRunConfig) -> Job:
    """Several students, each reading its languages of parallel text (or the one text): export to
    `<run dir>/students/<key>` (encoder, tokenizer, sentence-transformers files), and on parallel text a
    cross-lingual report (`helper.report.write_retrieval_report`)."""
    from data.multi import ParallelDataModule, read_parallel_texts
    from data.text import TextDataModule

    data = cfg.data
    tok_t = load_tokenizer(cfg.teacher.tokenizer or cfg.teacher.name)
    soft = cfg.distill.mlm is not None and cfg.distill.mlm.soft_weight > 0
    teacher = load_encoder(cfg.teacher.name, cfg.teacher.attn_implementation, masked_lm=soft)
    check_max_length(data.max_length, teacher.config, "teacher", cfg.teacher.name)
    check_vocab(tok_t, teacher, "teacher")
    found, normalize = sentence_pooling(cfg.teacher.name)
    pooling_t = cfg.teacher.pooling or found
    specs = general_students(cfg)
    parallel = data.source == "parallel"
    languages = {s.key: (s.languages or list(data.text_files)) if parallel else [None] for s in specs}
    views: dict[str, tuple] = {}
    student_views = {s.key: languages[s.key] for s in specs}  # the views each student reads
    tokenizers = {s.key: tok_t for s in specs}
    if parallel:  # one view per language read with the teacher's tokenizer (the teacher's language first), and
        # one per language of a student with its own vocabulary, `<language>@<key>`
        for lang in [data.text_column, *(x for langs in languages.values() for x in langs)]:
            views.setdefault(lang, (tok_t, lang))
        train = read_parallel_texts(data)["train"] if any(s.vocab_size for s in specs) else {}
        for i, spec in enumerate(specs):
            if spec.vocab_size is not None:
                texts = [t for lang in languages[spec.key] for t in train[lang]]
                tokenizers[spec.key] = train_wordpiece(texts, spec.vocab_size, tok_t, f"students[{i}].vocab_size")
                student_views[spec.key] = [f"{lang}@{spec.key}" for lang in languages[spec.key]]
                views.update({f"{lang}@{spec.key}": (tokenizers[spec.key], lang) for lang in languages[spec.key]})
        dm = ParallelDataModule(data, views)
    else:
        dm = TextDataModule(data, tok_t)
    dm.setup("fit")
    students = []
    for i, spec in enumerate(specs):
        student = build_encoder_student(spec, teacher, cfg.teacher.name, cfg.distill.mlm is not None)
        if spec.vocab_size is not None:
            copied = adopt_vocabulary(student, tokenizers[spec.key], tok_t)
            print(
                f"student {spec.key}: vocab {len(tokenizers[spec.key])} tokens, {copied} rows copied from the teacher"
            )
        check_max_length(data.max_length, student.config, f"students[{i}]", spec.name or spec.key)
        check_vocab(tokenizers[spec.key], student, f"students[{i}]")
        pooling = spec.pooling or pooling_t
        views_s = student_views[spec.key]
        per_language = spec.embeddings_per_language
        students.append(Student(spec.key, student, spec.adaptors, views_s, pooling, normalize, per_language))
    module = GeneralMultiDistiller(
        [Teacher(teacher, view=data.text_column if parallel else None, pooling=pooling_t)],
        students,
        dm,
        share=cfg.share,
        optim=cfg.optim,
        distill=cfg.distill,
        tokenizer=tok_t,
    )
    sizes = ", ".join(f"{split} {len(ds)}" for split, ds in dm.datasets.items())
    path_t = resolve_model_path(cfg.teacher.name)
    print(f"general distillation: {len(students)} students; examples: {sizes}; teacher {path_t}")

    def report(out: Path, exported: Path) -> dict:
        from helper.report import write_retrieval_report

        metrics = json.loads((out / "metrics.json").read_text())
        split = "test" if dm.has_test else "val"
        batches = list(dm.test_dataloader() if dm.has_test else dm.val_dataloader())
        path_t = resolve_model_path(cfg.teacher.name)
        return write_retrieval_report(
            module, metrics, split, path_t, exported, batches, out / "report", n_latency=cfg.distill.report_batches
        )

    return Job(dm, module, "students", "students", report=report if cfg.distill.report and module.retrieval else None)


def run_general(cfg: GeneralRunConfig) -> dict:
    return run_stage(cfg, "distill_general", build_general, check_general)


# ---------------------------------------------------------------------------------------------------------------------
# The transfer set: nothing trains; the teacher labels the rows, one Parquet file is written


def check_transfer_set(cfg: TransferSetConfig) -> None:
    if cfg.data.transfer:
        raise UserError("data.transfer: transfer_set.py builds a transfer set from data.train; it reads none")


def build_transfer_set(cfg: TransferSetConfig) -> Job:
    """The training set, augmented (and LM-sampled, and unlabelled) text, every row labelled by the teacher."""
    from data.readers import read_unlabelled
    from data.transfer import write_transfer
    from helper.transfer_set import build_rows, label

    t0 = time.perf_counter()
    with_pairs = cfg.data.text_pair_column is not None
    unlabelled = None
    if cfg.transfer.unlabelled:  # read first: a bad file stops the run before anything heavy
        unlabelled = read_unlabelled(cfg.transfer.unlabelled, cfg.data.encoding, with_pairs, "transfer.unlabelled")
    tokenizer = load_tokenizer(cfg.teacher.tokenizer or cfg.teacher.name)
    dm = ClfDataModule(cfg.data, tokenizer)
    dm.setup("fit")
    teacher = load_classifier(cfg.teacher.name, dm.label_names, cfg.teacher.attn_implementation)

    def produce(out: Path) -> Path:
        output = Path(cfg.transfer.output) if cfg.transfer.output else out / "transfer.parquet"
        rows, timings = build_rows(cfg, dm, tokenizer, unlabelled)
        pairs = rows["text_pair"] if with_pairs else None
        logits, seconds = label(teacher, tokenizer, rows["text"], pairs, cfg.data.max_length, cfg.transfer.batch_size)
        meta = {"teacher": resolve_model_path(cfg.teacher.name), "max_length": cfg.data.max_length}
        write_transfer(output, rows, logits.numpy(), dm.label_names, meta)
        n = len(rows["text"])
        counts = Counter(rows["source"])
        sources = ("original", "mask", "pos", "ngram", "generated", "unlabelled")
        parts = [f"{n} rows ({', '.join(f'{s} {counts[s]}' for s in sources)})"]
        if "augment" in timings:
            k, s = timings["augment"]
            parts.append(f"augmentation {k / max(s, 1e-9):.0f} sentences/s")
        if "generate" in timings:
            k, s = timings["generate"]
            parts.append(f"generation {k / max(s, 1e-9):.1f} sentences/s")
        parts.append(f"labelling {n / max(seconds, 1e-9):.0f} examples/s")
        parts.append(f"total {time.perf_counter() - t0:.1f} s")
        print(f"transfer set: {'; '.join(parts)} -> {output}")
        return output

    return Job(dm, produce=produce)


def run_transfer_set(cfg: TransferSetConfig) -> Path:
    return run_stage(cfg, "transfer_set", build_transfer_set, check_transfer_set)
