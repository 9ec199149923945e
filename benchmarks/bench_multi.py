"""Two students trained together (`MultiDistiller`) against each trained alone (`BaseDistiller`), and a cipher
"second language" read by the student while the teacher reads English.

Timing: students of 2 and 3 layers cut from the teacher's layers [1, 5] and [1, 3, 5], sharing the embeddings when
together; Hinton KD (LogitKL, T = 4) + last-layer AttnMiniLM; SST-2 train slice, length-grouped batches of 32, dynamic
padding; no validation. Reported: the median epoch time of the pair against the sum of the two alone, with the
teacher cache off (every epoch) and on (epoch 1 fills it, epoch 2 reads it). Target: pair / sum <= 0.8 with the cache
off (the teacher runs once for both students instead of twice, and one embedding table is updated instead of two).
Each student's dev accuracy at the end, together and alone (the two cache settings are two runs of each). A short
warm-up fit first takes the process's one-time costs; then the three runs train epoch by epoch in turns, the order
rotating, so that a change of the machine's load hits them alike.

Cipher: a deterministic word-substitution cipher of SST-2 (a seeded permutation of the word types, so the cipher
text is made of the same vocabulary with other meanings). The teacher reads English, the 2-layer student reads the
cipher of the same sentence (LogitKL only: token-level losses need the same text); dev accuracy of that student on
the cipher dev set against the same student trained on the cipher's gold labels alone (HardCE).

The teacher is runs/sst2_teacher/model when present, else the pretrained MiniLM-L6 with an UNTRAINED head (then the
cipher accuracies say nothing about distillation, only the timings count).

Smoke run:  .venv/bin/python benchmarks/bench_multi.py --limit 256 --epochs 1 --out /tmp/multi.json [--tiny]
Full run:   .venv/bin/python benchmarks/bench_multi.py --threads 1
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    BATCH,
    MAX_LEN,
    OPTIM,
    ROOT,
    SST2,
    TimedFit,
    accuracy,
    add_threads,
    command,
    loadavg,
    quiet,
    rounded,
    save_result,
    set_threads,
    teacher_source,
    tiny_model_dir,
    turns,
)
from bert.loading import load_tokenizer  # noqa: E402
from data.multi import MultiDataModule  # noqa: E402
from helper.checkpoint import load_classifier  # noqa: E402
from helper.config import DataConfig, InitFromConfig, StudentConfig  # noqa: E402
from helper.distiller import BaseDistiller, MultiDistiller, Student, Teacher  # noqa: E402
from helper.students import cut_student  # noqa: E402

LAYERS = {"two": [1, 5], "three": [1, 3, 5]}
ADAPTORS = [{"name": "LogitKL", "temperature": 4.0, "weight": 1 / 16}, "AttnMiniLM"]


def cipher_map(sentences: list[str], seed: int = 0) -> dict[str, str]:
    """A seeded permutation of the word types of `sentences`: every word stands for another word."""
    words = sorted({w for s in sentences for w in s.split()})
    shuffled = words[:]
    random.Random(seed).shuffle(shuffled)
    return dict(zip(words, shuffled))


def write_csv(out: Path, limit: int | None) -> dict[str, str]:
    """SST-2 train (first `limit`) and dev as csv files with columns text, cipher, label."""
    splits = {s: (SST2 / f"stsa.binary.{f}").read_text().splitlines() for s, f in (("train", "train"), ("dev", "dev"))}
    rows = {s: [line.split(" ", 1) for line in lines if line.strip()] for s, lines in splits.items()}
    if limit:
        rows = {s: r[:limit] for s, r in rows.items()}
    table = cipher_map([t for r in rows.values() for _, t in r])
    paths = {}
    for split, pairs in rows.items():
        paths[split] = str(out / f"{split}.csv")
        with open(paths[split], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "cipher", "label"])
            w.writerows([t, " ".join(table[x] for x in t.split()), label] for label, t in pairs)
    return paths


def data(paths: dict[str, str], tokenizer, views: dict[str, str | None], seed: int = 0) -> MultiDataModule:
    cfg = DataConfig(
        source="csv", train=paths["train"], validation=paths["dev"], max_length=MAX_LEN, batch_size=BATCH,
        cache_dir=None, seed=seed,
    )  # fmt: skip
    dm = MultiDataModule(cfg, {name: (tokenizer, column) for name, column in views.items()})
    dm.setup("fit")
    return dm


def student(teacher, path: str, layers: list[int]):
    return cut_student(teacher, StudentConfig(init_from_teacher=InitFromConfig(layers=layers)), path)


def time_pair(path: str, dm, epochs: int, cache: bool) -> dict:
    """Epoch seconds of the two students together, and of each alone, epoch by epoch in turns (the order rotating, so
    that a change of load hits every run alike); each student's dev accuracy at the end."""
    fits: dict[str, TimedFit] = {}
    teacher = load_classifier(path, dm.label_names)
    students = [Student(k, student(teacher, path, layers), ADAPTORS) for k, layers in LAYERS.items()]
    pair = MultiDistiller([teacher], students, share={"embeddings": True}, optim=OPTIM, cache_teacher=cache)
    fits["pair"] = TimedFit(pair, dm)
    for key, layers in LAYERS.items():
        teacher = load_classifier(path, dm.label_names)
        module = BaseDistiller(teacher, student(teacher, path, layers), ADAPTORS, optim=OPTIM, cache_teacher=cache)
        fits[key] = TimedFit(module, dm)
    names = list(fits)
    for epoch in range(epochs):
        for name in turns(names, epoch):
            fits[name].fit(1)
    out: dict = {name: fit.seconds for name, fit in fits.items()}
    out["dev_acc"] = {
        "pair": {key: accuracy(model, dm, "en") for key, model in pair.students.items()},
        "alone": {key: accuracy(fits[key].module.student, dm, "en") for key in LAYERS},
    }
    summed = [a + b for a, b in zip(out["two"], out["three"])]
    out["pair_over_sum"] = [p / s for p, s in zip(out["pair"], summed)]
    return out


