"""Teacher-vs-student report of a distillation run: accuracy, size and CPU speed as report.md, .json and .png."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import transformers
from matplotlib.figure import Figure
from torch import nn

from bert.errors import UserError
from bert.families import model_inputs
from data.padding import pad_batch
from helper.config import REPORT_FIGURES, REPORT_PARTS, SHAPE_FIGURES, bound_holds, parse_bound
from helper.inference import forward_batches, model_device
from helper.metrics import clf_metrics

THROUGHPUT_BATCH = 32
WARMUP_CALLS = 2  # per model and batch size, before anything is timed
TIMING_ROUNDS = 3  # every timed call is made this often; its fastest counts (what another process slowed is not)
COLORS = {"teacher": "#4C72B0", "student": "#DD8452"}
SERVED_NAMES = {"onnx": "ONNX fp32", "onnx-int8": "ONNX int8"}  # helper/serving.py's backends


def view_of(name: str) -> str:
    """The batch sub-dict a model of the report reads: `student:onnx` (the student as served) reads `student`'s."""
    return name.split(":")[0]


def evaluate(model: nn.Module, batches: Iterable[dict], key: str | None = None) -> dict[str, float]:
    """Accuracy and macro-F1 (`clf_metrics`) of `model` in eval mode, and the number of examples `n`."""
    model.eval()
    device = model_device(model)
    metrics = None
    n = 0
    for batch, logits in forward_batches(model, batches, device=device, key=key):
        logits = logits.cpu()  # (B, C)
        if metrics is None:
            metrics = clf_metrics(logits.shape[-1], "")
        metrics.update(logits, batch["labels"])
        n += len(logits)
    if metrics is None:
        raise UserError("report: the evaluation loader yielded no batches")
    return {**{k: float(v) for k, v in metrics.compute().items()}, "n": n}


def _unpadded_examples(models: dict[str, nn.Module], batches: Iterable[dict], need: int) -> dict[str, list[dict]]:
    """The first `need` examples of `batches` (fewer if it is shorter), per model, as unpadded 1-D input tensors."""
    out: dict[str, list[dict]] = {name: [] for name in models}
    for batch in batches:
        for name, model in models.items():
            inputs = model_inputs(batch.get(view_of(name), batch), model)
            keep = inputs["attention_mask"].bool()  # (B, T)
            out[name] += [{k: v[i][keep[i]] for k, v in inputs.items()} for i in range(len(keep))]
        if min(len(v) for v in out.values()) >= need:
            break
    return {name: examples[:need] for name, examples in out.items()}


@torch.inference_mode()
def measure_speed(
    models: dict[str, nn.Module], batches: Iterable[dict], *, n_latency: int = 20, n_throughput: int = 5
) -> dict[str, dict]:
    """CPU latency at batch 1 and throughput at batch 32 of every model, in one interleaved run.

    The models must be on CPU. A model named like a sub-dict of the batches (e.g. "student") reads its inputs from it,
    and so does one named `<that name>:<anything>` (`view_of`).
    The same real examples of `batches` (reused cyclically if too few) are re-batched to 1 and to 32, padded to the
    batch's longest. After warm-up the models take turns call by call, in `TIMING_ROUNDS` rounds over all the calls;
    each call counts with its fastest round, so a call that another process slowed (a busy machine: other trials,
    other workers) does not. Returns, per model, `latency_ms` (median ms per example at batch 1) and `throughput`
    (examples/s at batch 32: examples over total time).
    """
    for name, model in models.items():
        if any(p.device.type != "cpu" for p in model.parameters()):
            raise ValueError(f"measure_speed: model {name!r} is not on CPU")
        model.eval()
    n_calls = {1: n_latency, THROUGHPUT_BATCH: n_throughput}
    examples = _unpadded_examples(models, batches, max(n_latency, n_throughput * THROUGHPUT_BATCH))
    calls: dict[str, dict[int, list[dict]]] = {}
    for name, model in models.items():
        ex, pad_id = examples[name], model.config.pad_token_id or 0
        calls[name] = {
            size: [
                model_inputs(pad_batch([ex[(j * size + i) % len(ex)] for i in range(size)], pad_id), model)
                for j in range(n)
            ]
            for size, n in n_calls.items()
        }
    for name, model in models.items():
        for size, n in n_calls.items():
            for j in range(WARMUP_CALLS):
                model(**calls[name][size][j % n])
    seconds = {name: {size: [float("inf")] * n for size, n in n_calls.items()} for name in models}
    for _ in range(TIMING_ROUNDS):
        for size, n in n_calls.items():
            for j in range(n):
                for name, model in models.items():
                    start = time.perf_counter()
                    model(**calls[name][size][j])
                    seconds[name][size][j] = min(seconds[name][size][j], time.perf_counter() - start)
    return {
        name: {
            "latency_ms": 1000 * statistics.median(s[1]),
            "throughput": THROUGHPUT_BATCH * len(s[THROUGHPUT_BATCH]) / sum(s[THROUGHPUT_BATCH]),
        }
        for name, s in seconds.items()
    }


