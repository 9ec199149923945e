"""Inference speed of the 2-layer student against its 6-layer teacher: latency at batch 1, throughput at batch 32.

Inputs are real SST-2 dev sentences, each batch padded to its longest sentence (dynamic padding), so both models see
exactly the same calls. Variants (eval mode, torch.inference_mode):
  cpu-fp32       the default
  cpu-bf16       the same under torch.autocast("cpu", bfloat16)
  cpu-compile    torch.compile(model, dynamic=True), fp32; compile time (the warm-up) is reported apart
  cuda-fp32, cuda-fp16   only when torch.cuda.is_available() (synchronised around every call); else reported skipped
Per variant the two models take turns call by call after a warm-up. Latency = median ms per batch-1 call;
throughput = examples / total seconds over the batch-32 calls.
Models: teacher runs/sst2_teacher/model when present (else the packaged all-MiniLM-L6-v2); student = the first 2-layer
model exported under runs/*/student, else layers 1 and 5 cut from the teacher (weights do not change the speed);
--student DIR times any exported student instead (e.g. a BiLSTM).

Run: .venv/bin/python benchmarks/bench_inference.py [--latency-calls N] [--throughput-batches N] [--variants ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch._dynamo.utils import counters
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

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
)
from helper.config import InitFromConfig, StudentConfig  # noqa: E402
from helper.students import cut_student  # noqa: E402

CPU_VARIANTS = ("cpu-fp32", "cpu-bf16", "cpu-compile")
CUDA_VARIANTS = ("cuda-fp32", "cuda-fp16")
THROUGHPUT_BATCH = 32
WARMUP_CALLS = 3


def exported_student(layers: int) -> str | None:
    """The first model under runs/*/student with `layers` encoder layers."""
    for config in sorted(ROOT.glob("runs/*/student/config.json")):
        if AutoConfig.from_pretrained(config.parent).num_hidden_layers == layers:
            return str(config.parent)
    return None


def load_models(teacher_path: str, student_path: str | None) -> dict[str, torch.nn.Module]:
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path, num_labels=2)
    if student_path is not None:
        student = AutoModelForSequenceClassification.from_pretrained(student_path)
    else:
        n = teacher.config.num_hidden_layers
        cfg = StudentConfig(init_from_teacher=InitFromConfig(layers=sorted({1, n - 1})))  # tiny: one layer
        student = cut_student(teacher, cfg, teacher_path)
    return {"teacher": teacher.eval(), "student": student.eval()}


def make_calls(tokenizer, n_latency: int, n_batches: int) -> dict[int, list[dict[str, torch.Tensor]]]:
    """Batch-1 calls on the first `n_latency` dev sentences; batch-32 calls on consecutive dev sentences."""
    texts = [t for _, t in sst2_examples("dev", max(n_latency, n_batches * THROUGHPUT_BATCH))]
    batches = {
        1: [[t] for t in texts[:n_latency]],
        THROUGHPUT_BATCH: [texts[j * THROUGHPUT_BATCH : (j + 1) * THROUGHPUT_BATCH] for j in range(n_batches)],
    }
    return {
        size: [dict(tokenizer(b, padding=True, truncation=True, max_length=128, return_tensors="pt")) for b in bs]
        for size, bs in batches.items()
    }  # each tensor (B, longest)


def prepare(variant: str, models: dict[str, torch.nn.Module]) -> tuple[dict, object, str]:
    """(models for `variant`, autocast context factory, device)."""
    device = "cuda" if variant.startswith("cuda") else "cpu"
    moved = {name: m.to(device) for name, m in models.items()}
    if variant == "cpu-compile":
        moved = {name: torch.compile(m, dynamic=True) for name, m in moved.items()}
    if variant == "cpu-bf16":
        return moved, lambda: torch.autocast("cpu", dtype=torch.bfloat16), device
    if variant == "cuda-fp16":
        return moved, lambda: torch.autocast("cuda", dtype=torch.float16), device
    return moved, nullcontext, device


