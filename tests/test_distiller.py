"""The distillation Lightning modules on tiny models: what trains, the frozen teacher, its feature cache, heatmaps."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from transformers import AutoTokenizer, BertForMaskedLM, BertForSequenceClassification, BertModel

from bert.errors import UserError
from bert.families import model_inputs
from bert.features import TOKEN_AXES, ModelDims
from data.config import TextDataConfig
from data.data_module import ClfDataModule, Collator
from data.multi import ParallelDataModule
from helper.adaptors import build_adaptors, scheduled
from helper.config import DataConfig, GeneralDistillConfig, InitFromConfig, MLMConfig, OptimConfig, StudentConfig
from helper.distiller import (
    BaseDistiller,
    GeneralMultiDistiller,
    InterDistiller,
    PredDistiller,
    Student,
    Teacher,
    head_parameters,
    mask_tokens,
)
from helper.heatmap import AttentionHeatmap
from helper.metrics import retrieval_accuracy
from helper.students import build_student
from tests.conftest import tiny_bert_config

LABELS = ["neg", "pos"]


def data_module(clf_csv, tokenizer, student_tokenizer=None) -> ClfDataModule:
    cfg = DataConfig(
        source="csv", train=clf_csv["train"], validation=clf_csv["validation"], batch_size=8, max_length=16,
        cache_dir=None,
    )  # fmt: skip
    dm = ClfDataModule(cfg, tokenizer, student_tokenizer)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def dm(clf_csv, tokenizer) -> ClfDataModule:
    return data_module(clf_csv, tokenizer)


def make(cls: type[BaseDistiller], adaptors: list, **kwargs) -> BaseDistiller:
    """A 3-layer teacher and a student cut from its layers 0 and 2, both hidden 32."""
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=3)).eval()
    student = build_student(StudentConfig(init_from_teacher=InitFromConfig(layers=[0, 2])), teacher, "t", LABELS)
    built = build_adaptors(adaptors, ModelDims.of(teacher.config), ModelDims.of(student.config))
    return cls(teacher, student, built, optim=OptimConfig(lr=1e-3, warmup_ratio=0.0), **kwargs)


def fit(distiller: BaseDistiller, dm: ClfDataModule, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip
    trainer.fit(distiller, datamodule=dm)
    return trainer


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}


CASES = {
    "base": (BaseDistiller, ["AttnMiniLM", "ValMiniLM", "LogitMSE"], {}),
    "inter": (InterDistiller, ["AttnMiniLM", "ValMiniLM", "HidnTinyBERT"], {}),
    "pred": (PredDistiller, ["LogitMSE", {"name": "HardCE", "weight": 0.5}], {}),
    "pred_train_encoder": (PredDistiller, ["LogitKL"], {"train_encoder": True}),
}


@pytest.mark.parametrize("case", CASES)
def test_fast_dev_run_trains_what_each_distiller_should(case, dm):
    cls, adaptors, kwargs = CASES[case]
    distiller = make(cls, adaptors, **kwargs)
    teacher, student = distiller.teacher, distiller.student
    before_t, before_s = snapshot(teacher), snapshot(student)
    trainer = fit(distiller, dm, fast_dev_run=True)

    assert "train/loss" in trainer.callback_metrics and "teacher/val/acc" in trainer.callback_metrics
    # the teacher: frozen, in eval mode, outside the optimiser and the module's state
    assert not changed(before_t, teacher) and not teacher.training
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert not [k for k in distiller.state_dict() if k.startswith("teacher")]

    head = {n for n, _ in head_parameters(student)}
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= head
    moved = changed(before_s, student)
    encoder = {n for n in before_s if n.startswith("bert.encoder.")}
    if cls is InterDistiller:
        assert not moved & head and moved & encoder
    elif cls is PredDistiller and not kwargs:
        assert moved == head  # encoder and embeddings bit-identical
    else:
        assert {id(p) for p in student.parameters()} <= optimised
        assert "classifier.weight" in moved and moved & encoder and "bert.embeddings.word_embeddings.weight" in moved


def test_wrong_stage_adaptor_is_one_line_user_error():
    with pytest.raises(UserError, match=r"LogitMSE cannot train in InterDistiller") as err:
        make(InterDistiller, ["AttnMiniLM", "LogitMSE"])
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"AttnMiniLM cannot train in PredDistiller") as err:
        make(PredDistiller, ["AttnMiniLM"])
    assert "\n" not in str(err.value)


class EpochLog(pl.Callback):
    """Per epoch: cumulative cache hits/misses, the teacher's training forwards, the order of training examples."""

    def __init__(self, teacher: torch.nn.Module):
        self.hits, self.misses, self.calls, self.order = [], [], [], []
        self._calls = 0
        teacher.register_forward_hook(self._count)
        self._trainer: pl.Trainer | None = None

    def _count(self, *_):
        if self._trainer is not None and self._trainer.training:
            self._calls += 1

    def on_train_epoch_start(self, trainer, pl_module):
        self._trainer, self._calls = trainer, 0
        self.order.append([])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.order[-1] += batch["idx"].tolist()

    def on_train_epoch_end(self, trainer, pl_module):
        self.hits.append(pl_module.teacher_cache.hits)
        self.misses.append(pl_module.teacher_cache.misses)
        self.calls.append(self._calls)


