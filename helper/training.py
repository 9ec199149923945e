"""What every stage shares: optimiser and schedule, classification metrics, loggers, callbacks and the Trainer."""

from __future__ import annotations

import atexit
import concurrent.futures
import fcntl
import hashlib
import importlib.util
import json
import logging
import math
import os
import random
import re
import signal
import socket
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.logger import Logger

from bert.errors import UserError
from helper.config import LoggerConfig, OptimConfig, TrainerConfig, save_config, to_dict
from helper.progress import ProgressLines

# Every Lightning Trainer advertises its cloud logger ("Tip: ... litlogger"); the stages choose their loggers.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda r: "litlogger" not in r.getMessage())


def build_optimizer(named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD over the trainable parameters; no weight decay on vectors (biases, norm weights)."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)
    if not decay and not no_decay:
        raise UserError("optim: nothing to train (every parameter is frozen)")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    # The fused kernel: one pass over all parameters (8.7 ms instead of 74 ms per AdamW step of MiniLM-L6 on 2 cores).
    fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    adam = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int | None = None
) -> dict:
    """Linear warm-up over `warmup_ratio` of `total_steps` (or `warmup_epochs` x `steps_per_epoch`), then linear or
    cosine decay to 0 (or constant)."""
    if cfg.warmup_epochs is None:
        warmup = int(cfg.warmup_ratio * total_steps)
    else:
        warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def configure_optimizers(module: pl.LightningModule, named_params, cfg: OptimConfig) -> dict:
    """Optimiser plus a schedule sized from the Trainer's real number of optimisation steps (in all, and per epoch)."""
    optimizer = build_optimizer(named_params, cfg)
    trainer = module.trainer
    total = int(trainer.estimated_stepping_batches)  # also sets up the training data: num_training_batches is known
    per_epoch = None
    if cfg.warmup_epochs is not None:
        per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
    return {"optimizer": optimizer, "lr_scheduler": build_scheduler(optimizer, cfg, total, per_epoch)}


def run_dir(logger_cfg: LoggerConfig, stage: str) -> Path:
    return Path(logger_cfg.output_dir) / (logger_cfg.run_name or stage)


def _wandb_mode() -> str:
    """ "online" with credentials, else "offline"; `WANDB_MODE` set by the user wins."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    import wandb

    try:
        has_key = wandb.login(prompt=False, verify=False)
    except Exception:  # any failure to find credentials means offline, never a prompt or a crash
        has_key = False
    return "online" if has_key else "offline"


def _wandb_logger(cfg: LoggerConfig, out: Path, stage: str) -> tuple[str, WandbLogger | None]:
    """The wandb mode and the stage's `WandbLogger` (None when disabled), its run started."""
    mode = _wandb_mode()
    if mode == "disabled":
        return mode, None
    logger = WandbLogger(
        project=cfg.project,
        name=cfg.run_name or stage,
        save_dir=str(out),
        mode="offline" if mode == "dryrun" else mode,
        job_type=stage,
    )
    logger.experiment  # noqa: B018 - starts the run (wandb's service process: seconds)
    return mode, logger


_EARLY_WANDB: dict[tuple[str, str], concurrent.futures.Future] = {}


def start_loggers_early(cfg, stage: str) -> None:
    """Start the stage's wandb run in a background thread, so that its seconds of start-up overlap loading the data
    and the models; `build_loggers` takes it over (and waits for it). Nothing to do without wandb."""
    if "wandb" not in cfg.logger.loggers:
        return
    out = run_dir(cfg.logger, stage)
    out.mkdir(parents=True, exist_ok=True)
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wandb-start")
    _EARLY_WANDB[str(out), stage] = pool.submit(_wandb_logger, cfg.logger, out, stage)
    pool.shutdown(wait=False)


