"""Fuzz test of the config layer: every key of every stage's config, set to edge values (alone and in pairs) through
`load_config` with the stage's YAML file and `section.key=value` overrides (the path the scripts take), is either
accepted or refused with one `UserError` line that names the key.

The default run is small and fixed (derandomized); `FUZZ_EXAMPLES=5000 pytest tests/test_config_fuzz.py` runs more
hypothesis examples per stage.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bert.errors import UserError
from bert.sections import type_hints
from helper.config import DistillationRunConfig, FinetuneConfig, GeneralRunConfig, TransferSetConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))  # hypothesis examples per stage

STAGES = {
    "finetune.py": (FinetuneConfig, "finetune.yaml"),
    "distillation_ms.py": (DistillationRunConfig, "distillation_ms.yaml"),
    "distillation_ts_1st.py": (DistillationRunConfig, "distillation_ts_1st.yaml"),
    "distillation_ts_2nd.py": (DistillationRunConfig, "distillation_ts_2nd.yaml"),
    "distillation_general.py": (GeneralRunConfig, "distillation_general.yaml"),
    "transfer_set.py": (TransferSetConfig, "transfer_set.yaml"),
}

UNREADABLE = Path(tempfile.gettempdir()) / f"bert-distill-fuzz-unreadable-{os.getpid()}"
# Every key gets each of these (the sweep); hypothesis adds the rest of EDGES and arbitrary values, alone and in pairs.
CORE = [0, -1, 10**20, 2**63, 10**400, float("nan"), float("inf"), 1e-320, "", "x" * 300, [], [1, 1], {}, True, None]
EDGES = CORE + [
    1, 2, 2**31 - 1, 2**31, 2**63 - 1, -(10**20),  # ints: int32 and int64 ends
    0.0, -0.0, 0.5, 1.0, -1.5, 1e308, -1e308, float("-inf"),
    " ", "x", "auto", "-1", "1e20", "null", "é日本🙂", "a\u2028b", "\ud800", "\t", "../x", "a/b",
    str(ROOT / "configs"), str(ROOT / "no" / "such" / "file"), str(UNREADABLE),  # a directory, nothing, unreadable
    False, [0], ["a", "a"], [[]], [None], {"a": 1}, {"name": "x"}, [{"name": "x"}], {"train": "a"}, {1: 2},
]  # fmt: skip


def _keys(cls: type, prefix: tuple = ()) -> dict[tuple, type]:
    """{every key of `cls` as a path of field names, nested sections included ("[]" steps into a list of sections):
    the class that holds the field}."""
    out = {}
    for f in dataclasses.fields(cls):
        path, tp = (*prefix, f.name), type_hints(cls)[f.name]
        out[path] = cls
        for arg in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(arg):
                out |= _keys(arg, path)
            elif typing.get_origin(arg) is list and dataclasses.is_dataclass(typing.get_args(arg)[0]):
                out |= _keys(typing.get_args(arg)[0], (*path, "[]"))
    return out


KEYS = {cls: list(_keys(cls)) for cls, _ in STAGES.values()}
# The sweep sets each field of each section class once, in the first stage that has it (with its dotted key there).
SWEEP: dict[str, list[tuple]] = {}
_swept: set[tuple] = set()
for _script, (_cls, _) in STAGES.items():
    SWEEP[_script] = [k for k, owner in _keys(_cls).items() if (owner, k[-1]) not in _swept]
    _swept |= {(owner, k[-1]) for k, owner in _keys(_cls).items()}


def _dotted(path: tuple) -> str:
    return ".".join(path).replace(".[]", "[0]")


def _yaml(value: typing.Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip().removesuffix("...").strip()


def _override(cls: type, path: tuple, value: typing.Any) -> str:
    """`section.key=value`; a key inside a list of sections sets that list to one entry holding the value (a student
    entry also gets `name: x`, unless the key is one of its exactly-one-of choices)."""
    if "[]" not in path:
        return f"{'.'.join(path)}={_yaml(value)}"
    assert path[1] == "[]", path  # lists of sections are top-level keys (teacher, students)
    entry = value
    for k in reversed(path[2:]):
        entry = {k: entry}
    tp = type_hints(cls)[path[0]]
    entry_cls = next(typing.get_args(a)[0] for a in (tp, *typing.get_args(tp)) if typing.get_origin(a) is list)
    if path[2] not in getattr(entry_cls, "ONE_OF", (path[2],)):
        entry["name"] = "x"
    return f"{path[0]}={_yaml([entry])}"


def _names(msg: str, path: tuple) -> bool:
    """The message names the key, or (a check across fields) a section above it and the step from there towards the
    key: `transfer.augment.p_pos: p_mask + p_pos = ...` for `transfer.augment.p_mask`, `student: set exactly one of
    name, config, init_from_teacher, bilstm (got name, bilstm)` for `student.bilstm.word_vectors`."""
    return _dotted(path) in msg or any(
        re.search(rf"{re.escape(_dotted(path[:j]))}[:.]", msg) and path[j] in msg for j in range(1, len(path))
    )


def _check(script: str, settings_: list[tuple[tuple, typing.Any]]) -> str | None:
    """None when the overrides are accepted or refused as they should be, else what went wrong."""
    cls, name = STAGES[script]
    path = ROOT / "configs" / name
    overrides = [_override(cls, key, value) for key, value in settings_]
    shown = [o[:200] for o in overrides]
    try:
        cfg = load_config(cls, path, overrides)
    except UserError as err:
        msg = str(err)
        if msg.splitlines() != [msg] or not msg.startswith(f"{path} (with overrides): "):
            return f"{shown}: not one line from the file: {msg[:300]!r}"
        if not any(_names(msg, key) for key, _ in settings_):
            return f"{shown}: the message names no key set: {msg[:300]!r}"
        return None
    except Exception as err:  # anything but a UserError is a finding
        return f"{shown}: {type(err).__name__}: {str(err)[:300]}"
    return None if isinstance(cfg, cls) else f"{shown}: built {type(cfg).__name__}"


@pytest.fixture(scope="module", autouse=True)
def unreadable_file():
    UNREADABLE.write_text("x")
    UNREADABLE.chmod(0)
    yield
    UNREADABLE.unlink()


def test_every_key_is_walked():
    dotted = {_dotted(k) for keys in KEYS.values() for k in keys}
    for key in ("student.init_from_teacher.layers", "distill.mlm.weight", "transfer.augment.p_mask"):
        assert key in dotted
    for key in ("transfer.generate.top_p", "teacher[0].weight", "students[0].init_from_teacher.layers", "students"):
        assert key in dotted


@pytest.mark.parametrize("script", [s for s in SWEEP if SWEEP[s]])
def test_every_key_with_every_core_value(script):
    failures = [f for key in SWEEP[script] for value in CORE if (f := _check(script, [(key, value)]))]
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])


VALUES = st.one_of(
    st.sampled_from(EDGES),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.lists(st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)), max_size=2),
)


@pytest.mark.parametrize("script", STAGES)
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_edge_values_alone_and_in_pairs(script, data):
    keys = KEYS[STAGES[script][0]]
    settings_ = data.draw(st.lists(st.tuples(st.sampled_from(keys), VALUES), min_size=1, max_size=2))
    problem = _check(script, settings_)
    assert problem is None, problem


# What the sweep and the fuzzer found, through the scripts themselves: exit 2, one `error:` line naming the key, and
# torch never imported (`-X importtime` lists every module imported).
SCRIPT_CASES = [
    ("finetune.py", "data.batch_size=100000000000000000000", "data.batch_size"),
    ("distillation_ms.py", "optim.lr=" + "9" * 400, "optim.lr"),
    ("distillation_ts_1st.py", "trainer.max_steps=9223372036854775808", "trainer.max_steps"),
    ("distillation_ts_2nd.py", "data.encoding=rot13", "data.encoding"),
    ("distillation_general.py", "data.batch_size=" + "1" * 5000, "data.batch_size"),
    ("transfer_set.py", "transfer.generate.device=gpu", "transfer.generate.device"),
]


def test_scripts_stop_in_one_line_without_torch():
    procs = [
        (key, subprocess.Popen([sys.executable, "-X", "importtime", script, override], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for script, override, key in SCRIPT_CASES
    ]  # fmt: skip
    for key, proc in procs:
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # accepted: it is training
            proc.kill()
            pytest.fail(f"{key}: accepted, still running after 60 s")
        lines = stderr.splitlines()
        imported = [line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")]
        errors = [line for line in lines if not line.startswith("import time:")]
        assert proc.returncode == 2, stderr[-2000:]
        assert len(errors) == 1 and errors[0].startswith("error: ") and f"{key}:" in errors[0], errors
        assert "torch" not in imported, key