@torch.inference_mode()
def run_variant(variant: str, models: dict[str, torch.nn.Module], calls: dict[int, list[dict]]) -> dict:
    models, autocast, device = prepare(variant, models)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    calls = {size: [{k: v.to(device) for k, v in c.items()} for c in cs] for size, cs in calls.items()}

    def call(model, inputs) -> float:
        start = time.perf_counter()
        with autocast():
            model(**inputs)
        sync()
        return time.perf_counter() - start

    warmup_s = {name: 0.0 for name in models}
    for name, model in models.items():  # compile (if any) happens here: a few different lengths per batch size
        for cs in calls.values():
            for j in range(WARMUP_CALLS):
                warmup_s[name] += call(model, cs[j % len(cs)])
    graphs_before = counters["stats"]["unique_graphs"]
    seconds: dict[str, dict[int, list[float]]] = {name: {size: [] for size in calls} for name in models}
    for size, cs in calls.items():
        for inputs in cs:
            for name, model in models.items():
                seconds[name][size].append(call(model, inputs))
    out = {
        name: {
            "latency_ms": round(1000 * statistics.median(s[1]), 3),
            "throughput": round(THROUGHPUT_BATCH * len(s[THROUGHPUT_BATCH]) / sum(s[THROUGHPUT_BATCH]), 1),
            "warmup_s": round(warmup_s[name], 2),
        }
        for name, s in seconds.items()
    }
    if variant == "cpu-compile":
        out["graphs_compiled_while_timed"] = counters["stats"]["unique_graphs"] - graphs_before  # 0: no recompiles
    out["speedup"] = {
        "latency": round(out["teacher"]["latency_ms"] / out["student"]["latency_ms"], 2),
        "throughput": round(out["student"]["throughput"] / out["teacher"]["throughput"], 2),
    }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-calls", type=int, default=200, help="batch-1 calls per model (default 200)")
    parser.add_argument("--throughput-batches", type=int, default=20, help="batch-32 calls per model (default 20)")
    parser.add_argument("--variants", nargs="+", default=[*CPU_VARIANTS, *CUDA_VARIANTS])
    add_threads(parser, when_none="torch's; 1 with --tiny")
    parser.add_argument("--tiny", action="store_true", help="smoke run: a random BERT of hidden 32 and 2 layers")
    parser.add_argument("--student", help="an exported student directory (default: see above)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "inference.json")
    args = parser.parse_args(argv)
    unknown = set(args.variants) - {*CPU_VARIANTS, *CUDA_VARIANTS}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choices: {', '.join(CPU_VARIANTS + CUDA_VARIANTS)}")

    quiet()
    set_threads(args.threads or (1 if args.tiny else None))
    with tempfile.TemporaryDirectory() as tmp:
        teacher_path = tiny_model_dir(Path(tmp)) if args.tiny else teacher_source()[0]
        student_path = args.student or (None if args.tiny else exported_student(2))
        models = load_models(teacher_path, student_path)
        calls = make_calls(AutoTokenizer.from_pretrained(teacher_path), args.latency_calls, args.throughput_batches)
    load_before = loadavg()
    result: dict = {
        "what": "latency = median ms per call at batch 1; throughput = examples/s at batch 32; SST-2 dev sentences, "
        "dynamic padding; teacher and student interleaved call by call",
        "teacher": "tiny random BERT" if args.tiny else teacher_path,
        "student": student_path or "layers [1, last] cut from the teacher",
        "params": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
        "latency_calls": args.latency_calls,
        "throughput_batches": args.throughput_batches,
        "variants": {},
    }
    print(f"{'variant':<12} {'model':<8} {'latency ms':>10} {'ex/s @32':>9} {'warm-up s':>9}")
    for variant in args.variants:
        if variant.startswith("cuda") and not torch.cuda.is_available():
            result["variants"][variant] = {"skipped": "torch.cuda.is_available() is False"}
            print(f"{variant:<12} skipped: no CUDA")
            continue
        try:
            res = run_variant(variant, models, calls)
        except Exception as err:  # a variant this machine cannot run (no compiler, no bf16 kernels) is reported
            result["variants"][variant] = {"failed": f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"}
            print(f"{variant:<12} failed: {result['variants'][variant]['failed']}")
            continue
        finally:
            torch._dynamo.reset()
        result["variants"][variant] = res
        for name in ("teacher", "student"):
            r = res[name]
            print(f"{variant:<12} {name:<8} {r['latency_ms']:>10.2f} {r['throughput']:>9.1f} {r['warmup_s']:>9.1f}")
        print(
            f"{variant:<12} student speed-up: {res['speedup']['latency']}x latency, {res['speedup']['throughput']}x "
            "throughput"
        )
    save_result(args.out, result, load_before)
    return result


if __name__ == "__main__":
    main()