@pytest.mark.parametrize(
    ("cls", "adaptors"), [(PredDistiller, ["LogitMSE"]), (BaseDistiller, ["AttnMiniLM", "ValMiniLM", "LogitMSE"])]
)
def test_teacher_features_are_cached_per_example_from_the_second_epoch(cls, adaptors, dm, tokenizer):
    distiller = make(cls, adaptors)
    log = EpochLog(distiller.teacher)
    fit(distiller, dm, max_epochs=2, limit_val_batches=0, callbacks=[log])

    n = len(dm.datasets["train"])
    assert log.misses == [n, n] and log.hits == [0, n]  # cumulative: epoch 1 all misses, epoch 2 all hits
    assert log.calls[0] > 0 and log.calls[1] == 0
    assert sorted(log.order[0]) == list(range(n)) and log.order[0] != log.order[1] != list(range(n))  # shuffled
    train = dm.datasets["train"]
    fresh = distiller.teacher(**model_inputs(Collator(tokenizer.pad_token_id)([train[i] for i in range(n)]))).logits
    cached = torch.stack([distiller.teacher_cache.rows[i]["logits", None] for i in range(n)])  # (N, C)
    torch.testing.assert_close(cached, fresh.detach(), rtol=1e-5, atol=1e-5)


def test_teacher_cache_stays_float32_under_bf16_true(dm):
    distiller = make(PredDistiller, ["LogitMSE"])
    fit(distiller, dm, fast_dev_run=True, precision="bf16-true")
    assert {row["logits", None].dtype for row in distiller.teacher_cache.rows.values()} == {torch.float32}
    assert next(distiller.teacher.parameters()).dtype == torch.bfloat16  # placed like the student


def test_hard_labels_alone_never_run_the_teacher(dm):
    distiller = make(PredDistiller, ["HardCE"])
    calls = []
    distiller.teacher.register_forward_hook(lambda *_: calls.append(1))
    feats_t = distiller.teacher_features(next(iter(dm.train_dataloader())))
    assert feats_t == [None] and not calls


def test_cache_is_off_when_asked_or_when_the_teacher_gives_nothing():
    assert make(BaseDistiller, ["AttnMiniLM", "LogitMSE"]).teacher_cache is not None
    assert make(PredDistiller, ["LogitMSE"], cache_teacher=False).teacher_cache is None
    assert make(PredDistiller, ["HardCE"]).teacher_cache is None


@pytest.mark.parametrize("adaptor", ["AttnMiniLM", "LogitMSE"])
def test_teacher_tensors_can_meet_student_tensors_in_backward(adaptor, dm):
    cls = InterDistiller if adaptor == "AttnMiniLM" else PredDistiller
    distiller = make(cls, [adaptor])
    batch = next(iter(dm.train_dataloader()))
    feats_t = distiller.teacher_features(batch)[0]
    _, feats_s = distiller.rec_s["student"](**distiller.student_inputs(batch))
    distiller.adaptors["student"][0](feats_t, feats_s).backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.parameters())


