"""Task-agnostic ("general") distillation: a bare encoder student learns a bare encoder teacher's self-attention
relations (MiniLM, arXiv:2002.10957; MiniLMv2, arXiv:2012.15828) or hidden states (TinyBERT's general distillation,
arXiv:1909.10351) on unlabelled text, optionally with a masked-LM loss. The export is an encoder directory that
`finetune.py model.name=<dir>` fine-tunes (a fresh classification head is added).

Teacher handling as in `BaseDistiller`: frozen, eval mode, `no_grad`, unregistered (out of the optimiser and the
checkpoints), on the student's device and dtype; its features are cached per training window (`TeacherCache`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, AutoModelForMaskedLM

from bert.errors import UserError
from bert.families import check_features, check_max_length, family_of, get_family, model_inputs
from bert.features import Features, ModelDims, merge_requests
from bert.loading import load_model_config, load_named, load_tokenizer, resolve_model_path
from bert.recorder import FeatureRecorder
from helper.adaptors import ADAPTORS, build_adaptors
from helper.config import OptimConfig, StudentConfig
from helper.general_config import GeneralDistillConfig, GeneralRunConfig
from helper.students import _student_config
from helper.teacher_cache import TeacherCache
from helper.training import configure_optimizers, export_module

STAGE = "distill_general"


def allowed_adaptors() -> list[str]:
    """Registered adaptors general distillation can train: intermediate-layer ones (no logits, no labels)."""
    return sorted(name for name, cls in ADAPTORS.items() if cls.stage == "inter")


def check_adaptor_names(specs: list) -> None:
    """One line naming the adaptors that need logits or labels (a classifier), and the allowed ones."""
    names = [spec if isinstance(spec, str) else spec.get("name") for spec in specs]
    wrong = [n for n in names if n in ADAPTORS and ADAPTORS[n].stage != "inter"]
    if wrong:
        raise UserError(
            f"distill.adaptors: {', '.join(wrong)} need logits or labels, which general distillation (bare encoders, "
            f"unlabelled text) has not; allowed: {', '.join(allowed_adaptors())}"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Models


def load_encoder(name: str, attn_implementation: str = "sdpa", role: str = "teacher") -> nn.Module:
    """The bare encoder (`AutoModel`) of `name`: a pretrained encoder or a classifier's directory (its head dropped)."""
    config = load_model_config(name)
    impl = family_of(config).attn_implementation(attn_implementation)
    model = load_named(role, AutoModel.from_pretrained, name, attn_implementation=impl)
    get_family(model).layers(model)  # one line if it has no attention layers (a BiLSTM)
    return model


