"""End-to-end knowledge distillation on SST-2: this project against TextBrewer 0.2.1, two full epochs each.

Both distil the SST-2 fine-tuned all-MiniLM-L6-v2 teacher (6 layers) into a 2-layer student cut from its layers [1, 5]
with Hinton KD (T=4) plus cross-entropy between the last-layer attention distributions (teacher layer 5, student
layer 1), AdamW lr 1e-4, linear schedule with 10% warm-up, batch 32, the same seed. Attention dropout is off in both
students: eager attention returns its probabilities after dropout, and TextBrewer's loss would then compare dropped
ones; hidden dropout (0.1) stays.

  ours: `ClfDataModule` (length-grouped batches, padded to the longest example), `BaseDistiller` under Lightning,
        sdpa attention + `FeatureRecorder`, teacher cache on. Adaptors `{LogitKL, T 4, weight 1/16}` and `AttnMiniLM`:
        TextBrewer's `kd_ce_loss` has no T² factor and both its losses are cross-entropies, which differ from our KLs
        by the teacher's entropy only, a constant: same gradients, same normalisation (batch; valid rows x heads).
  peer: TextBrewer `GeneralDistiller` as documented, inputs padded to 64, eager attention with
        `output_attentions=True`; its adaptor hands over log-probabilities, which its `attention_ce` softmax turns
        back into the probabilities exactly.

Reported: examples/s of epoch 1 and epoch 2 (training only: no validation during training), dev accuracy after
2 epochs (same evaluation code for both). Epoch 1 of ours fills the teacher cache; from epoch 2 the teacher is skipped.

Full run (about 10 minutes per seed on 2 cores):  .venv/bin/python benchmarks/bench_e2e.py --seeds 0 1 2
Smoke run:  .venv/bin/python benchmarks/bench_e2e.py --limit 256 --out /tmp/e2e.json
On a machine shared with other jobs add `--threads 1`: two torch threads then keep waiting for each other.
TextBrewer is a benchmark-only dependency:
  .venv/bin/pip install textbrewer==0.2.1 tensorboardX --no-deps
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    BATCH,
    MAX_LEN,
    OPTIM,
    ROOT,
    TimedFit,
    accuracy,
    add_threads,
    command,
    loadavg,
    quiet,
    rounded,
    save_result,
    set_threads,
    sst2_data,
    teacher_and_student,
    teacher_source,
)
from bert.families import model_inputs  # noqa: E402
from bert.features import ModelDims  # noqa: E402
from bert.loading import load_tokenizer  # noqa: E402
from data.data_module import ClfDataModule, Collator  # noqa: E402
from helper.adaptors import build_adaptors  # noqa: E402
from helper.distiller import BaseDistiller  # noqa: E402
from helper.training import build_optimizer, build_scheduler  # noqa: E402

EPOCHS, TEMPERATURE = 2, 4.0


# -- the two contenders -----------------------------------------------------------------------------------------------
def our_adaptors(teacher: torch.nn.Module, student: torch.nn.Module) -> torch.nn.ModuleList:
    specs = [{"name": "LogitKL", "temperature": TEMPERATURE, "weight": 1 / TEMPERATURE**2}, "AttnMiniLM"]
    return build_adaptors(specs, ModelDims.of(teacher.config), ModelDims.of(student.config))


def gradient_check(path: str, dm: ClfDataModule) -> float:
    """Largest gap between the student's gradients under our losses and under TextBrewer's, on one training batch with
    dropout off, relative to each tensor's largest gradient. The losses differ by the teacher's entropies (constants),
    so the gap is float noise when both do the same work. Key biases are left out: softmax ignores them, so their
    true gradient is 0 and what is there is noise of 1e-10."""
    from textbrewer.losses import att_ce_loss, kd_ce_loss

    batch = next(iter(dm.train_dataloader()))
    inputs = model_inputs(batch)
    grads = {}
    for attn in ("sdpa", "eager"):
        teacher, student = teacher_and_student(path, dm.label_names, attn)
        if attn == "sdpa":  # ours: what BaseDistiller.training_step computes
            adaptors = our_adaptors(teacher, student)
            distiller = BaseDistiller(teacher, student, adaptors, optim=OPTIM, cache_teacher=False)
            student.eval()  # the distiller put it in train mode
            loss = distiller.losses(batch)[1]
        else:  # TextBrewer's kd_ce_loss + att_ce_loss on what peer_adaptor hands it
            student.eval()
            with torch.no_grad():
                out_t = peer_adaptor(inputs, teacher(**inputs, output_attentions=True))
            out_s = peer_adaptor(inputs, student(**inputs, output_attentions=True))
            loss = kd_ce_loss(out_s["logits"], out_t["logits"], TEMPERATURE)
            loss = loss + att_ce_loss(out_s["attention"][-1], out_t["attention"][-1], inputs["attention_mask"])
        loss.backward()
        grads[attn] = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    gaps = [
        float((g - grads["eager"][n]).abs().max() / grads["eager"][n].abs().max().clamp_min(1e-30))
        for n, g in grads["sdpa"].items()
        if not n.endswith("key.bias")
    ]
    return max(gaps)


def run_ours(path: str, dm: ClfDataModule, cache: bool = True) -> dict:
    teacher, student = teacher_and_student(path, dm.label_names, "sdpa")
    distiller = BaseDistiller(teacher, student, our_adaptors(teacher, student), optim=OPTIM, cache_teacher=cache)
    seconds = TimedFit(distiller, dm).fit(EPOCHS)
    lengths = [len(b["attention_mask"][0]) for b in dm.train_dataloader()]
    result = {
        "epoch_s": seconds,
        "dev_acc": accuracy(student, dm),
        "padded_tokens_per_row": sum(lengths) / len(lengths),
    }
    if (tc := distiller.teacher_cache) is not None:
        result["teacher_cache"] = {
            "hit_rate_epoch2": tc.hits / len(dm.datasets["train"]),  # epoch 1 cannot hit: each example once
            "examples": len(tc.rows),
            "mb": round(tc.nbytes / 2**20, 1),
        }
    return result


class FixedPad:
    """The model inputs of a batch padded to `MAX_LEN`, as `tokenizer(..., padding="max_length")` gives them."""

    def __init__(self, pad_id: int):
        self.collate = Collator(pad_id)
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        batch = model_inputs(self.collate(items))
        pad = MAX_LEN - batch["input_ids"].shape[1]
        values = {"input_ids": self.pad_id, "attention_mask": 0, "token_type_ids": 0}
        return {k: F.pad(v, (0, pad), value=values[k]) for k, v in batch.items()}  # (B, 64)


def peer_adaptor(batch: dict, outputs) -> dict:
    """TextBrewer adaptor. `attention_ce` applies a softmax to what it gets: log-probabilities give back the
    probabilities exactly (padding keys stay 0); only the matched layer (the last) is converted."""
    attentions = list(outputs.attentions)
    attentions[-1] = attentions[-1].clamp_min(torch.finfo(attentions[-1].dtype).tiny).log()  # (B, h, T, T)
    return {"logits": outputs.logits, "attention": attentions, "inputs_mask": batch["attention_mask"]}


def run_peer(path: str, dm: ClfDataModule, pad_id: int) -> dict:
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    teacher, student = teacher_and_student(path, dm.label_names, "eager")
    loader = DataLoader(
        dm.datasets["train"], batch_size=BATCH, shuffle=True, collate_fn=FixedPad(pad_id),
        generator=torch.Generator().manual_seed(dm.cfg.seed),
    )  # fmt: skip
    n_layers_t, n_layers_s = teacher.config.num_hidden_layers, student.config.num_hidden_layers
    match = {"layer_T": n_layers_t - 1, "layer_S": n_layers_s - 1, "feature": "attention", "loss": "attention_ce"}
    distill_config = DistillationConfig(temperature=TEMPERATURE, intermediate_matches=[{**match, "weight": 1}])
    total_steps = len(loader) * EPOCHS
    optimizer = build_optimizer(student.named_parameters(), OPTIM)
    marks: list[float] = []
    result: dict = {}

    def callback(model, step):  # TextBrewer calls it at the end of every epoch (after saving the student)
        marks.append(time.perf_counter())
        if len(marks) == EPOCHS + 1:
            result["dev_acc"] = accuracy(model, dm)

    with tempfile.TemporaryDirectory() as out:
        train_config = TrainingConfig(device="cpu", output_dir=out, log_dir=None)
        distiller = GeneralDistiller(train_config, distill_config, teacher, student, peer_adaptor, peer_adaptor)
        pl.seed_everything(dm.cfg.seed, verbose=False)
        marks.append(time.perf_counter())
        distiller.train(
            optimizer,
            loader,
            num_epochs=EPOCHS,
            scheduler_class=lambda optimizer: build_scheduler(optimizer, OPTIM, total_steps)["scheduler"],
            scheduler_args={},
            callback=callback,
            output_attentions=True,
        )
    return {"epoch_s": [b - a for a, b in zip(marks, marks[1:])], **result, "padded_tokens_per_row": MAX_LEN}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="train and dev examples (smoke run); default: all")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "e2e.json")
    add_threads(parser)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="one pair of runs per seed (data order, dropout); default: 0"
    )
    parser.add_argument(
        "--ours-batches", choices=["grouped", "random"], default="grouped",
        help="ours: length-grouped batches (default) or random ones, both padded to their longest (an ablation)",
    )  # fmt: skip
    parser.add_argument(
        "--ours-cache", choices=["on", "off"], default="on", help="ours: the teacher cache (default: on; off: ablation)"
    )
    args = parser.parse_args(argv)
    set_threads(args.threads)
    try:
        import textbrewer  # noqa: F401
    except ImportError as err:
        sys.exit(f"bench_e2e: TextBrewer is missing ({err}); `.venv/bin/pip install textbrewer==0.2.1 --no-deps`")

    quiet()
    path, note = teacher_source()
    tokenizer = load_tokenizer(path)
    grad_gap = gradient_check(path, sst2_data(tokenizer, args.limit, args.seeds[0]))
    print(f"same work: student gradients, ours vs TextBrewer's losses, max relative gap {grad_gap:.1e}")
    load_before = loadavg()
    per_seed = {}
    print(f"{'seed':<5} {'':<5} {'ex/s epoch 1':>13} {'ex/s epoch 2':>13} {'dev acc':>8} {'tokens/row':>11}")
    for seed in args.seeds:
        dm = sst2_data(tokenizer, args.limit, seed, group_by_length=args.ours_batches == "grouped")
        n = len(dm.datasets["train"])
        runs = {"ours": run_ours(path, dm, args.ours_cache == "on"), "peer": run_peer(path, dm, tokenizer.pad_token_id)}
        for name, run in runs.items():
            run["examples_per_s"] = [n / s for s in run["epoch_s"]]
            (e1, e2), acc, tokens = run["examples_per_s"], run["dev_acc"], run["padded_tokens_per_row"]
            print(f"{seed:<5} {name:<5} {e1:>13.1f} {e2:>13.1f} {acc:>8.4f} {tokens:>11.1f}")
        ours, peer = runs["ours"], runs["peer"]
        runs["speedup_ours_over_peer"] = [a / b for a, b in zip(ours["examples_per_s"], peer["examples_per_s"])]
        runs["dev_acc_diff_points"] = 100 * (ours["dev_acc"] - peer["dev_acc"])
        per_seed[seed] = runs

    speedup = [statistics.median(r["speedup_ours_over_peer"][e] for r in per_seed.values()) for e in range(EPOCHS)]
    diffs = [r["dev_acc_diff_points"] for r in per_seed.values()]
    mean_diff = statistics.mean(diffs)
    print(f"ours/peer speed (median over seeds): epoch 1 {speedup[0]:.2f}x, epoch 2 {speedup[1]:.2f}x "
          "(target >= 3x from epoch 2)")  # fmt: skip
    print(f"dev accuracy, ours - peer, points: {', '.join(f'{d:+.2f}' for d in diffs)}; mean {mean_diff:+.2f} "
          "(target: within 0.5)")  # fmt: skip

    result = {
        "what": "SST-2 KD, 2 epochs each: ours (BaseDistiller, length-grouped dynamic padding, sdpa + recorder, "
        "teacher cache) vs TextBrewer 0.2.1 GeneralDistiller (padding 64, eager output_attentions); Hinton KD T=4 + "
        "last-layer attention CE; examples/s over training epochs, dev accuracy after 2 epochs; one pair per seed",
        "teacher": note,
        "student": "2 layers cut from the teacher's layers [1, 5], attention dropout off",
        "train_examples": n,
        "dev_examples": len(dm.datasets["validation"]),
        "batch_size": BATCH,
        "optim": f"adamw lr {OPTIM.lr}, linear, warmup {OPTIM.warmup_ratio}",
        "gradient_check_max_relative_gap": float(f"{grad_gap:.2e}"),
        "seeds": args.seeds,
        "ours_batches": args.ours_batches,
        "ours_cache": args.ours_cache,
        "runs": {str(seed): rounded(runs) for seed, runs in per_seed.items()},
        "speedup_ours_over_peer": [round(s, 2) for s in speedup],
        "dev_acc_diff_points": [round(d, 2) for d in diffs],
        "dev_acc_diff_points_mean": round(mean_diff, 2),
        "command": command(__file__, argv),
        "textbrewer": importlib.metadata.version("textbrewer"),
    }
    save_result(args.out, result, load_before)
    return result


if __name__ == "__main__":
    main()
