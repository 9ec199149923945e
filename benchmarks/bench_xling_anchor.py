"""Our cross-lingual distillation against the anchor, sentence-transformers' own recipe for the same job.

The job (Reimers & Gurevych 2020, arXiv:2004.09813): on Multi30k's parallel captions, a student that reads English and
one other language learns the English teacher's sentence embedding, student(en) ≈ teacher(en) and student(xx) ≈
teacher(en), by MSE. Both sides get the same student weights (layers 1 and 5 cut from all-MiniLM-L6-v2, saved once),
the same captions (the first `--train` lines of train.en / train.<lang>), epochs, batch size, learning rate, warm-up,
weight decay and torch threads:

  ours     `distillation_general.py`'s configuration (configs/distillation_xling.yaml, one student `--lang` reading en
           and `--lang`, SentMSE), the module and data module the stage builds, trained under a bare Trainer (no
           validation, no checkpoints: the training loop only); the teacher runs inside the first epoch (cached after)
  st       sentence-transformers' documented recipe (its `MSELoss`, `SentenceTransformerTrainer`; "Multilingual
           Models" in its docs): the teacher encodes the English captions first (its pipeline as published:
           Transformer, mean Pooling, Normalize), then the student trains on (english, non_english, label) rows
  st_raw   the same with the teacher's Normalize module left out, so that its targets are ours (mean pooling, not
           normalised): the loss is then the same and only the frameworks differ

Training examples/s: captions / (training seconds + the teacher's encoding seconds for st). Accuracy: xx→en and
en→xx translation retrieval on `test_2016_flickr` (1,000 captions, cosine, the student's own English embedding), the
stage's `retrieval_accuracy` for every model, next to the teacher's.

sentence-transformers (and accelerate, which its trainer needs) is no requirement of this repository:
  pip install --no-deps --target /tmp/st sentence-transformers accelerate   # then PYTHONPATH=/tmp/st
Run: PYTHONPATH=/tmp/st .venv/bin/python benchmarks/bench_xling_anchor.py --lang de --train 29000 --epochs 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    ROOT,
    TimedFit,
    add_threads,
    command,
    loadavg,
    minilm,
    quiet,
    save_result,
    set_threads,
)

MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"
VARIANTS = ("ours", "st", "st_raw")


def write_train_slice(lang: str, n: int, out: Path) -> dict[str, dict[str, str]]:
    """`data.text_files` for en and `lang`: the first `n` training captions (written to `out`), val and test whole."""
    files = {}
    for code in ("en", lang):
        lines = (MULTI30K / f"train.{code}").read_text(encoding="utf-8").splitlines()[:n]
        path = out / f"train.{code}"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files[code] = {
            "train": str(path),
            "validation": str(MULTI30K / f"val.{code}"),
            "test": str(MULTI30K / f"test_2016_flickr.{code}"),
        }
    return files


def build_ours(args, files: dict):
    """The general stage's module and data module for one student reading en and `args.lang`."""
    import pytorch_lightning as pl

    from helper.config import GeneralRunConfig, load_config
    from helper.stages import build_general

    cfg = load_config(
        GeneralRunConfig,
        ROOT / "configs" / "distillation_xling.yaml",
        [
            f"students=[{{key: {args.lang}, init_from_teacher: {{layers: [1, 5]}}, languages: [en, {args.lang}]}}]",
            f"data.text_files={files}",
            f"data.batch_size={args.batch}",
            f"optim.lr={args.lr}",
            f"optim.warmup_ratio={args.warmup}",
            f"trainer.seed={args.seed}",
            f"trainer.monitor=val/{args.lang}/retrieval/{args.lang}",
        ],
    )
    pl.seed_everything(args.seed, workers=True, verbose=False)
    job = build_general(cfg)
    return job.module, job.dm


def embed(model, tokenizer, texts: list[str], max_length: int, batch: int = 128):
    """Mean-pooled sentence embeddings of a bare encoder (the teacher's pooling, made as the stage makes it), (N, H)."""
    import torch

    from bert.recorder import FeatureRecorder

    out = []
    model.eval()
    with torch.no_grad(), FeatureRecorder(model, {"pooled": frozenset()}, "mean") as rec:
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i : i + batch], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")  # fmt: skip
            out.append(rec(**enc)[1].pooled)  # (B, H)
    return torch.cat(out)


def score(model, tokenizer, args) -> dict[str, float]:
    """Test retrieval both ways among the first `args.eval` captions, the model reading both languages."""
    lang, max_length = args.lang, args.max_length
    texts = {
        c: (MULTI30K / f"test_2016_flickr.{c}").read_text(encoding="utf-8").splitlines()[: args.eval]
        for c in ("en", lang)
    }
    from helper.metrics import retrieval_accuracy

    xx_en, en_xx = retrieval_accuracy(embed(model, tokenizer, texts[lang], max_length),
                                      embed(model, tokenizer, texts["en"], max_length))  # fmt: skip
    return {"xx_en": xx_en, "en_xx": en_xx}