def build_encoder_student(cfg: StudentConfig, teacher: nn.Module, teacher_name: str, mlm: bool) -> nn.Module:
    """The student of `cfg` as a bare encoder (`AutoModel`), or as a masked LM (`AutoModelForMaskedLM`) when `mlm`.

    `name`: loaded as such; `config`: the teacher's config with these changes, random init; `init_from_teacher`: cut
    from the teacher's (or `init_from_teacher.model`'s) layers. A BiLSTM student has no layers to distil into."""
    chosen = [k for k in StudentConfig.ONE_OF if getattr(cfg, k) is not None]
    if len(chosen) != 1:
        raise UserError(
            f"student: set exactly one of name, config, init_from_teacher (got {', '.join(chosen) or 'none'}); "
            "set the others to null"
        )
    if cfg.bilstm is not None:
        raise UserError("student.bilstm: general distillation trains an encoder; use name, config or init_from_teacher")
    cls = AutoModelForMaskedLM if mlm else AutoModel
    if cfg.name is not None:
        config = _student_config(load_model_config(cfg.name), cfg)
        return load_named("student", cls.from_pretrained, cfg.name, config=config)
    if cfg.config is not None:
        config = _student_config(teacher.config, cfg, **cfg.config)
        heads, hidden = config.num_attention_heads, config.hidden_size
        if hidden % heads:
            raise UserError(f"student.config: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
        return cls.from_config(config, attn_implementation=config._attn_implementation)
    src = cfg.init_from_teacher
    source = teacher if src.model is None else load_encoder(src.model, cfg.attn_implementation, "model")
    family = get_family(source)
    n = len(family.layers(source))
    bad = [i for i in src.layers if not 0 <= i < n]
    if bad:
        raise UserError(
            f"student.init_from_teacher.layers: {bad} out of range for {src.model or teacher_name} with {n} layers "
            f"(0..{n - 1})"
        )
    cut = copy.deepcopy(source)
    family.cut(cut, src.layers)
    config = _student_config(cut.config, cfg)
    student = cls.from_config(config, attn_implementation=config._attn_implementation)
    missing, _ = student.base_model.load_state_dict(cut.state_dict(), strict=False)  # a masked LM has no pooler
    if missing:
        raise UserError(f"student.init_from_teacher: the cut encoder lacks {', '.join(missing[:3])}")
    if not src.embeddings:
        family.embeddings(student).apply(student._init_weights)
    return student


def encoder_of(model: nn.Module) -> nn.Module:
    """The bare encoder inside a masked LM (the model itself when it is one)."""
    base = getattr(model, "base_model", model)
    return base if base is not model else model


# ---------------------------------------------------------------------------------------------------------------------
# Masking


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
    positions, -100 elsewhere)."""
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


# ---------------------------------------------------------------------------------------------------------------------


class GeneralDistiller(pl.LightningModule):
    """General distillation of a bare encoder `teacher` into `student` (a bare encoder, or a masked LM when
    `distill.mlm` is set): `sum(weight * adaptor loss) [+ mlm.weight * MLM loss]` on unlabelled windows.

    Validation is the same loss on held-out windows (`val/loss`, and `val/<adaptor key>`, `val/mlm`), the teacher
    running live. `tokenizer` is exported with the student's encoder and gives the MLM its [MASK] and special ids.
    """

    export_best = True  # the lowest val/loss

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        tokenizer,
        *,
        distill: GeneralDistillConfig | None = None,
        optim: OptimConfig | None = None,
    ):
        super().__init__()
        self.distill = distill or GeneralDistillConfig()
        self.optim = optim or GeneralRunConfig().optim
        self.__dict__["tokenizer"] = tokenizer
        check_adaptor_names(self.distill.adaptors)
        try:
            adaptors = build_adaptors(self.distill.adaptors, ModelDims.of(teacher.config), ModelDims.of(student.config))
        except UserError as err:
            raise UserError(f"distill.{err}") from None
        requests = [a.request() for a in adaptors]
        wanting_logits = [a.key for a, r in zip(adaptors, requests) if "logits" in r[0] or "logits" in r[1]]
        if wanting_logits:
            raise UserError(
                f"distill.adaptors: {', '.join(wanting_logits)} need logits, which bare encoders have not; "
                f"allowed: {', '.join(allowed_adaptors())}"
            )
        self.mlm = self.distill.mlm
        if self.mlm is not None:
            if getattr(student, "get_output_embeddings", lambda: None)() is None:
                raise UserError(f"distill.mlm: the student {type(student).__name__} has no masked-LM head")
            if tokenizer.mask_token_id is None:
                raise UserError(f"distill.mlm: tokenizer {tokenizer.name_or_path} has no mask token")
            self.register_buffer("_special", torch.tensor(sorted(set(tokenizer.all_special_ids))), persistent=False)
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)
        self.student = student.train()
        self.adaptors = adaptors
        request_t = merge_requests(*(r[0] for r in requests))
        request_s = merge_requests(*(r[1] for r in requests))
        check_features(teacher, request_t, "teacher")
        check_features(student, request_s, "student")
        self.rec_t = FeatureRecorder(teacher, request_t)
        self.rec_s = FeatureRecorder(student, request_s)
        self.teacher_cache = TeacherCache(self.distill.cache_max_mb) if self.distill.cache_teacher else None

    # -- setup ------------------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        return configure_optimizers(self, [(n, p) for n, p in self.named_parameters() if p.requires_grad], self.optim)

    def _place_teacher(self) -> None:
        self.teacher.to(device=self.device, dtype=next(self.student.parameters()).dtype).eval()

    def on_fit_start(self) -> None:
        self._place_teacher()

    def on_validation_start(self) -> None:
        self._place_teacher()

    # -- losses -----------------------------------------------------------------------------------------------------
    def teacher_features(self, batch: dict, cached: bool) -> Features:
        with torch.no_grad():
            if not cached or self.teacher_cache is None:
                return self.rec_t(**model_inputs(batch, self.teacher))[1]
            dtype = next(self.teacher.parameters()).dtype
            return self.teacher_cache.features(batch, lambda **inputs: self.rec_t(**inputs)[1], dtype)

    def losses(self, batch: dict, cached: bool, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Each adaptor's unweighted loss by key, `mlm` when on, and `loss`: the weighted total."""
        feats_t = self.teacher_features(batch, cached)
        _, feats_s = self.rec_s(**model_inputs(batch, self.student))
        out, total = {}, 0.0
        for adaptor in self.adaptors:
            out[adaptor.key] = adaptor(feats_t, feats_s)
            total = total + adaptor.weight * out[adaptor.key]
        if self.mlm is not None:
            out["mlm"] = self.mlm_loss(batch, generator)
            total = total + self.mlm.weight * out["mlm"]
        out["loss"] = total
        return out

    def mlm_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Cross-entropy of the student's predictions at the masked positions (a second, masked, student pass)."""
        tok = self.tokenizer
        inputs = model_inputs(batch, self.student)
        inputs["input_ids"], labels = mask_tokens(
            inputs["input_ids"],
            batch["attention_mask"],
            self._special,
            tok.mask_token_id,
            self.student.config.vocab_size,
            self.mlm.probability,
            generator,
        )
        logits = self.student(**inputs).logits  # (B, T, V)
        if not bool((labels != -100).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)

    # -- steps ------------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.losses(batch, cached=True)
        n = len(batch["idx"])
        for key, value in out.items():
            self.log(f"train/{key}", value, prog_bar=key == "loss", batch_size=n)
        if self.teacher_cache is not None:
            self.log("train/teacher_cache_hit_rate", self.teacher_cache.hit_rate)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = None
        if self.mlm is not None:  # the same masks at every validation
            generator = torch.Generator().manual_seed(batch_idx)
        out = self.losses(batch, cached=False, generator=generator)
        n = len(batch["idx"])
        for key, value in out.items():
            self.log(f"val/{key}", value, prog_bar=key == "loss", batch_size=n)

    # -- export -----------------------------------------------------------------------------------------------------
    def export(self, out_dir: str | Path, tokenizer=None) -> Path:
        """The student's encoder (without an MLM head) as a Hugging Face directory with the tokenizer: the weights of
        the best checkpoint (lowest val/loss) when the run has one."""
        return export_module(self, encoder_of(self.student), tokenizer or self.tokenizer, out_dir)


