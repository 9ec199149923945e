"""Sweeps and searches over stage runs (`sweep.py`): the sweep file's sections, its checks, the plan, the workers.

A sweep file names the step(s) to run (a pipeline: e.g. `transfer_set.py`, then `distillation_ms.py`), a grid over
any `section.key` (and named `recipes`: sets of overrides), seeds, and/or an Optuna search (a space per key), an
objective and constraints read from each run's metrics.json and report.json. Every trial is one run of the last
step's script (`main(cfg)`, in a forked process of its worker: its own run directory, metrics.json and report);
an earlier step runs once per distinct configuration and is reused by every trial that needs it.

Optuna's storage is the record and the claim: the plan (grid x seeds, or the search's trial slots) is enqueued once
as waiting trials; each worker takes a waiting trial by moving it to running in the storage (one winner), so no
trial runs twice, on one machine (`--workers N`) or several (`--storage URL`). A worker beats a heartbeat while its
trial runs; a trial whose worker died is failed after the grace period and enqueued again (Optuna's
`RetryHeartbeatStaleTrialCallback`); a trial stopped by Ctrl-C is enqueued again at once, the same way. So a killed or
interrupted sweep, started again, runs exactly the trials that had not finished.

Reading and checking the sweep file needs no torch; the workers import the stages once and fork each trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib
import itertools
import json
import math
import multiprocessing
import os
import re
import resource
import signal
import socket
import sys
import time
import traceback
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bert.errors import UserError
from bert.sections import AT_LEAST_1, MAX_COUNT, NAME, SEED, TEXT, TEXT_OR_NONE, Check, Num, Section, type_hints
from helper import config as config_module
from helper.config import (
    METRICS,
    REFERENCE_STAGES,
    REPORT_FIGURES,
    REPORT_PARTS,
    ROOT,
    SHAPE_FIGURES,
    _section_type,
    load_config,
    parse_bound,
)

# script -> what its run leaves in the run directory for a later step (`${step name}` in overrides)
PRODUCTS = {
    "finetune.py": "model",
    "distillation_ms.py": "student",
    "distillation_ts_1st.py": "student",
    "distillation_ts_2nd.py": "student",
    "transfer_set.py": "transfer.parquet",
    "distillation_general.py": "student",
}
SCRIPTS = {script: (cls_name, yaml_file) for script, cls_name, yaml_file in REFERENCE_STAGES}
PLACEHOLDER = re.compile(r"\$\{([\w.-]+)\}")
RECIPE = "recipe"  # the grid or space key that picks one of `recipes`
# A trial's constraints on what its student has untrained (size, speed) stop it before training (`distill.require`),
# timings with this slack: on a busy machine they vary by several percent, and the report after training decides.
PRECHECK_SLACK = 0.9


# ---------------------------------------------------------------------------------------------------------------------
# The sweep file


@dataclass
class StepConfig(Section):
    """One stage of the pipeline; the last step is the trial, earlier ones run when its overrides name them."""

    SECTION = "steps[]"
    RULES = {
        "script": Check(lambda v: v in SCRIPTS, f"one of {', '.join(SCRIPTS)}"),
        "name": Check(lambda v: v is None or NAME.ok(v), "None or a name of letters, digits, _ - ."),
        "config": TEXT_OR_NONE,
    }

    script: str = "distillation_ms.py"  # the stage script
    name: str | None = None  # what later steps write as ${name}; default the script's name without .py
    config: str | None = None  # its YAML file; default configs/<the script's file>
    overrides: dict[str, Any] = field(default_factory=dict)  # section.key: value (nested mappings too)


@dataclass
class SpaceConfig(Section):
    """One key's search space: `choices`, or a range `low`..`high` (integers when both are; `log` scale, `step`)."""

    SECTION = "search.space"
    RULES = {"choices": Check(lambda v: v is None or bool(v), "None or a non-empty list")}

    choices: list[Any] | None = None  # values to choose from (any YAML: numbers, strings, lists, mappings)
    low: int | float | None = None  # range start (inclusive)
    high: int | float | None = None  # range end (inclusive)
    log: bool = False  # sample on a log scale (low > 0)
    step: int | float | None = None  # range step (not with log)

    def check(self) -> None:
        ranged = self.low is not None or self.high is not None
        if (self.choices is None) == (not ranged):
            self.fail("", "give either choices or low and high")
        if ranged:
            if self.low is None or self.high is None or not all(math.isfinite(v) for v in (self.low, self.high)):
                self.fail("", "a range needs finite low and high")
            if self.low >= self.high:
                self.fail("low", f"{self.low!r} must be below high {self.high!r} (an empty range)")
            if self.log and (self.low <= 0 or self.step is not None):
                self.fail("log", "a log scale needs low > 0 and no step")


@dataclass
class SearchConfig(Section):
    SECTION = "search"
    RULES = {
        "n_trials": AT_LEAST_1,
        "seed": SEED,
        "space": Check(bool, "a non-empty mapping of key: space"),
        "confirm": Num(0, MAX_COUNT, integer=True),
        "startup_trials": Num(0, MAX_COUNT, integer=True),
    }

    space: dict[str, SpaceConfig] = field(default_factory=dict)  # section.key (or recipe): its space
    n_trials: int = 20  # trials the search runs (per grid point)
    sampler: Literal["tpe", "random"] = "tpe"  # Optuna's TPE (with the constraints) or random sampling
    startup_trials: int = 10  # TPE: random draws before it models the results (Optuna's 10; fewer for short searches)
    pruner: Literal["median", "none"] = "median"  # stop trials whose validation curve is below the median
    seed: int = 0  # the sampler's seed
    confirm: int = 0  # afterwards, run the best this many configurations with the other `seeds` too


