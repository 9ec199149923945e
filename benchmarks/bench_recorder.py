"""Cost of recording attentions + values on the sdpa path, for the default 6-layer model on one batch of 32 x 64.

Variants, each on its own copy of the model (and its own AdamW), interleaved round by round:
  record: sdpa + FeatureRecorder(attentions and values of all layers), both used in a small extra loss term
  plain:  sdpa, nothing recorded (classification loss only)
  eager:  eager attention with output_attentions=True, its attentions used in the same extra loss term
Two settings: "train" = student step (train mode, fwd + bwd + AdamW step); "teacher" = eval-mode forward under
torch.inference_mode (no loss). Medians over the rounds after a warm-up.

Run: .venv/bin/python benchmarks/bench_recorder.py [--steps N]   (--tiny: a random BERT of hidden 32, a smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    BATCH,
    MAX_LEN,
    ROOT,
    SST2,
    loadavg,
    minilm,
    quiet,
    save_result,
    sst2_batches,
    tiny_model_dir,
    turns,
)
from bert.recorder import FeatureRecorder  # noqa: E402


def batch(tokenizer) -> dict[str, torch.Tensor]:
    """32 SST-2 train sentences padded to 64 tokens, with their labels."""
    inputs = sst2_batches(tokenizer, 1, BATCH, MAX_LEN, "max_length")[0]
    del inputs["idx"]
    return inputs


def aux_loss(tensors) -> torch.Tensor:
    """The cheapest term whose backward still runs through every recorded tensor (and, for the recorder, through its
    recomputed softmax and q·kᵀ): what is timed is the cost of recording, not the cost of some distillation loss."""
    return 1e-3 * sum(t.sum() for t in tensors)


def make_step(variant: str, setting: str, path: str, inputs: dict[str, torch.Tensor]):
    """A closure timing one step of `variant` ("record", "plain", "eager") in `setting` ("train", "teacher")."""
    torch.manual_seed(0)
    impl = "eager" if variant == "eager" else "sdpa"
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation=impl)
    model.train(setting == "train")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # as helper/training.py builds it
    n = model.config.num_hidden_layers
    recorder = FeatureRecorder(model, {"attentions": range(n), "values": range(n)}) if variant == "record" else None

    def forward() -> torch.Tensor:
        if variant == "record":
            out, feats = recorder(**inputs)
            return out.loss + aux_loss([*feats.attentions.values(), *feats.values.values()])
        if variant == "eager":
            out = model(**inputs, output_attentions=True)
            return out.loss + aux_loss(out.attentions)
        return model(**inputs).loss

    def step() -> float:
        start = time.perf_counter()
        if setting == "teacher":
            with torch.inference_mode():
                forward()
        else:
            opt.zero_grad(set_to_none=True)
            forward().backward()
            opt.step()
        return time.perf_counter() - start

    return step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed rounds; each runs every variant once (default 20)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recorder.json")
    parser.add_argument("--tiny", action="store_true", help="smoke run: a random BERT of hidden 32 and 2 layers")
    args = parser.parse_args(argv)

    quiet()
    tmp = tempfile.TemporaryDirectory()
    path = tiny_model_dir(Path(tmp.name)) if args.tiny else minilm()
    inputs = batch(AutoTokenizer.from_pretrained(path))
    runs = [(s, v) for s in ("train", "teacher") for v in ("record", "plain", "eager")]
    steps = {run: make_step(run[1], run[0], path, inputs) for run in runs}
    load_before = loadavg()
    for _ in range(args.warmup):
        for run in runs:
            steps[run]()
    times: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    for r in range(args.steps):
        for run in turns(runs, r):
            times[run].append(steps[run]())
    med = {run: statistics.median(t) for run, t in times.items()}

    result = {
        "what": f"{'tiny random BERT' if args.tiny else 'all-MiniLM-L6-v2'} classifier, batch {BATCH}x{MAX_LEN}; "
        "train = fwd+bwd+AdamW step, teacher = eval "
        "forward under inference_mode; median seconds per step",
        "rounds": args.steps,
        "warmup": args.warmup,
        "data": "SST-2 train[:32], padded to 64" if SST2.is_dir() else "4 built-in sentences, padded to 64",
    }
    print(f"{'setting':<8} {'variant':<7} {'median s':>9} {'min s':>7}")
    for setting in ("train", "teacher"):
        for variant in ("record", "plain", "eager"):
            print(f"{setting:<8} {variant:<7} {med[setting, variant]:>9.3f} {min(times[setting, variant]):>7.3f}")
        vs_plain = med[setting, "record"] / med[setting, "plain"]
        vs_eager = med[setting, "record"] / med[setting, "eager"]
        print(f"{setting:<8} record/plain = {vs_plain:.3f}   record/eager = {vs_eager:.3f}")
        result[setting] = {
            "median_s": {v: round(med[setting, v], 4) for v in ("record", "plain", "eager")},
            "min_s": {v: round(min(times[setting, v]), 4) for v in ("record", "plain", "eager")},
            "ratio_record_vs_plain": round(vs_plain, 3),
            "ratio_record_vs_eager": round(vs_eager, 3),
        }
    save_result(args.out, result, load_before)
    return result


if __name__ == "__main__":
    main()
