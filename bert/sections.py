"""Config sections: dataclasses that check their own values (`Section`), the rules they state (`Num`, `Check`, ...),
and `fit`, the one function that fits a value to a field's annotation, used by the constructors and by `build` (a
section from a mapping: what the YAML loader in `helper.config` calls).

Standard library only (and `bert.errors`): reading and checking a config never loads torch.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bert.errors import UserError


class ConfigError(UserError):
    """A bad value; `key` is relative to the section ("" for the section itself).

    Built directly (`OptimConfig(lr=-1)`) the message reads `optim.lr: -1.0 must be ...`; `build` re-raises it with the
    section's real dotted place, and the loader adds the file (`configs/x.yaml: teacher.dropout: ...`).
    """

    def __init__(self, section: str, key: str, problem: str):
        self.section, self.key, self.problem = section, key, problem
        super().__init__(f"{'.'.join(p for p in (section, key) if p)}: {problem}")


# ---------------------------------------------------------------------------------------------------------------------
# Rules: what a value must be


class Rule:
    """What a value must be: `ok(value)`, and `str(rule)` reads after "must be" in the error and in `--help`."""

    text = "valid"

    def ok(self, value: Any) -> bool:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.text

    def __or__(self, other: Rule) -> Rule:
        return Check(lambda v: self.ok(v) or other.ok(v), f"{self} or {other}")


class Check(Rule):
    def __init__(self, ok: Callable[[Any], bool], text: str):
        self._ok, self.text = ok, text

    def ok(self, value: Any) -> bool:
        return bool(self._ok(value))


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Num(Rule):
    """A finite number (an int where `integer`; never a bool, NaN or inf) within [lo, hi] (ends open where asked)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    none: bool = False  # None is allowed too
    also: tuple = ()  # values allowed outside the bounds, e.g. (-1,)

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.none
        if isinstance(v, bool) or not isinstance(v, int if self.integer else (int, float)):
            return False
        if v in self.also:
            return True
        if isinstance(v, float) and not math.isfinite(v):  # an int is finite (and may be too large for a float)
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        if self.lo is not None and self.hi is not None:
            what += f" in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            what += f" {'>' if self.lo_open else '>='} {_num(self.lo)}"
        elif self.hi is not None:
            what += f" {'<' if self.hi_open else '<='} {_num(self.hi)}"
        return " or ".join([*(["None"] if self.none else []), *map(_num, self.also), what])


def text_ok(v: Any) -> bool:
    """Not blank, one line (no \\n, \\r, \\u2028, ...: nothing `str.splitlines` splits at), no NUL, and valid
    Unicode (no lone surrogate, which no file name, log or UTF-8 file can hold)."""
    if not (isinstance(v, str) and v.strip() != "" and v.splitlines() == [v] and "\0" not in v):
        return False
    try:
        v.encode()
    except UnicodeEncodeError:
        return False
    return True


def name_ok(v: Any) -> bool:
    """A name usable in metric keys and directory names: letters, digits, `_`, `-`, `.` (not `.` or `..`), at most
    `MAX_NAME_BYTES` in UTF-8."""
    return (
        isinstance(v, str)
        and bool(v)
        and v not in (".", "..")
        and all(c.isalnum() or c in "_-." for c in v)
        and len(v.encode()) <= MAX_NAME_BYTES
    )


def _encoding_ok(v: Any) -> bool:
    """A codec that `open(encoding=...)` takes: not rot13, hex, base64 and the other bytes-to-bytes codecs."""
    if not text_ok(v):
        return False
    try:
        "".encode(v)
    except LookupError:
        return False
    return True


# The largest count or size a setting takes (int32). Products of a few (a bucket of 50 batches) stay below sys.maxsize,
# the limit of Python's range and islice and of int64 tensors: data.batch_size=10**20 crashed after one training step.
MAX_COUNT = 2**31 - 1
MAX_NAME_BYTES = 255  # a file or directory name on Linux, macOS and Windows

TEXT = Check(text_ok, "a non-empty one-line string")
TEXT_OR_NONE = Check(lambda v: v is None or text_ok(v), "None or a non-empty one-line string")
NAME = Check(name_ok, "a name of letters, digits, _ - .")
ENCODING = Check(_encoding_ok, "a text encoding Python knows (utf-8, latin-1, ...)")
POSITIVE = Num(0, lo_open=True)
NON_NEGATIVE = Num(0)
PROBABILITY = Num(0, 1)
FRACTION = Num(0, 1, hi_open=True)  # [0, 1)
DROPOUT = Num(0, 1, hi_open=True, none=True)
COUNT = Num(0, MAX_COUNT, integer=True)
AT_LEAST_1 = Num(1, MAX_COUNT, integer=True)
AT_LEAST_1_OR_NONE = Num(1, MAX_COUNT, integer=True, none=True)
SEED = Num(0, 2**32 - 1, integer=True)  # what numpy and Lightning's seed_everything accept