def cipher_run(path: str, dm, epochs: int) -> dict:
    """The 2-layer student on the cipher: distilled from the English-reading teacher, or on the gold labels alone."""
    out = {}
    for name, adaptors in (("kd_from_english_teacher", [ADAPTORS[0]]), ("gold_labels_only", ["HardCE"])):
        teacher = load_classifier(path, dm.label_names)
        s = student(teacher, path, LAYERS["two"])
        module = MultiDistiller([Teacher(teacher, view="en")], [Student("s", s, adaptors, view="xx")], dm, optim=OPTIM)
        TimedFit(module, dm).fit(epochs)
        out[name] = accuracy(s, dm, "xx")
    teacher = load_classifier(path, dm.label_names)
    out["teacher_on_english"] = accuracy(teacher, dm, "en")
    out["teacher_on_cipher"] = accuracy(teacher, dm, "xx")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=2000, help="train and dev examples (default 2000; 0: all)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (>= 2 to see the cache's epoch 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "multi.json")
    add_threads(parser)
    parser.add_argument("--skip", choices=["timing", "cipher"], nargs="*", default=[])
    parser.add_argument("--tiny", action="store_true", help="smoke run: a random 6-layer BERT of hidden 32 as teacher")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    quiet()
    with tempfile.TemporaryDirectory() as tmp:
        path, note = (tiny_model_dir(Path(tmp) / "tiny", 6), "TINY random BERT") if args.tiny else teacher_source()
        tokenizer = load_tokenizer(path)
        load_before = loadavg()
        result: dict = {"teacher": note, "layers": LAYERS, "adaptors": ADAPTORS, "epochs": args.epochs}
        paths = write_csv(Path(tmp), args.limit or None)
        if "timing" not in args.skip:
            dm = data(paths, tokenizer, {"en": None})
            result["train_examples"] = len(dm.datasets["train"])
            (Path(tmp) / "warm").mkdir()
            warm = data(write_csv(Path(tmp) / "warm", 2 * BATCH), tokenizer, {"en": None})  # one-time costs first
            teacher = load_classifier(path, warm.label_names)
            TimedFit(BaseDistiller(teacher, student(teacher, path, LAYERS["two"]), ADAPTORS, optim=OPTIM), warm).fit(1)
            for cache in ("off", "on"):
                timing = time_pair(path, dm, args.epochs, cache == "on")
                result[f"cache_{cache}"] = timing
                ratios = ", ".join(f"{r:.2f}" for r in timing["pair_over_sum"])
                print(f"cache {cache}: pair / (two + three) per epoch: {ratios} (target <= 0.8 with the cache off)")
                print(f"cache {cache}: dev accuracy {timing['dev_acc']}")
        if "cipher" not in args.skip:
            dm = data(paths, tokenizer, {"en": None, "xx": "cipher"})
            result["cipher"] = cipher_run(path, dm, args.epochs)
            print("cipher dev accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in result["cipher"].items()))
    result["command"] = command(__file__, argv)
    result = rounded(result)
    save_result(args.out, result, load_before)
    return result


if __name__ == "__main__":
    main()