@dataclass
class ObjectiveConfig(Section):
    SECTION = "objective"
    RULES = {"metric": Check(lambda v: TEXT.ok(v) and v.startswith("val/"), "a validation metric val/...")}

    metric: str = "val/acc"  # a validation metric of the run (metrics.json), e.g. val/acc, val/f1, val/loss
    direction: Literal["maximize", "minimize"] = "maximize"


@dataclass
class SweepConfig(Section):
    """A sweep file (`sweep.py FILE`): see docs/sweeps.md."""

    SECTION = ""
    RULES = {
        "name": Check(lambda v: v is None or NAME.ok(v), "None or a name of letters, digits, _ - ."),
        "output_dir": TEXT,
        "steps": Check(bool, "a non-empty list of steps"),
        "seeds": Check(lambda v: bool(v) and len(set(v)) == len(v) and all(SEED.ok(s) for s in v), "distinct seeds"),
        "heartbeat_s": AT_LEAST_1,
        "threads": AT_LEAST_1,
    }

    steps: list[StepConfig] = field(default_factory=list)  # the pipeline; the last step is the trial
    name: str | None = None  # the study's name; default the file's name without .yaml
    output_dir: str = "runs/sweeps"  # everything goes to <output_dir>/<name>
    overrides: dict[str, Any] = field(default_factory=dict)  # section.key: value for every step that has the key
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name: overrides, picked by the key `recipe`
    grid: dict[str, list[Any]] = field(default_factory=dict)  # section.key (or recipe): the values to run
    seeds: list[int] = field(default_factory=lambda: [0])  # trainer.seed of the trials (a search: see confirm)
    search: SearchConfig | None = None  # an Optuna search over `search.space`
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    constraints: list[str] = field(default_factory=list)  # "<figure> >= <number>", e.g. "ratio.throughput >= 2"
    heartbeat_s: int = 30  # a trial whose worker is silent for twice this is run again
    threads: int = 1  # torch threads per trial


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """`{a: {b: 1}, c.d: 2}` -> `{a.b: 1, c.d: 2}`; lists and empty mappings are values."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def has_key(cls: type, dotted: str) -> bool:
    """Whether the config class `cls` has the dotted key (a free-form mapping such as `student.config` has any)."""
    head, _, rest = dotted.partition(".")
    fields = {f.name for f in dataclasses.fields(cls)}
    if head not in fields:
        return False
    if not rest:
        return True
    hint = type_hints(cls)[head]
    sub = _section_type(hint)
    if sub is not None:
        return has_key(sub, rest)
    return hint is Any or any(typing.get_origin(a) is dict for a in (hint, *typing.get_args(hint)))


def override(key: str, value: Any) -> str:
    """`key=value` with the value in YAML flow style, as the stage scripts read it."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def encode(value: Any) -> Any:
    """A value as an Optuna categorical choice (numbers, strings and None as they are; the rest as JSON)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


@dataclass
class Step:
    name: str
    script: str
    cls: type
    config: Path


@dataclass
class Plan:
    """A checked sweep: its file, steps, output directory, and the points to enqueue (grid values, seed, slot)."""

    cfg: SweepConfig
    source: str
    steps: list[Step]
    out: Path
    points: list[dict]
    constraints: list[tuple[str, str, float]]

    @property
    def name(self) -> str:
        return self.cfg.name

    def keys(self) -> list[str]:
        """The swept keys (grid, then space), then `seed`."""
        space = self.cfg.search.space if self.cfg.search else {}
        return [*self.cfg.grid, *(k for k in space if k not in self.cfg.grid), "seed"]


def load_plan(path: str | Path, overrides: list[str] = ()) -> Plan:
    """Read and check the sweep file: every line of bad input is found here, before any trial."""
    cfg = load_config(SweepConfig, path, overrides)
    source = str(path)

    def bad(problem: str) -> typing.NoReturn:
        raise UserError(f"{source}: {problem}")

    if cfg.name is None:
        cfg.name = Path(path).stem
    if not cfg.steps:
        bad("steps: give at least one step (e.g. - script: distillation_ms.py)")
    steps = []
    for s in cfg.steps:
        cls_name, yaml_file = SCRIPTS[s.script]
        config = Path(s.config) if s.config else ROOT / "configs" / yaml_file
        steps.append(Step(s.name or Path(s.script).stem, s.script, getattr(config_module, cls_name), config))
    names = [s.name for s in steps]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        bad(f"steps: two steps are named {dup!r}; give one a `name:`")

    def owners(key: str, where: str) -> list[int]:
        found = [i for i, s in enumerate(steps) if has_key(s.cls, key)]
        if not found:
            bad(f"{where}: unknown key {key!r}: no step's config has it (steps: {', '.join(s.script for s in steps)})")
        return found

    for key in flatten(cfg.overrides):
        owners(key, "overrides")
    for i, s in enumerate(cfg.steps):
        for key in flatten(s.overrides):
            if not has_key(steps[i].cls, key):
                bad(f"steps[{i}].overrides: unknown key {key!r} for {s.script}")
    for name, recipe in cfg.recipes.items():
        for key in flatten(recipe):
            owners(key, f"recipes.{name}")
    space = cfg.search.space if cfg.search else {}
    for where, keys in (("grid", cfg.grid), ("search.space", space)):
        for key in keys:
            if key == RECIPE:
                if not cfg.recipes:
                    bad(f"{where}: key {RECIPE!r} picks one of `recipes`, and the file has none")
            elif key in ("seed", "trainer.seed"):
                bad(f"{where}: {key!r}: list the seeds under `seeds:`")
            else:
                owners(key, where)
    for key, values in cfg.grid.items():
        if not isinstance(values, list) or not values:
            bad(f"grid.{key}: give a non-empty list of values")
        if key == RECIPE:
            unknown = [v for v in values if v not in cfg.recipes]
            if unknown:
                bad(f"grid.recipe: unknown recipe {unknown[0]!r} (recipes: {', '.join(cfg.recipes)})")
    for key, sp in space.items():
        if key in cfg.grid:
            bad(f"search.space.{key}: the key is in the grid too; sweep it in one of them")
        if key == RECIPE and (sp.choices is None or any(v not in cfg.recipes for v in sp.choices)):
            bad(f"search.space.recipe: give choices among the recipes ({', '.join(cfg.recipes)})")
    if cfg.search and cfg.search.space == {}:
        bad("search.space: empty; give at least one key with choices or low and high")
    if cfg.search and len(cfg.seeds) > 1 and not cfg.search.confirm:
        bad("seeds: a search runs the first seed; set search.confirm to run its best configurations with the others")
    named = json.dumps([cfg.overrides, cfg.recipes, cfg.grid, [dataclasses.asdict(v) for v in space.values()]])
    named += json.dumps([s.overrides for s in cfg.steps])
    for name in PLACEHOLDER.findall(named):
        if name not in names[:-1]:
            bad(f"${{{name}}} names no earlier step (steps before the last: {', '.join(names[:-1]) or 'none'})")
    last = steps[-1]
    base = load_config(last.cls, last.config, [])
    if not hasattr(base, "trainer"):
        bad(f"steps: the last step ({last.script}) trains nothing; a trial is a training run")
    metric_keys = [METRICS[m] for m in base.trainer.metrics] + ["loss"]
    if cfg.objective.metric.split("/")[-1] not in metric_keys:
        bad(f"objective.metric: {cfg.objective.metric!r} is not logged (metrics: {', '.join(metric_keys)})")
    constraints = [parse_constraint(c, bad, metric_keys) for c in cfg.constraints]
    points = [  # seed by seed: a sweep stopped early has every configuration once
        {**dict(zip(cfg.grid, values)), "seed": seed, **({"slot": slot} if cfg.search else {})}
        for seed in (cfg.seeds[:1] if cfg.search else cfg.seeds)
        for values in itertools.product(*cfg.grid.values())
        for slot in range(cfg.search.n_trials if cfg.search else 1)
    ]
    plan = Plan(cfg, source, steps, Path(cfg.output_dir) / cfg.name, points, constraints)
    check_configs(plan, bad)
    return plan


def parse_constraint(text: str, bad, metric_keys: list[str]) -> tuple[str, str, float]:
    """`"ratio.throughput >= 2"` -> ("ratio.throughput", ">=", 2.0); the figure must be one the run reports."""
    parsed = parse_bound(text)
    if parsed is None:
        bad(f"constraints: {text!r}: write '<figure> >= <number>' or '<figure> <= <number>'")
    figure, op, number = parsed
    part, _, name = figure.partition(".")
    reported = (part in REPORT_PARTS and name in REPORT_FIGURES) or (
        figure.split("/")[0] in ("val", "test") and figure.split("/")[-1] in metric_keys
    )
    if not reported:
        figures = ", ".join(f"{p}.{f}" for p in REPORT_PARTS for f in REPORT_FIGURES)
        bad(f"constraints: {figure!r} is not a figure the run reports ({figures}; val/<metric>, test/<metric>)")
    return figure, op, number


def check_configs(plan: Plan, bad) -> None:
    """Build the config of every step a trial runs, for every grid value, recipe and space end: a bad value is found
    now."""
    cfg = plan.cfg
    variants: list[dict] = [dict(zip(cfg.grid, values)) for values in itertools.product(*cfg.grid.values())]
    for key, sp in (cfg.search.space if cfg.search else {}).items():
        variants += [{key: v} for v in (sp.choices if sp.choices is not None else (sp.low, sp.high))]
    for values in variants or [{}]:
        for i in [*needed_steps(plan, values), len(plan.steps) - 1]:
            step = plan.steps[i]
            try:
                cfg_i = load_config(step.cls, step.config, step_overrides(plan, i, values, Path("check")))
            except UserError as err:
                where = ", ".join(f"{k}={v!r}" for k, v in values.items())
                bad(f"steps[{i}] ({step.script}){' with ' + where if where else ''}: {err}")
            if i == len(plan.steps) - 1 and any(c[0].split(".")[0] in REPORT_PARTS for c in plan.constraints):
                if not getattr(getattr(cfg_i, "distill", None), "report", False) or getattr(cfg_i, "students", None):
                    bad(
                        f"constraints: {plan.constraints[0][0]!r} reads the report, which {step.script} writes only "
                        "with distill.report: true and one student"
                    )


def step_values(plan: Plan, values: dict) -> dict[str, Any]:
    """The dotted overrides of a trial's values: the sweep's overrides, then its recipe, then its other values."""
    cfg = plan.cfg
    out = flatten(cfg.overrides)
    if RECIPE in values:
        out.update(flatten(cfg.recipes[values[RECIPE]]))
    out.update({k: v for k, v in values.items() if k not in (RECIPE, "seed", "slot")})
    return out


def step_items(plan: Plan, i: int, values: dict) -> dict[str, Any]:
    """Step `i`'s dotted overrides for a trial's `values`: its own, then the sweep's keys its config has, except a
    value naming a step (`${name}`) that does not come before it; `trainer.seed` where it trains."""
    step = plan.steps[i]
    before = {s.name for s in plan.steps[:i]}
    items = {**flatten(plan.cfg.steps[i].overrides)}
    for key, value in step_values(plan, values).items():
        if has_key(step.cls, key) and set(PLACEHOLDER.findall(json.dumps(value))) <= before:
            items[key] = value
    if "seed" in values and has_key(step.cls, "trainer.seed"):
        items["trainer.seed"] = values["seed"]
    return items


def step_overrides(plan: Plan, i: int, values: dict, products: dict[str, Path] | Path) -> list[str]:
    """Step `i`'s overrides for a trial's `values`, `${step}` replaced by that step's product (`products`: a mapping,
    or one path standing in for every step while checking)."""
    earlier = [s.name for s in plan.steps[:i]]

    def product_of(name: str) -> str:
        if name not in earlier:
            raise UserError(f"${{{name}}} names no earlier step (earlier: {', '.join(earlier) or 'none'})")
        return str(products if isinstance(products, Path) else products[name])

    def fill(v: Any) -> Any:
        if isinstance(v, str):
            return PLACEHOLDER.sub(lambda m: product_of(m.group(1)), v)
        if isinstance(v, list):
            return [fill(x) for x in v]
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        return v

    return [override(k, fill(v)) for k, v in step_items(plan, i, values).items()]


def needed_steps(plan: Plan, values: dict) -> list[int]:
    """The earlier steps a trial needs: those its last step's overrides name, and those they name, in order."""
    index = {s.name: i for i, s in enumerate(plan.steps)}
    need: set[int] = set()

    def visit(i: int) -> None:
        for name in PLACEHOLDER.findall(json.dumps(list(step_items(plan, i, values).values()))):
            j = index.get(name, len(plan.steps))
            if j < i and j not in need:
                need.add(j)
                visit(j)

    visit(len(plan.steps) - 1)
    return sorted(need)