def test_inference_mode_teacher_tensors_would_break_backward(dm):
    """Why the teacher runs under no_grad and not inference_mode: AttnMiniLM multiplies by the teacher's attention,
    which autograd would have to save, and inference tensors cannot be saved for backward."""
    distiller = make(InterDistiller, ["AttnMiniLM"])
    batch = next(iter(dm.train_dataloader()))
    with torch.inference_mode():
        feats_inf = distiller.rec_t[0](**model_inputs(batch))[1]
    _, feats_s = distiller.rec_s["student"](**distiller.student_inputs(batch))
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        distiller.adaptors["student"][0](feats_inf, feats_s).backward()


def test_two_tokenizers_with_sentence_level_adaptors(clf_csv, tokenizer, other_tokenizer_dir):
    tok_s = AutoTokenizer.from_pretrained(other_tokenizer_dir)
    dm = data_module(clf_csv, tokenizer, tok_s)
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch)

    distiller = make(BaseDistiller, ["LogitKL", "HidnPKD"], dm=dm)
    fit(distiller, dm, fast_dev_run=True, callbacks=[Spy()])
    batch = seen[0]
    assert batch["student"]["input_ids"].max() < len(tok_s)
    assert batch["student"]["input_ids"].shape != batch["input_ids"].shape


def test_attention_heatmap_never_stops_training(tmp_path, clf_csv, tokenizer, other_tokenizer_dir, recwarn):
    tok_s = AutoTokenizer.from_pretrained(other_tokenizer_dir)
    dm = data_module(clf_csv, tokenizer, tok_s)
    distiller = make(PredDistiller, ["LogitMSE"], dm=dm)
    heatmap = AttentionHeatmap(tmp_path)
    fit(distiller, dm, max_epochs=1, limit_train_batches=1, limit_val_batches=1, callbacks=[heatmap])
    assert len(list(tmp_path.glob("*.png"))) == 1  # teacher and student sequences of different lengths
    assert set(heatmap.example) >= {"input_ids", "attention_mask", "student"}

    heatmap.example["input_ids"] = heatmap.example["input_ids"][:, :0]  # broken: the callback must only warn
    fit(distiller, dm, max_epochs=1, limit_train_batches=1, limit_val_batches=1, callbacks=[heatmap])
    assert any("attention heatmap skipped" in str(w.message) for w in recwarn)


# Every feature the recorder gives, through the adaptors that read it.
EVERY_FEATURE = [
    "AttnMiniLM", "ValMiniLM", "QQMiniLMv2", "KKMiniLMv2", "AttnTinyBERT", "HidnTinyBERT", "EmbdTinyBERT", "HidnPKD",
    "CosHidden", "LogitKL",
]  # fmt: skip


