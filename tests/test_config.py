from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import typing

import pytest

from bert.errors import UserError
from data.augment import AugmentConfig
from data.config import DataConfig, TextDataConfig
from data.generate import GenerateConfig
from helper.config import (
    DistillationRunConfig,
    DistillConfig,
    FinetuneConfig,
    GeneralDistillConfig,
    InitFromConfig,
    LoggerConfig,
    ModelConfig,
    OptimConfig,
    StudentConfig,
    StudentSpec,
    TrainerConfig,
    field_comments,
    load_config,
    parse_cli,
    save_config,
)
from tests.conftest import ROOT


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides_typed(tmp_path):
    path = write(tmp_path, "trainer:\n  max_epochs: 5\noptim:\n  lr: 1e-4\n")
    cfg = load_config(FinetuneConfig, path, ["trainer.max_epochs=3", "data.label_names=[neg, pos]", "optim.lr=3e-5"])
    assert cfg.trainer.max_epochs == 3
    assert cfg.optim.lr == pytest.approx(3e-5) and isinstance(cfg.optim.lr, float)
    assert cfg.data.label_names == ["neg", "pos"]
    assert cfg.trainer.precision == "32"  # untouched default


def test_shipped_yaml_loads():
    cfg = load_config(FinetuneConfig, ROOT / "configs" / "finetune.yaml")
    assert cfg.data.source == "rotten_tomatoes" and cfg.trainer.max_epochs == 2


@pytest.mark.parametrize("cls", [FinetuneConfig, DistillationRunConfig])
def test_resolved_config_round_trips(tmp_path, cls):
    cfg = load_config(cls, None, ["trainer.max_epochs=7", "trainer.val_check_interval=20"])
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(cls, tmp_path / "out" / "config.yaml") == cfg


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        ("trainer:\n  max_epoch: 3\n", [], "unknown key 'trainer.max_epoch'"),
        ("", ["trainer.max_epochs=three"], "trainer.max_epochs: expected int, got 'three'"),
        ("optim:\n  name: lamb\n", [], "optim.name: 'lamb' is not one of adamw, adam, sgd"),
        ("trainer: 3\n", [], "trainer: expected a mapping"),
        ("data:\n  batch_size: [1\n", [], "invalid YAML"),
        ("- a\n", [], "top level must be a mapping"),
    ],
)
def test_bad_config_is_one_line_naming_key_and_file(tmp_path, text, overrides, expected):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_config(FinetuneConfig, path, overrides)
    msg = str(err.value)
    assert expected in msg and str(path) in msg and "\n" not in msg


@pytest.mark.parametrize(
    "require, expected",
    [
        ("['ratio.speed >= 2']", "'ratio.speed' is not known before training (figures: teacher.params,"),
        ("['ratio.acc >= 0.98']", "'ratio.acc' is not known before training"),
        ("['ratio.throughput > 2']", "'ratio.throughput > 2': write '<figure> >= <number>'"),
    ],
)
def test_distill_require_names_the_figures_known_before_training(tmp_path, require, expected):
    with pytest.raises(UserError) as err:
        load_config(DistillationRunConfig, write(tmp_path, ""), [f"distill.require={require}"])
    assert f"distill.require: {expected}" in str(err.value) and "\n" not in str(err.value)


def test_bad_override_syntax():
    with pytest.raises(UserError, match="override 'max_epochs': expected section.key=value"):
        load_config(FinetuneConfig, None, ["max_epochs"])