# ---------------------------------------------------------------------------------------------------------------------
# The study: Optuna's storage holds the plan, the claims and every trial's results


def open_storage(url: str, heartbeat_s: int):
    """Optuna's RDB storage at `url`, with heartbeats (a trial silent for 2 x `heartbeat_s` is failed and enqueued
    again); one line when it does not open."""
    import optuna

    quiet_optuna()
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=heartbeat_s,
            grace_period=2 * heartbeat_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
    except Exception as err:  # SQLAlchemy's errors: a bad URL, a missing driver, a file that cannot be opened
        line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"--storage {url}: does not open ({type(err).__name__}: {line[:200]})") from None


def quiet_optuna() -> None:
    """Optuna's warnings only (not its info lines); heartbeats and stale-trial retries are marked experimental."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def study_parts(plan: Plan, number: int = 0):
    """(sampler, pruner) of the plan: TPE with the constraints or random sampling, seeded by `search.seed` plus the
    trial's number (workers sampling at once draw different values); the median pruner for a search."""
    import optuna

    search = plan.cfg.search
    if search is None:
        return optuna.samplers.RandomSampler(seed=0), optuna.pruners.NopPruner()
    seed = search.seed + number
    if search.sampler == "tpe":
        # constraint-aware: it reads each trial's set_constraint
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=4) if search.pruner == "median" else optuna.pruners.NopPruner()
    )
    return sampler, pruner


