from __future__ import annotations

import pytest
import torch

from bert.errors import UserError
from helper.config import OptimConfig
from helper.training import build_optimizer, build_scheduler, resolve_resume


def lrs(schedule: str, total: int = 100, warmup_ratio: float = 0.1) -> list[float]:
    cfg = OptimConfig(lr=1.0, schedule=schedule, warmup_ratio=warmup_ratio)
    opt = build_optimizer([("w", torch.nn.Parameter(torch.zeros(1)))], cfg)
    sched = build_scheduler(opt, cfg, total)["scheduler"]
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_warmup_then_decay_to_zero_over_the_real_step_count(schedule):
    lr = lrs(schedule)
    assert lr[0] < lr[5] < lr[10]  # warm-up over the first 10 of 100 steps
    assert max(lr) == pytest.approx(1.0, abs=0.02)
    assert lr[-1] < 0.02  # decayed to ~0 at the last step, not at some other horizon
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))


def test_no_weight_decay_on_bias_and_layernorm():
    model = torch.nn.Sequential()
    model.add_module("dense", torch.nn.Linear(2, 2))
    model.add_module("LayerNorm", torch.nn.LayerNorm(2))
    for name in ("adamw", "adam", "sgd"):
        opt = build_optimizer(model.named_parameters(), OptimConfig(name=name, weight_decay=0.1))
        decay, no_decay = opt.param_groups
        assert decay["weight_decay"] == 0.1 and [p.shape for p in decay["params"]] == [(2, 2)]
        assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3


def test_frozen_model_is_an_error():
    p = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    with pytest.raises(UserError, match="nothing to train"):
        build_optimizer([("w", p)], OptimConfig())


def test_resume_needs_an_existing_checkpoint(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    with pytest.raises(UserError, match="trainer.resume: no checkpoint at .*last.ckpt"):
        resolve_resume("last", tmp_path)
    (tmp_path / "last.ckpt").write_bytes(b"x")
    assert resolve_resume("last", tmp_path) == str(tmp_path / "last.ckpt")


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_adam_uses_the_fused_kernel_and_matches_the_reference(name):
    torch.manual_seed(0)
    ref, fused = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    fused.load_state_dict(ref.state_dict())
    cfg = OptimConfig(name=name, lr=0.1, weight_decay=0.1)
    opt = build_optimizer(fused.named_parameters(), cfg)
    assert opt.defaults["fused"] is True
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    opt_ref = cls([{"params": [ref.weight], "weight_decay": 0.1}, {"params": [ref.bias], "weight_decay": 0.0}], lr=0.1)
    x = torch.randn(8, 4)
    for _ in range(3):
        for model, o in ((ref, opt_ref), (fused, opt)):
            o.zero_grad()
            model(x).square().sum().backward()
            o.step()
    torch.testing.assert_close(fused.weight, ref.weight)
    torch.testing.assert_close(fused.bias, ref.bias)
