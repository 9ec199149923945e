"""The distiller's cost per training step over a hand-written loop doing the same work, in two settings.

Equal work (the default): a `BaseDistiller` step against minimal hand-written loops, on MiniLM-sized models.
Setup: adaptors [AttnMiniLM, ValMiniLM, LogitMSE]; teacher all-MiniLM-L6-v2 (the fine-tuned runs/sst2_teacher/model when
present); students cut from the teacher (layers 1,5 and 1,3,5); 8 fixed batches of 32 real SST-2 train sentences padded
to 64 tokens, used in turn; AdamW + linear schedule of configs/distillation_ms.yaml. Each variant has its own teacher,
student and optimiser; every step is a full one (teacher forward, student forward, losses, backward, optimiser step):
  lightning: `BaseDistiller` driven by a minimal `Trainer` (no logger, checkpoint or progress bar; `self.log` runs).
             Its time is the whole loop iteration (fetch, hooks, closure, scheduler), minus the other variants' steps.
  module:    `BaseDistiller.training_step` called by hand, then backward and step (no Trainer: `self.log` is a no-op).
  hand:      a plain loop computing the same losses: teacher (eager attention, output_attentions) under no_grad, student
             eager with output_attentions, values taken from the value Linear by a forward hook, the same KL and MSE
             formulas, the same optimiser and schedule. The baseline the targets refer to.
  hand-sdpa: the same loop with sdpa attention, the last layer's probabilities computed by hand from the query and key
             Linears' outputs (as the distiller's recorder does): equal kernels, so ours/hand-sdpa is the pure overhead.
The distiller's teacher cache is off in lightning and module (equal work: the teacher runs every step). One more
variant, module-cache (module with the cache on: from the 9th step on every example is cached and the teacher is
skipped), times what the cache saves; it is not part of the targets nor of the memory runs.
Time: the variants take turns step by step inside the Lightning run (the order rotates every round); medians after a
warm-up. Memory: each variant runs again in a fresh subprocess; the peak-RSS counter is reset (/proc/self/clear_refs)
just before its first step, and the growth = peak RSS during the steps - RSS before them; medians of --memory-repeats
processes per variant. Before timing, every code path computes the loss of one batch in eval mode; they must agree.

Run: .venv/bin/python benchmarks/bench_overhead.py [--rounds N] [--warmup N] [--memory-steps N] [--tiny]

Framework cost per step (`--framework`; formerly bench_step_overhead.py), in milliseconds, on a model so small that
kernels cost almost nothing: teacher a random BERT of hidden 32, 2 layers, 4 heads (`common.tiny_model_dir`); student
cut from its layers 0 and 1 (sdpa); the same adaptors, optimiser and schedule; 8 fixed batches of 8 SST-2 train
sentences padded to each batch's longest (as the collator does), with `idx`; 8 x 32 tokens keep the kernels cheap, so
that what is left is the per-step Python work. Variants, taking turns as above:
  trainer:   `BaseDistiller` under the Trainer the stages build (`helper.training.build_trainer`: CSV logger,
             LearningRateMonitor, checkpoint callbacks, `log_every_n_steps` 10), progress bar removed (--bar keeps it,
             writing to /dev/null). Its time is the whole loop iteration (fetch, transfer, hooks, closure, logging,
             optimiser, scheduler) minus the other variants' steps run inside it;
  module:    as above;
  hand:      the hand-sdpa loop above.
Two runs: teacher cache off (the teacher runs every step: equal work), and on (from the 9th step every example is
cached; the hand loop then keeps its own teacher outputs per batch, already padded: the ideal cache). The overhead is
median(trainer) - median(hand) in ms per step; target <= 1 ms. `--profile` prints cProfile's top functions of the
trainer's steps instead of timing.

Run: .venv/bin/python benchmarks/bench_overhead.py --framework [--rounds N] [--repeats N] [--bar] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import math
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.callbacks import ProgressBar  # noqa: E402

from benchmarks.common import (  # noqa: E402
    BATCH,
    MAX_LEN,
    OPTIM,
    ROOT,
    add_threads,
    bare_trainer,
    loadavg,
    quiet,
    save_result,
    set_threads,
    sst2_batches,
    teacher_source,
    tiny_model_dir,
    turns,
)
from helper.config import DistillationRunConfig, InitFromConfig, StudentConfig  # noqa: E402
from helper.distiller import BaseDistiller  # noqa: E402
from helper.students import cut_student  # noqa: E402
from helper.training import build_optimizer, build_scheduler, build_trainer  # noqa: E402

ADAPTORS = ["AttnMiniLM", "ValMiniLM", "LogitMSE"]
VARIANTS = ("lightning", "module", "hand", "hand-sdpa", "module-cache")
OURS, BASELINES = ("lightning", "module"), ("hand", "hand-sdpa")
MEMORY_VARIANTS = [*OURS, *BASELINES]
N_BATCHES = 8
FRAMEWORK_LAYERS, FRAMEWORK_BATCH, FRAMEWORK_MAX_LEN = [0, 1], 8, 32
FRAMEWORK_TARGET_MS = 1.0
RESULTS = ROOT / "benchmarks" / "results"


# -- models and data --------------------------------------------------------------------------------------------------
def models(path: str, layers: list[int], attn: str):
    """A frozen teacher and a student cut from it (its layers `layers`), both with attention kernel `attn`."""
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation=attn)
    teacher.eval().requires_grad_(False)
    cfg = StudentConfig(init_from_teacher=InitFromConfig(layers=layers), attn_implementation=attn)
    student = cut_student(teacher, cfg, path)
    return teacher, student.requires_grad_(True).train()


def schedule(optimizer, total_steps: int):
    return build_scheduler(optimizer, OPTIM, total_steps)["scheduler"]


def make_distiller(path: str, layers: list[int], cache: bool = False) -> BaseDistiller:
    """The distiller with the teacher cache off (equal work: the teacher runs every step) or on."""
    teacher, student = models(path, layers, "sdpa")
    return BaseDistiller(teacher, student, ADAPTORS, optim=OPTIM, cache_teacher=cache)


# -- the hand-written baseline ----------------------------------------------------------------------------------------
def _row_kl(logp_t: torch.Tensor, logp_s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over valid keys, averaged over valid query rows and heads. (B, h, T, T)."""
    kl = torch.where(valid[:, None, None, :], logp_t.exp() * (logp_t - logp_s), 0).sum(-1)  # (B, h, T)
    return torch.where(valid[:, None, :], kl, 0).sum() / (valid.sum() * kl.shape[1]).clamp_min(1)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, T, H) -> (B, h, T, d)


