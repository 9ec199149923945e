from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from bert.errors import UserError
from helper.config import FinetuneConfig, LoggerConfig, OptimConfig, TrainerConfig
from helper.training import (
    ClipGradNorm,
    GradNorms,
    build_optimizer,
    build_scheduler,
    build_trainer,
    configure_optimizers,
    release_run_dir,
    resolve_resume,
)


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


# ---------------------------------------------------------------------------------------------------------------------
# optim.betas, optim.eps, optim.warmup_epochs, trainer.grad_norm_type, trainer.deterministic


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_betas_and_eps_reach_adam_and_default_to_torchs(name):
    params = [("w", torch.nn.Parameter(torch.zeros(2, 2)))]
    opt = build_optimizer(params, OptimConfig(name=name, betas=[0.8, 0.99], eps=1e-6))
    assert opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["eps"] == 1e-6
    default, torchs = build_optimizer(params, OptimConfig(name=name)).defaults, torch.optim.AdamW([torch.zeros(1)])
    assert (default["betas"], default["eps"]) == (torchs.defaults["betas"], torchs.defaults["eps"])


class Tiny(pl.LightningModule):
    """A linear model on 20 random batches; records the lr and the gradient at each optimiser step (after clipping)."""

    def __init__(self, optim: OptimConfig):
        super().__init__()
        self.optim, self.layer, self.lrs, self.grads = optim, torch.nn.Linear(4, 1), [], []

    def train_dataloader(self):
        torch.manual_seed(0)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(100 * torch.randn(40, 4)), batch_size=2)

    def training_step(self, batch, batch_idx):
        self.log("val/acc", 0.0)  # the monitored metric of the run's checkpoints
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self):
        return configure_optimizers(self, self.named_parameters(), self.optim)

    def on_before_optimizer_step(self, optimizer):  # after the callbacks' (and so after ClipGradNorm)
        self.lrs.append(optimizer.param_groups[0]["lr"])
        self.grads.append(torch.cat([p.grad.flatten() for p in self.parameters()]).clone())


def fit_tiny(tmp_path, optim: OptimConfig, **trainer) -> tuple[pl.Trainer, Tiny]:
    cfg = FinetuneConfig(
        optim=optim,
        trainer=TrainerConfig(accelerator="cpu", devices=1, checkpoint_every_n_steps=None, **trainer),
        logger=LoggerConfig(loggers=["csv"], output_dir=str(tmp_path)),
    )
    module = Tiny(optim)
    trainer_, out, _ = build_trainer(cfg, "tiny")
    try:
        trainer_.fit(module)
    finally:
        release_run_dir(out)
    return trainer_, module


def test_warmup_epochs_are_epochs_of_optimiser_steps(tmp_path):
    # 20 batches an epoch, 2 per step: 10 steps an epoch, 30 in all; 1.5 epochs of warm-up = 15 steps
    optim = OptimConfig(lr=1.0, warmup_ratio=0, warmup_epochs=1.5)
    _, module = fit_tiny(tmp_path, optim, max_epochs=3, accumulate_grad_batches=2)
    lrs = module.lrs
    assert len(lrs) == 30 and lrs[14] == pytest.approx(15 / 16) and lrs.index(max(lrs)) == 15 and max(lrs) == 1.0
    assert all(a < b for a, b in zip(lrs[:15], lrs[1:16])) and all(a > b for a, b in zip(lrs[15:], lrs[16:]))


@pytest.mark.parametrize("p", [1.0, math.inf])
def test_grad_norm_type_is_the_norm_clipped_and_logged(tmp_path, p):
    clip = 0.5
    trainer, module = fit_tiny(
        tmp_path, OptimConfig(), max_epochs=1, gradient_clip_val=clip, grad_norm_type=p, track_grad_norm=True
    )
    assert trainer.gradient_clip_val is None  # Lightning clips the 2-norm only: ClipGradNorm does it
    assert [cb.norm_type for cb in trainer.callbacks if isinstance(cb, (GradNorms, ClipGradNorm))] == [p, p]
    assert all(g.norm(p) <= clip * (1 + 1e-5) for g in module.grads)
    assert module.grads[-1].norm(p) == pytest.approx(clip)  # the last step's gradient was clipped to that p-norm
    assert trainer.logged_metrics["grad_norm/total"] > clip  # and logged before clipping


def test_default_grad_norm_type_leaves_clipping_to_lightning_and_deterministic_reaches_the_trainer(tmp_path):
    cfg = FinetuneConfig(
        trainer=TrainerConfig(accelerator="cpu", gradient_clip_val=1.0, deterministic=True),
        logger=LoggerConfig(loggers=["csv"], output_dir=str(tmp_path)),
    )
    try:
        trainer, out, _ = build_trainer(cfg, "tiny")
        release_run_dir(out)
        assert trainer.gradient_clip_val == 1.0 and not any(isinstance(cb, ClipGradNorm) for cb in trainer.callbacks)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