def open_study(plan: Plan, storage, retry_failed: bool = False):
    """Create the study and enqueue the plan, or load it (another process created it) and enqueue what the plan has
    that the study does not (a sweep file with more seeds; with `retry_failed`, also the points whose every trial
    failed); the creator's plan is complete before anyone claims."""
    import optuna

    sampler, pruner = study_parts(plan)
    direction = plan.cfg.objective.direction
    try:
        study = optuna.create_study(
            storage=storage, study_name=plan.name, direction=direction, sampler=sampler, pruner=pruner
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=plan.name, storage=storage, sampler=sampler, pruner=pruner)
        created = False
    if not created:
        for _ in range(120):  # the creator is enqueueing
            if "planned" in study.user_attrs:
                break
            time.sleep(0.5)
        stored = study.direction.name.lower()
        if stored != direction:
            raise UserError(f"{plan.source}: study {plan.name!r} in the storage is to {stored}, not {direction}")
    skip = (optuna.trial.TrialState.FAIL,) if retry_failed else ()
    have = {t.user_attrs.get("point") for t in study.get_trials(deepcopy=False) if t.state not in skip}
    missing = [p for p in plan.points if point_key(p) not in have]
    for p in missing:
        study.enqueue_trial({}, user_attrs={"point": point_key(p)})
    if created:
        study.set_user_attr("planned", len(plan.points))
    if missing and not created:
        print(f"sweep {plan.name}: {len(missing)} new points of the sweep file enqueued")
    return study


def point_key(point: dict) -> str:
    return json.dumps(point, sort_keys=True)


def suggest(plan: Plan, trial) -> dict:
    """The trial's values: its point's grid values and seed (not Optuna params, so that a sweep file may gain grid
    values and seeds between runs), the space sampled (as enqueued for a confirmation or a trial run again)."""
    cfg = plan.cfg
    point = point_of(trial)
    fixed = point.get("confirm", point)  # a confirmation: the configuration it confirms
    values = {}
    for key, choices in cfg.grid.items():
        encoded = [encode(v) for v in choices]
        values[key] = choices[encoded.index(encode(fixed[key]))]  # claimed: `runnable`
    for key, sp in (cfg.search.space if cfg.search else {}).items():
        if sp.choices is not None:
            encoded = [encode(v) for v in sp.choices]
            values[key] = sp.choices[encoded.index(trial.suggest_categorical(key, encoded))]
        elif isinstance(sp.low, int) and isinstance(sp.high, int) and not isinstance(sp.step, float):
            values[key] = trial.suggest_int(key, sp.low, sp.high, step=sp.step or 1, log=sp.log)
        else:
            values[key] = trial.suggest_float(key, sp.low, sp.high, step=sp.step, log=sp.log)
    values["seed"] = point["seed"]
    return values