# ---------------------------------------------------------------------------------------------------------------------
# Types: the one checker, for the constructors and the loader alike


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def fit(tp: Any, value: Any, key: str, base: Any = None) -> Any:
    """`value` as the annotation `tp` wants it (int -> float, 32 -> "32" for a Literal, a mapping -> the section,
    with `base` as its defaults), or a `ConfigError` naming `key`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, {} if value is None else value, key + ".", base if isinstance(base, tp) else None)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        # the alternative of the value's own shape first, so that its error is the one reported
        for arg in sorted(args, key=lambda a: (typing.get_origin(a) is list) != isinstance(value, list)):
            if arg is not type(None):
                try:
                    return fit(arg, value, key, base)
                except UserError as err:
                    errors.append(err)
        raise errors[0]
    scalar = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    if origin is Literal:
        for choice in args:
            if value == choice or (scalar and str(value) == str(choice)):
                return choice
        raise ConfigError("", key, f"{value!r} is not one of {', '.join(map(str, args))}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError("", key, f"expected a list, got {value!r}")
        return [fit(args[0] if args else Any, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError("", key, f"expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {fit(kt, k, f"{key}.{k}"): fit(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if scalar:  # a string too: YAML 1.1 reads `5e-5` (no dot) as one
            try:
                return float(value)
            except (ValueError, OverflowError):  # OverflowError: an int beyond the float range
                pass
    elif tp is str:
        if scalar:
            return str(value)
    else:
        raise TypeError(f"config type {tp!r} of {key} is not supported")
    raise ConfigError("", key, f"expected {tp.__name__}, got {value!r}")


def build(cls: type, raw: Any, prefix: str = "", base: Any = None) -> Any:
    """`cls` from the mapping `raw`; keys it leaves out keep their value in `base` (the stage's default for this
    section, e.g. the distillation teacher's `runs/finetune/model`), else the class default. Errors name
    `prefix + key`. Where `cls.ONE_OF` lists alternatives, choosing one drops the defaults of the others."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError("", where, f"expected a mapping, got {raw!r}")
    hints, fields = type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        raise UserError(f"unknown key {prefix + str(unknown[0])!r} (choices in {where}: {', '.join(fields)})")
    one_of = getattr(cls, "ONE_OF", ())
    chosen = any(raw.get(k) is not None for k in one_of)
    kwargs = {}
    for name, f in fields.items():
        inherited = getattr(base, name) if base is not None else field_default(f)
        if name in raw:
            kwargs[name] = fit(hints[name], raw[name], prefix + name, inherited)
        elif chosen and name in one_of:
            kwargs[name] = None
        elif inherited is dataclasses.MISSING:
            raise UserError(f"missing required key {prefix + name!r}")
        else:
            kwargs[name] = copy.deepcopy(inherited)
    try:
        return cls(**kwargs)
    except ConfigError as err:  # the section named itself by its SECTION: name its real dotted place
        raise ConfigError("", prefix + err.key if err.key else where, err.problem) from None


class Section:
    """Base of the config dataclasses: `__post_init__` fits every field to its annotation, checks its rule in `RULES`,
    then runs the cross-field `check()`. Errors are `ConfigError`s naming `SECTION.key`."""

    SECTION = ""  # dotted place in the stage config, e.g. "optim", "student.init_from_teacher"
    RULES: dict[str, Rule] = {}

    def __post_init__(self) -> None:
        hints = type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                fitted = fit(hints[f.name], value, f.name)
            except ConfigError as err:
                self.fail(err.key, err.problem)
            if fitted is not value:
                object.__setattr__(self, f.name, fitted)  # frozen sections too
            rule = self.RULES.get(f.name)
            if rule is not None and not rule.ok(fitted):
                self.fail(f.name, f"{fitted!r} must be {rule}")
        self.check()

    def check(self) -> None:
        """Checks that involve several fields (override)."""

    def fail(self, key: str, problem: str) -> typing.NoReturn:
        raise ConfigError(self.SECTION, key, problem)