def regrouped(train, tokenizer, extra: int) -> list[dict]:
    """Training batches formed differently from the data module's (5 examples, longest first), padded `extra` more."""
    order = sorted(range(len(train)), key=lambda i: -len(train[i]["input_ids"]))
    batches = [Collator(tokenizer.pad_token_id)([train[i] for i in order[j : j + 5]]) for j in range(0, len(train), 5)]
    for batch in batches:
        for key, value in (("input_ids", tokenizer.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            batch[key] = torch.nn.functional.pad(batch[key], (0, extra), value=value)  # (B, T + extra)
    return batches


def test_cached_features_give_the_losses_of_fresh_ones_for_any_padding(dm, tokenizer):
    distiller = make(BaseDistiller, EVERY_FEATURE)
    calls = []
    distiller.teacher.register_forward_hook(lambda *_: calls.append(1))
    for batch in dm.train_dataloader():
        distiller.teacher_features(batch)[0]
    cache, n = distiller.teacher_cache, len(dm.datasets["train"])
    assert (cache.hits, cache.misses, len(cache.rows)) == (0, n, n)
    row = cache.rows[0]
    assert row["attentions", 2].dtype == torch.float16 and row["values", 2].dtype == torch.bfloat16
    assert row["logits", None].dtype == torch.float32
    length = len(dm.datasets["train"][0]["input_ids"])
    assert row["attentions", 2].shape == (4, length, length) and row["hidden_states", 0].shape == (length, 32)

    before = len(calls)
    for batch in regrouped(dm.datasets["train"], tokenizer, extra=3):
        cached = distiller.teacher_features(batch)[0]
        assert len(calls) == before  # no teacher forward on a full hit
        fresh = distiller.rec_t[0](**model_inputs(batch))[1]
        before = len(calls)
        _, feats_s = distiller.rec_s["student"](**distiller.student_inputs(batch))
        for adaptor in distiller.adaptors["student"]:
            expected = adaptor(fresh, feats_s, batch["labels"])
            torch.testing.assert_close(adaptor(cached, feats_s, batch["labels"]), expected, rtol=2e-2, atol=1e-3)
        pad_keys = ~batch["attention_mask"].bool()[:, None, None, :]  # (B, 1, 1, T)
        for layer, attn in cached.attentions.items():
            assert attn.shape == fresh.attentions[layer].shape and attn.dtype == torch.float32
            assert not attn.masked_select(pad_keys).any() and not fresh.attentions[layer].masked_select(pad_keys).any()
    assert cache.hits == n


def test_cache_respects_its_memory_bound_and_the_teacher_covers_the_rest(dm):
    full = make(BaseDistiller, ["AttnMiniLM", "LogitMSE"])
    for batch in dm.train_dataloader():
        full.teacher_features(batch)[0]
    n = len(dm.datasets["train"])
    budget_mb = full.teacher_cache.nbytes * 0.4 / 2**20  # about 40% of the examples

    distiller = make(BaseDistiller, ["AttnMiniLM", "LogitMSE"], cache_max_mb=budget_mb)
    log = EpochLog(distiller.teacher)
    with pytest.warns(UserWarning, match="teacher cache full"):
        fit(distiller, dm, max_epochs=2, limit_val_batches=0, callbacks=[log])
    cache = distiller.teacher_cache
    assert cache.full and 0 < len(cache.rows) < n and cache.nbytes <= cache.max_bytes
    assert log.hits == [0, len(cache.rows)] and log.misses == [n, 2 * n - len(cache.rows)]
    assert log.calls[1] > 0  # the examples left out still run through the teacher
    for i, row in cache.rows.items():  # what is kept is the teacher's own output
        torch.testing.assert_close(row["logits", None], full.teacher_cache.rows[i]["logits", None])


def test_training_logs_only_the_steps_the_loggers_write(tmp_path, dm):
    from pytorch_lightning.loggers import CSVLogger

    distiller = make(BaseDistiller, ["AttnMiniLM", "LogitMSE"])
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=CSVLogger(tmp_path), log_every_n_steps=3, max_steps=8,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(distiller, datamodule=dm)
    rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header, rows = rows[0].split(","), [dict(zip(rows[0].split(","), r.split(","))) for r in rows[1:]]
    keys = ["train/AttnMiniLM", "train/LogitMSE", "train/loss", "train/teacher_cache_hit_rate"]
    assert set(keys) <= set(header)
    logged = [r for r in rows if r["train/loss"]]
    assert [int(r["step"]) for r in logged] == [2, 5]  # every 3rd step, as Lightning writes them
    assert all(r[k] for r in logged for k in keys)
    assert "train/AttnMiniLM" in trainer.callback_metrics


def test_batches_move_to_the_device_except_idx(dm):
    distiller = make(BaseDistiller, ["LogitMSE"])
    batch = next(iter(dm.train_dataloader()))
    batch["student"] = {"input_ids": batch["input_ids"]}
    assert distiller.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch  # nothing to move
    moved = distiller.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved["idx"].device.type == "cpu"  # read by the teacher cache with tolist()
    assert moved["input_ids"].is_meta and moved["labels"].is_meta and moved["student"]["input_ids"].is_meta


def test_cache_assembly_equals_row_by_row_padding(dm):
    from helper.teacher_cache import TeacherCache

    distiller = make(BaseDistiller, EVERY_FEATURE)
    batch = next(iter(dm.train_dataloader()))
    distiller.teacher_features(batch)[0]
    rows = [distiller.teacher_cache.rows[i] for i in batch["idx"].tolist()]
    mask = torch.nn.functional.pad(batch["attention_mask"], (0, 2))  # padded 2 more than any row
    feats = TeacherCache._assemble(rows, mask, torch.float32)
    for (name, layer), x in feats.entries().items():
        first = rows[0][name, layer]
        expected = first.new_zeros(len(rows), *[mask.shape[1] if a in TOKEN_AXES[name] else s
                                                for a, s in enumerate(first.shape)])  # fmt: skip
        for out_b, row in zip(expected, rows):  # the reference: one copy per row
            out_b[tuple(map(slice, row[name, layer].shape))] = row[name, layer]
        assert torch.equal(x, expected.float()), (name, layer)


@pytest.mark.parametrize("sanity", [0, 1])
def test_teacher_is_scored_on_the_validation_set_once_after_a_sanity_check(dm, sanity):
    distiller = make(BaseDistiller, ["HardCE"])  # the teacher runs for validation only
    calls = []
    distiller.teacher.register_forward_hook(lambda *_: calls.append(1))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=sanity, max_epochs=2, limit_train_batches=1,
    )  # fmt: skip
    trainer.fit(distiller, datamodule=dm)
    batches = list(dm.val_dataloader())
    assert len(calls) == len(batches) > sanity  # not in the sanity check, not after the first validation
    with torch.no_grad():
        right = sum(int((distiller.teacher(**model_inputs(b)).logits.argmax(-1) == b["labels"]).sum()) for b in batches)
    expected = right / sum(len(b["labels"]) for b in batches)
    assert float(trainer.callback_metrics["teacher/val/acc"]) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------------------------------
# Students reading several languages of parallel text (GeneralMultiDistiller)


def test_multilingual_student_teacher_once_per_sentence_and_retrieval_by_hand(parallel_text, tokenizer):
    cfg = TextDataConfig(source="parallel", text_column="en", text_files=parallel_text, batch_size=8, cache_dir=None,
                         max_length=16)  # fmt: skip
    dm = ParallelDataModule(cfg, {"en": (tokenizer, "en"), "de": (tokenizer, "de"), "fr": (tokenizer, "fr")})
    dm.setup("fit")
    torch.manual_seed(0)
    teacher, student = BertModel(tiny_bert_config()), BertModel(tiny_bert_config(num_hidden_layers=1))
    distiller = GeneralMultiDistiller(
        [Teacher(teacher, view="en", pooling="mean")],
        [Student("s", student, ["SentMSE", {"name": "SentCos", "languages": ["de"]}], ["en", "de", "fr"], "mean")],
        dm,
        lr=1e-3,
    )
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(distiller, dm)
    cache = distiller.teacher_caches[0]
    assert len(cache.rows) == 24 and (cache.misses, cache.hits) == (24, 24)  # one entry per English sentence
    metrics = {k: float(v) for k, v in trainer.validate(distiller, dm, verbose=False)[0].items()}
    assert {"val/s/SentMSE/en", "val/s/SentMSE/fr", "val/s/SentCos/de"} <= set(metrics)
    assert "val/s/SentCos/fr" not in metrics

    def mean_pooled(model, lang):
        enc = tokenizer(dm.texts["validation"][lang], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model.eval()(**enc).last_hidden_state  # (N, T, H)
        mask = enc["attention_mask"][..., None]  # (N, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1)

    teacher_en, student_en = mean_pooled(teacher, "en"), mean_pooled(student, "en")
    assert metrics["teacher/val/retrieval/de"] == pytest.approx(
        retrieval_accuracy(mean_pooled(teacher, "de"), teacher_en)[0]
    )
    forward, backward = retrieval_accuracy(mean_pooled(student, "fr"), student_en)  # the student's own English side
    assert (metrics["val/s/retrieval/fr"], metrics["val/s/retrieval_rev/fr"]) == pytest.approx((forward, backward))
    mse = torch.nn.functional.mse_loss(mean_pooled(student, "de"), teacher_en).item()
    assert metrics["val/s/mse/de"] == pytest.approx(mse, rel=1e-4)


def test_mlm_soft_targets_weights_and_schedules(parallel_text, tokenizer):
    cfg = TextDataConfig(source="parallel", text_column="en", text_files=parallel_text, batch_size=8, cache_dir=None,
                         max_length=16)  # fmt: skip
    dm = ParallelDataModule(cfg, {"en": (tokenizer, "en"), "de": (tokenizer, "de")})
    dm.setup("fit")
    torch.manual_seed(0)
    teacher, student = BertForMaskedLM(tiny_bert_config()), BertForMaskedLM(tiny_bert_config(num_hidden_layers=1))
    sched = {"weight": {"to": 0.0, "kind": "cosine"}}
    mlm = MLMConfig(weight=0.3, probability=0.5, soft_weight=0.7, temperature=2.0)
    distiller = GeneralMultiDistiller(
        [Teacher(teacher, view="en", pooling="mean")],
        [Student("s", student, [{"name": "SentMSE", "weight": 2.0, "schedule": sched}], ["en", "de"], "mean")],
        dm,
        distill=GeneralDistillConfig(mlm=mlm),
    )
    batch = next(iter(dm.val_dataloader()))
    losses, total = distiller.losses(batch, cached=False, generator=torch.Generator().manual_seed(0))
    parts = [
        2.0 * losses[f"s/SentMSE/{x}"] + 0.3 * losses[f"s/mlm/{x}"] + 0.7 * losses[f"s/mlm_soft/{x}"]
        for x in ("en", "de")
    ]
    assert total.item() == pytest.approx(sum(parts).item())
    # the soft targets by hand: the same masks (same generator), the teacher reading the student's masked tokens
    inputs = {k: v for k, v in batch["views"]["de"].items() if k != "token_type_ids"}
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    ids, labels = mask_tokens(inputs["input_ids"], inputs["attention_mask"], special, tokenizer.mask_token_id,
                              tokenizer.vocab_size, 0.5, torch.Generator().manual_seed(0))  # fmt: skip
    chosen = labels != -100
    student.eval()  # no dropout, so that the student's pass can be repeated by hand
    hard, soft = distiller.mlm_loss(batch, "s", torch.Generator().manual_seed(0), "de")
    with torch.no_grad():
        z_t = teacher(input_ids=ids, attention_mask=inputs["attention_mask"]).logits[chosen] / 2.0  # (N, V)
        z_s = student(input_ids=ids, attention_mask=inputs["attention_mask"]).logits[chosen] / 2.0  # (N, V)
    p_t = z_t.softmax(-1)
    by_hand = 4.0 * (p_t * (p_t.log() - z_s.log_softmax(-1))).sum(-1).mean()
    assert soft.item() == pytest.approx(by_hand.item(), rel=1e-4) and hard.item() > 0
    # the cosine weight schedule reaches its end value at the last step
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(distiller, dm)
    assert distiller.adaptors["s"][0].weight == pytest.approx(0.0, abs=1e-9)
    assert [scheduled(2.0, 0.0, kind, 0.25) for kind in ("constant", "linear", "cosine")] == pytest.approx(
        [2.0, 1.5, 1 + math.cos(math.pi / 4)]
    )
    with pytest.raises(UserError, match=r"schedule.temperature: SentMSE can schedule only weight"):
        GeneralMultiDistiller([Teacher(teacher, view="en")], [Student("s", student, [{"name": "SentMSE", "schedule": {
            "temperature": {"to": 1}}}], ["en", "de"])], dm)  # fmt: skip
    with pytest.raises(UserError, match=r"mlm.soft_weight: the teacher BertModel has no masked-LM head"):
        GeneralMultiDistiller([Teacher(BertModel(tiny_bert_config()), view="en")], [Student("s", student, ["SentMSE"],
            ["en", "de"])], dm, distill=GeneralDistillConfig(mlm=mlm))  # fmt: skip