def check_requirements(
    teacher: nn.Module, student: nn.Module, batches: Iterable[dict], require: list[str], out_dir: Path, n_latency: int
) -> dict[str, float]:
    """`distill.require` before training: the untrained student's size and CPU speed against the teacher's, timed as
    the report times them (`measure_speed`), so that a student that cannot meet its budget is not trained. Writes
    `precheck.json` (the figures, flattened as `ratio.throughput`, and the bounds missed) into `out_dir`; raises a
    one-line UserError naming the first bound missed. Leaves the models' modes and every RNG as it found them."""
    from helper.training import rng_states, set_rng_states

    models = {"teacher": teacher, "student": student}
    modes = {name: [m.training for m in model.modules()] for name, model in models.items()}
    rng = rng_states()  # a DataLoader's iterator draws its base seed from torch's RNG
    try:
        speed = measure_speed(models, batches, n_latency=n_latency)
    finally:
        set_rng_states(rng)
        for name, model in models.items():
            for m, mode in zip(model.modules(), modes[name]):
                m.training = mode
    figures = {
        name: {"params": sum(p.numel() for p in model.parameters()), **speed[name]} for name, model in models.items()
    }
    figures["ratio"] = {k: _ratio(figures["student"][k], figures["teacher"][k]) for k in SHAPE_FIGURES}
    flat = {f"{part}.{k}": figures[part][k] for part in REPORT_PARTS for k in SHAPE_FIGURES}
    missed = []
    for text in require:
        figure, op, bound = parse_bound(text)
        if flat[figure] is None or not bound_holds(flat[figure], op, bound):
            missed.append(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"require": require, "figures": flat, "missed": missed, "met": not missed}
    (out_dir / "precheck.json").write_text(json.dumps(record, indent=2) + "\n")
    shown = ", ".join(f"{parse_bound(t)[0]} {flat[parse_bound(t)[0]]:.3g}" for t in require)
    if missed:
        raise UserError(
            f"distill.require: {missed[0]!r} is not met by the untrained student ({shown}; timed as the report times "
            f"it, {out_dir / 'precheck.json'}); it is not trained"
        )
    print(f"distill.require: met before training ({shown})", flush=True)
    return flat


def served_size(onnx_file: Path) -> dict[str, int]:
    """`dir_bytes`: all files of the ONNX directory (both ONNX files, config, tokenizer); `model_bytes`: the file."""
    return {
        "dir_bytes": sum(f.stat().st_size for f in onnx_file.parent.rglob("*") if f.is_file()),
        "model_bytes": onnx_file.stat().st_size,
    }


def disk_size(hf_dir: str | Path) -> dict[str, int]:
    """`dir_bytes`: all files under an HF model directory; `model_bytes`: its `*.safetensors` weights."""
    root = Path(hf_dir)
    weights = sorted(root.glob("*.safetensors"))
    if not weights:
        raise UserError(f"report: no *.safetensors weights in {root} (export models with helper.checkpoint.export_hf)")
    return {
        "dir_bytes": sum(f.stat().st_size for f in root.rglob("*") if f.is_file()),
        "model_bytes": sum(f.stat().st_size for f in weights),
    }