def test_missing_required_key(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Needs:
        path: str

    with pytest.raises(UserError, match="missing required key 'path'"):
        load_config(Needs, write(tmp_path, "{}\n"))


def test_missing_file():
    with pytest.raises(UserError, match="nope.yaml: cannot read config"):
        parse_cli(FinetuneConfig, "configs/finetune.yaml", ["--config", "nope.yaml"])


def test_cli_prints_one_line_and_no_traceback(tmp_path):
    path = write(tmp_path, "trainer:\n  max_epoch: 3\n")
    proc = subprocess.run(
        [sys.executable, "finetune.py", "--config", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "unknown key 'trainer.max_epoch'" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Stage defaults, accepted edge values, --help, start-up cost of the error path

STAGES = {
    "finetune.py": (FinetuneConfig, "finetune.yaml"),
    "distillation_ms.py": (DistillationRunConfig, "distillation_ms.yaml"),
    "distillation_ts_1st.py": (DistillationRunConfig, "distillation_ts_1st.yaml"),
    "distillation_ts_2nd.py": (DistillationRunConfig, "distillation_ts_2nd.yaml"),
}


def test_stage_defaults_survive_overrides_of_other_keys_in_their_section():
    cfg = load_config(
        DistillationRunConfig,
        ROOT / "configs" / "distillation_ms.yaml",
        ["optim.name=sgd", "trainer.seed=3", "teacher.dropout=0.1", "student.tokenizer=tok"],
    )
    assert cfg.teacher.name == "runs/finetune/model" and cfg.teacher.dropout == 0.1
    assert cfg.optim.lr == 1e-4 and cfg.optim.name == "sgd"
    assert cfg.trainer.max_epochs == 3 and cfg.trainer.seed == 3
    assert cfg.student.init_from_teacher == InitFromConfig(layers=[1, 5]) and cfg.student.tokenizer == "tok"
    assert load_config(DistillationRunConfig, ROOT / "configs" / "distillation_ms.yaml") == DistillationRunConfig()


def test_choosing_a_student_source_drops_the_default_one():
    ms = ROOT / "configs" / "distillation_ms.yaml"
    assert load_config(DistillationRunConfig, ms, ["student.name=some/dir"]).student == StudentConfig(name="some/dir")
    cfg = load_config(DistillationRunConfig, ms, ["student.config={hidden_size: 64}"]).student
    assert cfg.config == {"hidden_size": 64} and cfg.init_from_teacher is None and cfg.name is None
    step2 = load_config(DistillationRunConfig, ROOT / "configs" / "distillation_ts_2nd.yaml").student
    assert step2 == StudentConfig(name="runs/distill_ts_1st/student")


def test_edge_values_that_are_allowed():
    cfg = load_config(
        FinetuneConfig,
        None,
        [
            "trainer.max_epochs=-1",
            "trainer.max_steps=10",
            "trainer.val_check_interval=50",
            "trainer.limit_train_batches=0.25",
            "trainer.limit_val_batches=1",
            "trainer.precision=16-mixed",  # accelerator auto: checked at run time, once the device is known
            "trainer.devices=[0, 1]",
            "optim.warmup_ratio=0",
            "optim.lr=5e-5",
            "data.max_length=2",
            "data.val_from_train=0.1",
            "model.dropout=0.0",
        ],
    )
    assert cfg.trainer.val_check_interval == 50 and isinstance(cfg.trainer.val_check_interval, int)
    assert cfg.trainer.limit_val_batches == 1 and isinstance(cfg.trainer.limit_val_batches, int)  # one batch
    assert cfg.trainer.limit_train_batches == 0.25 and cfg.optim.lr == 5e-5
    # the Python API normalises like the loader: int -> float, 32 -> "32"
    assert OptimConfig(lr=1).lr == 1.0 and isinstance(OptimConfig(lr=1).lr, float)
    assert TrainerConfig(precision=32).precision == "32"
    assert TrainerConfig(accelerator="cpu", precision="bf16-mixed").precision == "bf16-mixed"


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = next((a for a in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(a)), None)
        if sub is None or prefix:
            keys.append(prefix + f.name)
        if sub is not None:
            keys += _dotted_keys(sub, prefix + f.name + ".")
    return keys


def test_every_field_has_a_comment():
    sections = (ModelConfig, OptimConfig, TrainerConfig, LoggerConfig, DataConfig, TextDataConfig, InitFromConfig)
    sections += (StudentConfig, StudentSpec, DistillConfig, GeneralDistillConfig, AugmentConfig, GenerateConfig)
    for cls in sections:
        comments = field_comments(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not comments.get(f.name)]
        assert not missing, f"{cls.__name__}: no trailing comment on {missing}"
    assert field_comments(OptimConfig)["lr"] == "peak learning rate"


@pytest.mark.parametrize("script", STAGES)
def test_help_lists_every_key_with_value_and_comment(script, capsys):
    cls, config_file = STAGES[script]
    with pytest.raises(SystemExit) as exit_info:
        parse_cli(cls, config_file, ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for key in _dotted_keys(cls):
        assert any(line.strip().startswith(f"{key} = ") for line in lines), key
    lr = next(line for line in lines if line.strip().startswith("optim.lr = "))
    assert lr.endswith(" peak learning rate [a finite number > 0]")
    if cls is DistillationRunConfig:
        assert "teacher.name = runs/finetune/model" in out and "\nstudent:\n" in out
    if script == "distillation_ts_1st.py":
        assert "distill.adaptors = [AttnMiniLM, ValMiniLM]" in out  # the value in the stage's YAML


def _run(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - start


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.batch_size=0", "data.batch_size: 0 must be an integer in [1, 2147483647]"),
        ("data.batch_sise=8", "unknown key 'data.batch_sise'"),
    ],
)
def test_cli_error_is_fast_one_line_exit_2(override, expected):
    proc, seconds = _run(["finetune.py", override])
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert seconds < 3, f"{seconds:.1f} s: heavy imports before the config is checked?"


def test_reading_and_checking_configs_imports_no_heavy_package():
    code = (
        "import sys\n"
        "from helper.config import DistillationRunConfig, FinetuneConfig, load_config\n"
        f"for cls, name in {[(c.__name__, f) for c, f in STAGES.values()]!r}:\n"
        "    load_config(eval(cls), 'configs/' + name, ['data.batch_size=4'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'pytorch_lightning', "
        "'transformers', 'numpy', 'datasets', 'wandb'}))\n"
    )
    proc, _ = _run(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