# `logger.loggers` that need a package of their own: name -> (module, what to `pip install`)
LOGGER_PACKAGES = {
    "wandb": ("wandb", "wandb"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "comet": ("comet_ml", "comet-ml"),
}


def check_loggers(cfg: LoggerConfig) -> None:
    """Each chosen logger's package is installed (one line naming the `pip install` if not)."""
    for name in cfg.loggers:
        module, package = LOGGER_PACKAGES.get(name, (None, None))
        if module is not None and importlib.util.find_spec(module) is None:
            raise UserError(f"logger.loggers: {name} needs its package: pip install {package}")


def _logger(name: str, cfg: LoggerConfig, out: Path, stage: str) -> Logger | None:
    """The Lightning logger `name`, writing under `out` (None: wandb disabled by WANDB_MODE)."""
    if name == "csv":
        return CSVLogger(save_dir=str(out), name="csv")  # csv/version_N: a resumed run keeps the old log
    if name == "wandb":
        early = _EARLY_WANDB.pop((str(out), stage), None)
        mode, logger = early.result() if early is not None else _wandb_logger(cfg, out, stage)
        if mode == "disabled":
            print("wandb: disabled by WANDB_MODE=disabled")
        elif mode in ("offline", "dryrun"):
            print(f"wandb: no credentials found, logging offline to {out / 'wandb'} (sync later with `wandb sync`)")
        return logger
    if name == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        logger = TensorBoardLogger(save_dir=str(out), name="tensorboard", default_hp_metric=False)
        print(f"tensorboard: logging to {logger.log_dir} (view with `tensorboard --logdir {out / 'tensorboard'}`)")
        return logger
    if name == "mlflow":
        from pytorch_lightning.loggers import MLFlowLogger

        # A SQLite store: MLflow 3 refuses its file store (`file:./mlruns`) unless MLFLOW_ALLOW_FILE_STORE is set.
        uri = f"sqlite:///{(out / 'mlflow.db').absolute()}"
        print(f"mlflow: logging to {uri} (view with `mlflow ui --backend-store-uri {uri}`)")
        return MLFlowLogger(
            experiment_name=cfg.project,
            run_name=cfg.run_name or stage,
            tracking_uri=uri,
            artifact_location=(out / "mlruns").absolute().as_uri(),
        )
    from pytorch_lightning.loggers import CometLogger

    # Offline unless COMET_START_ONLINE says otherwise (Lightning's `online=False` would disable the experiment).
    os.environ.setdefault("COMET_START_ONLINE", "false")
    print(f"comet: logging offline to {out / 'comet'} (upload later with `comet upload`)")
    return CometLogger(project=cfg.project, name=cfg.run_name or stage, offline_directory=str(out / "comet"))


def build_loggers(cfg: LoggerConfig, out: Path, stage: str, config_obj) -> list:
    """The loggers of `logger.loggers`, in that order, each with the run's config as its hyperparameters."""
    loggers = [lg for lg in (_logger(name, cfg, out, stage) for name in cfg.loggers) if lg is not None]
    for lg in loggers:
        lg.log_hyperparams(_flat(config_obj))
    return loggers


def _flat(cfg) -> dict:
    flat: dict = {}

    def walk(prefix: str, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix.rstrip(".")] = node if isinstance(node, (int, float, str, bool)) or node is None else str(node)

    walk("", to_dict(cfg))
    return flat


# ---------------------------------------------------------------------------------------------------------------------
# The run directory: checked before heavy work, and locked so that one run at a time writes it

LOCK_NAME = ".lock"
_HELD: dict[Path, int] = {}  # run directory -> open file descriptor holding its flock


def _rank_zero_env() -> bool:
    """Global rank 0 as far as the environment tells before the Trainer exists (DDP children have LOCAL_RANK set)."""
    from lightning_fabric.utilities.rank_zero import _get_rank

    return (_get_rank() or 0) == 0 and int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0))) == 0


