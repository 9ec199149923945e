"""Several teachers and several students in one run: `MultiDistiller` and the `distillation_ms` stage's `run_multi`.

Teachers (frozen, `no_grad`, each with its own per-example cache) run once per batch for all students. A
prediction-stage adaptor that reads only the teachers' logits compares the student with their weighted mean: of the
softened distributions, mean_i w_i softmax(z_i / T) (`LogitKL`, or any adaptor with `ensemble = "probs"`), else of the
logits, mean_i w_i z_i (`LogitMSE`, `HardCE` with `teacher_labels`), as in Hinton et al. 2015 (arXiv:1503.02531) for
an ensemble. Any other adaptor reads one teacher, named by `teacher: <index>` in its mapping. Students may share their
embeddings and named encoder layers: the modules of the first student, tied by reference, trained once, and exported
with every student. Each model reads its own view of the batch (a tokenizer and a text column, `data/multi.py`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

from bert.errors import UserError
from bert.families import check_features, get_family, logits_of, model_inputs
from bert.features import Features, ModelDims, merge_requests
from bert.loading import name_labels
from bert.recorder import FeatureRecorder
from helper.adaptors import Adaptor, LogitKL, build_adaptors
from helper.config import (
    DEFAULT_METRICS,
    DistillConfig,
    OptimConfig,
    ShareConfig,
    StudentConfig,
    StudentSpec,
    TeacherConfig,
)
from helper.distiller import Distiller
from helper.metrics import Scorer, Scores
from helper.teacher_cache import TeacherCache
from helper.training import export_module


@dataclass
class Teacher:
    """A teacher of `MultiDistiller`: its weight in the mean of the teachers' targets (>= 0; the weights must sum to
    > 0), and the view of the batch it reads (None: the batch's top level, the data module's first view)."""

    model: nn.Module
    weight: float = 1.0
    view: str | None = None


@dataclass
class Student:
    """A student of `MultiDistiller`: its key (metrics `val/<key>/acc`, export `<dir>/<key>`), its adaptors (names or
    mappings as `distill.adaptors`, where `teacher: i` picks one teacher; default `distill.adaptors`), its view."""

    key: str
    model: nn.Module
    adaptors: list | None = None
    view: str | None = None


def check_weights(weights: Sequence[float], where: str = "teacher weights") -> list[float]:
    """The weights normalised to sum to 1; one line when one is negative or not finite, or they do not sum to > 0."""
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise UserError(f"{where}: weight of teacher {i} is {w!r}; each must be a finite number >= 0")
    total = float(sum(weights))
    if not total > 0:
        raise UserError(f"{where}: {list(weights)} sum to {total:g}; they must sum to a positive number")
    return [w / total for w in weights]


def _ensemble_kind(adaptor: Adaptor) -> str | None:
    """'probs' or 'logits' for an adaptor that reads only the teachers' logits (their weighted mean), else None."""
    if set(adaptor.request()[0]) - {"logits"}:
        return None
    return getattr(adaptor, "ensemble", "probs" if isinstance(adaptor, LogitKL) else "logits")


def ensemble_logits(logits: Sequence[torch.Tensor], weights: Sequence[float], kind: str, temperature: float = 1.0):
    """Logits whose softmax at `temperature` is mean_i w_i softmax(z_i / T) ('probs'), or mean_i w_i z_i ('logits').
    `weights` sum to 1; (B, C) float32."""
    pairs = [(w, z.float()) for w, z in zip(weights, logits) if w > 0]
    if kind == "logits":
        return sum(w * z for w, z in pairs)
    probs = sum(w * (z / temperature).softmax(-1) for w, z in pairs)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log() * temperature


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def _same_shapes(a: nn.Module, b: nn.Module, what: str, key: str, first: str) -> None:
    shapes_a = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    shapes_b = {k: tuple(v.shape) for k, v in b.state_dict().items()}
    if shapes_a != shapes_b:
        name = next((k for k in shapes_a if shapes_a[k] != shapes_b.get(k)), None) or next(iter(shapes_b))
        raise UserError(
            f"share.{what}: student {key!r} has other shapes than student {first!r} ({name}: "
            f"{shapes_b.get(name)} vs {shapes_a.get(name)}); share only modules of equal size"
        )