def runnable(plan: Plan, trial) -> bool:
    """Whether the sweep file, as this command reads it, has the trial's grid values: a grid narrowed by an override
    (`'grid.recipe=[kd]'`) leaves the other values' trials waiting for a command that has them."""
    point = point_of(trial)
    fixed = point.get("confirm", point)
    return all(encode(fixed.get(key)) in [encode(v) for v in values] for key, values in plan.cfg.grid.items())


def claim(plan: Plan, study, storage, lock: Path | None):
    """A waiting trial of the study, moved to running by this process, or None. As `Study.ask` takes an enqueued
    trial, without making a new one when none waits. A database server has one winner (the row is read FOR UPDATE);
    SQLite ignores FOR UPDATE, so two processes can both read a trial as waiting and both move it to running: on a
    SQLite storage the workers of this machine claim one at a time under the file lock `lock`."""
    import optuna
    from optuna.trial import TrialState

    with open(lock, "w") if lock else contextlib.nullcontext() as held:
        if held:
            fcntl.flock(held, fcntl.LOCK_EX)
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if not runnable(plan, frozen):
                continue
            try:
                if study._storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                    storage.record_heartbeat(frozen._trial_id)
                    return optuna.Trial(study, frozen._trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Workers and trials


class Interrupted(Exception):
    """A trial stopped by Ctrl-C (SIGINT): unfinished, not failed; it is enqueued again. With the CPU seconds of the
    run it stopped."""

    def __init__(self, cpu_seconds: float = 0.0):
        super().__init__()
        self.cpu_seconds = cpu_seconds


STOP = []  # in a worker: non-empty once it got SIGINT; it claims no more trials


def _stop_worker(signum, frame) -> None:
    STOP.append(signum)  # the running trial's process got the same Ctrl-C (one process group) and stops itself


def work(plan: Plan, url: str, worker: str) -> None:
    """Claim and run trials until none waits and none runs elsewhere (a trial left by a dead worker comes back), or
    until Ctrl-C: the running trial stops and is enqueued again, and the worker ends."""
    import optuna

    signal.signal(signal.SIGINT, _stop_worker)
    storage = open_storage(url, plan.cfg.heartbeat_s)
    study = open_study_quietly(plan, storage)
    waited = False
    while not STOP:
        optuna.storages.fail_stale_trials(study)
        trial = claim(plan, study, storage, plan.out / "claim.lock" if url.startswith("sqlite") else None)
        if trial is not None:
            run_trial(plan, url, storage, study, trial, worker)
            waited = False
            continue
        if STOP:
            return
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            waiting = (optuna.trial.TrialState.WAITING,)  # enqueued by another worker of this machine meanwhile
            if enqueue_confirmations(plan, study) or any(
                runnable(plan, t) for t in study.get_trials(deepcopy=False, states=waiting)
            ):
                continue
            return
        if not waited:
            print(f"[{worker}] waiting for {len(running)} running trial(s) of other workers", flush=True)
            waited = True
        time.sleep(min(plan.cfg.heartbeat_s, 5))


def point_of(trial) -> dict:
    """The point of the plan a trial runs: grid values and seed, with `slot` (a search trial) or `confirm`."""
    return json.loads(trial.user_attrs.get("point", "{}"))


def params_of(trial) -> dict:
    """A trial's values as Optuna choices (`encode`): its point's grid values and seed, then its sampled space."""
    point = point_of(trial)
    fixed = {**point.get("confirm", {}), **{k: v for k, v in point.items() if k not in ("confirm", "slot")}}
    return {**{k: encode(v) for k, v in fixed.items()}, **trial.params}


def enqueue_confirmations(plan: Plan, study) -> int:
    """Once the search is done: its best `search.confirm` configurations (meeting the constraints, by objective) with
    every other seed, as enqueued trials (under a file lock, so that this machine's workers enqueue them once)."""
    from optuna.trial import TrialState

    search = plan.cfg.search
    if search is None or not search.confirm or len(plan.cfg.seeds) < 2:
        return 0
    with open(plan.out / "confirm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        trials = study.get_trials(deepcopy=False)
        searched = [
            t
            for t in trials
            if t.state == TrialState.COMPLETE and "slot" in point_of(t)
            and all(v <= 0 for v in t.user_attrs.get("violations", [1.0]))
        ]  # fmt: skip
        sign = -1 if plan.cfg.objective.direction == "maximize" else 1
        best: dict[str, dict] = {}
        for t in sorted(searched, key=lambda t: sign * t.value):
            config = {k: v for k, v in params_of(t).items() if k != "seed"}
            best.setdefault(json.dumps(config, sort_keys=True), config)
        # a confirmation pruned (as sweeps did before confirmations ran to the end) is run again
        have = {t.user_attrs.get("point") for t in trials if t.state != TrialState.PRUNED}
        added = 0
        for key, config in list(best.items())[: search.confirm]:
            for seed in plan.cfg.seeds[1:]:
                point = json.dumps({"confirm": json.loads(key), "seed": seed}, sort_keys=True)
                if point not in have:
                    space = {k: v for k, v in config.items() if k in search.space}  # sampled again as they were
                    study.enqueue_trial(space, user_attrs={"point": point})
                    added += 1
    if added:
        print(
            f"sweep {plan.name}: the best {min(len(best), search.confirm)} configuration(s) enqueued with seeds "
            f"{', '.join(map(str, plan.cfg.seeds[1:]))} ({added} trials)",
            flush=True,
        )
    return added


def open_study_quietly(plan: Plan, storage):
    import optuna

    sampler, pruner = study_parts(plan)
    return optuna.load_study(study_name=plan.name, storage=storage, sampler=sampler, pruner=pruner)


def run_trial(plan: Plan, url: str, storage, study, trial, worker: str) -> None:
    """Run one trial (its earlier steps first, once each), record its results in the storage, tell Optuna."""
    from optuna.trial import TrialState

    attrs: dict[str, Any] = {"worker": worker, "host": socket.gethostname()}
    start, cpu = time.time(), 0.0
    state, error = TrialState.FAIL, None
    beat = Heartbeat(url, storage, trial._trial_id)
    try:
        study.sampler = study_parts(plan, trial.number)[0]
        values = suggest(plan, trial)
        products: dict[str, Path] = {}
        for i in needed_steps(plan, values):
            products[plan.steps[i].name], step_cpu = ensure_step(plan, i, values, products, beat)
            cpu += step_cpu
        last = len(plan.steps) - 1
        # a trial run again: in its first run's place, resumed
        first = study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        run = (plan.out / "trials" / f"t{trial.number if first is None else first:04d}").resolve()
        overrides = step_overrides(plan, last, values, products) + precheck(plan, values) + run_place(run)
        overrides += resume_where_stopped(plan, last, run) if first is not None else []
        attrs.update(run_dir=str(run), overrides=overrides, script=plan.steps[last].script)
        # a search's own trials may be pruned; its confirmations run to the end: a seed pruned would leave the mean
        prune = plan.cfg.search is not None and plan.cfg.search.pruner != "none" and "slot" in point_of(trial)
        outcome, run_cpu = run_stage_forked(plan, last, overrides, run.parent / f"{run.name}.log", beat, prune)
        cpu += run_cpu
        missed = untrained_figures(run) if outcome["status"] == "error" else None
        if missed is not None:  # stopped by distill.require: infeasible, and TPE learns it from the figures
            attrs.update(figures=missed, note=outcome["error"])
            judge(plan, trial, attrs)
            state = TrialState.PRUNED
        elif outcome["status"] == "error":
            error = outcome["error"]
        else:
            attrs.update(read_run(run, plan.steps[last].script))
            metric = plan.cfg.objective.metric
            if metric not in attrs["metrics"]:
                error = f"metrics.json has no {metric} (has: {', '.join(sorted(attrs['metrics']))})"
            else:
                judge(plan, trial, attrs)
                state = TrialState.PRUNED if outcome["status"] == "pruned" else TrialState.COMPLETE
    except Interrupted as stop:
        spent = {"seconds": round(time.time() - start, 1), "cpu_seconds": round(cpu + stop.cpu_seconds, 1)}
        requeue(study, trial, worker, spent)
        return
    except UserError as err:
        error = str(err)
    except Exception as err:  # noqa: BLE001  a bug or a broken file: recorded with the trial, the sweep goes on
        traceback.print_exc()
        error = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"[:300]
    attrs.update(seconds=round(time.time() - start, 1), cpu_seconds=round(cpu, 1))
    if error is not None:
        attrs["error"] = error
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if state == TrialState.COMPLETE:
        study.tell(trial, attrs["metrics"][plan.cfg.objective.metric])
    else:
        study.tell(trial, state=state)
    print(f"[{worker}] {progress_line(plan, study, trial.number)}", flush=True)


def requeue(study, trial, worker: str, spent: dict | None = None) -> None:
    """An interrupted trial: failed (`error: interrupted`, with the seconds it `spent`) and enqueued again with its
    values and point, as the heartbeat check does for a dead worker's trial, but at once."""
    import optuna
    from optuna.trial import TrialState

    quiet_optuna()
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, study._storage.get_trial(trial._trial_id))
    for key, value in {**(spent or {}), "error": "interrupted (Ctrl-C)"}.items():  # not copied to the retry
        trial.set_user_attr(key, value)
    study.tell(trial, state=TrialState.FAIL)
    print(f"[{worker}] trial {trial.number} interrupted: enqueued again, to run when the sweep goes on", flush=True)


def precheck(plan: Plan, values: dict) -> list[str]:
    """The `distill.require` override of a trial's last step: the constraints on what its student has untrained (with
    PRECHECK_SLACK on timings), after any `distill.require` of the sweep file; [] where there is none."""
    last = len(plan.steps) - 1
    bounds = []
    for figure, op, bound in plan.constraints:
        part, _, name = figure.partition(".")
        if part in REPORT_PARTS and name in SHAPE_FIGURES:
            if name != "params":
                bound = bound * PRECHECK_SLACK if op == ">=" else bound / PRECHECK_SLACK
            bounds.append(f"{figure} {op} {bound:g}")
    if not bounds or not has_key(plan.steps[last].cls, "distill.require"):
        return []
    given = step_items(plan, last, values).get("distill.require") or []
    return [override("distill.require", [*given, *bounds])]


def untrained_figures(run: Path) -> dict | None:
    """The figures of a run stopped by `distill.require` (its precheck.json), None for any other run."""
    record = run / "precheck.json"
    if not record.is_file():
        return None
    data = json.loads(record.read_text())
    return None if data["met"] else data["figures"]


def run_place(run: Path) -> list[str]:
    return [override("logger.output_dir", str(run.parent)), override("logger.run_name", run.name)]


def resume_where_stopped(plan: Plan, i: int, run: Path) -> list[str]:
    """For a trial run again (interrupted, or its worker died): `trainer.resume=last` where its run directory has a
    last checkpoint, so that it goes on from where its first run stopped and ends where an uninterrupted run would."""
    if has_key(plan.steps[i].cls, "trainer.resume") and (run / "checkpoints" / "last.ckpt").is_file():
        return [override("trainer.resume", "last")]
    return []


@dataclass
class Heartbeat:
    """The running trial a worker keeps alive: its storage URL (for the forked run's pruning reports), the storage and
    the trial's id."""

    url: str
    storage: Any
    trial_id: int

    def beat(self) -> None:
        self.storage.record_heartbeat(self.trial_id)


def ensure_step(plan: Plan, i: int, values: dict, products: dict[str, Path], beat: Heartbeat) -> tuple[Path, float]:
    """Step `i` for this trial's values: run once per distinct configuration (other workers wait for it under a file
    lock, then reuse it); its product and the CPU seconds spent here."""
    step = plan.steps[i]
    overrides = step_overrides(plan, i, values, products)
    digest = hashlib.sha1(json.dumps([step.script, str(step.config), overrides]).encode()).hexdigest()[:10]
    run = (plan.out / "steps" / f"{step.name}-{digest}").resolve()
    run.parent.mkdir(parents=True, exist_ok=True)
    done = run.parent / f"{run.name}.done.json"
    product = run / PRODUCTS[step.script]
    with open(run.parent / f"{run.name}.lock", "w") as lock:
        while True:  # wait for another worker building it, beating this trial's heartbeat
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                beat.beat()
                time.sleep(1)
        if done.is_file():
            return product, 0.0
        outcome, cpu = run_stage_forked(plan, i, overrides + run_place(run), run.parent / f"{run.name}.log", beat)
        if outcome["status"] == "error":
            raise UserError(f"step {step.name}: {outcome['error']}")
        done.write_text(json.dumps({"overrides": overrides, "cpu_seconds": cpu}, indent=2))
        print(f"step {step.name} -> {product} ({cpu:.0f} CPU s)", flush=True)
        return product, cpu


def run_stage_forked(
    plan: Plan, i: int, overrides: list[str], log: Path, beat: Heartbeat, prune: bool = False
) -> tuple[dict, float]:
    """Run step `i`'s script (`main(cfg)`) in a forked process, its output in `log`; with `prune`, its validation
    curve goes to the trial, which Optuna's pruner may stop. Returns its outcome ({status: ok | pruned | error, error:
    one line}) and its CPU seconds; raises Interrupted when the run stopped by Ctrl-C, or the worker had it before."""
    if STOP:
        raise Interrupted
    step = plan.steps[i]
    result = log.with_suffix(".result.json")
    result.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    args = (step, overrides, log, result, plan.cfg.threads, (beat.url, plan, beat.trial_id) if prune else None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = multiprocessing.get_context("fork").Process(target=_stage_child, args=args)
    child.start()
    while child.is_alive():
        child.join(timeout=min(plan.cfg.heartbeat_s, 10))
        beat.beat()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.is_file():
        outcome = json.loads(result.read_text())
        if outcome["status"] == "interrupted":
            raise Interrupted(cpu)
        return outcome, cpu
    return {"status": "error", "error": f"{step.script} died (exit {child.exitcode}); see {log}"}, cpu


def _stage_child(step: Step, overrides: list[str], log: Path, result: Path, threads: int, prune) -> None:
    """In the forked process: output to `log`, `threads` torch threads, the stage's `main(cfg)`; the outcome to
    `result`."""
    import torch

    from helper.training import EXTRA_CALLBACKS, TrialPruning

    signal.signal(signal.SIGINT, signal.default_int_handler)  # not the worker's: Ctrl-C stops the run
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # a trial run again: after its first run's
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    torch.set_num_threads(threads)
    print(f"python {step.script} --config {step.config} " + " ".join(f"'{o}'" for o in overrides), flush=True)
    outcome: dict[str, Any] = {"status": "ok"}
    pruning = None
    try:
        if prune is not None:
            import optuna

            url, plan, trial_id = prune
            storage = open_storage(url, plan.cfg.heartbeat_s)
            trial = optuna.Trial(open_study_quietly(plan, storage), trial_id)
            pruning = TrialPruning(trial, plan.cfg.objective.metric)
            EXTRA_CALLBACKS.set((pruning,))
        cfg = load_config(step.cls, step.config, overrides)
        sys.path.insert(0, str(ROOT))
        importlib.import_module(Path(step.script).stem).main(cfg)
        if pruning is not None and pruning.pruned:
            outcome["status"] = "pruned"
    except UserError as err:
        outcome = {"status": "error", "error": f"{err}"}
    except BaseException as err:  # a trial's failure is recorded, not fatal to the sweep
        if interrupted(err):
            outcome = {"status": "interrupted"}
        else:
            traceback.print_exc()
            line = (str(err).strip().splitlines() or [""])[0]
            outcome = {"status": "error", "error": f"{type(err).__name__}: {line}"[:300]}
    print(f"sweep: {outcome}", flush=True)
    result.write_text(json.dumps(outcome))


def interrupted(err: BaseException | None) -> bool:
    """Whether `err` is Ctrl-C's KeyboardInterrupt, or raised while handling it (Lightning's `sys.exit(1)`)."""
    while err is not None:
        if isinstance(err, KeyboardInterrupt):
            return True
        err = err.__context__
    return False


def read_run(run: Path, script: str) -> dict:
    """What a finished run left: metrics.json, the report's figures (flattened: ratio.throughput, ...), the student's
    shape (its config.json: layers, hidden and feed-forward width)."""
    out: dict[str, Any] = {"metrics": json.loads((run / "metrics.json").read_text())}
    report = run / "report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        out["figures"] = {f"{p}.{k}": data[p][k] for p in REPORT_PARTS for k in REPORT_FIGURES}
    config = run / PRODUCTS[script] / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        layers, hidden, ffn = (c.get(k, "?") for k in ("num_hidden_layers", "hidden_size", "intermediate_size"))
        out["shape"] = f"{layers}-layer, hidden {hidden}, FFN {ffn}"
        if c.get("model_type") == "bilstm" or "num_hidden_layers" not in c:
            out["shape"] = c.get("model_type", "student")
    return out


def figure_value(attrs: dict, figure: str) -> float | None:
    if figure.split("/")[0] in ("val", "test"):
        return attrs.get("metrics", {}).get(figure)
    return attrs.get("figures", {}).get(figure)


def judge(plan: Plan, trial, attrs: dict) -> None:
    """The trial's constraints, kept with it (`violations`) and given to Optuna, which TPE steers by (<= 0: met)."""
    attrs["violations"] = violations(plan, attrs)
    for (figure, op, bound), v in zip(plan.constraints, attrs["violations"]):
        trial.set_constraint(f"{figure} {op} {bound:g}", v)


def violations(plan: Plan, attrs: dict) -> list[float]:
    """Each constraint as Optuna reads it: <= 0 when met (a figure the run lacks counts as unmet)."""
    out = []
    for figure, op, bound in plan.constraints:
        v = figure_value(attrs, figure)
        out.append(1.0 if v is None else (bound - v if op == ">=" else v - bound))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Progress


def finished(study) -> list:
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False) if t.state in done]