def machine_info() -> dict:
    processor = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        processor = names[0] if names else processor
    return {
        "cores": os.cpu_count(),
        "processor": processor,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


RATIO_KEYS = ("acc", "f1", "latency_ms", "throughput", "model_bytes")  # what the served rows are compared on


def _ratio(student: float, teacher: float) -> float | None:
    return student / teacher if teacher else None


def _fmt_ratio(r: float | None, fmt: str) -> str:
    return "n/a" if r is None else format(r, fmt)


def summary_line(ratio: dict) -> str:
    """e.g. `student keeps 96.8% of teacher accuracy at 2.9x throughput, 0.42x size` (all student / teacher)."""
    acc = None if ratio["acc"] is None else 100 * ratio["acc"]
    return (
        f"student keeps {_fmt_ratio(acc, '.1f')}% of teacher accuracy at {_fmt_ratio(ratio['throughput'], '.1f')}x "
        f"throughput, {_fmt_ratio(ratio['model_bytes'], '.2f')}x size"
    )


def write_report(
    teacher: nn.Module,
    student: nn.Module,
    teacher_dir: str | Path,
    student_dir: str | Path,
    eval_batches: Iterable[dict],
    split_name: str,
    out_dir: str | Path,
    *,
    n_latency: int = 20,
    n_throughput: int = 5,
    validation_sets: dict[str, Iterable[dict]] | None = None,
    served: dict[str, nn.Module] | None = None,
) -> str:
    """Compare teacher and student; write report.md, report.json and report.png into `out_dir`; return the summary.

    Both models are moved to CPU in fp32 and eval mode, in place. `eval_batches` is iterated several times (a
    DataLoader or a list), `split_name` says which split it is. Sizes are those of the exported HF directories.
    `served`: the student as served (`helper.serving.OnnxClassifier` per backend, `onnx` and `onnx-int8`), scored and
    timed in the same interleaved run; its sizes are those of the ONNX files.
    """
    models = {"teacher": teacher.to("cpu", torch.float32), "student": student.to("cpu", torch.float32)}
    models |= {f"student:{backend}": model for backend, model in (served or {}).items()}
    dirs = {"teacher": Path(teacher_dir), "student": Path(student_dir)}
    scores = {name: evaluate(model, eval_batches, key=view_of(name)) for name, model in models.items()}
    speed = measure_speed(models, eval_batches, n_latency=n_latency, n_throughput=n_throughput)
    figures = {
        name: {
            "acc": scores[name]["acc"],
            "f1": scores[name]["f1"],
            "params": sum(p.numel() for p in models[view_of(name)].parameters()),
            **(disk_size(dirs[name]) if name in dirs else served_size(model.path)),
            **speed[name],
        }
        for name, model in models.items()
    }
    assert all(tuple(f) == REPORT_FIGURES for f in figures.values())  # what sweeps' constraints read
    ratio = {k: _ratio(figures["student"][k], figures["teacher"][k]) for k in figures["teacher"]}
    as_served = {
        backend: {
            **figures[f"student:{backend}"],
            "vs_teacher": {k: _ratio(figures[f"student:{backend}"][k], figures["teacher"][k]) for k in RATIO_KEYS},
            "vs_student": {k: _ratio(figures[f"student:{backend}"][k], figures["student"][k]) for k in RATIO_KEYS},
        }
        for backend in served or {}
    }
    per_set = {  # several validation sets: accuracy and macro-F1 of both models on each
        name: {who: evaluate(models[who], batches, key=who) for who in ("teacher", "student")}
        for name, batches in (validation_sets or {}).items()
    }
    summary = summary_line(ratio)
    report = {
        "summary": summary,
        "split": split_name,
        "n_examples": scores["teacher"]["n"],
        "teacher": figures["teacher"],
        "student": figures["student"],
        "ratio": ratio,
        "validation_sets": per_set,
        "served": as_served,
        "dirs": {name: str(d) for name, d in dirs.items()},
        "speed_setup": {
            "device": "cpu",
            "dtype": "float32",
            "latency_batch": 1,
            "latency_calls": n_latency,
            "throughput_batch": THROUGHPUT_BATCH,
            "throughput_calls": n_throughput,
            "warmup_calls": WARMUP_CALLS,
            "timing_rounds": TIMING_ROUNDS,
        },
        "machine": machine_info(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    fig = _chart(report)
    fig.savefig(out / "report.png", dpi=110)
    print(summary)
    return summary


def _markdown(r: dict) -> str:
    t, s, q = r["teacher"], r["student"], r["ratio"]
    rows = [
        (f"accuracy ({r['split']})", lambda v: f"{100 * v:.2f}%", "acc", ".3f"),
        (f"macro-F1 ({r['split']})", lambda v: f"{100 * v:.2f}%", "f1", ".3f"),
        ("parameters", lambda v: f"{v / 1e6:.2f}M", "params", ".2f"),
        ("model size (safetensors)", lambda v: f"{v / 1e6:.1f} MB", "model_bytes", ".2f"),
        ("exported directory size", lambda v: f"{v / 1e6:.1f} MB", "dir_bytes", ".2f"),
        ("CPU latency, batch 1 (median ms/example)", lambda v: f"{v:.2f}", "latency_ms", ".2f"),
        (f"CPU throughput, batch {THROUGHPUT_BATCH} (examples/s)", lambda v: f"{v:.1f}", "throughput", ".2f"),
    ]
    table = ["| | teacher | student | student / teacher |", "|---|---:|---:|---:|"]
    table += [f"| {label} | {fmt(t[k])} | {fmt(s[k])} | {_fmt_ratio(q[k], rfmt)} |" for label, fmt, k, rfmt in rows]
    for name, both in r.get("validation_sets", {}).items():
        acc_t, acc_s = both["teacher"]["acc"], both["student"]["acc"]
        table.append(
            f"| accuracy (validation set {name}) | {100 * acc_t:.2f}% | {100 * acc_s:.2f}% | "
            f"{_fmt_ratio(_ratio(acc_s, acc_t), '.3f')} |"
        )
    m, sp = r["machine"], r["speed_setup"]
    return "\n".join(
        [
            "# Teacher vs student",
            "",
            f"**{r['summary']}**",
            "",
            *table,
            "",
            *_served_table(r),
            f"- Accuracy and macro-F1: the **{r['split']}** split, {r['n_examples']} examples.",
            f"- Speed: CPU, fp32, eval mode, `torch.inference_mode()`, {m['torch_threads']} torch threads; one run "
            f"with the two models interleaved call by call after {sp['warmup_calls']} warm-up calls each, every call "
            f"timed in {sp['timing_rounds']} rounds and counted with its fastest. Real "
            f"{r['split']} examples re-batched and padded to each batch's longest: latency is the median of "
            f"{sp['latency_calls']} batch-1 calls, throughput is examples / total time over {sp['throughput_calls']} "
            f"batch-{sp['throughput_batch']} calls. Tokenization is not timed.",
            f"- Sizes: the exported Hugging Face directories, teacher `{r['dirs']['teacher']}`, student "
            f"`{r['dirs']['student']}` (MB = 10^6 bytes).",
            f"- Machine: {m['cores']} cores, {m['processor']}; torch {m['torch']}, transformers {m['transformers']}, "
            f"Python {m['python']}; {r['date']}.",
            "",
        ]
    )


def _served_table(r: dict) -> list[str]:
    """The student as served (PyTorch fp32, ONNX fp32, ONNX int8), each against the teacher and the PyTorch student;
    nothing when the run exported no ONNX."""
    if not r.get("served"):
        return []
    s, t = r["student"], r["teacher"]
    rows = [("PyTorch fp32 (the student)", s, {k: _ratio(s[k], t[k]) for k in RATIO_KEYS}, None)]
    rows += [(SERVED_NAMES.get(b, b), f, f["vs_teacher"], f["vs_student"]) for b, f in r["served"].items()]
    lines = [
        "## The student as served",
        "",
        "| | accuracy | macro-F1 | latency, batch 1 (ms) | throughput, batch 32 (ex/s) | model file (MB) | throughput "
        "/ teacher | throughput / PyTorch student | size / teacher | accuracy − PyTorch student (points) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, f, vs_t, vs_s in rows:
        lines.append(
            f"| {label} | {100 * f['acc']:.2f}% | {100 * f['f1']:.2f}% | {f['latency_ms']:.2f} | {f['throughput']:.1f} "
            f"| {f['model_bytes'] / 1e6:.1f} | {_fmt_ratio(vs_t['throughput'], '.2f')}x | "
            f"{'1.00x' if vs_s is None else _fmt_ratio(vs_s['throughput'], '.2f') + 'x'} | "
            f"{_fmt_ratio(vs_t['model_bytes'], '.2f')}x | {100 * (f['acc'] - s['acc']):+.2f} |"
        )
    return [
        *lines,
        "",
        "- ONNX rows: helper/serving.py's exports (`<student>_onnx/`), run by ONNX Runtime on CPU with as many "
        "intra-op threads as torch, in the same interleaved run; size: the ONNX file.",
        "",
    ]


def _chart(r: dict) -> Figure:
    """Three bar panels: accuracy and macro-F1, throughput, model size."""
    names = ("teacher", "student")
    colors = [COLORS[n] for n in names]
    fig = Figure(figsize=(13, 4.4), layout="constrained")
    ax_acc, ax_thr, ax_size = fig.subplots(1, 3)
    width = 0.38
    for i, name in enumerate(names):
        values = [100 * r[name]["acc"], 100 * r[name]["f1"]]
        bars = ax_acc.bar([j + (i - 0.5) * width for j in range(2)], values, width, label=name, color=colors[i])
        ax_acc.bar_label(bars, fmt="%.1f", padding=2)
    ax_acc.set_xticks(range(2), ["accuracy", "macro-F1"])
    ax_acc.set_ylim(0, 125)
    ax_acc.set_yticks(range(0, 101, 20))
    ax_acc.set_ylabel("%")
    ax_acc.set_title(f"{r['split']} split (n={r['n_examples']})")
    ax_acc.legend(loc="upper center", ncols=2)
    panels = (
        (ax_thr, "throughput", lambda v: v, "%.1f", "examples/s", f"CPU throughput, batch {THROUGHPUT_BATCH}"),
        (ax_size, "model_bytes", lambda v: v / 1e6, "%.1f", "MB", "model size (safetensors)"),
    )
    for ax, key, scale, fmt, unit, title in panels:
        bars = ax.bar(names, [scale(r[n][key]) for n in names], color=colors)
        ax.bar_label(bars, fmt=fmt, padding=2)
        ax.set_ylim(0, 1.15 * max(scale(r[n][key]) for n in names))
        ax.set_ylabel(unit)
        ax.set_title(f"{title}: student {_fmt_ratio(r['ratio'][key], '.2f')}x")
    fig.suptitle(r["summary"], fontsize=13)
    return fig


def write_retrieval_report(
    distiller,
    metrics: dict[str, float],
    split: str,
    teacher_dir: str | Path,
    students_dir: str | Path,
    batches: list[dict],
    out_dir: str | Path,
    *,
    n_latency: int = 20,
    n_throughput: int = 5,
) -> dict[str, str]:
    """The cross-lingual report of a parallel-text run (`GeneralMultiDistiller`): per student and language, translation
    retrieval both ways and the embedding MSE next to the teacher's own retrieval (from `metrics`, the run's
    metrics.json, on `split`), and each student's CPU speed and size against the teacher's (its exported directory
    under `students_dir`). Writes report.md and report.json into `out_dir`; returns {student key: summary line}."""
    teacher = distiller.teachers[0].to("cpu", torch.float32)
    view_t = distiller.teacher_views[0]
    pivot = distiller.language(view_t)
    rows, figures, summaries = [], {}, {}
    size_t = disk_size(teacher_dir)
    for key in distiller.students:
        model = distiller.exported_model(key).to("cpu", torch.float32)
        view_s = distiller.student_views[key]
        remapped = [{**b["views"][view_t], "student": b["views"][view_s]} for b in batches]
        speed = measure_speed(
            {"teacher": teacher, "student": model}, remapped, n_latency=n_latency, n_throughput=n_throughput
        )
        exported = next(name for name, (k, _) in distiller.export_names().items() if k == key)
        size_s = disk_size(Path(students_dir) / exported)
        params = {
            "teacher": sum(p.numel() for p in teacher.parameters()),
            "student": sum(p.numel() for p in model.parameters()),
        }
        ratio = {
            "throughput": _ratio(speed["student"]["throughput"], speed["teacher"]["throughput"]),
            "latency_ms": _ratio(speed["student"]["latency_ms"], speed["teacher"]["latency_ms"]),
            "model_bytes": _ratio(size_s["model_bytes"], size_t["model_bytes"]),
            "params": _ratio(params["student"], params["teacher"]),
        }
        langs = [distiller.language(v) for v in distiller.student_langs[key]]
        per_lang = {}
        for lang in langs:
            got = {name: metrics.get(f"{split}/{key}/{name}/{lang}") for name in ("retrieval", "retrieval_rev", "mse")}
            got["teacher_retrieval"] = metrics.get(f"teacher/{split}/retrieval/{lang}")
            got["teacher_retrieval_rev"] = metrics.get(f"teacher/{split}/retrieval_rev/{lang}")
            per_lang[lang] = got
            if lang != pivot:
                rows.append((key, lang, got))
        figures[key] = {
            "languages": per_lang,
            "speed": speed,
            "size": {"teacher": size_t, "student": size_s},
            "params": params,
            "ratio": ratio,
        }
        mean = metrics.get(f"{split}/{key}/retrieval/mean")
        teacher_mean = [per_lang[x]["teacher_retrieval"] for x in langs if x != pivot]
        teacher_mean = sum(teacher_mean) / len(teacher_mean) if teacher_mean and None not in teacher_mean else None
        summaries[key] = (
            f"{key}: retrieval {_pct(mean)} (teacher {_pct(teacher_mean)}) xx->{pivot} on {split}, at "
            f"{_fmt_ratio(ratio['throughput'], '.1f')}x throughput, {_fmt_ratio(ratio['model_bytes'], '.2f')}x size"
        )
    report = {
        "split": split,
        "teacher_language": pivot,
        "summaries": summaries,
        "students": figures,
        "dirs": {"teacher": str(teacher_dir), "students": str(students_dir)},
        "machine": machine_info(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    table = [
        f"| student | language | teacher xx->{pivot} | student xx->{pivot} | teacher {pivot}->xx | student {pivot}->xx "
        f"| MSE to teacher({pivot}) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, lang, got in rows:
        table.append(
            f"| {key} | {lang} | {_pct(got['teacher_retrieval'])} | {_pct(got['retrieval'])} | "
            f"{_pct(got['teacher_retrieval_rev'])} | {_pct(got['retrieval_rev'])} | {_num(got['mse'])} |"
        )
    speed_table = [
        "| model | parameters | model size (MB) | CPU latency, batch 1 (ms) | CPU throughput, batch 32 (examples/s) |",
        "|---|---:|---:|---:|---:|",
    ]
    first = next(iter(figures.values()))
    speed_table.append(
        f"| teacher | {first['params']['teacher'] / 1e6:.2f}M | {size_t['model_bytes'] / 1e6:.1f} | "
        f"{first['speed']['teacher']['latency_ms']:.2f} | {first['speed']['teacher']['throughput']:.1f} |"
    )
    for key, f in figures.items():
        r = f["ratio"]
        speed_table.append(
            f"| {key} | {f['params']['student'] / 1e6:.2f}M ({_fmt_ratio(r['params'], '.2f')}x) | "
            f"{f['size']['student']['model_bytes'] / 1e6:.1f} ({_fmt_ratio(r['model_bytes'], '.2f')}x) | "
            f"{f['speed']['student']['latency_ms']:.2f} | {f['speed']['student']['throughput']:.1f} "
            f"({_fmt_ratio(r['throughput'], '.2f')}x) |"
        )
    m = report["machine"]
    (out / "report.md").write_text(
        "\n".join(
            [
                "# Cross-lingual students vs teacher",
                "",
                *(f"- **{line}**" for line in summaries.values()),
                "",
                f"Translation retrieval on the **{split}** split: for each sentence, is the nearest sentence of the "
                "other language by cosine, among the whole split, its translation? The student's English side is its "
                "own embedding when it reads English, else the teacher's. MSE: the student's embedding of the "
                f"language against the teacher's of the {pivot} sentence.",
                "",
                *table,
                "",
                *speed_table,
                "",
                f"- Speed: CPU, fp32, {m['torch_threads']} torch threads, the teacher and each student interleaved "
                f"call by call on real {split} sentences (the teacher reading {pivot}, the student its first); "
                "sizes: the safetensors weights.",
                f"- Machine: {m['cores']} cores, {m['processor']}; torch {m['torch']}, "
                f"transformers {m['transformers']}; {report['date']}.",
                "",
            ]
        )
    )
    for line in summaries.values():
        print(line)
    return summaries


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.5f}"
