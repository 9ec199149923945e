"""General (task-agnostic) distillation, then fine-tuning on SST-2, against the same fine-tuning from other inits.

1. `distillation_general.py` with its defaults (teacher: the pretrained all-MiniLM-L6-v2 encoder; student: 2 layers,
   hidden 192, 12 heads, random init; MiniLMv2 Q-Q/K-K/V-V relations) on unlabelled text: the training sentences of
   SST-2, TREC and TweetEval emotion in ../shared/data together, labels dropped (written to <out>/texts.txt).
2. `finetune.py` on SST-2 (`--finetune-epochs`, lr 1e-4, seeds `--seeds`) of three encoders:
     general   the export of step 1
     random    the same architecture (2 layers, hidden 192), randomly initialised with the run's seed
     cut       layers 1 and 5 of the pretrained teacher (2 layers of hidden 384: wider, and 2x the parameters)
Reported: SST-2 test accuracy per init, mean and spread over the seeds, and the general stage's time.

A finished run of the same command is not repeated (`<out>/<run>.done.json`).
Run: .venv/bin/python benchmarks/bench_general.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    ROOT,
    SST2,
    SST2_OVERRIDES,
    command,
    loadavg,
    minilm,
    quiet,
    run_stage,
    save_result,
    summarise_test_acc,
)

SHARED = ROOT.parent / "shared" / "data"
INITS = ("general", "random", "cut")


def write_texts(out: Path) -> Path:
    """The training sentences of the three shared sets, one a line, labels dropped."""
    lines = [line.split(" ", 1)[1] for line in (SST2 / "stsa.binary.train").read_text().splitlines() if line.strip()]
    trec = SHARED / "trec" / "TREC.train.all"
    lines += [line.split(" ", 1)[1] for line in trec.read_text(errors="replace").splitlines() if line.strip()]
    lines += [line for line in (SHARED / "tweet_emotion" / "train_text.txt").read_text().splitlines() if line.strip()]
    path = out / "texts.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def save_init(kind: str, seed: int, out: Path) -> Path:
    """An encoder directory for the `random` or `cut` baseline (the tokenizer of the teacher)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from bert.families import get_family

    teacher = minilm()
    path = out / f"init_{kind}_s{seed}"
    if kind == "random":
        config = AutoConfig.from_pretrained(teacher)
        config.update({"num_hidden_layers": 2, "hidden_size": 192, "num_attention_heads": 12, "intermediate_size": 768})
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    else:
        model = AutoModel.from_pretrained(teacher)
        get_family(model).cut(model, [1, 5])
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="fine-tuning seeds")
    parser.add_argument("--general-epochs", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_general")
    parser.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "general.json")
    parser.add_argument("--general-extra", nargs="*", default=[], help="more overrides for step 1 (optim.lr=5e-4)")
    parser.add_argument("--inits", nargs="+", choices=INITS, default=list(INITS), help="encoders to fine-tune")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every stage (smoke runs)")
    args = parser.parse_args(argv)
    quiet()
    load_before = loadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    texts = write_texts(args.out)
    common = ["logger.loggers=[csv]", f"logger.output_dir={args.out}", *args.extra]
    general = [
        "distillation_general.py", f"data.train={texts}", f"trainer.max_epochs={args.general_epochs}",
        "logger.run_name=general", *common, *args.general_extra,
    ]  # fmt: skip
    general_seconds = run_stage(general, args.out, "general")
    print(f"general distillation: {general_seconds:.0f} s", flush=True)
    rows = {}
    for init in args.inits:
        runs = []
        for seed in args.seeds:
            model = args.out / "general" / "student" if init == "general" else save_init(init, seed, args.out)
            name = f"ft_{init}_s{seed}"
            cmd = [
                "finetune.py", *SST2_OVERRIDES, f"model.name={model}", "optim.lr=1e-4",
                f"trainer.max_epochs={args.finetune_epochs}", f"trainer.seed={seed}", f"logger.run_name={name}",
                *common,
            ]  # fmt: skip
            seconds = run_stage(cmd, args.out, name)
            metrics = json.loads((args.out / name / "metrics.json").read_text())
            runs.append({"seed": seed, "seconds": round(seconds, 1), **metrics})
            print(f"{name}: test acc {metrics['test/acc']:.4f}", flush=True)
        rows[init] = {**summarise_test_acc([r["test/acc"] for r in runs]), "runs": runs}
    result = {
        "texts": sum(1 for _ in texts.open()),
        "general_epochs": args.general_epochs,
        "general_extra": args.general_extra,
        "general_seconds": round(general_seconds, 1),
        "finetune_epochs": args.finetune_epochs,
        "seeds": args.seeds,
        "inits": rows,
        "command": command(__file__, argv),
    }
    save_result(args.result, result, load_before)
    for init, row in rows.items():
        print(f"{init:>8}: {100 * row['test_acc_mean']:.2f} +- {100 * row['test_acc_std']:.2f}")
    return result


if __name__ == "__main__":
    main()