def _owner(text: str) -> tuple[int | None, str]:
    try:
        data = json.loads(text)
        return int(data["pid"]), str(data["host"])
    except (ValueError, KeyError, TypeError):
        return None, "?"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_run_dir(out: Path) -> None:
    """Lock `out` for this process: `<out>/.lock` holds an exclusive `flock` and this process's pid and host.

    Another live run holding it: a one-line `UserError` naming the directory and its pid/host (the second run refuses;
    it never waits). A lock left by a run that died (the flock is gone with its process; on this host, its pid is not
    alive) is taken over with one warning line. Released by `release_run_dir` or at exit. Only global rank 0 locks.
    """
    out = Path(out).absolute()
    if out in _HELD or not _rank_zero_env():
        return
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    host, me = socket.gethostname(), os.getpid()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = True
    except BlockingIOError:
        locked = False
    except OSError:  # a file system without flock: the recorded pid decides below
        locked = None
    prev = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    pid, owner_host = _owner(prev) if prev else (None, host)
    running = locked is False or (pid is not None and pid != me and owner_host == host and _alive(pid))
    if running or (prev and owner_host != host):  # another machine: whether it still runs cannot be told
        os.close(fd)
        raise UserError(
            f"logger.run_name: {out} is in use by another run (pid {pid} on {owner_host}); wait for it to end or "
            f"choose another logger.run_name (if that run is gone, delete {path})"
        )
    if prev and pid != me:
        print(f"warning: {out}: taking over the lock of an earlier run that has ended (pid {pid} on {owner_host})")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": me, "host": host}).encode() + b"\n", 0)
    os.fsync(fd)
    _HELD[out] = fd


def release_run_dir(out: Path) -> None:
    """Give up the lock of `out` (if this process holds it): the file stays, empty and unlocked."""
    fd = _HELD.pop(Path(out).absolute(), None)
    if fd is not None:
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        os.close(fd)


@atexit.register
def _release_all() -> None:
    for out in list(_HELD):
        release_run_dir(out)


def check_precision(tcfg: TrainerConfig) -> None:
    """`16-mixed` needs CUDA; with accelerator auto this is only known here (the config checks `cpu`)."""
    if tcfg.precision != "16-mixed" or tcfg.accelerator not in ("auto", "gpu", "cuda") or torch.cuda.is_available():
        return
    if tcfg.accelerator == "auto" and torch.backends.mps.is_available():
        return
    raise UserError(
        f"trainer.precision: '16-mixed' needs a CUDA GPU and this machine has none (trainer.accelerator "
        f"{tcfg.accelerator}); use bf16-mixed or 32"
    )


def prepare_run(cfg, stage: str) -> Path:
    """Before any heavy work: settings only the machine can check, a writable run directory, and its lock."""
    if hasattr(cfg, "trainer"):
        check_precision(cfg.trainer)
        check_loggers(cfg.logger)
    out = run_dir(cfg.logger, stage)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UserError(f"logger.output_dir: cannot write the run directory {out} ({err.strerror or err})") from None
    claim_run_dir(out)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Callbacks: non-finite losses, Ctrl-C at a step boundary, periodic last.ckpt, what an exact resume needs


class NonFiniteLoss(UserError):
    """The training loss went NaN or infinite."""