def tie_shared(students: Mapping[str, nn.Module], embeddings: bool = False, layers: Sequence[int] = ()) -> None:
    """Make every student use the first student's embedding module and encoder `layers` (the same objects)."""
    (first_key, first), *rest = students.items()
    fam = get_family(first)
    for key, model in rest:
        fam_s = get_family(model)
        if embeddings:
            if fam.embeddings_path is None or fam_s.embeddings_path is None:
                bad = first_key if fam.embeddings_path is None else key
                raise UserError(f"share.embeddings: student {bad!r} has no embedding module of a transformer family")
            src = fam.embeddings(first)
            _same_shapes(src, fam_s.embeddings(model), "embeddings", key, first_key)
            _set_submodule(model.base_model, fam_s.embeddings_path, src)
        for i in layers:
            src_layers, dst_layers = fam.layers(first), fam_s.layers(model)
            for k, n in ((first_key, len(src_layers)), (key, len(dst_layers))):
                if not 0 <= i < n:
                    raise UserError(f"share.layers: layer {i} is out of range for student {k!r} with {n} layers")
            _same_shapes(src_layers[i], dst_layers[i], f"layers[{i}]", key, first_key)
            dst_layers[i] = src_layers[i]


class MultiDistiller(Distiller):
    """Mix-step distillation of several students from several teachers at once (see the module docstring).

    `teachers`: `Teacher`s or modules (weight 1). `students`: `Student`s or (key, module) pairs. `dm`: the data module
    (a `MultiDataModule` when models read different views). `share`: `ShareConfig` or {embeddings: bool, layers:
    [...]}. `optim`/`distill`, `metrics`, `scorers` and keyword settings as `BaseDistiller`. Each student's scores
    are logged under `val/<key>/...` (and `val/<key>/<set>/...` with several validation sets), their mean over the
    students under `val/mean/<metric>`.
    """

    def __init__(
        self,
        teachers: Sequence[Teacher | nn.Module],
        students: Sequence[Student | tuple],
        dm=None,
        *,
        share: ShareConfig | Mapping | None = None,
        optim: OptimConfig | None = None,
        distill: DistillConfig | None = None,
        metrics: Sequence[str] = DEFAULT_METRICS,
        scorers: Mapping[str, Scorer] | None = None,
        **kwargs,
    ):
        super().__init__(dm, optim, distill, kwargs)
        teachers = [t if isinstance(t, Teacher) else Teacher(t) for t in teachers]
        students = [s if isinstance(s, Student) else Student(*s) for s in students]
        if not teachers or not students:
            raise UserError("MultiDistiller: needs at least one teacher and one student")
        self.weights = check_weights([t.weight for t in teachers])
        keys = [s.key for s in students]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise UserError(f"students: key {dup!r} is used twice; give every student its own key")
        views = getattr(dm, "views", None)
        first_view = next(iter(views)) if views else None
        for who, view in [
            *((f"teacher {i}", t.view) for i, t in enumerate(teachers)),
            *((s.key, s.view) for s in students),
        ]:
            if view is not None and (views is None or view not in views):
                raise UserError(f"{who}: view {view!r} is not one of the data module's ({', '.join(views or [])})")
        self.teacher_views = [t.view or first_view for t in teachers]
        self.student_views = {s.key: s.view or first_view for s in students}
        # unregistered: out of the optimiser and the checkpoints
        self.__dict__["teachers"] = [t.model.eval().requires_grad_(False) for t in teachers]
        self.students = nn.ModuleDict({s.key: s.model.train() for s in students})
        share = ShareConfig(**share) if isinstance(share, Mapping) else share or ShareConfig()
        if len(students) > 1 and (share.embeddings or share.layers):
            tie_shared(self.students, share.embeddings, share.layers)
        self.adaptors = nn.ModuleDict()
        self.adaptor_teacher: dict[str, list[int | None]] = {}  # per adaptor: its teacher, None for the weighted mean
        requests_t: list[list] = [[] for _ in teachers]
        for s in students:
            self._build_adaptors(s, requests_t)
        self.rec_t = []
        for i, teacher in enumerate(self.teachers):
            request = merge_requests(*requests_t[i])
            check_features(teacher, request, f"teacher {i}")
            self.rec_t.append(FeatureRecorder(teacher, request))
        self.rec_s = {}
        for key, student in self.students.items():
            request = merge_requests(*(a.request()[1] for a in self.adaptors[key]))
            check_features(student, request, f"student {key!r}")
            self.rec_s[key] = FeatureRecorder(student, request)
        use_cache = self.distill.cache_teacher
        self.teacher_caches = [
            TeacherCache(self.distill.cache_max_mb) if use_cache and rec.request else None for rec in self.rec_t
        ]
        num_labels = self.teachers[0].config.num_labels
        sets = getattr(dm, "validation_names", None)
        self.val_scores = nn.ModuleDict({k: Scores(num_labels, f"val/{k}", sets, metrics, scorers) for k in keys})
        self.test_scores = nn.ModuleDict({k: Scores(num_labels, f"test/{k}", None, metrics, scorers) for k in keys})
        self.teacher_val_scores = nn.ModuleList(
            Scores(num_labels, f"teacher/{i}/val", sets, metrics) for i in range(len(teachers))
        )
        self._teacher_evaluated = False

    def _build_adaptors(self, s: Student, requests_t: list[list]) -> None:
        n = len(self.teachers)
        specs = self.distill.adaptors if s.adaptors is None else s.adaptors
        if not isinstance(specs, (list, tuple)) or not specs:
            raise UserError(f"student {s.key!r}: adaptors: expected a non-empty list, got {specs!r}")
        dims_s = ModelDims.of(getattr(s.model, "config", None))
        built, chosen, seen = nn.ModuleList(), [], {}
        for i, spec in enumerate(specs):
            where = f"student {s.key!r}: adaptors[{i}]"
            teacher = None
            if isinstance(spec, Mapping) and "teacher" in spec:
                spec = dict(spec)
                teacher = spec.pop("teacher")
                if isinstance(teacher, bool) or not isinstance(teacher, int) or not 0 <= teacher < n:
                    raise UserError(f"{where}: teacher {teacher!r} is not a teacher index (0..{n - 1})")
            dims_t = ModelDims.of(self.teachers[teacher or 0].config)
            try:
                adaptor = build_adaptors([spec], dims_t, dims_s, temperature=self.distill.temperature)[0]
            except UserError as err:
                raise UserError(f"student {s.key!r}: {str(err).replace('adaptors[0]', f'adaptors[{i}]', 1)}") from None
            where += f" ({adaptor.key})"
            if adaptor.key in seen:
                raise UserError(f"{where}: log key {adaptor.key!r} is already used by adaptors[{seen[adaptor.key]}]")
            seen[adaptor.key] = i
            if teacher is None and n == 1:
                teacher = 0
            if teacher is None and _ensemble_kind(adaptor) is None:
                features = ", ".join(sorted(adaptor.request()[0]))
                raise UserError(
                    f"{where}: reads {features} of one teacher; with {n} teachers give it `teacher: <index>` "
                    f"(0..{n - 1}); only logit adaptors compare with the teachers' weighted mean"
                )
            if not adaptor.sentence_level:
                view_t, view_s = self.teacher_views[teacher], self.student_views[s.key]
                if view_t != view_s:
                    raise UserError(
                        f"{where}: compares tokens, but teacher {teacher} reads view {view_t!r} and the student "
                        f"{view_s!r}; token-level adaptors need the same tokenizer and text"
                    )
            for t in range(n) if teacher is None else [teacher]:
                if teacher is not None or self.weights[t] > 0:
                    requests_t[t].append(adaptor.request()[0])
            built.append(adaptor)
            chosen.append(teacher)
        self.adaptors[s.key] = built
        self.adaptor_teacher[s.key] = chosen

    def setup(self, stage: str) -> None:
        names = getattr(self.dm or self.trainer.datamodule, "label_names", None)
        if names is not None:
            for i, teacher in enumerate(self.teachers):
                name_labels(teacher, names, f"teacher {i}")
            for key, student in self.students.items():
                name_labels(student, names, f"student {key!r}")

    # -- teachers ---------------------------------------------------------------------------------------------------
    def frozen_teachers(self) -> list[nn.Module]:
        return self.teachers

    @staticmethod
    def view(batch: dict, view: str | None) -> dict:
        """The inputs of one view of `batch` (its top level when there are no views)."""
        return batch["views"][view] if view is not None and "views" in batch else batch

    def teacher_features(self, batch: dict) -> list[Features | None]:
        """Every teacher's requested features of `batch` (None for a teacher nothing reads): one pass each, through
        its cache when it is on."""
        out = []
        with torch.no_grad():
            for i, (teacher, rec) in enumerate(zip(self.teachers, self.rec_t)):
                if not rec.request:
                    out.append(None)
                    continue
                inputs = self.view(batch, self.teacher_views[i])
                cache = self.teacher_caches[i]
                if cache is None or "idx" not in batch:
                    out.append(rec(**model_inputs(inputs))[1])
                    continue
                dtype = next(teacher.parameters()).dtype
                sub = {**inputs, "idx": batch["idx"]}
                out.append(cache.features(sub, lambda _rec=rec, **kw: _rec(**kw)[1], dtype))
        return out

    def target(self, feats_t: list[Features | None], adaptor: Adaptor, teacher: int | None, memo: dict) -> Features:
        """What `adaptor` compares the student with: one teacher's features, or the teachers' weighted mean."""
        if not adaptor.request()[0]:  # reads nothing of a teacher (HardCE on gold labels)
            return Features(attention_mask=torch.ones(1, 1))
        if teacher is not None:
            return feats_t[teacher]
        kind = _ensemble_kind(adaptor)
        tau = getattr(adaptor, "temperature", 1.0) if kind == "probs" else 1.0
        if (kind, tau) not in memo:
            present = [(w, f) for w, f in zip(self.weights, feats_t) if w > 0]
            logits = ensemble_logits([f.logits for _, f in present], [w for w, _ in present], kind, tau)
            memo[kind, tau] = Features(attention_mask=present[0][1].attention_mask, logits=logits)
        return memo[kind, tau]

    # -- steps ------------------------------------------------------------------------------------------------------
    def student_inputs(self, batch: dict, key: str) -> dict:
        return model_inputs(self.view(batch, self.student_views[key]), self.students[key])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        feats_t = self.teacher_features(batch)  # once for every student
        labels = batch["labels"]
        n = len(labels)
        memo: dict = {}
        total = 0.0
        losses: dict[str, torch.Tensor] = {}
        for key in self.students:
            _, feats_s = self.rec_s[key](**self.student_inputs(batch, key))
            loss_s = 0.0
            for adaptor, teacher in zip(self.adaptors[key], self.adaptor_teacher[key]):
                loss = adaptor(self.target(feats_t, adaptor, teacher, memo), feats_s, labels)
                losses[f"{key}/{adaptor.key}"] = loss
                loss_s = loss_s + adaptor.weight * loss
            losses[f"{key}/loss"] = loss_s
            total = total + loss_s
        self.step_losses = {k: v.detach() for k, v in losses.items()}  # NonFiniteGuard names them
        if self._logs_now():
            for name, loss in losses.items():
                self.log(f"train/{name}", loss, batch_size=n)
            self.log("train/loss", total, prog_bar=True, batch_size=n)
            for i, cache in enumerate(self.teacher_caches):
                if cache is not None:
                    self.log(f"train/teacher_cache_hit_rate/{i}", cache.hit_rate)
        return total

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        labels = batch["labels"]
        for key, student in self.students.items():
            logits = logits_of(student(**self.student_inputs(batch, key)), student)
            self.val_scores[key].update(logits, labels, dataloader_idx)
            if dataloader_idx == 0:  # the first validation set's loss
                loss = F.cross_entropy(logits.float(), labels)
                self.log(f"val/{key}/loss", loss, batch_size=len(labels), add_dataloader_idx=False)
        if not self._teacher_evaluated and not self.trainer.sanity_checking:  # once, on the whole validation set
            for i, teacher in enumerate(self.teachers):
                inputs = model_inputs(self.view(batch, self.teacher_views[i]), teacher)
                self.teacher_val_scores[i].update(logits_of(teacher(**inputs), teacher), labels, dataloader_idx)

    def _log_scores(self, scores: Mapping[str, Scores], split: str) -> None:
        """Log every student's scores, and under `<split>/mean/` their mean over the students (the first set's)."""
        values: dict[str, list[float]] = {}
        for key in self.students:
            for name, value in scores[key].log(self, prog_bar=split == "val").items():
                metric = name.removeprefix(f"{split}/{key}/")
                if "/" not in metric:  # not one of several validation sets' own keys
                    values.setdefault(metric, []).append(value)
        for metric, per_student in values.items():
            if len(per_student) == len(self.students):
                self.log(f"{split}/mean/{metric}", sum(per_student) / len(per_student), prog_bar=split == "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_scores, "val")
        if not self.trainer.sanity_checking and not self._teacher_evaluated:
            for scores in self.teacher_val_scores:
                scores.log(self)
            self._teacher_evaluated = True

    def test_step(self, batch: dict, batch_idx: int) -> None:
        for key, student in self.students.items():
            logits = logits_of(student(**self.student_inputs(batch, key)), student)
            self.test_scores[key].update(logits, batch["labels"])

    def on_test_epoch_end(self) -> None:
        self._log_scores(self.test_scores, "test")

    # -- export -----------------------------------------------------------------------------------------------------
    def tokenizer_of(self, key: str):
        views = getattr(self.dm, "views", None)
        if views:
            return views[self.student_views[key]][0]
        return None if self.dm is None else self.dm.student_tokenizer or self.dm.tokenizer

    def export(self, out_dir: str | Path) -> Path:
        """Every student as its own Hugging Face directory `<out_dir>/<key>` (shared modules copied into each), from
        the best checkpoint when the run has one."""
        for key, student in self.students.items():
            export_module(self, student, self.tokenizer_of(key), Path(out_dir) / key)
        return Path(out_dir)


# ---------------------------------------------------------------------------------------------------------------------
# The stage


def _specs(cfg) -> tuple[list[TeacherConfig], list[StudentSpec]]:
    """The teachers and students of a config, the single `teacher` and `student` mappings as lists of one."""
    if isinstance(cfg.teacher, list):
        teachers = cfg.teacher
    else:
        teachers = [TeacherConfig(**{f.name: getattr(cfg.teacher, f.name) for f in dataclasses.fields(cfg.teacher)})]
    if cfg.students is not None:
        students = cfg.students
    else:
        students = [StudentSpec(**{f.name: getattr(cfg.student, f.name) for f in dataclasses.fields(StudentConfig)})]
    if not teachers or not students:
        raise UserError("teacher and students: each needs at least one entry")
    return teachers, students


def run_multi(cfg, stage: str) -> dict:
    """`distillation_ms` with several teachers and/or students: export `<run dir>/students/<key>`, a report each."""
    from bert.loading import load_tokenizer, resolve_model_path
    from data.datamodule import tokenizer_id
    from data.multi import MultiDataModule
    from helper.checkpoint import load_classifier
    from helper.stages import check_vocab, fit_and_export, has_tokenizer
    from helper.students import build_student

    if stage != "distill_ms":
        raise UserError("several teachers or students train in one step: use distillation_ms.py")
    teachers_cfg, students_cfg = _specs(cfg)
    check_weights([t.weight for t in teachers_cfg], "teacher[].weight")
    keys = [s.key for s in students_cfg]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise UserError(f"students: key {dup!r} is used twice; give every student its own `key:`")
    monitor = cfg.trainer.monitor
    if monitor.count("/") == 1 and monitor != "val/loss":  # val/<metric>: the students' mean
        monitor = monitor.replace("val/", "val/mean/")
    if monitor.split("/")[1] not in [*keys, "mean"]:
        raise UserError(f"trainer.monitor: {monitor!r} names no student (keys: {', '.join(keys)}; or mean)")
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)

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
    for s, tok in zip(students_cfg, tok_s):
        students.append(build_student(s, teachers[0], teachers_cfg[0].name, dm.label_names, tok))
        check_vocab(tok, students[-1], f"students[{len(students) - 1}]")
    for i, (tok, teacher) in enumerate(zip(tok_t, teachers)):
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
    run_cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, monitor=monitor))
    metrics, out, exported = fit_and_export(run_cfg, stage, distiller, dm, "students", "students")
    if exported is not None and cfg.distill.report:
        from helper.report import write_report

        split = "test" if dm.has_test else "validation"
        batches = list(dm.test_dataloader() if dm.has_test else dm.val_dataloader())
        summaries = {}
        for (key, student), v in zip(distiller.students.items(), view_s):
            remapped = [
                {**b["views"][view_t[0]], "labels": b["labels"], "idx": b["idx"], "student": b["views"][v]}
                for b in batches
            ]
            summaries[key] = write_report(
                teachers[0],
                student,
                resolve_model_path(teachers_cfg[0].name),
                exported / key,
                remapped,
                split,
                out / "reports" / key,
                n_latency=cfg.distill.report_batches,
            )
        metrics["summary"] = summaries
    return metrics