def feasible(t) -> bool:
    return all(v <= 0 for v in t.user_attrs.get("violations", [1.0]))


def values_text(plan: Plan, t) -> str:
    params = params_of(t)
    return " ".join(f"{k}={params[k]}" for k in plan.keys() if k in params)


def best_trial(plan: Plan, study):
    """The completed trial that meets the constraints with the best objective, or None."""
    from optuna.trial import TrialState

    ok = [t for t in finished(study) if t.state == TrialState.COMPLETE and feasible(t)]
    if not ok:
        return None
    sign = 1 if plan.cfg.objective.direction == "maximize" else -1
    return max(ok, key=lambda t: sign * t.value)


def progress_line(plan: Plan, study, number: int) -> str:
    """`trial 3 (4/12) recipe=kd seed=0: val/acc 0.8412, test/acc 0.8390, 2.9x throughput, 0.62x size, 412 s
    (380 CPU s) | best: trial 1, val/acc 0.8502 (recipe=kd_aug4 seed=0)`."""
    trial = study.get_trials(deepcopy=False)[number]
    n_done, total = len(finished(study)), len(study.get_trials(deepcopy=False))
    a = trial.user_attrs
    head = f"trial {number} ({n_done}/{total}) {values_text(plan, trial)}"
    if "error" in a:
        head += f": FAILED: {a['error']}"
    elif "note" in a:
        head += f": not trained: {a['note']}"
    else:
        metrics = a.get("metrics", {})
        shown = [plan.cfg.objective.metric, *sorted(k for k in metrics if k.startswith("test/"))]
        parts = [f"{k} {metrics[k]:.4f}" for k in dict.fromkeys(shown) if k in metrics]
        figures = a.get("figures", {})
        if "ratio.throughput" in figures:
            parts.append(f"{figures['ratio.throughput']:.2f}x throughput")
        if "ratio.model_bytes" in figures:
            parts.append(f"{figures['ratio.model_bytes']:.2f}x size")
        state = "pruned, " if trial.state.name == "PRUNED" else ""
        state += "" if feasible(trial) or not plan.constraints else "constraints not met, "
        head += f": {state}{', '.join(parts)}"
    head += f", {a.get('seconds', 0):.0f} s ({a.get('cpu_seconds', 0):.0f} CPU s)"
    best = best_trial(plan, study)
    if best is not None:
        head += (
            f" | best: trial {best.number}, {plan.cfg.objective.metric} {best.value:.4f} ({values_text(plan, best)})"
        )
    return head