def _log_relation(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log softmax(a·bᵀ/√d) over valid keys. a, b: (B, h, T, d) -> (B, h, T, T)."""
    scores = a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1])  # (B, h, T, T)
    return scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min).log_softmax(-1)


class HandLoop:
    """The same three losses, written out, on the last layer of each model (layer_map "last").

    attn="eager": attention probabilities from `output_attentions`; attn="sdpa": softmax(q·kᵀ/√d) from the query and
    key Linears' outputs. Values from the value Linear. Linear outputs are taken by forward hooks.
    """

    def __init__(self, path: str, layers: list[int], total_steps: int, attn: str = "eager"):
        self.eager = attn == "eager"
        self.teacher, self.student = models(path, layers, attn)
        self.heads = self.teacher.config.num_attention_heads
        self.out: dict[tuple[str, str], torch.Tensor] = {}
        for m, model in (("t", self.teacher), ("s", self.student)):
            attention = model.base_model.encoder.layer[-1].attention.self
            for name in ("value",) if self.eager else ("query", "key", "value"):
                hook = lambda mod, args, out, key=(m, name): self.out.__setitem__(key, out)  # noqa: E731
                getattr(attention, name).register_forward_hook(hook)
        self.optimizer = build_optimizer(self.student.named_parameters(), OPTIM)
        self.scheduler = schedule(self.optimizer, total_steps)

    def loss(self, batch: dict) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        with torch.no_grad():
            out_t = self.teacher(**inputs, output_attentions=self.eager)
        out_s = self.student(**inputs, output_attentions=self.eager)
        valid = batch["attention_mask"].bool()  # (B, T)
        x = {key: _split_heads(out, self.heads) for key, out in self.out.items()}  # each (B, h, T, d)
        self.out.clear()
        if self.eager:
            tiny = torch.finfo(out_s.logits.dtype).tiny
            logp_t, logp_s = (o.attentions[-1].clamp_min(tiny).log() for o in (out_t, out_s))  # (B, h, T, T)
        else:
            logp_t, logp_s = (_log_relation(x[m, "query"], x[m, "key"], valid) for m in "ts")  # (B, h, T, T)
        attn = _row_kl(logp_t, logp_s, valid)
        val = _row_kl(*(_log_relation(x[m, "value"], x[m, "value"], valid) for m in "ts"), valid)
        return attn + val + F.mse_loss(out_s.logits, out_t.logits)

    def step(self, batch: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(batch).backward()
        self.optimizer.step()
        self.scheduler.step()


class CachedHandLoop(HandLoop):
    """The sdpa hand loop keeping the teacher's outputs of each fixed batch (keyed by its first `idx`)."""

    def __init__(self, path: str, layers: list[int], total_steps: int):
        super().__init__(path, layers, total_steps, attn="sdpa")
        self.memo: dict[int, tuple[dict, torch.Tensor]] = {}

    def loss(self, batch: dict) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        key = int(batch["idx"][0])
        if key not in self.memo:
            with torch.no_grad():
                logits_t = self.teacher(**inputs).logits
            self.memo[key] = ({k: v for k, v in self.out.items() if k[0] == "t"}, logits_t)
            self.out.clear()
        out_t, logits_t = self.memo[key]
        out_s = self.student(**inputs)
        valid = batch["attention_mask"].bool()  # (B, T)
        x = {k: _split_heads(v, self.heads) for k, v in (out_t | self.out).items()}  # each (B, h, T, d)
        self.out.clear()
        logp_t, logp_s = (_log_relation(x[m, "query"], x[m, "key"], valid) for m in "ts")  # (B, h, T, T)
        attn = _row_kl(logp_t, logp_s, valid)
        val = _row_kl(*(_log_relation(x[m, "value"], x[m, "value"], valid) for m in "ts"), valid)
        return attn + val + torch.nn.functional.mse_loss(out_s.logits, logits_t)


class ModuleLoop:
    """`BaseDistiller.training_step` called by hand (no Trainer), with the optimiser and schedule Lightning uses."""

    def __init__(self, path: str, layers: list[int], total_steps: int, cache: bool = False):
        self.distiller = make_distiller(path, layers, cache)
        self.optimizer = build_optimizer(self.distiller.trainable_parameters(), OPTIM)
        self.scheduler = schedule(self.optimizer, total_steps)
        self.i = 0

    def step(self, batch: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.distiller.training_step(batch, self.i).backward()
        self.optimizer.step()
        self.scheduler.step()
        self.i += 1


# -- timing -----------------------------------------------------------------------------------------------------------
def loader(batches: list[dict], steps: int) -> DataLoader:
    """`steps` ready batches, cycling through `batches`, in order."""
    return DataLoader([batches[i % len(batches)] for i in range(steps)], batch_size=None, shuffle=False)


class Interleave(pl.Callback):
    """Runs the other variants' steps around each Lightning step (order rotating every round) and times every step.

    A Lightning step spans from the start of one loop iteration to the start of the next, minus the other variants'
    steps run inside it; it is timed under `name`. Each other variant has a `step(batch)`.
    """

    def __init__(self, others: dict[str, object], warmup: int, rounds: int, name: str = "trainer"):
        self.others, self.warmup, self.rounds, self.name = others, warmup, rounds, name
        self.names = [name, *others]
        self.times: dict[str, list[float]] = {v: [] for v in self.names}
        self._mark: float | None = None
        self._inside = 0.0

    def _run(self, names: list[str], batch: dict, timed: bool) -> None:
        for name in names:
            start = time.perf_counter()
            self.others[name].step(batch)
            if timed:
                self.times[name].append(time.perf_counter() - start)

    def _order(self, i: int) -> tuple[list[str], list[str]]:
        order = turns(self.names, i)
        cut = order.index(self.name)
        return order[:cut], order[cut + 1 :]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._mark is not None and batch_idx - 1 >= self.warmup:
            self.times[self.name].append(now - self._mark - self._inside)
        self._inside = 0.0
        if batch_idx < self.warmup + self.rounds:  # the last batch only closes the previous measurement
            self._run(self._order(batch_idx)[0], batch, batch_idx >= self.warmup)
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        start = time.perf_counter()
        if batch_idx < self.warmup + self.rounds:
            self._run(self._order(batch_idx)[1], batch, batch_idx >= self.warmup)
        self._inside = time.perf_counter() - start


def time_steps(
    distiller: BaseDistiller, others: dict, trainer, batches: list[dict], warmup: int, rounds: int, name: str
) -> dict[str, list[float]]:
    """Seconds of every timed step of each variant: `distiller` fitted under `trainer(callbacks, steps)` (a Trainer
    factory), timed as `name`, the `others` taking turns with it step by step."""
    steps = warmup + rounds + 1
    callback = Interleave(others, warmup, rounds, name)
    trainer([callback], steps).fit(distiller, train_dataloaders=loader(batches, steps))
    return callback.times


def time_variants(path: str, layers: list[int], batches: list[dict], warmup: int, rounds: int) -> dict:
    steps = warmup + rounds + 1
    distiller = make_distiller(path, layers)
    others = {v: make_loop(v, path, layers, steps) for v in VARIANTS if v != "lightning"}
    check = loss_check(distiller, {v: others[v] for v in BASELINES}, batches[0])
    bare = lambda callbacks, steps: bare_trainer(callbacks, max_steps=steps)  # noqa: E731
    times = time_steps(distiller, others, bare, batches, warmup, rounds, "lightning")
    med = {v: statistics.median(t) for v, t in times.items()}
    return {
        "median_s": {v: round(med[v], 4) for v in VARIANTS},
        "min_s": {v: round(min(times[v]), 4) for v in VARIANTS},
        "time_ratio": {f"{v}/{b}": round(med[v] / med[b], 3) for b in BASELINES for v in OURS}
        | {"module-cache/module": round(med["module-cache"] / med["module"], 3)},
        "loss_check": check,
    }


def make_loop(variant: str, path: str, layers: list[int], total_steps: int) -> ModuleLoop | HandLoop:
    if variant.startswith("module"):
        return ModuleLoop(path, layers, total_steps, cache=variant == "module-cache")
    return HandLoop(path, layers, total_steps, attn="sdpa" if variant == "hand-sdpa" else "eager")


def loss_check(distiller: BaseDistiller, hands: dict[str, HandLoop], batch: dict) -> dict:
    """Loss of `batch` by every code path, students in eval mode (no dropout); they must agree."""
    students = [distiller.student, *(h.student for h in hands.values())]
    for student in students:
        student.eval()
    with torch.no_grad():
        losses = {"distiller": float(distiller.losses(batch)[1])}  # the loss training_step minimises, unlogged
        losses |= {name: float(hand.loss(batch)) for name, hand in hands.items()}
    for student in students:
        student.train()
    for name, value in losses.items():
        if not math.isclose(value, losses["distiller"], rel_tol=1e-3, abs_tol=1e-5):
            raise RuntimeError(f"{name} does not compute the distiller's loss: {value} vs {losses['distiller']}")
    return {name: round(value, 6) for name, value in losses.items()}


# -- memory -----------------------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak RSS over the training steps: VmHWM, reset now and again after the first step (ru_maxrss, never reset, where
    the kernel refuses: growth is then a lower bound)."""

    def __init__(self):
        self.resettable = _reset_peak()
        self.base_kb = _status_kb("VmRSS")
        self.first_peak_kb = 0
        self.steady_base_kb: int | None = None

    def _peak_kb(self) -> int:
        return _status_kb("VmHWM") if self.resettable else resource.getrusage(resource.RUSAGE_SELF)[2]

    def after_first_step(self) -> None:
        """The first step allocates the optimiser state (and whatever is created lazily); later steps only reuse."""
        self.first_peak_kb = self._peak_kb()
        if self.resettable and _reset_peak():
            self.steady_base_kb = _status_kb("VmRSS")

    def result(self) -> dict:
        """growth: peak RSS over all steps - RSS before them; steady: peak over steps 2.. - RSS after step 1 (MiB)."""
        last = self._peak_kb()
        peak = max(last, self.first_peak_kb)
        out = {"growth_mb": round((peak - self.base_kb) / 1024, 1), "peak_mb": round(peak / 1024, 1)}
        if self.steady_base_kb is not None:
            out["steady_growth_mb"] = round((last - self.steady_base_kb) / 1024, 1)
        out["method"] = "VmHWM reset by /proc/self/clear_refs" if self.resettable else "ru_maxrss (lower bound)"
        return out


class MemoryProbe(pl.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.peak = PeakRSS()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.peak.after_first_step()


def child_memory(variant: str, path: str, layers: list[int], steps: int) -> dict:
    """Peak RSS growth of `steps` training steps of one variant (run in a fresh process)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    batches = sst2_batches(tokenizer, N_BATCHES, BATCH, MAX_LEN, "max_length")
    if variant == "lightning":
        probe = MemoryProbe()
        bare_trainer([probe], max_steps=steps).fit(
            make_distiller(path, layers), train_dataloaders=loader(batches, steps)
        )
        return probe.peak.result()
    loop = make_loop(variant, path, layers, steps)
    peak = PeakRSS()
    for i in range(steps):
        loop.step(batches[i % len(batches)])
        if i == 0:
            peak.after_first_step()
    return peak.result()


def measure_memory(path: str, layers: list[int], steps: int, threads: int, repeats: int) -> dict:
    """Each variant `repeats` times, one fresh process at a time (the order rotates); medians."""
    runs: dict[str, list[dict]] = {v: [] for v in MEMORY_VARIANTS}
    for r in range(repeats):
        for variant in turns(MEMORY_VARIANTS, r):
            cmd = [sys.executable, __file__, "--child", variant, "--teacher", path, "--threads", str(threads)]
            cmd += ["--students", ",".join(map(str, layers)), "--memory-steps", str(steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode:
                raise RuntimeError(f"memory child {variant} failed:\n{proc.stderr[-3000:]}")
            runs[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    keys = [k for k in ("growth_mb", "steady_growth_mb", "peak_mb") if k in runs["hand"][0]]
    per_variant = {
        v: {k: statistics.median(r[k] for r in rs) for k in keys} | {"growth_mb_runs": [r["growth_mb"] for r in rs]}
        for v, rs in runs.items()
    }
    out = {"method": runs["hand"][0]["method"], "steps": steps, "repeats": repeats, "per_variant": per_variant}
    for key in keys[:2]:
        mb = {v: p[key] for v, p in per_variant.items()}
        out[key.replace("_mb", "_ratio")] = {f"{v}/{b}": round(mb[v] / mb[b], 3) for b in BASELINES for v in OURS}
    return out


# -- framework cost per step (--framework) -----------------------------------------------------------------------------
def stage_trainer(callbacks: list, steps: int, out: Path, bar: bool) -> pl.Trainer:
    """The Trainer `distillation_ms.py` builds (CSV log, no wandb), stopping after `steps`, with no validation."""
    cfg = DistillationRunConfig()
    cfg.logger.output_dir, cfg.logger.loggers = str(out), ["csv"]
    cfg.trainer.max_steps, cfg.trainer.max_epochs, cfg.trainer.limit_val_batches = steps, 1, 0
    cfg.trainer.accelerator = "cpu"
    trainer, _, _ = build_trainer(cfg, "step_overhead", callbacks)
    if not bar:
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ProgressBar)]
    return trainer


def time_run(path: str, batches: list[dict], cache: bool, bar: bool, warmup: int, rounds: int, tmp: Path) -> dict:
    steps = warmup + rounds + 1
    layers = FRAMEWORK_LAYERS
    distiller = make_distiller(path, layers, cache=cache)
    hand = CachedHandLoop(path, layers, steps) if cache else HandLoop(path, layers, steps, attn="sdpa")
    others = {"module": ModuleLoop(path, layers, steps, cache=cache), "hand": hand}
    check = None if cache else loss_check(distiller, {"hand": hand}, batches[0])
    out = tmp / f"run_cache{int(cache)}_bar{int(bar)}"
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        times = time_steps(
            distiller, others, partial(stage_trainer, out=out, bar=bar), batches, warmup, rounds, "trainer"
        )
    med = {v: statistics.median(t) * 1e3 for v, t in times.items()}
    return {
        "median_ms": {v: round(m, 3) for v, m in med.items()},
        "min_ms": {v: round(min(t) * 1e3, 3) for v, t in times.items()},
        "overhead_ms": {f"{v}-hand": round(med[v] - med["hand"], 3) for v in ("trainer", "module")},
        "ratio": {f"{v}/hand": round(med[v] / med["hand"], 3) for v in ("trainer", "module")},
        "loss_check": check,
    }


def profile_trainer(path: str, batches: list[dict], cache: bool, steps: int, tmp: Path, top: int) -> str:
    """cProfile of `steps` Trainer steps after 20 warm-up steps (the fit's set-up and tear-down excluded)."""

    class Window(pl.Callback):
        def __init__(self):
            self.prof = cProfile.Profile()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 20:
                self.prof.enable()
            if batch_idx == 20 + steps:
                self.prof.disable()

    window = Window()
    trainer = stage_trainer([window], steps + 21, tmp / "profile", bar=False)
    trainer.fit(make_distiller(path, FRAMEWORK_LAYERS, cache=cache), train_dataloaders=loader(batches, steps + 21))
    text = io.StringIO()
    pstats.Stats(window.prof, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def framework(args) -> dict:
    """ms per step of the trainer, the module and the hand loop, cache off and on (and with the progress bar)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tiny_model_dir(tmp / "tiny")
        tokenizer = AutoTokenizer.from_pretrained(path)
        batches = sst2_batches(tokenizer, args.batches, FRAMEWORK_BATCH, FRAMEWORK_MAX_LEN, "longest")
        if args.profile:
            for cache in (False, True):
                print(f"--- cache {'on' if cache else 'off'}: {args.profile} steps")
                print(profile_trainer(path, batches, cache, args.profile, tmp, 35))
            return {}
        load_before = loadavg()
        settings = [("cache off", False, False), ("cache on", True, False)]
        if args.bar:
            settings += [("cache off, progress bar", False, True), ("cache on, progress bar", True, True)]
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in settings}
        for r in range(args.repeats):
            for name, cache, bar in settings:
                runs[name].append(time_run(path, batches, cache, bar, args.warmup, args.rounds, tmp / str(r)))
        result = {
            "what": "ms per training step of BaseDistiller under the stages' Trainer, minus a hand loop with the same "
            "losses and kernels; tiny BERT (hidden 32, 2 layers, 4 heads), student cut from layers 0,1, "
            f"{args.batches} batches of {FRAMEWORK_BATCH} SST-2 sentences padded to their longest "
            f"(<= {FRAMEWORK_MAX_LEN} tokens); "
            "median over rounds, then median over repeats",
            "label": args.label,
            "adaptors": ADAPTORS,
            "optim": OPTIM.name,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "threads": args.threads,
            "settings": {},
        }
        for name, rs in runs.items():

            def med(key: str, sub: str, rs: list[dict] = rs) -> float:
                return round(statistics.median(r[key][sub] for r in rs), 3)

            summary = {
                "median_ms": {v: med("median_ms", v) for v in rs[0]["median_ms"]},
                "overhead_ms": {k: med("overhead_ms", k) for k in rs[0]["overhead_ms"]},
                "ratio": {k: med("ratio", k) for k in rs[0]["ratio"]},
                "overhead_ms_runs": [r["overhead_ms"]["trainer-hand"] for r in rs],
                "loss_check": rs[0]["loss_check"],
            }
            result["settings"][name] = summary
            print(
                f"{name:<26} trainer {summary['median_ms']['trainer']:7.2f} ms  module "
                f"{summary['median_ms']['module']:7.2f}  hand {summary['median_ms']['hand']:7.2f}  "
                f"trainer-hand {summary['overhead_ms']['trainer-hand']:+6.2f} ms (runs {summary['overhead_ms_runs']})  "
                f"module-hand {summary['overhead_ms']['module-hand']:+6.2f}"
            )
        worst = max(s["overhead_ms"]["trainer-hand"] for s in result["settings"].values())
        result["targets"] = {"overhead_ms_max": FRAMEWORK_TARGET_MS, "met": worst <= FRAMEWORK_TARGET_MS}
    save_result(args.out, result, load_before)
    return result


# -- main -------------------------------------------------------------------------------------------------------------
def parse_layers(spec: str) -> list[int]:
    return [int(i) for i in spec.split(",")]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--framework", action="store_true", help="framework cost per step on a tiny model (see above)")
    parser.add_argument("--rounds", type=int, help="timed rounds; each runs every variant once (default 20; 200)")
    parser.add_argument("--warmup", type=int, help="untimed rounds (default 8, which fills the cache; 20)")
    add_threads(parser, when_none="torch's; 1 with --tiny or --framework")
    parser.add_argument("--label", default="", help="a note stored in the JSON (e.g. before/after)")
    parser.add_argument("--out", type=Path, help="default: results/overhead.json; results/step_overhead.json")
    equal = parser.add_argument_group("equal work (without --framework)")
    equal.add_argument("--memory-steps", type=int, default=5, help="steps per memory subprocess (0: no memory)")
    equal.add_argument("--memory-repeats", type=int, default=3, help="memory subprocesses per variant (median)")
    equal.add_argument("--students", nargs="+", help="teacher layers kept, per student (default: 1,5 1,3,5)")
    equal.add_argument("--teacher", help="teacher directory (default: runs/sst2_teacher/model, else the MiniLM)")
    equal.add_argument("--tiny", action="store_true", help="smoke run: a random BERT of hidden 32 and 2 layers")
    equal.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    per_step = parser.add_argument_group("framework cost per step (--framework)")
    per_step.add_argument("--repeats", type=int, default=3, help="runs per setting; the figures are their medians")
    per_step.add_argument("--bar", action="store_true", help="also time the trainer with its progress bar")
    per_step.add_argument("--batches", type=int, default=N_BATCHES, help="fixed batches used in turn")
    per_step.add_argument("--profile", type=int, metavar="STEPS", help="profile STEPS trainer steps, print the top")
    args = parser.parse_args(argv)
    defaults = {"rounds": 200, "warmup": 20, "out": RESULTS / "step_overhead.json"} if args.framework else {
        "rounds": 20, "warmup": N_BATCHES, "out": RESULTS / "overhead.json"
    }  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    quiet()
    args.threads = set_threads(args.threads or (1 if args.tiny or args.framework else None))
    if args.framework:
        return framework(args)
    args.students = args.students or (["1", "0,1"] if args.tiny else ["1,5", "1,3,5"])
    if args.child:
        print(json.dumps(child_memory(args.child, args.teacher, parse_layers(args.students[0]), args.memory_steps)))
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_model_dir(Path(tmp)) if args.tiny else args.teacher or teacher_source()[0]
        batches = sst2_batches(AutoTokenizer.from_pretrained(path), N_BATCHES, BATCH, MAX_LEN, "max_length")
        load_before = loadavg()
        result = {
            "what": "one distillation training step (teacher fwd, student fwd+bwd, AdamW step) at equal work; "
            "median seconds per step; memory = peak RSS growth over the steps, one fresh process per variant; "
            "teacher cache off except in module-cache",
            "teacher": "tiny random BERT" if args.tiny else path,
            "adaptors": ADAPTORS,
            "data": f"{N_BATCHES} batches of {BATCH} SST-2 train sentences padded to {MAX_LEN}",
            "label": args.label,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "students": {},
        }
        for spec in args.students:
            layers = parse_layers(spec)
            name = f"{len(layers)}-layer [{spec}]"
            res = time_variants(path, layers, batches, args.warmup, args.rounds)
            if args.memory_steps:
                res["memory"] = measure_memory(path, layers, args.memory_steps, args.threads, args.memory_repeats)
            result["students"][name] = res
            print_rows(name, res)
    worst_time = max(r["time_ratio"]["lightning/hand"] for r in result["students"].values())
    result["targets"] = {"time_ratio_max": 1.05, "memory_ratio_max": 1.10, "time_met": worst_time <= 1.05}
    if args.memory_steps:
        worst_mem = max(r["memory"]["growth_ratio"]["lightning/hand"] for r in result["students"].values())
        result["targets"]["memory_met"] = worst_mem <= 1.10
    save_result(args.out, result, load_before)
    return result


def print_rows(name: str, res: dict) -> None:
    print(f"\n{name}: loss check {res['loss_check']}")
    mem = res.get("memory", {}).get("per_variant")
    print(f"{'variant':<12} {'median s':>9} {'min s':>7} {'/hand':>7} {'/hand-sdpa':>10}", end="")
    print(f" {'RSS growth MiB':>15} {'/hand':>7} {'/hand-sdpa':>10} {'steady MiB':>11}" if mem else "")
    for v in VARIANTS:
        t = res["median_s"]
        print(
            f"{v:<12} {t[v]:>9.3f} {res['min_s'][v]:>7.3f} {t[v] / t['hand']:>7.3f} {t[v] / t['hand-sdpa']:>10.3f}",
            end="",
        )
        if mem and v in mem:
            g = {k: m["growth_mb"] for k, m in mem.items()}
            steady = mem[v].get("steady_growth_mb", float("nan"))
            print(f" {g[v]:>15.1f} {g[v] / g['hand']:>7.3f} {g[v] / g['hand-sdpa']:>10.3f} {steady:>11.1f}", end="")
        print()


if __name__ == "__main__":
    main()
