"""Cost of the attention heatmap (`helper.heatmap.AttentionHeatmap`) per validation, in milliseconds.

One validation's drawing of a 32-token example: the teacher's and the student's recorded forward, the figure, the PNG
under the run directory, and the image handed to a logger with `log_image`. Two logger cases: none (CSV only) and
wandb (`wandb.Image` of what the callback hands over, as `WandbLogger.log_image` builds it; no wandb run is started).
Teacher all-MiniLM-L6-v2, student cut from its layers 1 and 5 (`--tiny`: a random BERT of hidden 32). Median of
`--repeats` draws after one warm-up draw. Target: <= 200 ms.

Run: .venv/bin/python benchmarks/bench_heatmap.py [--repeats N] [--tiny] [--label TEXT] [--out PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from benchmarks.common import (  # noqa: E402
    ROOT,
    add_threads,
    loadavg,
    quiet,
    save_result,
    set_threads,
    teacher_source,
    tiny_model_dir,
)
from helper.config import InitFromConfig, StudentConfig  # noqa: E402
from helper.heatmap import AttentionHeatmap  # noqa: E402
from helper.students import cut_student  # noqa: E402

TOKENS = 32
TARGET_MS = 200.0
SENTENCE = (
    "the film is a gorgeous , witty and seductive ride , although its second half drags and the ending feels rushed "
    "and far too long for what it has to say about love , loss and the movies ."
)


class WandbLike:
    """`log_image` as `WandbLogger` does it, up to the upload: one `wandb.Image` per image."""

    def __init__(self):
        import wandb

        self.wandb = wandb

    def log_image(self, key: str, images: list, step: int | None = None, **kwargs) -> None:
        self.last = [self.wandb.Image(img) for img in images]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed draws per case (median)")
    parser.add_argument("--tiny", action="store_true", help="a random BERT of hidden 32 instead of the MiniLM")
    add_threads(parser, default=1)
    parser.add_argument("--label", default="", help="a note stored in the JSON (e.g. before/after)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "heatmap.json")
    args = parser.parse_args(argv)
    quiet()
    set_threads(args.threads)
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_model_dir(Path(tmp) / "tiny") if args.tiny else teacher_source()[0]
        tokenizer = AutoTokenizer.from_pretrained(path)
        teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
        layers = [0, 1] if args.tiny else [1, 5]
        cfg = StudentConfig(init_from_teacher=InitFromConfig(layers=layers))
        student = cut_student(teacher, cfg, path).eval()
        enc = tokenizer([SENTENCE], truncation=True, max_length=TOKENS, padding="max_length", return_tensors="pt")
        assert int(enc["attention_mask"].sum()) == TOKENS
        callback = AttentionHeatmap(Path(tmp) / "attention")
        callback.example = {k: v for k, v in enc.items()}
        module = SimpleNamespace(teacher=teacher, student=student, device=torch.device("cpu"))
        cases = {"png only": [], "png + wandb image": [WandbLike()]}
        times: dict[str, list[float]] = {c: [] for c in cases}
        for r in range(args.repeats + 1):
            for case, loggers in cases.items():
                trainer = SimpleNamespace(
                    datamodule=SimpleNamespace(tokenizer=tokenizer, student_tokenizer=None),
                    current_epoch=r,
                    global_step=r,
                    loggers=loggers,
                )
                start = time.perf_counter()
                callback.draw(trainer, module)
                if r:  # the first round warms up
                    times[case].append(time.perf_counter() - start)
        pngs = sorted((Path(tmp) / "attention").glob("*.png"))
        png_kb = round(pngs[-1].stat().st_size / 1024, 1)
    med = {c: round(statistics.median(t) * 1e3, 1) for c, t in times.items()}
    result = {
        "what": f"ms per validation of AttentionHeatmap.draw on a {TOKENS}-token example (recorded forwards, figure, "
        "PNG, logger image); median of repeats",
        "label": args.label,
        "models": "tiny random BERT" if args.tiny else path,
        "threads": args.threads,
        "repeats": args.repeats,
        "median_ms": med,
        "min_ms": {c: round(min(t) * 1e3, 1) for c, t in times.items()},
        "png_kb": png_kb,
        "targets": {"ms_max": TARGET_MS, "met": max(med.values()) <= TARGET_MS},
    }
    for case, ms in med.items():
        print(f"{case:<20} {ms:8.1f} ms per validation (min {result['min_ms'][case]:.1f})")
    save_result(args.out, result, load_before)
    return result


if __name__ == "__main__":
    main()