def run_st(args, init: Path, files: dict, teacher_path: str, normalize: bool, out: Path) -> tuple[dict, object]:
    """sentence-transformers' recipe; (timing, the trained student's Transformer module)."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MSELoss

    teacher = SentenceTransformer(teacher_path, device="cpu")
    if not normalize:
        teacher = SentenceTransformer(modules=[m for m in teacher if type(m).__name__ != "Normalize"], device="cpu")
    student = SentenceTransformer(str(init), device="cpu")  # Transformer + mean Pooling, as the docs' student
    student.max_seq_length = teacher.max_seq_length = args.max_length
    en = Path(files["en"]["train"]).read_text(encoding="utf-8").splitlines()
    xx = Path(files[args.lang]["train"]).read_text(encoding="utf-8").splitlines()
    start = time.perf_counter()
    targets = teacher.encode(en, batch_size=args.batch, convert_to_numpy=True)  # (N, H)
    teacher_s = time.perf_counter() - start
    rows = Dataset.from_dict({"english": en, "non_english": xx, "label": targets.tolist()})
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out / "st_trainer"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch,
        learning_rate=args.lr, warmup_steps=args.warmup, weight_decay=0.01, lr_scheduler_type="linear",
        seed=args.seed, report_to="none", save_strategy="no", logging_steps=50, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(model=student, args=targs, train_dataset=rows, loss=MSELoss(student))
    result = trainer.train()
    train_s = float(result.metrics["train_runtime"])
    seconds = train_s + teacher_s
    timing = {"teacher_encode_s": teacher_s, "train_s": train_s, "seconds": seconds,
              "examples_per_s": len(en) * args.epochs / seconds}  # fmt: skip
    return timing, student[0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lang", default="de", choices=["de", "fr", "cs"])
    parser.add_argument("--train", type=int, default=29000, help="training captions (the first N lines)")
    parser.add_argument("--eval", type=int, default=1000, help="test captions to retrieve among (the first N)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=float, default=0.05)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_xling_anchor")
    parser.add_argument("--result", type=Path, default=ROOT / "benchmarks" / "results" / "xling_anchor.json")
    add_threads(parser, default=1)
    args = parser.parse_args(argv)
    if not MULTI30K.is_dir():
        raise SystemExit(f"error: {MULTI30K} not found (Multi30k captions, ../shared/data/multi30k)")
    if any(v.startswith("st") for v in args.variants):
        try:
            import accelerate  # noqa: F401 - sentence-transformers' trainer needs it
            import sentence_transformers  # noqa: F401
        except ImportError as err:
            raise SystemExit(f"error: {err}: pip install sentence-transformers accelerate (the docstring)") from None
    threads = set_threads(args.threads)
    quiet()
    load_before = loadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    files = write_train_slice(args.lang, args.train, args.out)

    from transformers import AutoModel, AutoTokenizer

    teacher_path = minilm()
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    teacher = AutoModel.from_pretrained(teacher_path)
    results: dict = {"teacher": score(teacher, tokenizer, args)}

    module, dm = build_ours(args, files)
    init = args.out / "init"
    module.students[args.lang].save_pretrained(init)  # the same first weights for every variant
    tokenizer.save_pretrained(init)
    for name in args.variants:
        print(f"{name}: training on {args.train} captions x {args.epochs} epoch(s) ...", flush=True)
        if name == "ours":
            start = time.perf_counter()
            TimedFit(module, dm).fit(args.epochs)
            seconds = time.perf_counter() - start
            timing = {"seconds": seconds, "examples_per_s": args.train * args.epochs / seconds}
            trained = module.students[args.lang]
        else:
            timing, transformer = run_st(args, init, files, teacher_path, name == "st", args.out)
            trained = transformer.auto_model
        results[name] = {**timing, **score(trained, tokenizer, args)}
        print(f"{name}: {results[name]}", flush=True)
    ours = results.get("ours")
    ratios = {
        f"ours_x_{name}_examples_per_s": ours["examples_per_s"] / results[name]["examples_per_s"]
        for name in ("st", "st_raw") if ours and name in results
    }  # fmt: skip
    result = {
        "command": command("benchmarks/bench_xling_anchor.py", argv),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"threads": threads, "student": "layers [1, 5] of all-MiniLM-L6-v2, its tokenizer"},
        "results": results,
        "ratios": ratios,
    }
    save_result(args.result, result, load_before)
    return result


if __name__ == "__main__":
    main()
