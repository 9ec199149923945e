"""Build the models of a stage: the student ((a) a Hugging Face name or directory, (b) a config with random init,
(c) cut from the teacher, (d) a BiLSTM) as a classifier, or as a bare encoder or masked LM for general distillation;
and a bare encoder teacher."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from bert.errors import UserError
from bert.families import family_of, get_family
from bert.loading import load_model_config, load_named
from helper.checkpoint import load_classifier
from helper.config import StudentConfig


def build_student(
    cfg: StudentConfig, teacher: nn.Module, teacher_name: str, label_names: list[str], tokenizer=None
) -> nn.Module:
    """The student of `cfg`; `tokenizer` (the teacher's) is needed by a BiLSTM student only."""
    if cfg.name is not None:
        return load_classifier(cfg.name, label_names, cfg.attn_implementation, cfg.dropout)
    if cfg.config is not None:
        return random_student(teacher, cfg)
    if cfg.bilstm is not None:
        return lstm_student(teacher, cfg, label_names, tokenizer)
    src = cfg.init_from_teacher
    source = teacher if src.model is None else load_classifier(src.model, label_names, cfg.attn_implementation)
    return cut_student(source, cfg, src.model or teacher_name)


def _student_config(base_config, cfg: StudentConfig, **overrides):
    config = copy.deepcopy(base_config)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise UserError(f"student.config.{key}: not a field of {type(config).__name__}")
        setattr(config, key, value)
    if cfg.dropout is not None:
        family_of(config).set_dropout(config, cfg.dropout)
    config._attn_implementation = family_of(config).attn_implementation(cfg.attn_implementation)
    return config


def random_student(teacher: nn.Module, cfg: StudentConfig) -> nn.Module:
    """The teacher's architecture and vocabulary with `student.config` overrides, randomly initialised."""
    config = _student_config(teacher.config, cfg, **cfg.config)
    heads, hidden = config.num_attention_heads, config.hidden_size
    if hidden % heads:
        raise UserError(f"student.config: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=config._attn_implementation)


def cut_student(source: nn.Module, cfg: StudentConfig, source_name: str):
    """Copy of `source` as `cfg.init_from_teacher` says: only its encoder `layers` (in that order), narrowed to
    `intermediate_size` FFN neurons when set; everything else (embeddings, pooler, head) is copied too: the teacher's
    head fits the same labels, and a pretrained source's head is freshly initialised."""
    src = cfg.init_from_teacher
    cut = _cut_copy(source, src.layers, src.intermediate_size, source_name)
    # Rebuilt from its config, so that every module follows it (dropout rates), then given the cut weights.
    config = _student_config(cut.config, cfg)
    student = AutoModelForSequenceClassification.from_config(config, attn_implementation=config._attn_implementation)
    student.load_state_dict(cut.state_dict())
    family = get_family(student)
    if not src.embeddings:
        family.embeddings(student).apply(student._init_weights)
    if not src.transformer_blocks:
        family.layers(student).apply(student._init_weights)
    return student


def _cut_copy(source: nn.Module, layers: list[int], intermediate_size: int | None, source_name: str) -> nn.Module:
    """A copy of `source` with only encoder `layers`, its FFNs narrowed to `intermediate_size` neurons when set."""
    family = get_family(source)
    n = len(family.layers(source))
    bad = [i for i in layers if not 0 <= i < n]
    if not layers or bad:
        raise UserError(
            f"student.init_from_teacher.layers: {bad or layers} out of range for {source_name} with {n} layers "
            f"(0..{n - 1})"
        )
    key = "student.init_from_teacher.intermediate_size"
    if intermediate_size is not None and not family.ffn:
        raise UserError(f"{key}: bert/families.py knows no feed-forward blocks of {family.name} ({source_name})")
    if intermediate_size is not None and intermediate_size > family.ffn_size(source):
        width = family.ffn_size(source)
        raise UserError(f"{key}: {intermediate_size} is more than the {width} neurons per layer of {source_name}")
    cut = copy.deepcopy(source)
    family.cut(cut, layers)
    if intermediate_size is not None:
        family.narrow_ffn(cut, intermediate_size)
    return cut


def lstm_student(teacher: nn.Module, cfg: StudentConfig, label_names: list[str], tokenizer) -> nn.Module:
    """A BiLSTM on the teacher's vocabulary: embeddings copied from the teacher's, or read from a word2vec file."""
    from bert.bilstm import bilstm_student, init_from_word2vec

    b = cfg.bilstm
    sizes = {"hidden_size": b.hidden_size, "num_layers": b.num_layers, "mlp_hidden": b.mlp_hidden}
    if cfg.dropout is not None:
        sizes["dropout"] = cfg.dropout
    if b.embedding_dim is not None:
        sizes["embedding_dim"] = b.embedding_dim
    from_teacher = b.word_vectors is None
    if from_teacher and b.embedding_dim not in (None, teacher.config.hidden_size):
        raise UserError(
            f"student.bilstm.embedding_dim: {b.embedding_dim} differs from the teacher's width "
            f"{teacher.config.hidden_size}, whose embeddings are copied; leave it unset or give word_vectors"
        )
    student = bilstm_student(teacher, tokenizer, label_names, teacher_embeddings=from_teacher, **sizes)
    if not from_teacher:
        init_from_word2vec(student, b.word_vectors, tokenizer)
    return student


def load_encoder(name: str, attn_implementation: str = "sdpa", role: str = "teacher", masked_lm: bool = False):
    """The bare encoder (`AutoModel`) of `name`: a pretrained encoder or a classifier's directory (its head dropped);
    with `masked_lm`, the model with its trained masked-LM head (`AutoModelForMaskedLM`; one line if it has none)."""
    config = load_model_config(name)
    impl = family_of(config).attn_implementation(attn_implementation)
    if masked_lm:
        model, info = load_named(
            role, AutoModelForMaskedLM.from_pretrained, name, attn_implementation=impl, output_loading_info=True
        )
        if info["missing_keys"]:
            raise UserError(
                f"{role} {name}: has no trained masked-LM head ({sorted(info['missing_keys'])[0]} is missing); soft "
                "MLM targets need a masked LM such as xlm-roberta-base"
            )
        return model
    model = load_named(role, AutoModel.from_pretrained, name, attn_implementation=impl)
    get_family(model).layers(model)  # one line if it has no attention layers (a BiLSTM)
    return model


def build_encoder_student(cfg: StudentConfig, teacher: nn.Module, teacher_name: str, mlm: bool) -> nn.Module:
    """The student of `cfg` as a bare encoder (`AutoModel`), or as a masked LM (`AutoModelForMaskedLM`) when `mlm`:
    `name` loaded as such, `config` random init, `init_from_teacher` cut from the teacher's (or `model`'s) layers."""
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
    cut = _cut_copy(source, src.layers, src.intermediate_size, src.model or teacher_name)
    config = _student_config(cut.config, cfg)
    student = cls.from_config(config, attn_implementation=config._attn_implementation)
    missing, _ = student.base_model.load_state_dict(cut.state_dict(), strict=False)  # a masked LM has no pooler
    if missing:
        raise UserError(f"student.init_from_teacher: the cut encoder lacks {', '.join(missing[:3])}")
    family = get_family(student)
    if not src.embeddings:
        family.embeddings(student).apply(student._init_weights)
    if not src.transformer_blocks:
        family.layers(student).apply(student._init_weights)
    return student


def train_wordpiece(texts: list[str], vocab_size: int, teacher_tokenizer, where: str = "vocab_size"):
    """A WordPiece tokenizer of `vocab_size` tokens trained on `texts` with the `tokenizers` library: the teacher's
    (fast) tokenizer's normaliser and pre-tokeniser, its special tokens (first, in the order of their teacher ids) and
    its [CLS] x [SEP] template."""
    from tokenizers import Tokenizer, decoders, models, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = teacher_tokenizer
    specials = sorted(set(tok.all_special_tokens), key=tok.convert_tokens_to_ids)
    if vocab_size <= len(specials):
        raise UserError(
            f"{where}: {vocab_size} is not larger than the {len(specials)} special tokens ({', '.join(specials)})"
        )
    if not getattr(tok, "is_fast", False) or tok.cls_token is None or tok.sep_token is None:
        raise UserError(f"{where}: the teacher's tokenizer {tok.name_or_path} is not a fast BERT-style tokenizer")
    backend = tok.backend_tokenizer
    wordpiece = Tokenizer(models.WordPiece(unk_token=tok.unk_token))
    wordpiece.normalizer, wordpiece.pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    wordpiece.train_from_iterator(texts, trainer)
    cls, sep = tok.cls_token, tok.sep_token
    wordpiece.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, wordpiece.token_to_id(cls)), (sep, wordpiece.token_to_id(sep))],
    )
    wordpiece.decoder = decoders.WordPiece()
    names = ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token")
    kwargs = {n: getattr(tok, n) for n in names if getattr(tok, n, None) is not None}
    return PreTrainedTokenizerFast(tokenizer_object=wordpiece, model_max_length=tok.model_max_length, **kwargs)


def adopt_vocabulary(student: nn.Module, tokenizer, teacher_tokenizer) -> int:
    """Give `student` one embedding row per token of `tokenizer`: the row it had for the same token under
    `teacher_tokenizer` where that has it (a student cut from the teacher: the teacher's row), else a fresh random
    one; its masked-LM decoder, tied, follows. Returns how many rows were copied."""
    old = student.get_input_embeddings().weight.detach().clone()
    student.resize_token_embeddings(len(tokenizer))
    emb = student.get_input_embeddings()
    with torch.no_grad():
        emb.weight.normal_(0.0, student.config.initializer_range)
        known = teacher_tokenizer.get_vocab()
        pairs = [(i, known[t]) for t, i in tokenizer.get_vocab().items() if t in known and known[t] < len(old)]
        rows_s, rows_t = (torch.tensor(x, dtype=torch.long) for x in zip(*pairs)) if pairs else ([], [])
        if pairs:
            emb.weight[rows_s] = old[rows_t]
    student.config.pad_token_id = tokenizer.pad_token_id
    return len(pairs)
