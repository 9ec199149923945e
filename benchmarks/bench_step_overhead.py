"""Framework cost per training step, in milliseconds, on a model so small that kernels cost almost nothing.

Teacher: a random BERT of hidden 32, 2 layers, 4 heads (`common.tiny_model_dir`); student cut from its layers 0 and 1
(sdpa, as the stages use); adaptors [AttnMiniLM, ValMiniLM, LogitMSE]; AdamW + linear schedule; 8 fixed batches of 8
SST-2 train sentences padded to each batch's longest (as the collator does), with `idx`; 8 x 32 tokens keep the
kernels cheap, so that what is left is the per-step Python work. Variants (each has its own
models and optimiser), timed step by step in turn, the order rotating every round:
  trainer:   `BaseDistiller` under the Trainer the stages build (`helper.training.build_trainer`: CSV logger,
             LearningRateMonitor, checkpoint callbacks, `log_every_n_steps` 10), progress bar removed (--bar keeps it,
             writing to /dev/null). Its time is the whole loop iteration (fetch, transfer, hooks, closure, logging,
             optimiser, scheduler) minus the other variants' steps run inside it;
  module:    `BaseDistiller.training_step` called by hand, then backward and step (no Trainer);
  hand:      a plain loop with the same losses on the same kernels (bench_overhead's hand-sdpa loop).
Two runs: teacher cache off (the teacher runs every step: equal work), and on (from the 9th step every example is
cached; the hand loop then keeps its own teacher outputs per batch, already padded: the ideal cache). The overhead is
median(trainer) - median(hand) in ms per step; target <= 1 ms. `--profile` prints cProfile's top functions of the
trainer's steps instead of timing.

Run: .venv/bin/python benchmarks/bench_step_overhead.py [--rounds N] [--repeats N] [--bar] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import ProgressBar  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from benchmarks.bench_overhead import (  # noqa: E402
    ADAPTORS,
    OPTIM,
    HandLoop,
    ModuleLoop,
    _log_relation,
    _row_kl,
    _split_heads,
    distiller_loss,
    make_distiller,
)
from benchmarks.common import Interleave, loadavg, loader, quiet, save_result, sst2_examples, tiny_model_dir  # noqa: E402
from helper.config import DistillationRunConfig  # noqa: E402
from helper.training import build_trainer  # noqa: E402

LAYERS = [0, 1]
BATCH, N_BATCHES, MAX_LENGTH = 8, 8, 32
TARGET_MS = 1.0


def make_batches(tokenizer, n_batches: int = N_BATCHES, batch: int = BATCH) -> list[dict[str, torch.Tensor]]:
    """Fixed batches of SST-2 train sentences, each padded to its longest sentence (cut at 32 tokens), with `idx`."""
    examples = sst2_examples("train", n_batches * batch)
    out = []
    for b in range(n_batches):
        part = examples[b * batch : (b + 1) * batch]
        enc = tokenizer([t for _, t in part], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        out.append(
            {
                **{k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc},  # (B, T)
                "labels": torch.tensor([y for y, _ in part]),  # (B,)
                "idx": torch.arange(b * batch, (b + 1) * batch),  # (B,)
            }
        )
    return out


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


def stage_trainer(out: Path, steps: int, callbacks: list, bar: bool) -> pl.Trainer:
    """The Trainer `distillation_ms.py` builds (CSV log, no wandb), stopping after `steps`, with no validation."""
    cfg = DistillationRunConfig()
    cfg.logger.output_dir, cfg.logger.wandb = str(out), False
    cfg.trainer.max_steps, cfg.trainer.max_epochs, cfg.trainer.limit_val_batches = steps, 1, 0
    cfg.trainer.accelerator = "cpu"
    trainer, _, _ = build_trainer(cfg, "step_overhead", callbacks)
    if not bar:
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ProgressBar)]
    return trainer


def time_run(path: str, batches: list[dict], cache: bool, bar: bool, warmup: int, rounds: int, tmp: Path) -> dict:
    steps = warmup + rounds + 1
    distiller = make_distiller(path, LAYERS, cache=cache)
    hand = CachedHandLoop(path, LAYERS, steps) if cache else HandLoop(path, LAYERS, steps, attn="sdpa")
    others = {"module": ModuleLoop(path, LAYERS, steps, cache=cache), "hand": hand}
    check = None
    if not cache:
        distiller.student.eval(), hand.student.eval()
        with torch.no_grad():
            check = {"distiller": float(distiller_loss(distiller, batches[0])), "hand": float(hand.loss(batches[0]))}
        distiller.student.train(), hand.student.train()
        if abs(check["distiller"] - check["hand"]) > 1e-4 * max(1.0, abs(check["hand"])):
            raise RuntimeError(f"the hand loop does not compute the distiller's loss: {check}")
    callback = Interleave(others, warmup, rounds)
    trainer = stage_trainer(tmp / f"run_cache{int(cache)}_bar{int(bar)}", steps, [callback], bar)
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        trainer.fit(distiller, train_dataloaders=loader(batches, steps))
    med = {v: statistics.median(t) * 1e3 for v, t in callback.times.items()}
    return {
        "median_ms": {v: round(m, 3) for v, m in med.items()},
        "min_ms": {v: round(min(t) * 1e3, 3) for v, t in callback.times.items()},
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
    trainer = stage_trainer(tmp / "profile", steps + 21, [window], bar=False)
    trainer.fit(make_distiller(path, LAYERS, cache=cache), train_dataloaders=loader(batches, steps + 21))
    text = io.StringIO()
    pstats.Stats(window.prof, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per run; each runs every variant once")
    parser.add_argument("--warmup", type=int, default=20, help="untimed rounds (>= 8 fills the teacher cache)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the figures are their medians")
    parser.add_argument("--bar", action="store_true", help="also time the trainer with its progress bar")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batches", type=int, default=N_BATCHES, help="fixed batches used in turn")
    parser.add_argument("--profile", type=int, metavar="STEPS", help="profile STEPS trainer steps and print the top")
    parser.add_argument("--label", default="", help="a note stored in the JSON (e.g. before/after)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "step_overhead.json")
    args = parser.parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tiny_model_dir(tmp / "tiny")
        batches = make_batches(AutoTokenizer.from_pretrained(path), args.batches)
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
            f"{args.batches} batches of {BATCH} SST-2 sentences padded to their longest (<= {MAX_LENGTH} tokens); "
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
        result["targets"] = {"overhead_ms_max": TARGET_MS, "met": worst <= TARGET_MS}
    save_result(args.out, result, load_before)
    return result


if __name__ == "__main__":
    main()
