"""Overhead of the distiller at equal work: a `BaseDistiller` training step against a minimal hand-written loop.

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
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import lightning.pytorch as pl  # noqa: E402

from benchmarks.common import (  # noqa: E402
    Interleave,
    default_teacher,
    loadavg,
    loader,
    quiet,
    save_result,
    sst2_examples,
    tiny_model_dir,
)
from helper.config import InitFromConfig, OptimConfig, StudentConfig  # noqa: E402
from helper.distiller import BaseDistiller  # noqa: E402
from helper.students import cut_student  # noqa: E402
from helper.training import build_optimizer, build_scheduler  # noqa: E402

ADAPTORS = ["AttnMiniLM", "ValMiniLM", "LogitMSE"]
OPTIM = OptimConfig(name="adamw", lr=1e-4, weight_decay=0.01, schedule="linear", warmup_ratio=0.1)
VARIANTS = ("lightning", "module", "hand", "hand-sdpa", "module-cache")
OURS, BASELINES = ("lightning", "module"), ("hand", "hand-sdpa")
MEMORY_VARIANTS = (*OURS, *BASELINES)
BATCH, SEQ, N_BATCHES = 32, 64, 8


# -- models and data --------------------------------------------------------------------------------------------------
def make_batches(tokenizer, n_batches: int, batch: int, seq: int) -> list[dict[str, torch.Tensor]]:
    """`n_batches` fixed batches of real SST-2 train sentences, each padded to `seq` tokens."""
    examples = sst2_examples("train", n_batches * batch)
    out = []
    for b in range(n_batches):
        part = examples[b * batch : (b + 1) * batch]
        enc = tokenizer(
            [t for _, t in part], padding="max_length", truncation=True, max_length=seq, return_tensors="pt"
        )
        out.append(
            {
                **{k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc},  # (B, T)
                "labels": torch.tensor([y for y, _ in part]),  # (B,)
                "idx": torch.arange(b * batch, (b + 1) * batch),  # (B,)
            }
        )
    return out


def teacher_and_student(path: str, layers: list[int], attn: str):
    """A frozen teacher and a student cut from it (its layers `layers`), both with attention kernel `attn`."""
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation=attn)
    teacher.eval().requires_grad_(False)
    cfg = StudentConfig(init_from_teacher=InitFromConfig(layers=layers), attn_implementation=attn)
    student = cut_student(teacher, layers, True, cfg, path)
    return teacher, student.requires_grad_(True).train()


def schedule(optimizer, total_steps: int):
    return build_scheduler(optimizer, OPTIM, total_steps)["scheduler"]


def make_distiller(path: str, layers: list[int], cache: bool = False) -> BaseDistiller:
    """The distiller with the teacher cache off (equal work: the teacher runs every step) or on."""
    teacher, student = teacher_and_student(path, layers, "sdpa")
    return BaseDistiller(teacher, student, ADAPTORS, optim=OPTIM, cache_teacher=cache)


def distiller_loss(distiller: BaseDistiller, batch: dict) -> torch.Tensor:
    """The loss `training_step` minimises, without its logging (usable outside a Trainer)."""
    feats_t = distiller.teacher_features(batch)[0]
    _, feats_s = distiller.rec_s["student"](**distiller.student_inputs(batch))
    return sum(a.weight * a(feats_t, feats_s, batch["labels"]) for a in distiller.adaptors)


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
        self.teacher, self.student = teacher_and_student(path, layers, attn)
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


def lightning_trainer(steps: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def time_variants(path: str, layers: list[int], batches: list[dict], warmup: int, rounds: int) -> dict:
    steps = warmup + rounds + 1
    distiller = make_distiller(path, layers)
    others = {v: make_loop(v, path, layers, steps) for v in VARIANTS if v != "lightning"}
    check = loss_check(distiller, {v: others[v] for v in BASELINES}, batches[0])
    callback = Interleave(others, warmup, rounds, name="lightning")
    lightning_trainer(steps, [callback]).fit(distiller, train_dataloaders=loader(batches, steps))
    med = {v: statistics.median(t) for v, t in callback.times.items()}
    return {
        "median_s": {v: round(med[v], 4) for v in VARIANTS},
        "min_s": {v: round(min(callback.times[v]), 4) for v in VARIANTS},
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
        losses = {"distiller": float(distiller_loss(distiller, batch))}
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
    batches = make_batches(tokenizer, N_BATCHES, BATCH, SEQ)
    if variant == "lightning":
        probe = MemoryProbe()
        lightning_trainer(steps, [probe]).fit(make_distiller(path, layers), train_dataloaders=loader(batches, steps))
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
    n = len(MEMORY_VARIANTS)
    for r in range(repeats):
        for variant in MEMORY_VARIANTS[r % n :] + MEMORY_VARIANTS[: r % n]:
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


# -- main -------------------------------------------------------------------------------------------------------------
def parse_layers(spec: str) -> list[int]:
    return [int(i) for i in spec.split(",")]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds; each runs every variant once")
    parser.add_argument("--warmup", type=int, default=N_BATCHES, help="untimed rounds (default 8: fills the cache)")
    parser.add_argument("--memory-steps", type=int, default=5, help="steps per memory subprocess (0: no memory)")
    parser.add_argument("--memory-repeats", type=int, default=3, help="memory subprocesses per variant (median)")
    parser.add_argument("--students", nargs="+", help="teacher layers kept, per student (default: 1,5 1,3,5)")
    parser.add_argument("--teacher", help="teacher directory (default: runs/sst2_teacher/model, else the MiniLM)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="smoke run: a random BERT of hidden 32 and 2 layers")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "overhead.json")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    quiet()
    args.students = args.students or (["1", "0,1"] if args.tiny else ["1,5", "1,3,5"])
    args.threads = args.threads or (1 if args.tiny else torch.get_num_threads())
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child_memory(args.child, args.teacher, parse_layers(args.students[0]), args.memory_steps)))
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_model_dir(Path(tmp)) if args.tiny else args.teacher or default_teacher()
        batches = make_batches(AutoTokenizer.from_pretrained(path), N_BATCHES, BATCH, SEQ)
        load_before = loadavg()
        result = {
            "what": "one distillation training step (teacher fwd, student fwd+bwd, AdamW step) at equal work; "
            "median seconds per step; memory = peak RSS growth over the steps, one fresh process per variant; "
            "teacher cache off except in module-cache",
            "teacher": "tiny random BERT" if args.tiny else path,
            "adaptors": ADAPTORS,
            "data": f"{N_BATCHES} batches of {BATCH} SST-2 train sentences padded to {SEQ}",
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
