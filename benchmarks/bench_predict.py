"""`predict.py` against the model's own forward calls on the same batches, and its accuracy against the run's.

Texts: the SST-2 test sentences (1,821; a few built-in sentences when the shared data is absent). Timed in one
process, taking turns `--repeats` times (the order alternating):
  predict   `inference.predict(model, tokenizer, texts, batch_size, 128, "cpu")`: tokenization, length sorting, padding,
            forward, softmax and putting the rows back in input order;
  forward   the model's forward alone on the same length-sorted batches, tokenized and padded beforehand (what
            `bench_inference.py` times).
Reported: rows/s of each (median), predict / forward (target >= 0.9: predict adds at most 10%), and predict's test
accuracy next to the one its run recorded (`<model>/../metrics.json`, when there is one).

Run: .venv/bin/python benchmarks/bench_predict.py --model runs/sst2_teacher/model --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    ROOT,
    add_threads,
    loadavg,
    quiet,
    save_result,
    set_threads,
    sst2_examples,
    teacher_source,
    tiny_model_dir,
    turns,
)
from bert.families import accepted_inputs  # noqa: E402
from helper.inference import load_model, predict  # noqa: E402

MAX_LENGTH = 128
TEST_SENTENCES = 1821


def sorted_batches(model, tokenizer, texts: list[str], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """predict's batches, made beforehand: longest first, each padded to its longest."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)
    accepted = accepted_inputs(model)
    batches = []
    for b in range(0, len(order), batch_size):
        enc = tokenizer([texts[i] for i in order[b : b + batch_size]], padding=True, truncation=True,
                        max_length=MAX_LENGTH, return_tensors="pt")  # fmt: skip
        batches.append({k: v for k, v in enc.items() if k in accepted})  # each (B, longest)
    return batches


@torch.inference_mode()
def forward_all(model, batches: list[dict[str, torch.Tensor]]) -> None:
    for inputs in batches:
        model(**inputs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an exported classifier directory (default: the SST-2 teacher)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes of each (default 5)")
    add_threads(parser)
    parser.add_argument("--tiny", action="store_true", help="smoke run: a random BERT of hidden 32 and 2 layers")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict.json")
    args = parser.parse_args(argv)
    quiet()
    threads = set_threads(args.threads)
    examples = sst2_examples("test", TEST_SENTENCES)
    texts, labels = [t for _, t in examples], torch.tensor([y for y, _ in examples])
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_model_dir(Path(tmp)) if args.tiny else args.model or teacher_source()[0]
        model, tokenizer = load_model(path)
    model.eval()
    batches = sorted_batches(model, tokenizer, texts, args.batch_size)
    predict(model, tokenizer, texts[: 4 * args.batch_size], args.batch_size, MAX_LENGTH, "cpu")  # warm-up
    forward_all(model, batches[:4])
    load_before = loadavg()
    seconds: dict[str, list[float]] = {"predict": [], "forward": []}
    label_ids = None
    for r in range(args.repeats):
        for name in turns(["predict", "forward"], r):
            start = time.perf_counter()
            if name == "predict":
                label_ids, _ = predict(model, tokenizer, texts, args.batch_size, MAX_LENGTH, "cpu")
            else:
                forward_all(model, batches)
            seconds[name].append(time.perf_counter() - start)
    rows_s = {name: round(len(texts) / statistics.median(s), 1) for name, s in seconds.items()}
    recorded = Path(path).parent / "metrics.json"
    result = {
        "model": "tiny random BERT" if args.tiny else str(path),
        "texts": len(texts),
        "batch_size": args.batch_size,
        "threads": threads,
        "rows_per_s": rows_s,
        "predict_over_forward": round(rows_s["predict"] / rows_s["forward"], 3),
        "seconds": {name: [round(x, 3) for x in s] for name, s in seconds.items()},
        "predict_test_acc": round(float((label_ids == labels).float().mean()), 4),
        "recorded_test_acc": json.loads(recorded.read_text()).get("test/acc") if recorded.is_file() else None,
    }
    save_result(args.out, result, load_before)
    print(
        f"predict {rows_s['predict']} rows/s, forward alone {rows_s['forward']} rows/s: "
        f"{result['predict_over_forward']}x (target >= 0.9); test acc {result['predict_test_acc']} "
        f"(recorded: {result['recorded_test_acc']})"
    )
    return result


if __name__ == "__main__":
    main()
