"""CPU speed of student shapes against their teacher: depth (layers cut) x feed-forward width (neurons kept per layer).

Every student is cut from the teacher (`init_from_teacher.layers` and `.intermediate_size`; the weights do not change
the speed) and timed with the report's own `measure_speed`: batch-1 latency and batch-32 throughput on real SST-2 dev
sentences (dynamic padding), all models taking turns call by call, each call made 3 times and counted with its
fastest. One run, so the ratios are comparable; the target line is the issue's "throughput >= 2x the teacher's".

Run: .venv/bin/python benchmarks/bench_shapes.py --threads 1 [--layers 2 3 4] [--widths 1536 1152 1024 768]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    ROOT,
    add_threads,
    command,
    loadavg,
    quiet,
    rounded,
    save_result,
    set_threads,
    sst2_examples,
    teacher_source,
    tiny_model_dir,
)
from helper.config import InitFromConfig, StudentConfig  # noqa: E402
from helper.report import THROUGHPUT_BATCH, measure_speed  # noqa: E402
from helper.students import cut_student  # noqa: E402

LAYERS = {2: [0, 5], 3: [1, 2, 5], 4: [0, 2, 4, 5]}  # the searches' choices, as indices of a 6-layer teacher


def kept_layers(depth: int, n: int) -> list[int]:
    """The layers a `depth`-layer student keeps of an `n`-layer teacher: the searches' choices, or evenly spread."""
    if n == 6 and depth in LAYERS:
        return LAYERS[depth]
    return sorted({round(i * (n - 1) / max(depth - 1, 1)) for i in range(depth)})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 3, 4], help="student depths (default 2 3 4)")
    parser.add_argument("--widths", type=int, nargs="+", default=[1536, 1152, 1024, 768], help="FFN neurons per layer")
    parser.add_argument("--latency-calls", type=int, default=20, help="batch-1 calls per model (default 20)")
    parser.add_argument("--throughput-batches", type=int, default=20, help="batch-32 calls per model (default 20)")
    add_threads(parser, when_none="torch's; 1 with --tiny")
    parser.add_argument("--tiny", action="store_true", help="smoke run: a random BERT of hidden 32 and 2 layers")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shapes.json")
    args = parser.parse_args(argv)
    quiet()
    threads = set_threads(args.threads or (1 if args.tiny else None))
    with tempfile.TemporaryDirectory() as tmp:
        teacher_path = tiny_model_dir(Path(tmp)) if args.tiny else teacher_source()[0]
        teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path, num_labels=2).eval()
        tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    n = teacher.config.num_hidden_layers
    models = {"teacher": teacher}
    shapes = {f"{depth}x{width}": InitFromConfig(layers=kept_layers(depth, n), intermediate_size=width)
              for depth in args.layers for width in args.widths}  # fmt: skip
    for name, cut in shapes.items():
        models[name] = cut_student(teacher, StudentConfig(init_from_teacher=cut), teacher_path)
    need = max(args.latency_calls, args.throughput_batches * THROUGHPUT_BATCH)
    texts = [t for _, t in sst2_examples("dev", need)]
    batches = [dict(tokenizer(texts[i : i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt"))
               for i in range(0, len(texts), 64)]  # fmt: skip
    load_before = loadavg()
    speed = measure_speed(models, batches, n_latency=args.latency_calls, n_throughput=args.throughput_batches)
    rows = {}
    print(f"{'layers':>6} {'FFN':>5} {'x throughput':>12} {'x latency':>9} {'x params':>8}")
    params_t = sum(p.numel() for p in teacher.parameters())
    for name, cut in shapes.items():
        rows[name] = {
            "layers": cut.layers,
            "intermediate_size": cut.intermediate_size,
            "throughput_ratio": speed[name]["throughput"] / speed["teacher"]["throughput"],
            "latency_ratio": speed["teacher"]["latency_ms"] / speed[name]["latency_ms"],
            "params_ratio": sum(p.numel() for p in models[name].parameters()) / params_t,
            **speed[name],
        }
        ratios = (rows[name][k] for k in ("throughput_ratio", "latency_ratio", "params_ratio"))
        print(
            f"{len(cut.layers):>6} {cut.intermediate_size:>5} "
            + " ".join(f"{r:>{w}.2f}" for r, w in zip(ratios, (12, 9, 8)))
        )
    result = {
        "what": "students cut from the teacher, depth x FFN width: throughput at batch 32 and batch-1 latency as "
        "ratios to the teacher's (helper.report.measure_speed: interleaved, 3 rounds, fastest counts)",
        "command": command(__file__, argv),
        "teacher": "tiny random BERT" if args.tiny else teacher_path,
        "teacher_speed": speed["teacher"],
        "threads": threads,
        "students": rows,
    }
    save_result(args.out, rounded(result), load_before)
    return result


if __name__ == "__main__":
    main()