# ---------------------------------------------------------------------------------------------------------------------


def run_general(cfg: GeneralRunConfig) -> dict:
    """General distillation of `cfg.teacher` into the student on `cfg.data`; export to `<run dir>/student`."""
    from data.text import TextDataModule
    from helper.stages import check_vocab, fit_and_export

    if cfg.trainer.monitor != "val/loss":
        raise UserError(f"trainer.monitor: {cfg.trainer.monitor} needs labels; general distillation monitors val/loss")
    if cfg.student.tokenizer is not None:
        raise UserError("student.tokenizer: general distillation compares tokens; the student uses the teacher's")
    check_adaptor_names(cfg.distill.adaptors)
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # a random-init student and projections too
    tokenizer = load_tokenizer(cfg.teacher.tokenizer or cfg.teacher.name)
    dm = TextDataModule(cfg.data, tokenizer)
    dm.setup("fit")
    teacher = load_encoder(cfg.teacher.name, cfg.teacher.attn_implementation)
    check_max_length(cfg.data.max_length, teacher.config, "teacher", cfg.teacher.name)
    student = build_encoder_student(cfg.student, teacher, cfg.teacher.name, cfg.distill.mlm is not None)
    check_max_length(cfg.data.max_length, student.config, "student", cfg.student.name or "the student")
    check_vocab(tokenizer, teacher, "teacher")
    check_vocab(tokenizer, student, "student")
    module = GeneralDistiller(teacher, student, tokenizer, distill=cfg.distill, optim=cfg.optim)
    n_train, n_val = (len(dm.datasets[s]) for s in ("train", "validation"))
    print(
        f"general distillation: {len(dm.texts['train'])} texts -> {n_train} windows (train), "
        f"{len(dm.texts['validation'])} -> {n_val} (validation); teacher {resolve_model_path(cfg.teacher.name)}"
    )
    metrics, _, _ = fit_and_export(cfg, STAGE, module, dm, "student", "student")
    return metrics
