from __future__ import annotations

import json
import re
import time

import pytest
import torch
from torch import nn
from transformers import BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from helper.heatmap import attention_figure
from helper.report import TIMING_ROUNDS, WARMUP_CALLS, evaluate, measure_speed, write_report
from tests.conftest import tiny_bert_config

VOCAB = 100


class FixedLogits(nn.Module):
    """Logits looked up by the first token id; no `token_type_ids` argument."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        return SequenceClassifierOutput(logits=self.table[input_ids[:, 0]])


def make_batch(lengths: list[int], labels: list[int], seed: int, student: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (longest - n) for n in lengths])  # (B, T)
    batch = {
        "input_ids": torch.randint(5, VOCAB, (len(lengths), longest), generator=g) * mask,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(mask),
        "labels": torch.tensor(labels),
        "idx": torch.arange(len(lengths)),
    }
    if student:
        batch["student"] = {
            "input_ids": torch.randint(5, VOCAB, (len(lengths), longest), generator=g) * mask,
            "attention_mask": mask,
            "token_type_ids": torch.zeros_like(mask),
        }
    return batch


def eval_batches(n_batches: int = 3, student: bool = False) -> list[dict]:
    return [make_batch([7, 3, 12, 5, 9], [0, 1, 1, 0, 1], seed=i, student=student) for i in range(n_batches)]


def test_evaluate_matches_hand_computed_scores_and_uses_student_inputs():
    table = torch.tensor([[2.0, 1, 0], [0, 2, 1], [0, 2, 0], [1, 3, 0], [0, 0, 1], [1, 0, 0]])
    student_table = torch.cat([table, torch.eye(3)[[0, 0, 1, 1, 2, 2]]])  # ids 6..11: always right
    batches = []
    for ids, labels in (([0, 1, 2, 3], [0, 0, 1, 1]), ([4, 5], [2, 2])):
        ids_t = torch.tensor(ids)[:, None]  # (B, 1)
        batches.append(
            {
                "input_ids": ids_t,
                "attention_mask": torch.ones_like(ids_t),
                "token_type_ids": torch.zeros_like(ids_t),
                "labels": torch.tensor(labels),
                "student": {"input_ids": ids_t + 6, "attention_mask": torch.ones_like(ids_t)},
            }
        )
    # predictions 0 1 1 1 2 0 against labels 0 0 1 1 2 2: per-class F1 1/2, 4/5, 2/3
    scores = evaluate(FixedLogits(table), batches)
    assert scores["acc"] == pytest.approx(4 / 6)
    assert scores["f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert scores["n"] == 6
    student = evaluate(FixedLogits(student_table), batches, key="student")
    assert student["acc"] == pytest.approx(1.0) and student["f1"] == pytest.approx(1.0)


def tiny_teacher_and_student() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "teacher": BertForSequenceClassification(tiny_bert_config(vocab_size=VOCAB)),
        "student": BertForSequenceClassification(tiny_bert_config(vocab_size=VOCAB, num_hidden_layers=1)),
    }


def test_measure_speed_interleaves_and_rebatches_real_examples():
    models = tiny_teacher_and_student()
    seen = []
    for name, model in models.items():
        model.register_forward_pre_hook(
            lambda m, args, kwargs, name=name: seen.append((name, kwargs["attention_mask"])), with_kwargs=True
        )
    speed = measure_speed(models, eval_batches(student=True), n_latency=4, n_throughput=2)
    timed = seen[-12:]  # the last timing round: 4 batch-1 calls, then 2 batch-32 calls
    assert [name for name, _ in timed] == ["teacher", "student"] * 6
    lengths = [7, 3, 12, 5]
    assert [mask.shape for _, mask in timed[:8:2]] == [(1, n) for n in lengths]
    assert all(bool(mask.all()) for _, mask in timed[:8])
    for _, mask in timed[8:]:
        assert mask.shape[0] == 32 and mask.shape[1] == int(mask.sum(1).max())  # padded to the batch's longest
    for figures in speed.values():
        assert figures["latency_ms"] > 0 and figures["throughput"] > 0


def test_measure_speed_does_not_count_a_call_another_process_slowed():
    models = tiny_teacher_and_student()
    batch_32_calls = []

    def stall_first_timed_call(module, args, kwargs):
        if kwargs["attention_mask"].shape[0] == 32:
            batch_32_calls.append(1)
            if len(batch_32_calls) == WARMUP_CALLS + 1:
                time.sleep(0.5)  # as if the machine were busy with something else

    models["teacher"].register_forward_pre_hook(stall_first_timed_call, with_kwargs=True)
    speed = measure_speed(models, eval_batches(student=True), n_latency=2, n_throughput=2)
    assert len(batch_32_calls) == WARMUP_CALLS + 2 * TIMING_ROUNDS
    assert speed["teacher"]["throughput"] > 64 / 0.25  # 64 examples: counted with the stall, it would be < 128/s


def save_models(tmp_path, teacher, student):
    teacher.save_pretrained(tmp_path / "teacher")
    student.save_pretrained(tmp_path / "student")
    return tmp_path / "teacher", tmp_path / "student"


def test_write_report_files_and_summary(tmp_path):
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(vocab_size=VOCAB))
    student = BertForSequenceClassification(
        tiny_bert_config(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    t_dir, s_dir = save_models(tmp_path, teacher, student)
    out = tmp_path / "run" / "report"  # does not exist yet
    summary = write_report(
        teacher, student, t_dir, s_dir, eval_batches(), "validation", out, n_latency=3, n_throughput=1
    )

    png = (out / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert summary in md and "validation" in md and "| teacher | student |" in md
    assert report["summary"] == summary and report["split"] == "validation" and report["n_examples"] == 15

    match = re.fullmatch(r"student keeps (\S+)% of teacher accuracy at (\S+)x throughput, (\S+)x size", summary)
    assert match is not None
    t, s, ratio = report["teacher"], report["student"], report["ratio"]
    assert float(match[1]) == pytest.approx(100 * s["acc"] / t["acc"], abs=0.05)
    assert float(match[2]) == pytest.approx(s["throughput"] / t["throughput"], abs=0.05)
    assert float(match[3]) == pytest.approx(ratio["model_bytes"], abs=0.005)
    assert ratio["model_bytes"] == pytest.approx(s["model_bytes"] / t["model_bytes"]) and ratio["model_bytes"] < 1
    assert t["params"] == sum(p.numel() for p in teacher.parameters())
    assert t["model_bytes"] == (t_dir / "model.safetensors").stat().st_size
    assert t["dir_bytes"] > t["model_bytes"]  # config.json too


def test_write_report_distilbert_student_in_bf16_with_own_tokenizer(tmp_path):
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(vocab_size=VOCAB))
    config_s = DistilBertConfig(
        vocab_size=VOCAB, dim=16, n_layers=1, n_heads=2, hidden_dim=24, max_position_embeddings=64
    )
    student = DistilBertForSequenceClassification(config_s)
    t_dir, s_dir = save_models(tmp_path, teacher, student)
    student.to(torch.bfloat16)  # as left by bf16 training
    batches = eval_batches(student=True)  # token_type_ids everywhere, which DistilBERT does not accept
    summary = write_report(
        teacher, student, t_dir, s_dir, batches, "test", tmp_path / "out", n_latency=2, n_throughput=1
    )
    assert summary.startswith("student keeps")
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in student.parameters())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["student"]["acc"] == pytest.approx(evaluate(student, batches, key="student")["acc"])


def test_attention_figure_axes_and_token_labels():
    tokens_t = ["[CLS]", "the", "film", "rocks", "[SEP]"]
    tokens_s = ["[CLS]", "the", "movie", "[SEP]"]
    attn_t = torch.softmax(torch.randn(4, 7, 7), -1)  # (h, T, T), padded beyond the 5 tokens
    attn_s = torch.softmax(torch.randn(2, 4, 4), -1)
    fig = attention_figure(attn_t, attn_s, tokens_t, tokens_s, title="layer 2 vs 1")
    ax_t, ax_s = fig.axes
    assert [t.get_text() for t in ax_t.get_xticklabels()] == tokens_t
    assert [t.get_text() for t in ax_s.get_yticklabels()] == tokens_s
    assert ax_t.images[0].get_array().shape == (5, 5)
    one_head = attention_figure(attn_t, attn_t, tokens_t, head=1)
    torch.testing.assert_close(torch.as_tensor(one_head.axes[1].images[0].get_array().data), attn_t[1, :5, :5])
