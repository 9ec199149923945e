"""The one distillation module, `Distiller`: N frozen teachers into M students, on labelled or unlabelled batches,
classifiers or bare encoders, with logit, feature and masked-LM losses. kd-clf's `BaseDistiller` (mix-step),
`InterDistiller` / `PredDistiller` (two-step), `MultiDistiller`, `GeneralDistiller` and `GeneralMultiDistiller` are
configurations of it.

Teachers are frozen, in eval mode, run under `no_grad` (not `inference_mode`: their tensors meet student tensors in
the losses), kept out of the optimiser and the checkpoints (not registered submodules), and moved to the first
student's device and dtype. What a teacher gives depends only on the example, so `TeacherCache` keeps it per training
example; teachers run once per batch for every student.

With several teachers, a prediction-stage adaptor that reads only the teachers' logits compares the student with their
weighted mean: of the softened distributions, mean_i w_i softmax(z_i / T) (`LogitKL`, or any adaptor with
`ensemble = "probs"`), else of the logits, mean_i w_i z_i (`LogitMSE`, `HardCE` with `teacher_labels`), as in Hinton et
al. 2015 (arXiv:1503.02531) for an ensemble. Any other adaptor reads one teacher, named by `teacher: <index>` in its
mapping. Students may share their embeddings and named encoder layers (the first student's modules, tied by reference,
trained once, exported with every student). Each model reads its view of the batch (a tokenizer and a text column,
`data/multi.py`); on unlabelled parallel text a student may read several (its languages), and students reading other
languages than the teacher's are scored by translation retrieval of their sentence embeddings.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from bert.errors import UserError
from bert.families import check_features, get_family, logits_of, masked_logits, model_inputs
from bert.features import Features, ModelDims, merge_requests
from bert.loading import name_labels
from bert.recorder import FeatureRecorder
from data.data_module import tokenizer_id
from helper.adaptors import Adaptor, LogitKL, build_adaptors, parse_schedule, scheduled
from helper.checkpoint import say_runtime_flags, sentence_transformers_files
from helper.config import DEFAULT_METRICS, DistillationRunConfig, GeneralRunConfig, OptimConfig, ShareConfig
from helper.hgckpt import (
    HF_KEY,
    HgCkptIO,  # noqa: F401  (kd-clf's snippets import it from here)
    hf_export_info,
)
from helper.metrics import Scorer, Scores, retrieval_accuracy
from helper.teacher_cache import TeacherCache, with_stored_logits
from helper.training import configure_optimizers, export_module

# The distillers' own `transfer_batch_to_device` (keeps `idx` on the CPU) is meant to apply with any data module.
warnings.filterwarnings("ignore", message="You have overridden `transfer_batch_to_device` in `LightningModule`")


@dataclass
class Teacher:
    """A teacher: its weight in the mean of the teachers' targets (>= 0; the weights must sum to > 0), the view
    of the batch it reads (None: the batch's top level, the data module's first view), and how it pools its last
    layer into a sentence embedding (`bert.features.POOLINGS`; None: [CLS])."""

    model: nn.Module
    weight: float = 1.0
    view: str | None = None
    pooling: str | None = None


@dataclass
class Student:
    """A student: its key (metrics `val/<key>/acc`, export `<dir>/<key>`), its adaptors (names or mappings as
    `distill.adaptors`, where `teacher: i` picks one teacher and `languages: [...]` the languages it applies to;
    default `distill.adaptors`), its view, or on unlabelled data a list of views (its languages: each adaptor and
    the MLM apply to each, logged `<key>/<adaptor>/<language>`), its pooling (as `Teacher`'s), whether its
    sentence-transformers export ends with a Normalize module (as the teacher's), and whether it has a word-embedding
    matrix per language (clkd's `embed_sharing: in_each_model`; exported as `<dir>/<key>-<language>` each)."""

    key: str
    model: nn.Module
    adaptors: list | nn.ModuleList | None = None
    view: str | Sequence[str] | None = None
    pooling: str | None = None
    normalize: bool = False
    embeddings_per_language: bool = False


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


def head_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The prediction layer: everything outside the encoder (classifier, pre-classifier), plus the pooler."""
    base = getattr(model, "base_model", model)
    if base is model:  # no separate encoder (a BiLSTM, a user's module): the head is its classifier, where named
        path = get_family(model).pooled_path
        return [(f"{path}.{n}", p) for n, p in model.get_submodule(path).named_parameters()] if path else []
    encoder_ids = {id(p) for n, p in base.named_parameters() if not n.startswith("pooler.")}
    return [(n, p) for n, p in model.named_parameters() if id(p) not in encoder_ids]


def encoder_of(model: nn.Module) -> nn.Module:
    """The bare encoder inside a masked LM (the model itself when it is one)."""
    base = getattr(model, "base_model", model)
    return base if base is not model else model


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    probability: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (Devlin et al. 2019): of the real, non-special tokens, `probability` are chosen; of those 80%
    become `mask_id`, 10% a random token, 10% stay. Returns (masked input_ids, labels: the original id at chosen
    positions, -100 elsewhere).

    Not transformers' `DataCollatorForLanguageModeling`: it masks in the loader, replacing the ids that the teachers
    and the distillation pass read, and cannot give validation the same masks every time (`generator`)."""
    device = input_ids.device

    def rand(shape):
        return torch.rand(shape, generator=generator, device=generator.device if generator else device).to(device)

    can = attention_mask.bool() & ~torch.isin(input_ids, special.to(device))
    chosen = can & (rand(input_ids.shape) < probability)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    draw = rand(input_ids.shape)
    to_mask = chosen & (draw < 0.8)
    to_random = chosen & (draw >= 0.8) & (draw < 0.9)
    random_ids = (rand(input_ids.shape) * vocab_size).long().clamp_max(vocab_size - 1)
    out = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    return torch.where(to_random, random_ids, out), labels


class Distiller(pl.LightningModule):
    """Distils `teachers` into `students` (see the module docstring): `sum(weight * adaptor loss)` over every student
    [+ `distill.mlm.weight` * its masked-LM loss], minimised at once.

    `teachers`: `Teacher`s or modules (weight 1). `students`: `Student`s or (key, module) pairs. `dm`: the data module
    (its tokenizers are exported with the students; a `MultiDataModule` when models read different views). `share`:
    `ShareConfig` or {embeddings: bool, layers: [...]}. `optim`/`distill` are the config sections; keyword settings
    (`lr=3e-5`, `temperature=4`, `cache_teacher=False`, ...) override single fields of either. `metrics` and
    `scorers` (the user's functions of logits and labels) score the students on every validation set.

    Labelled data (`labelled`): each student is scored on validation (`val/<key>/acc`, their mean `val/mean/acc`)
    and test. Unlabelled data (general distillation): validation is the same losses on held-out text, the teachers
    running live. `flat`: one teacher and one student, logged without their keys (`val/acc`, `train/LogitMSE`).
    """

    stages: ClassVar[tuple[str, ...]] = ("inter", "pred")  # which adaptors it trains
    export_best: ClassVar[bool] = True  # export the best checkpoint on the validation metric (else the last)
    labelled: ClassVar[bool] = True
    run_config: ClassVar[type] = DistillationRunConfig  # where the default `optim` and `distill` come from

    def __init__(
        self,
        teachers: Sequence[Teacher | nn.Module],
        students: Sequence[Student | tuple],
        dm=None,
        *,
        share: ShareConfig | Mapping | None = None,
        optim: OptimConfig | None = None,
        distill: Any = None,
        metrics: Sequence[str] = DEFAULT_METRICS,
        scorers: Mapping[str, Scorer] | None = None,
        tokenizer=None,
        flat: bool = False,
        **kwargs,
    ):
        super().__init__()
        self.optim, self.distill = self._settings(optim, distill, kwargs)
        self.__dict__["dm"] = dm  # not a module: kept out of the state dict and hyperparameters
        self.__dict__["tokenizer"] = tokenizer  # exported with the students when the data module has none
        teachers = [t if isinstance(t, Teacher) else Teacher(t) for t in teachers]
        students = [s if isinstance(s, Student) else Student(*s) for s in students]
        if not teachers or not students:
            raise UserError(f"{type(self).__name__}: needs at least one teacher and one student")
        self.flat = flat and len(teachers) == 1 and len(students) == 1
        self.weights = check_weights([t.weight for t in teachers])
        keys = [s.key for s in students]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise UserError(f"students: key {dup!r} is used twice; give every student its own key")
        views = getattr(dm, "views", None)
        first_view = next(iter(views)) if views else None
        self.student_langs = {  # every view a student reads
            s.key: list(s.view) if isinstance(s.view, (list, tuple)) else [s.view or first_view] for s in students
        }
        for who, view in [
            *((f"teacher {i}", t.view) for i, t in enumerate(teachers)),
            *((s.key, v) for s in students for v in self.student_langs[s.key] if v is not None),
        ]:
            if view is not None and (views is None or view not in views):
                raise UserError(f"{who}: view {view!r} is not one of the data module's ({', '.join(views or [])})")
        for s in students:
            langs = self.student_langs[s.key]
            if not langs or len(set(langs)) != len(langs) or (len(langs) > 1 and self.labelled):
                raise UserError(
                    f"student {s.key!r}: views {langs!r}; give distinct views, several only on unlabelled data"
                )
        self.teacher_views = [t.view or first_view for t in teachers]
        self.student_views = {s.key: self.student_langs[s.key][0] for s in students}
        self.poolings = {"teachers": [t.pooling for t in teachers], **{s.key: s.pooling for s in students}}
        self.normalize = {s.key: s.normalize for s in students}
        # Cross-lingual evaluation: students reading other languages than the first teacher's (`retrieval_languages`)
        self.retrieval = not self.labelled and any(
            self.language(v) != self.language(self.teacher_views[0])
            for langs in self.student_langs.values()
            for v in langs
        )
        # unregistered: out of the optimiser and the checkpoints
        self.__dict__["teachers"] = [t.model.eval().requires_grad_(False) for t in teachers]
        self.students = nn.ModuleDict({s.key: s.model.train() for s in students})  # from_pretrained gives eval mode
        for i, t in enumerate(teachers):
            say_runtime_flags(t.model, self._role("teacher", i))
        for s in students:
            say_runtime_flags(s.model, self._role("student", s.key))
        share = ShareConfig(**share) if isinstance(share, Mapping) else share or ShareConfig()
        if len(students) > 1 and (share.embeddings or share.layers):
            tie_shared(self.students, share.embeddings, share.layers)
        self.language_embeddings = nn.ModuleDict()  # key -> {language: word embeddings}; the student holds the first's
        for s in students:
            if s.embeddings_per_language:
                langs = [self.language(v) for v in self.student_langs[s.key]]
                if len(langs) < 2 or None in langs:
                    raise UserError(
                        f"student {s.key!r}: embeddings_per_language needs several languages of parallel text "
                        f"(it reads {langs})"
                    )
                first = s.model.get_input_embeddings()
                self.language_embeddings[s.key] = nn.ModuleDict(
                    {lang: first if i == 0 else copy.deepcopy(first) for i, lang in enumerate(langs)}
                )
        self.adaptors = nn.ModuleDict()
        self.adaptor_teacher: dict[str, list[int | None]] = {}  # per adaptor: its teacher, None for the weighted mean
        self.adaptor_views: dict[str, list[list[str | None]]] = {}  # per adaptor: the student's views it applies to
        self.adaptor_schedules: dict[str, list[dict]] = {}  # per adaptor: {setting: (start, end, kind)}
        requests_t: list[list] = [[] for _ in teachers]
        for s in students:
            self._build_adaptors(s, requests_t)
        pooled = [{"pooled": frozenset()}] if self.retrieval else []  # the sentence embeddings retrieval compares
        self.rec_t = []
        for i, teacher in enumerate(self.teachers):
            request = merge_requests(*requests_t[i], *(pooled if i == 0 else []))
            check_features(teacher, request, self._role("teacher", i))
            self.rec_t.append(self._recorder(teacher, request, self.poolings["teachers"][i], self._role("teacher", i)))
        self.rec_s = {}
        for key, student in self.students.items():
            request = merge_requests(*(a.request()[1] for a in self.adaptors[key]), *pooled)
            check_features(student, request, self._role("student", key))
            self.rec_s[key] = self._recorder(student, request, self.poolings[key], self._role("student", key))
        self._sentences: dict | None = None  # sentence embeddings of the evaluation batch, while it is evaluated
        self._collected: dict[str, dict] = {}  # split -> {"idx": [...], "emb": {(who, view or language): [...]}}
        self._teacher_sentences: dict[str, dict[str, torch.Tensor]] = {}  # split -> language -> (N, H), once
        cache = self.distill.cache_teacher
        self.teacher_caches = [
            TeacherCache(self.distill.cache_max_mb) if cache and r.request else None for r in self.rec_t
        ]
        self.mlm = getattr(self.distill, "mlm", None)
        self._special: dict[str, torch.Tensor] = {}
        if self.mlm is not None:
            self._check_mlm()
        if self.labelled:
            n = self._num_labels()
            sets = getattr(dm, "validation_names", None)
            self.val_scores = nn.ModuleDict({k: Scores(n, self._key("val", k), sets, metrics, scorers) for k in keys})
            self.test_scores = nn.ModuleDict({k: Scores(n, self._key("test", k), None, metrics, scorers) for k in keys})
            self.teacher_val_scores = nn.ModuleList(
                Scores(n, "teacher/val" if self.flat else f"teacher/{i}/val", sets, metrics)
                for i in range(len(teachers))
            )
        self._teacher_evaluated = False
        self.configure_trainable()

    # -- settings and names -----------------------------------------------------------------------------------------
    def _settings(self, optim: OptimConfig | None, distill, kwargs: dict[str, Any]):
        """`optim` and `distill` (defaults: the stage's own, `run_config`) with keyword settings applied on top."""
        defaults = self.run_config()
        optim_keys = [f.name for f in dataclasses.fields(OptimConfig)]
        distill_keys = [f.name for f in dataclasses.fields(type(defaults.distill)) if f.name != "adaptors"]
        choices = optim_keys + distill_keys
        unknown = [k for k in kwargs if k not in choices]
        if unknown:
            raise UserError(f"{type(self).__name__}: unknown setting {unknown[0]!r} (choices: {', '.join(choices)})")
        optim = dataclasses.replace(optim or defaults.optim, **{k: v for k, v in kwargs.items() if k in optim_keys})
        distill = dataclasses.replace(
            distill or defaults.distill, **{k: v for k, v in kwargs.items() if k in distill_keys}
        )
        return optim, distill

    def _key(self, prefix: str, key: str) -> str:
        """A log key of one student: `<prefix>/<key>`, or `<prefix>` alone when flat."""
        return prefix if self.flat else f"{prefix}/{key}"

    def _role(self, role: str, which: int | str) -> str:
        """How errors name a model: 'teacher', or 'teacher 1' / "student 'small'" with several."""
        return role if self.flat else f"{role} {which!r}" if isinstance(which, str) else f"{role} {which}"

    def _num_labels(self) -> int:
        names = getattr(self.dm, "label_names", None)
        if names:
            return len(names)
        for model in [*self.students.values(), *self.teachers]:
            n = getattr(getattr(model, "config", None), "num_labels", None)
            if n:
                return n
        raise UserError(
            f"{type(self).__name__}: the number of labels is unknown: no model has a `.config` with num_labels and "
            "the data module gives no label_names; pass the ClfDataModule as `dm`"
        )

    def _build_adaptors(self, s: Student, requests_t: list[list]) -> None:
        n = len(self.teachers)
        if isinstance(s.adaptors, nn.ModuleList):  # built by the caller
            specs: list = list(s.adaptors)
        else:
            specs = self.distill.adaptors if s.adaptors is None else s.adaptors
            if not isinstance(specs, (list, tuple)) or not specs:
                raise UserError(f"{self._where(s.key)}adaptors: expected a non-empty list, got {specs!r}")
        dims_s = ModelDims.of(getattr(s.model, "config", None))
        built, chosen, views, schedules, seen = nn.ModuleList(), [], [], [], {}
        for i, spec in enumerate(specs):
            where = f"{self._where(s.key)}adaptors[{i}]"
            teacher, languages, schedule = None, None, None
            if isinstance(spec, Mapping) and {"teacher", "languages", "schedule"} & set(spec):
                spec = dict(spec)
                teacher, languages = spec.pop("teacher", None), spec.pop("languages", None)
                schedule = spec.pop("schedule", None)
                if teacher is not None and (
                    isinstance(teacher, bool) or not isinstance(teacher, int) or not 0 <= teacher < n
                ):
                    raise UserError(f"{where}: teacher {teacher!r} is not a teacher index (0..{n - 1})")
            if isinstance(spec, Adaptor):
                adaptor = spec
            else:
                dims_t = ModelDims.of(getattr(self.teachers[teacher or 0], "config", None))
                try:
                    tau = getattr(self.distill, "temperature", 1.0)  # general distillation has none
                    adaptor = build_adaptors([spec], dims_t, dims_s, temperature=tau)[0]
                except UserError as err:
                    raise UserError(f"{where}{str(err).removeprefix('adaptors[0]')}") from None
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
            applies = self._adaptor_views(s.key, where, languages)
            other = next((v for v in applies if v != self.teacher_views[teacher or 0]), None)
            if not adaptor.sentence_level and other is not None:
                raise UserError(
                    f"{where}: compares tokens, but teacher {teacher} reads view {self.teacher_views[teacher]!r} and "
                    f"the student {other!r}; token-level adaptors need the same tokenizer and text (give it "
                    "`languages: [...]` of the teacher's language)"
                )
            for t in range(n) if teacher is None else [teacher]:
                if teacher is not None or self.weights[t] > 0:
                    requests_t[t].append(adaptor.request()[0])
            built.append(adaptor)
            chosen.append(teacher)
            views.append(applies)
            schedules.append(parse_schedule(schedule, adaptor, where) if schedule is not None else {})
        where = f"{self._where(s.key)}adaptors"
        wrong = [a.key for a in built if a.stage not in self.stages]
        if wrong:
            raise UserError(
                f"{where}: {', '.join(wrong)} cannot train in {type(self).__name__} (it takes "
                f"{' and '.join(self.stages)}-stage adaptors)"
            )
        token_level = [a.key for a in built if not a.sentence_level]
        if token_level and s.view is None and getattr(self.dm, "student_tokenizer", None) is not None:
            raise UserError(
                f"{where}: {', '.join(token_level)} compare tokens, but teacher and student tokenize differently; only "
                "sentence-level adaptors (logits, [CLS]) are allowed"
            )
        self.adaptors[s.key] = built
        self.adaptor_teacher[s.key] = chosen
        self.adaptor_views[s.key] = views
        self.adaptor_schedules[s.key] = schedules

    def _where(self, key: str) -> str:
        return "distill." if self.flat else f"student {key!r}: "

    @staticmethod
    def _recorder(model: nn.Module, request, pooling: str | None, role: str) -> FeatureRecorder:
        try:
            return FeatureRecorder(model, request, pooling)
        except UserError as err:
            raise UserError(f"{role}: {err}") from None

    def language(self, view: str | None) -> str | None:
        """The language (text column) a view reads; None for a data module without views."""
        views = getattr(self.dm, "views", None)
        return views[view][1] if views and view is not None else None

    def _adaptor_views(self, key: str, where: str, languages: Any) -> list[str | None]:
        """The views of student `key` an adaptor applies to: those reading one of `languages` (None: every one)."""
        mine = self.student_langs[key]
        if languages is None:
            return list(mine)
        read = [self.language(v) for v in mine]
        if not isinstance(languages, list) or not languages or any(lang not in read for lang in languages):
            raise UserError(
                f"{where}: languages {languages!r}; give a list of the student's ({', '.join(map(str, read))})"
            )
        return [v for v in mine if self.language(v) in languages]

    def _check_mlm(self) -> None:
        for key, student in self.students.items():
            if getattr(student, "get_output_embeddings", lambda: None)() is None:
                raise UserError(f"distill.mlm: the student {type(student).__name__} has no masked-LM head")
            tok = self.tokenizer_of(key)
            if tok is None or tok.mask_token_id is None:
                raise UserError(f"distill.mlm: tokenizer {getattr(tok, 'name_or_path', None)} has no mask token")
            self._special[key] = torch.tensor(sorted(set(tok.all_special_ids)))
        if getattr(self.mlm, "soft_weight", 0) > 0:
            teacher = self.teachers[0]
            if getattr(teacher, "get_output_embeddings", lambda: None)() is None:
                raise UserError(
                    f"distill.mlm.soft_weight: the teacher {type(teacher).__name__} has no masked-LM head to give soft "
                    "targets; use a masked LM as the teacher, or set soft_weight 0"
                )
            views = getattr(self.dm, "views", None) or {}
            tok_t = views[self.teacher_views[0]][0] if views else self.tokenizer
            for key, student in self.students.items():
                if tokenizer_id(self.tokenizer_of(key)) != tokenizer_id(tok_t) or (
                    student.config.vocab_size != teacher.config.vocab_size
                ):
                    raise UserError(
                        f"distill.mlm.soft_weight: student {key!r} does not read the teacher's vocabulary; soft MLM "
                        "targets need the same tokens"
                    )

    # -- what trains ------------------------------------------------------------------------------------------------
    def configure_trainable(self) -> None:
        """Every student (and the adaptors' projections) trains; two-step distillers freeze a part."""

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Every trainable parameter once (`named_parameters` drops the repeats of shared, tied modules)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def configure_optimizers(self):
        return configure_optimizers(self, self.trainable_parameters(), self.optim)

    def setup(self, stage: str) -> None:
        names = getattr(self.dm or self.trainer.datamodule, "label_names", None)
        if names is not None:
            for i, teacher in enumerate(self.teachers):
                name_labels(teacher, names, self._role("teacher", i))
            for key, student in self.students.items():
                name_labels(student, names, self._role("student", key))

    # -- teachers ---------------------------------------------------------------------------------------------------
    def _place_teachers(self) -> None:
        dtype = next(self.parameters()).dtype  # the first student's
        for teacher in self.teachers:
            teacher.to(device=self.device, dtype=dtype).eval()

    def on_fit_start(self) -> None:
        self._place_teachers()

    def on_validation_start(self) -> None:
        self._place_teachers()

    def on_test_start(self) -> None:
        self._place_teachers()

    @staticmethod
    def view(batch: dict, view: str | None) -> dict:
        """The inputs of one view of `batch` (its top level when there are no views)."""
        return batch["views"][view] if view is not None and "views" in batch else batch

    def teacher_features(self, batch: dict, cached: bool = True) -> list[Features | None]:
        """Every teacher's requested features of `batch` (None for a teacher nothing reads): one pass each, through
        its cache when `cached` and it is on.

        Transfer-set rows carry the teacher's logits (`teacher_logits`): when logits are all the adaptors read from
        the one teacher, it does not run for them; token features need the teacher on every row."""
        if any(c is not None for c in self.teacher_caches) and "idx" not in batch:
            warnings.warn(
                "teacher cache off: the batches carry no `idx` (example index), so examples cannot be told apart; "
                "ClfDataModule's collator adds it",
                stacklevel=1,
            )
            self.teacher_caches = [None for _ in self.teachers]
        out = []
        with torch.no_grad():
            for i, rec in enumerate(self.rec_t):
                if not rec.request:
                    out.append(None)
                    continue
                inputs = self.view(batch, self.teacher_views[i])
                if "idx" in batch:
                    inputs = {**inputs, "idx": batch["idx"]}
                cache = self.teacher_caches[i] if cached else None
                if "teacher_logits" in batch and len(self.teachers) == 1 and set(rec.request) == {"logits"}:
                    out.append(with_stored_logits(batch, lambda sub, _i=i, _c=cache: self._run_teacher(_i, sub, _c)))
                else:
                    out.append(self._run_teacher(i, inputs, cache))
        return out

    def replay_teacher_cache(self, trainer: pl.Trainer, epoch: int, batches_done: int) -> None:
        """After a resume: the teachers run over the training batches before the checkpoint again, in their order, so
        that the caches hold what they held then, bit for bit: a teacher's fp32 result for an example depends on the
        batch it was computed in, and a cache refilled from the batches after the resume would differ in the last
        bits. Costs one teacher pass over the examples cached then; one process only (under DDP the caches refill
        from the batches that come)."""
        caches = [c for c in self.teacher_caches if c is not None]
        if not caches or trainer.world_size != 1 or trainer.datamodule is None:
            return
        per_epoch = int(trainer.num_training_batches)
        for e in range(epoch + 1):
            loader = trainer.datamodule.train_dataloader()  # a fresh loader: epoch e's batches from the first
            sampler = getattr(loader.batch_sampler, "sampler", None)
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(e)
            for _, batch in zip(range(per_epoch if e < epoch else batches_done), loader):
                keys = batch["idx"].tolist() if "idx" in batch else []
                if all(c.full or all(k in c.rows for k in keys) for c in caches):
                    continue  # nothing this batch would add
                self.teacher_features(self.transfer_batch_to_device(batch, self.device, 0))

    def _run_teacher(self, i: int, inputs: dict, cache: TeacherCache | None) -> Features:
        rec, teacher = self.rec_t[i], self.teachers[i]
        if cache is None:
            return rec(**model_inputs(inputs, teacher))[1]
        dtype = next(teacher.parameters()).dtype
        return cache.features({**model_inputs(inputs, teacher), "idx": inputs["idx"]}, lambda **kw: rec(**kw)[1], dtype)

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

    # -- losses -----------------------------------------------------------------------------------------------------
    def student_inputs(self, batch: dict, key: str | None = None, view: str | None = None) -> dict:
        """The inputs of a student (default: the first): its view (default: its first), or the student tokens of a
        `ClfDataModule` batch when teacher and student tokenize differently."""
        key = key or next(iter(self.students))
        view = view or self.student_views[key]
        inputs = self.view(batch, view) if view is not None else batch.get("student", batch)
        return model_inputs(inputs, self.students[key])

    def losses(self, batch: dict, cached: bool = True, generator: torch.Generator | None = None):
        """({log name: unweighted loss}, the weighted total): every student's adaptors (and MLM loss), and with several
        students each one's own total `<key>/loss`."""
        feats_t = self.teacher_features(batch, cached)  # once for every student
        labels = batch.get("labels")
        memo: dict = {}
        out: dict[str, torch.Tensor] = {}
        total = 0.0
        if self._sentences is not None and feats_t[0] is not None:
            self._sentences["teacher", self.teacher_views[0]] = feats_t[0].pooled
        for key in self.students:
            loss_s = 0.0
            several = len(self.student_langs[key]) > 1
            for view in self.student_langs[key]:
                suffix = f"/{self.language(view)}" if several else ""
                self.use_language(key, view)
                _, feats_s = self.rec_s[key](**self.student_inputs(batch, key, view))
                if self._sentences is not None:
                    self._sentences[key, view] = feats_s.pooled.detach()
                adaptors = zip(self.adaptors[key], self.adaptor_teacher[key], self.adaptor_views[key])
                for adaptor, teacher, views in adaptors:
                    if view in views:
                        loss = adaptor(self.target(feats_t, adaptor, teacher, memo), feats_s, labels)
                        out[self._name(key, adaptor.key + suffix)] = loss
                        loss_s = loss_s + adaptor.weight * loss
                if self.mlm is not None:
                    mlm, soft = self.mlm_loss(batch, key, generator, view)
                    out[self._name(key, "mlm" + suffix)] = mlm
                    loss_s = loss_s + self.mlm.weight * mlm
                    if soft is not None:
                        out[self._name(key, "mlm_soft" + suffix)] = soft
                        loss_s = loss_s + self.mlm.soft_weight * soft
            self.use_language(key, self.student_langs[key][0])  # what checkpoints and exports see between steps
            if not self.flat:
                out[f"{key}/loss"] = loss_s
            total = total + loss_s
        return out, total

    def use_language(self, key: str, view: str | None) -> None:
        """Give student `key` the word embeddings of `view`'s language, when it has one matrix per language (its
        masked-LM decoder, tied to them, follows)."""
        table = self.language_embeddings[key] if key in self.language_embeddings else None
        if table is None:
            return
        student, emb = self.students[key], table[self.language(view)]
        if student.get_input_embeddings() is not emb:
            student.set_input_embeddings(emb)
            decoder = getattr(student, "get_output_embeddings", lambda: None)()
            if decoder is not None:
                decoder.weight = emb.weight

    def _name(self, key: str, name: str) -> str:
        return name if self.flat else f"{key}/{name}"

    def mlm_loss(
        self, batch: dict, key: str, generator: torch.Generator | None = None, view: str | None = None
    ) -> torch.Tensor:
        """(cross-entropy of the student's predictions at the masked positions (a second, masked, student pass) of
        its `view` (default: its first), and with `mlm.soft_weight` the soft-target loss T² · KL(teacher ‖ student)
        of the masked-token distributions at `mlm.temperature`, the first teacher reading the same masked tokens
        (else None)). Hinton et al. 2015 (arXiv:1503.02531) on DistilBERT's masked LM (Sanh et al. 2019,
        arXiv:1910.01108)."""
        student = self.students[key]
        inputs = self.student_inputs(batch, key, view)
        inputs["input_ids"], labels = mask_tokens(
            inputs["input_ids"],
            inputs["attention_mask"],
            self._special[key],
            self.tokenizer_of(key).mask_token_id,
            student.config.vocab_size,
            self.mlm.probability,
            generator,
        )
        chosen = labels != -100  # (B, T)
        if not bool(chosen.any()):
            zero = student(**inputs).logits.sum() * 0.0  # every parameter in the graph, as a step with masks
            return zero, (zero if self.mlm.soft_weight > 0 else None)
        logits = masked_logits(student, inputs, chosen)  # (N, V)
        hard = F.cross_entropy(logits.float(), labels[chosen])
        if not self.mlm.soft_weight > 0:
            return hard, None
        teacher, tau = self.teachers[0], self.mlm.temperature
        with torch.no_grad():
            logits_t = masked_logits(teacher, model_inputs(inputs, teacher), chosen).float()  # (N, V)
        logp_s = (logits.float() / tau).log_softmax(-1)  # (N, V)
        soft = F.kl_div(logp_s, (logits_t / tau).log_softmax(-1), reduction="batchmean", log_target=True) * tau**2
        return hard, soft

    # -- steps ------------------------------------------------------------------------------------------------------
    def apply_schedules(self) -> dict[str, float]:
        """Set every scheduled adaptor weight and temperature to its value at this training step (of
        `trainer.estimated_stepping_batches`); returns them as {log name: value}."""
        if not any(any(s) for s in self.adaptor_schedules.values()):
            return {}
        trainer = self._trainer
        steps = trainer.estimated_stepping_batches if trainer is not None else 1
        progress = self.global_step / max(1, steps - 1) if math.isfinite(steps) else 0.0
        values = {}
        for key, schedules in self.adaptor_schedules.items():
            for adaptor, schedule in zip(self.adaptors[key], schedules):
                for name, (start, end, kind) in schedule.items():
                    setattr(adaptor, name, scheduled(start, end, kind, progress))
                    values[self._name(key, f"{adaptor.key}/{name}")] = getattr(adaptor, name)
        return values

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        scheduled_now = self.apply_schedules()
        losses, total = self.losses(batch)
        self.step_losses = {k: v.detach() for k, v in losses.items()}  # NonFiniteGuard names them
        n = len(batch["idx"] if "idx" in batch else batch["labels"])
        if self._logs_now():
            for name, loss in losses.items():
                self.log(f"train/{name}", loss, batch_size=n)
            self.log("train/loss", total, prog_bar=True, batch_size=n)
            for name, value in scheduled_now.items():
                self.log(f"schedule/{name}", value, batch_size=n)
            for i, cache in enumerate(self.teacher_caches):
                if cache is not None:
                    self.log(self._key("train/teacher_cache_hit_rate", str(i)), cache.hit_rate)
        if self.labelled and getattr(self.dm, "transfer_rows", 0):  # rows without a gold label (-1), per epoch
            unlabelled = (batch["labels"] < 0).sum().float()
            self.log("train/unlabelled_rows", unlabelled, on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True)
        return total

    def _logs_now(self) -> bool:
        """Whether Lightning hands this step's logged values to the loggers (every `trainer.log_every_n_steps`); on
        other steps `self.log` would only feed the progress bar, at the cost of a few calls (and, on a GPU, a
        synchronising `.item()` per value) every step. The bar shows the values of the last logged step."""
        trainer = self._trainer
        if trainer is None:
            return False  # outside a Trainer self.log does nothing
        return trainer._logger_connector.should_update_logs or bool(trainer.fast_dev_run)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.labelled:  # the same losses on held-out text, the teachers live, the same masks every time
            generator = torch.Generator().manual_seed(batch_idx) if self.mlm is not None else None
            collect = self.retrieval and not self.trainer.sanity_checking
            self._sentences = {} if collect else None
            try:
                losses, total = self.losses(batch, cached=False, generator=generator)
                if collect:
                    self._keep_sentences(batch, "val")
            finally:
                self._sentences = None
            n = len(batch["idx"])
            for name, loss in losses.items():
                self.log(f"val/{name}", loss, batch_size=n, sync_dist=True)
            self.log("val/loss", total, prog_bar=True, batch_size=n, sync_dist=True)
            return
        labels = batch["labels"]
        for key, student in self.students.items():
            logits = logits_of(student(**self.student_inputs(batch, key)), student)
            self.val_scores[key].update(logits, labels, dataloader_idx)
            if dataloader_idx == 0:  # the first validation set's loss
                loss = F.cross_entropy(logits.float(), labels)
                self.log(
                    self._key("val", key) + "/loss",
                    loss,
                    batch_size=len(labels),
                    add_dataloader_idx=False,
                    sync_dist=True,
                )
                if self.flat:
                    self.log("val_loss", loss, batch_size=len(labels), add_dataloader_idx=False, sync_dist=True)
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
        if self.flat:
            return
        for metric, per_student in values.items():
            if len(per_student) == len(self.students):
                self.log(f"{split}/mean/{metric}", sum(per_student) / len(per_student), prog_bar=split == "val")

    def on_validation_epoch_end(self) -> None:
        if not self.labelled:
            return self._log_retrieval("val")
        self._log_scores(self.val_scores, "val")
        # Every rank takes the same branch; the teacher's metrics are reduced by torchmetrics like the student's.
        if not self.trainer.sanity_checking and not self._teacher_evaluated:
            for scores in self.teacher_val_scores:
                scores.log(self)
            self._teacher_evaluated = True

    def test_step(self, batch: dict, batch_idx: int) -> None:
        if not self.labelled:  # unlabelled: the students' sentence embeddings, for retrieval
            if self.retrieval:
                self._sentences = {}
                try:
                    for key in self.students:
                        for view in self.student_langs[key]:
                            self.use_language(key, view)
                            inputs = self.student_inputs(batch, key, view)
                            self._sentences[key, view] = self.rec_s[key](**inputs)[1].pooled
                        self.use_language(key, self.student_langs[key][0])
                    self._keep_sentences(batch, "test")
                finally:
                    self._sentences = None
            return
        for key, student in self.students.items():
            logits = logits_of(student(**self.student_inputs(batch, key)), student)
            self.test_scores[key].update(logits, batch["labels"])

    def on_test_epoch_end(self) -> None:
        if not self.labelled:
            return self._log_retrieval("test")
        self._log_scores(self.test_scores, "test")

    # -- cross-lingual evaluation -----------------------------------------------------------------------------------
    def _teacher_view(self, language: str) -> str | None:
        """A view that reads `language` with the first teacher's tokenizer (None when the data module has none)."""
        views = self.dm.views
        tok = views[self.teacher_views[0]][0]
        return next((v for v, (t, lang) in views.items() if t is tok and lang == language), None)

    def _keep_sentences(self, batch: dict, split: str) -> None:
        """Keep this batch's sentence embeddings (`self._sentences`: the students' per view, the teacher's of its own
        language when computed) for `_log_retrieval`; the first time through a split, the teacher's of every language
        the students read too (what the teacher itself scores)."""
        got = self._collected.setdefault(split, {"idx": [], "emb": {}})
        got["idx"].append(batch["idx"].cpu())
        pivot = self.language(self.teacher_views[0])
        found = {
            ("teacher", pivot) if who == "teacher" else (who, view): x for (who, view), x in self._sentences.items()
        }
        if split not in self._teacher_sentences:
            wanted = {self.language(v) for langs in self.student_langs.values() for v in langs} | {pivot}
            with torch.no_grad():
                for lang in sorted(wanted):
                    view = self._teacher_view(lang)
                    if ("teacher", lang) not in found and view is not None:
                        inputs = model_inputs(self.view(batch, view), self.teachers[0])
                        found["teacher", lang] = self.rec_t[0](**inputs)[1].pooled
        else:
            found.pop(("teacher", pivot), None)
        for k, x in found.items():
            got["emb"].setdefault(k, []).append(x.detach().float().cpu())

    def _log_retrieval(self, split: str) -> None:
        """Translation retrieval (xx->en `retrieval/<xx>`, en->xx `retrieval_rev/<xx>`, their mean over the student's
        languages `retrieval/mean`) and the MSE to the teacher's embedding of the teacher's language (`mse/<xx>`), per
        student and language, under `<split>/<key>/`; the teacher's own retrieval under `teacher/<split>/`. The
        English side is the student's own embedding of the teacher's language when it reads it, else the teacher's."""
        got = self._collected.pop(split, None)
        if not got or not got["idx"]:
            return
        order = torch.cat(got["idx"]).argsort()
        emb = {k: torch.cat(v)[order] for k, v in got["emb"].items()}
        pivot = self.language(self.teacher_views[0])
        if split not in self._teacher_sentences:
            self._teacher_sentences[split] = {lang: x for (who, lang), x in emb.items() if who == "teacher"}
        teacher = self._teacher_sentences[split]
        target = teacher[pivot]
        for lang, x in teacher.items():
            if lang != pivot:
                forward, backward = retrieval_accuracy(x, target)
                self.log(f"teacher/{split}/retrieval/{lang}", forward)
                self.log(f"teacher/{split}/retrieval_rev/{lang}", backward)
        for key in self.students:
            prefix = self._key(split, key)
            langs = {self.language(v): v for v in self.student_langs[key]}
            own = emb[key, langs[pivot]] if pivot in langs else target
            accuracies = []
            for lang, view in langs.items():
                x = emb[key, view]
                self.log(f"{prefix}/mse/{lang}", F.mse_loss(x, target))
                if lang != pivot:
                    forward, backward = retrieval_accuracy(x, own)
                    self.log(f"{prefix}/retrieval/{lang}", forward, prog_bar=split == "val")
                    self.log(f"{prefix}/retrieval_rev/{lang}", backward)
                    accuracies.append(forward)
            if accuracies:
                self.log(f"{prefix}/retrieval/mean", sum(accuracies) / len(accuracies))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Tensors to `device`, except `idx`: the teacher cache reads it on the CPU (on a GPU, a device copy would cost
        a copy and a synchronising `tolist()` every step). Nothing moves when the device is the CPU."""
        if device.type == "cpu" or not isinstance(batch, dict):
            return batch if device.type == "cpu" else super().transfer_batch_to_device(batch, device, dataloader_idx)
        return {
            k: v.to(device, non_blocking=True)
            if isinstance(v, torch.Tensor) and k != "idx"
            else self.transfer_batch_to_device(v, device, dataloader_idx)
            if isinstance(v, dict)
            else v
            for k, v in batch.items()
        }

    # -- export -----------------------------------------------------------------------------------------------------
    def tokenizer_of(self, key: str):
        """The tokenizer a student reads (exported with it)."""
        views = getattr(self.dm, "views", None)
        if views and self.student_views[key] is not None:
            return views[self.student_views[key]][0]
        if self.dm is None or getattr(self.dm, "tokenizer", None) is None:
            return self.tokenizer
        return getattr(self.dm, "student_tokenizer", None) or self.dm.tokenizer

    def exported_model(self, key: str) -> nn.Module:
        """What is exported of a student: the classifier, or the encoder of a general-distillation student."""
        student = self.students[key]
        return student if self.labelled else encoder_of(student)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.flat and self.labelled:  # HgCkptIO writes the student beside the checkpoint
            key = next(iter(self.students))
            checkpoint[HF_KEY] = hf_export_info(self.students[key], f"students.{key}.", self.tokenizer_of(key))

    def export(self, out_dir: str | Path, tokenizer=None) -> Path:
        """Write the students as Hugging Face directories (safetensors + tokenizer), atomically: the best checkpoint's
        weights when the run has one (`export_best`), else the current ones. One student (flat) goes to `out_dir`,
        several to `<out_dir>/<key>` each (shared modules copied into each)."""
        for name, (key, view) in self.export_names().items():
            out = Path(out_dir) if self.flat else Path(out_dir) / name
            self.use_language(key, view)
            try:
                model = self.exported_model(key)
                export_module(self, model, tokenizer or self.tokenizer_of(key), out, self._st_files(key))
            finally:
                self.use_language(key, self.student_langs[key][0])
        return Path(out_dir)

    def export_names(self) -> dict[str, tuple[str, str | None]]:
        """{directory name: (student key, view)}: a student's key, or `<key>-<language>` for each language of a
        student with a word-embedding matrix per language."""
        out: dict[str, tuple[str, str | None]] = {}
        for key in self.students:
            if key in self.language_embeddings:
                out.update({f"{key}-{self.language(v)}": (key, v) for v in self.student_langs[key]})
            else:
                out[key] = (key, None)
        return out

    def _st_files(self, key: str) -> dict[str, str] | None:
        """The sentence-transformers files of an unlabelled student with a declared mean or cls pooling."""
        pooling = self.poolings[key]
        if self.labelled or pooling not in ("mean", "cls"):
            return None
        max_length = getattr(getattr(self.dm, "cfg", None), "max_length", None) or 128
        hidden = self.exported_model(key).config.hidden_size
        return sentence_transformers_files(hidden, pooling, max_length, self.normalize[key])


# ---------------------------------------------------------------------------------------------------------------------
# kd-clf's names, and the other configurations


class BaseDistiller(Distiller):
    """Mix-step distillation of one teacher into one student: every adaptor trains at once.

    `adaptors`: names or mappings as in `distill.adaptors` (built against both models' sizes), or a built
    `nn.ModuleList`; default `distill.adaptors`. `dm`: the `ClfDataModule` (its tokenizers tell whether teacher and
    student read the same tokens, and are exported with the student). Other settings as `Distiller`.
    """

    def __init__(
        self, teacher: nn.Module, student: nn.Module, adaptors: list | nn.ModuleList | None = None, dm=None, **kw
    ):
        super().__init__([teacher], [Student("student", student, adaptors)], dm, flat=True, **kw)
        if not len(self.adaptors["student"]):
            raise UserError(f"distill.adaptors: {type(self).__name__} needs at least one adaptor")

    @property
    def teacher(self) -> nn.Module:
        return self.teachers[0]

    @property
    def student(self) -> nn.Module:
        return self.students["student"]

    @property
    def teacher_cache(self) -> TeacherCache | None:
        return self.teacher_caches[0]


class InterDistiller(BaseDistiller):
    """Two-step distillation, step 1: intermediate-layer adaptors only; the prediction layer stays frozen."""

    stages = ("inter",)
    export_best = False  # with the head frozen, validation accuracy does not measure how well the layers fit

    def configure_trainable(self) -> None:
        for _, p in head_parameters(self.student):
            p.requires_grad_(False)


class PredDistiller(BaseDistiller):
    """Two-step distillation, step 2: prediction-layer adaptors (plus `HardCE` if listed).

    By default only the classifier head trains; `distill.train_encoder` (keyword `train_encoder=True`) trains
    everything.
    """

    stages = ("pred",)

    def configure_trainable(self) -> None:
        if not self.distill.train_encoder:
            head = {id(p) for _, p in head_parameters(self.student)}
            for p in self.student.parameters():
                p.requires_grad_(id(p) in head)


class MultiDistiller(Distiller):
    """Mix-step distillation of several students from several teachers at once; each student's scores under
    `val/<key>/...` (and `val/<key>/<set>/...` with several validation sets), their mean under `val/mean/<metric>`."""


class GeneralDistiller(BaseDistiller):
    """General (task-agnostic) distillation of a bare encoder `teacher` into `student` (a bare encoder, or a masked LM
    when `distill.mlm` is set) on unlabelled text: the self-attention relations of MiniLM (arXiv:2002.10957) and
    MiniLMv2 (arXiv:2012.15828), or the hidden states of TinyBERT's general distillation (arXiv:1909.10351).
    Validation is the same loss on held-out windows (`val/loss`, `val/<adaptor key>`, `val/mlm`); the export is the
    student's encoder with `tokenizer`, which also gives the MLM its [MASK] and special ids."""

    stages = ("inter",)
    labelled = False
    run_config = GeneralRunConfig

    def __init__(self, teacher: nn.Module, student: nn.Module, tokenizer, dm=None, **kw):
        super().__init__(teacher, student, None, dm, tokenizer=tokenizer, **kw)


class GeneralMultiDistiller(Distiller):
    """General distillation of several students (bare encoders, or masked LMs with `distill.mlm`) on unlabelled text,
    each with its key; on parallel text (`data.multi.ParallelDataModule`) each student reads its languages (its
    list of views), and students reading other languages than the teacher's are scored by translation retrieval
    (`val/<key>/retrieval/<language>`, ...; see `_log_retrieval`). The cross-lingual set-up of Reimers & Gurevych
    2020 (arXiv:2004.09813) with `SentMSE`: student(translation) ≈ teacher(source), student(source) ≈ teacher(source).
    """

    stages = ("inter",)
    labelled = False
    run_config = GeneralRunConfig