# ---------------------------------------------------------------------------------------------------------------------
# Running a sweep


def run_sweep(plan: Plan, url: str | None = None, workers: int = 1, run: bool = True, retry_failed: bool = False):
    """Open the storage (default: `<output_dir>/<name>/optuna.db`) and the study (enqueueing the plan; `retry_failed`:
    with the points whose trials failed), then run `workers` worker processes until the sweep is done (`run`: False
    only opens). Returns the study, reloaded."""
    if workers < 1:
        raise UserError(f"--workers: {workers} must be >= 1")
    plan.out.mkdir(parents=True, exist_ok=True)
    url = url or f"sqlite:///{(plan.out / 'optuna.db').resolve()}"
    storage = open_storage(url, plan.cfg.heartbeat_s)
    if run:
        study = open_study(plan, storage, retry_failed)
    else:  # what has run, the storage as it is
        try:
            study = open_study_quietly(plan, storage)
        except KeyError:
            raise UserError(f"{plan.source}: --results: sweep {plan.name!r} has not run ({url})") from None
    n = len(study.get_trials(deepcopy=False))
    running = f"{workers} worker(s)" if run else "results only"
    print(f"sweep {plan.name}: {len(plan.points)} planned trials, {n} in the storage ({url}); {running}")
    if run:
        from helper import stages  # noqa: F401  the stages' imports, once: the workers and their trials fork from here

        storage.engine.dispose()  # no connection crosses a fork
        procs = [
            multiprocessing.get_context("fork").Process(target=work, args=(plan, url, f"w{k}")) for k in range(workers)
        ]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:  # the workers got it too: each puts its running trial back, then ends
            print("interrupt: the running trials stop and are enqueued again", file=sys.stderr, flush=True)
            for p in procs:
                p.join()
            raise
    return open_study_quietly(plan, open_storage(url, plan.cfg.heartbeat_s))