class NonFiniteGuard(Callback):
    """Stops at the first non-finite training loss with one line: the step, the losses that went bad, the lr."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor) or torch.isfinite(loss).all():  # one check of this step's total
            return
        # This step's own losses (logging may skip steps): the module's `step_losses`, then the total.
        parts = {f"train/{k}": v for k, v in getattr(pl_module, "step_losses", {}).items()}
        parts["train/loss"] = loss.detach()
        bad = {k: float(v) for k, v in parts.items() if not torch.isfinite(v).all()}
        parts = sorted(bad, key=lambda k: k == "train/loss")  # the adaptors first, the total last
        raise NonFiniteLoss(
            f"training loss is not finite at step {trainer.global_step} (epoch {trainer.current_epoch + 1}/"
            f"{trainer.max_epochs}, batch {batch_idx + 1}): {', '.join(f'{k} = {bad[k]}' for k in parts)}; "
            f"lr {self.lr:.3g}; nothing exported (lower optim.lr, or set trainer.gradient_clip_val)"
        )


class RunCheckpoint(ModelCheckpoint):
    """last.ckpt every `every_n_train_steps` steps, at the end of training, and on a crash or Ctrl-C. Never after a
    non-finite loss (that step already changed the weights: last.ckpt keeps the previous save), and never at an
    epoch's last batch (the validation right after it saves; a checkpoint between the two would skip it on resume)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer, pl_module) -> None:
        """The final state too: `best` writes last.ckpt only when the validation metric improved."""
        super().on_train_end(trainer, pl_module)
        if not trainer.fast_dev_run and self._last_global_step_saved != trainer.global_step:
            self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Lightning's save on exception, said in our own line (its own reads "An KeyboardInterrupt was raised with
        message: , saved checkpoint to ...")."""
        if isinstance(exception, NonFiniteLoss) or not self._should_save_on_exception(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        path = self.format_checkpoint_name(metrics=candidates)
        self._save_checkpoint(trainer, path)
        self._save_last_checkpoint(trainer, candidates)
        what = "interrupted" if isinstance(exception, KeyboardInterrupt) else f"stopped by {type(exception).__name__}"
        if trainer.is_global_zero:
            step = trainer.global_step
            print(f"{what} at step {step}: saved {path}; go on with trainer.resume=last", file=sys.stderr)


class DeferredInterrupt(Callback):
    """Ctrl-C (SIGINT) during training stops at the end of the current optimiser step, not inside it, so the saved
    last.ckpt is a consistent point an exact resume can continue from. A second Ctrl-C stops at once. Only in a single
    process (under DDP every rank must stop at the same step) and in the main thread."""

    def __init__(self):
        self.pending = False
        self.previous = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or trainer.world_size != 1 or threading.current_thread() is not threading.main_thread():
            return
        self.pending = False
        self.previous = signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True
        print("\ninterrupt: stopping after this training step (Ctrl-C again to stop at once)")

    def _restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        progress = trainer.fit_loop.epoch_loop.batch_progress
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if self.pending and stepped and not progress.is_last_batch:
            self._restore()
            raise KeyboardInterrupt

    def on_train_end(self, trainer, pl_module) -> None:
        pending = self.pending and self.previous is not None
        self._restore()
        if pending:
            raise KeyboardInterrupt

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()


STATE_KEY = "bert_distill"  # our part of a checkpoint


def rng_states() -> dict:
    """Python, numpy, torch (and CUDA) RNG states, in types `torch.load(weights_only=True)` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def architecture(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def train_fingerprint(dm) -> dict | None:
    from data.data_module import split_fingerprint

    datasets = getattr(dm, "datasets", None) or {}
    return split_fingerprint(datasets["train"]) if "train" in datasets else None


def _settings(trainer, module) -> dict:
    optim = getattr(module, "optim", None)
    return {
        "optim.lr": getattr(optim, "lr", None),
        "trainer.max_epochs": trainer.max_epochs,
        "trainer.max_steps": trainer.max_steps,
    }


class ResumeState(Callback):
    """What Lightning's checkpoint lacks for an exact resume, under `checkpoint["bert_distill"]`: the RNG states, the
    position in the training data (epoch, batches done), fingerprints of the model architecture and of the training
    data, and the lr and epoch/step limits. On resume the data module's sampler starts at that position and the RNG
    states are restored when training starts (after the loaders are built); a changed `optim.lr` is applied to the
    restored schedule."""

    def __init__(self):
        self.loaded: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        fit = trainer.fit_loop
        in_epoch = fit.epoch_progress.current.started > fit.epoch_progress.current.processed
        arch = json.dumps(sorted(architecture(pl_module).items()))
        checkpoint[STATE_KEY] = {
            "rng": rng_states(),
            "epoch": fit.epoch_progress.current.processed,
            "batches_done": fit.epoch_loop.batch_progress.current.processed if in_epoch else 0,
            "architecture": hashlib.sha256(arch.encode()).hexdigest()[:16],
            "data": train_fingerprint(trainer.datamodule),
            "settings": _settings(trainer, pl_module),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.loaded = checkpoint.get(STATE_KEY)
        if self.loaded is not None and trainer.datamodule is not None:
            trainer.datamodule.train_start = (self.loaded["epoch"], self.loaded["batches_done"])

    def on_train_start(self, trainer, pl_module) -> None:
        if self.loaded is None:
            return
        state, self.loaded = self.loaded, None
        lr, old_lr = _settings(trainer, pl_module)["optim.lr"], state["settings"].get("optim.lr")
        if lr is not None and old_lr is not None and lr != old_lr:
            for config in trainer.lr_scheduler_configs:
                sched = config.scheduler
                if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                    sched.base_lrs = [lr * base / old_lr for base in sched.base_lrs]
                    for group, base, factor in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                        group["initial_lr"], group["lr"] = base, base * factor(sched.last_epoch)
                    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]
        replay = getattr(pl_module, "replay_teacher_cache", None)
        if replay is not None:
            replay(trainer, state["epoch"], state["batches_done"])
        set_rng_states(state["rng"])  # last: nothing between here and the next training step draws from them


def check_resume(ckpt: str | None, module: torch.nn.Module, dm, cfg) -> None:
    """Before `fit` resumes from `ckpt`: a readable checkpoint, of the same architecture and training data (one line
    naming what changed); a changed lr or epoch/step limit is allowed and said in one line."""
    if ckpt is None:
        return
    if Path(ckpt).stat().st_size == 0:
        raise UserError(f"trainer.resume: {ckpt} is empty (0 bytes: its write was cut off); resume from another")
    try:
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # not a zip file: torch's advice on `mmap` hides what is wrong
            if "mmap" not in str(err):
                raise
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
            raise ValueError("no state_dict in it")
    except Exception as err:  # any failure to read it is the same one-line answer
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise UserError(
            f"trainer.resume: {ckpt} is not a readable checkpoint ({type(err).__name__}: {first})"
        ) from None
    have, want = architecture_of(state["state_dict"]), architecture(module)
    if have != want:
        missing, new = sorted(set(have) - set(want)), sorted(set(want) - set(have))
        resized = sorted(k for k in set(have) & set(want) if have[k] != want[k])
        what = [f"{len(missing)} tensors gone (e.g. {missing[0]})"] if missing else []
        what += [f"{len(new)} new tensors (e.g. {new[0]})"] if new else []
        what += (
            [f"{len(resized)} resized (e.g. {resized[0]} {have[resized[0]]} -> {want[resized[0]]})"] if resized else []
        )
        raise UserError(
            f"trainer.resume: the model architecture differs from the checkpoint's ({'; '.join(what)}); resume with "
            "the same model settings, or start a new run"
        )
    ours = state.get(STATE_KEY) or {}
    data, now = ours.get("data"), train_fingerprint(dm)
    if data and now and data != now:
        raise UserError(
            f"trainer.resume: the training data differ from the checkpoint's ({data['examples']} examples, content "
            f"{data['sha256']} then; {now['examples']}, {now['sha256']} now); resume with the same data settings"
        )
    now_settings = {
        "optim.lr": getattr(getattr(module, "optim", None), "lr", None),
        "trainer.max_epochs": cfg.trainer.max_epochs,
        "trainer.max_steps": cfg.trainer.max_steps,
    }
    before = ours.get("settings") or {}
    changed = [f"{k} {before[k]} -> {v}" for k, v in now_settings.items() if k in before and before[k] != v]
    if changed:
        print(f"trainer.resume: changed since the checkpoint: {', '.join(changed)} (applied from here on)")
    print(f"trainer.resume: going on from {ckpt} (epoch {state.get('epoch')}, step {state.get('global_step')})")


def architecture_of(state_dict: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def build_trainer(cfg, stage: str, extra_callbacks: list | None = None) -> tuple[pl.Trainer, Path, str | None]:
    """The Trainer of a stage, its run directory, and the checkpoint to resume from (or None).

    `cfg` has `trainer` and `logger` sections. The run directory is locked for this process (`claim_run_dir`); the
    resolved config is written to `<run dir>/config.yaml`.
    """
    tcfg: TrainerConfig = cfg.trainer
    out = prepare_run(cfg, stage)
    ckpt_dir = out / "checkpoints"
    resume = resolve_resume(tcfg.resume, ckpt_dir)
    save_config(cfg, out / "config.yaml")
    pl.seed_everything(tcfg.seed, workers=True, verbose=False)
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=tcfg.monitor,
        mode=monitor_mode(tcfg.monitor),
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    # last.ckpt every `checkpoint_every_n_steps` steps, and on a crash or Ctrl-C (never over best.ckpt, which holds
    # validated weights); both best's and this one write the same last.ckpt.
    periodic = RunCheckpoint(
        dirpath=ckpt_dir,
        filename="last",
        every_n_epochs=0,
        every_n_train_steps=tcfg.checkpoint_every_n_steps or 0,
        save_on_exception=True,
        enable_version_counter=False,
    )
    callbacks = [
        NonFiniteGuard(),
        DeferredInterrupt(),
        ResumeState(),
        best,
        periodic,
        LearningRateMonitor(logging_interval="step"),
        *(extra_callbacks or []),
        *EXTRA_CALLBACKS.get(),
    ]
    if tcfg.track_grad_norm:
        callbacks.append(GradNorms(tcfg.grad_norm_type))
    lightning_clips = tcfg.grad_norm_type == 2  # Lightning's clipping uses the 2-norm; another p is clipped here
    if tcfg.gradient_clip_val is not None and not lightning_clips:
        callbacks.append(ClipGradNorm(tcfg.gradient_clip_val, tcfg.grad_norm_type))  # after GradNorms: logs unclipped
    interactive = sys.stderr.isatty()
    if not interactive:  # a log file or a pipe: plain lines instead of the bar
        callbacks.append(ProgressLines())
    if tcfg.early_stopping_patience is not None:
        callbacks.append(
            EarlyStopping(monitor=tcfg.monitor, mode=monitor_mode(tcfg.monitor), patience=tcfg.early_stopping_patience)
        )
    # Lightning's own use of a pytree API that torch deprecates: nothing a user can change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # The training sampler resumes mid-epoch itself (ResumeState), which Lightning cannot see.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    if resume is not None:  # a resumed run goes on writing its own checkpoints
        warnings.filterwarnings("ignore", message=re.escape(f"Checkpoint directory {ckpt_dir} exists and is not empty"))
    trainer = pl.Trainer(
        max_epochs=tcfg.max_epochs,
        max_steps=tcfg.max_steps,
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        strategy=tcfg.strategy,
        num_nodes=tcfg.num_nodes,
        precision=tcfg.precision,
        accumulate_grad_batches=tcfg.accumulate_grad_batches,
        gradient_clip_val=tcfg.gradient_clip_val if lightning_clips else None,
        deterministic=tcfg.deterministic,
        val_check_interval=whole_or_given(tcfg.val_check_interval),
        limit_train_batches=whole_or_given(tcfg.limit_train_batches),
        limit_val_batches=whole_or_given(tcfg.limit_val_batches),
        log_every_n_steps=tcfg.log_every_n_steps,
        fast_dev_run=tcfg.fast_dev_run,
        logger=build_loggers(cfg.logger, out, stage, cfg),
        callbacks=callbacks,
        default_root_dir=str(out),
        enable_progress_bar=interactive,
        num_sanity_val_steps=0,
    )
    return trainer, out, resume


# Callbacks added to every Trainer that `build_trainer` makes in the caller's context: the sweep's trial pruning
# (helper/sweep.py sets it around one stage run).
EXTRA_CALLBACKS: ContextVar[tuple[Callback, ...]] = ContextVar("extra_callbacks", default=())


class TrialPruning(Callback):
    """Optuna pruning from the validation curve: after each validation, `trial.report(<monitor>, global step)`; when
    `trial.should_prune()`, training stops (the run still takes its best weights, tests, exports and reports) and
    `pruned` is set. `trial` is an `optuna.Trial` (duck-typed: `report`, `should_prune`); Optuna's own Lightning
    callback lives in optuna-integration and subclasses the `lightning.pytorch` namespace, not `pytorch_lightning`."""

    def __init__(self, trial, monitor: str):
        self.trial, self.monitor, self.pruned = trial, monitor, False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        self.trial.report(float(value), step=trainer.global_step)
        if self.trial.should_prune():
            self.pruned, trainer.should_stop = True, True


class GradNorms(Callback):
    """`trainer.track_grad_norm`: the p-norm (`trainer.grad_norm_type`) of the gradient before each optimiser step
    (after unscaling, before clipping), in total (`grad_norm/total`) and per top-level part of the module
    (`grad_norm/student`, `grad_norm/adaptors`, `grad_norm/model`, ...)."""

    def __init__(self, norm_type: float = 2.0):
        self.norm_type = norm_type

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        parts: dict[str, list[torch.Tensor]] = {}
        for name, p in pl_module.named_parameters():
            if p.grad is not None:
                parts.setdefault(name.split(".")[0], []).append(p.grad.detach().float().norm(self.norm_type))
        if not parts:
            return
        norms = {part: torch.stack(n).norm(self.norm_type) for part, n in parts.items()}
        total = torch.stack(list(norms.values())).norm(self.norm_type)
        pl_module.log_dict({f"grad_norm/{k}": v for k, v in norms.items()} | {"grad_norm/total": total})


class ClipGradNorm(Callback):
    """`trainer.gradient_clip_val` with a `trainer.grad_norm_type` other than 2: the optimiser's gradients clipped to
    that p-norm before each step (after unscaling), as Lightning clips the 2-norm."""

    def __init__(self, max_norm: float, norm_type: float):
        self.max_norm, self.norm_type = max_norm, norm_type

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)


def monitor_mode(monitor: str) -> str:
    """A loss is minimised, a metric (accuracy, F1) maximised."""
    return "min" if monitor.endswith("loss") or "/mse/" in monitor else "max"


def whole_or_given(batches: int | float) -> int | float | None:
    """None for 1.0 (all batches: Lightning's own default, which it does not announce), else the value."""
    return None if isinstance(batches, float) and batches == 1.0 else batches


def resolve_resume(resume: str | None, ckpt_dir: Path) -> str | None:
    if resume is None:
        return None
    path = ckpt_dir / "last.ckpt" if resume == "last" else Path(resume)
    if not path.is_file():
        raise UserError(f"trainer.resume: no checkpoint at {path} (use 'last' or a path to a .ckpt file)")
    return str(path)


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """Path of the best checkpoint of the run (None under fast_dev_run, which saves none)."""
    cb = trainer.checkpoint_callback
    return cb.best_model_path or None if cb is not None else None


def load_best(module: pl.LightningModule, ckpt: str | None) -> None:
    """Load the weights of the best checkpoint back into `module` (no-op without one)."""
    if ckpt and module.__dict__.get("_loaded_checkpoint") != ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        module.__dict__["_loaded_checkpoint"] = ckpt


def export_module(module: pl.LightningModule, model: torch.nn.Module, tokenizer, out_dir, extra_files=None) -> Path:
    """Export `model` (part of `module`) as a Hugging Face directory (with `extra_files`, as `export_hf`): with the
    weights of the run's best checkpoint when `module.export_best` and the run has one, else as it is now."""
    from helper.checkpoint import export_hf

    trainer = module._trainer
    if module.export_best and trainer is not None:
        load_best(module, best_checkpoint(trainer))
    return export_hf(model, tokenizer, out_dir, extra_files)
