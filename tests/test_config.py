from __future__ import annotations

import subprocess
import sys

import pytest

from bert.errors import UserError
from helper.config import FinetuneConfig, load_config, parse_cli, save_config
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


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(FinetuneConfig, None, ["trainer.max_epochs=7"])
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(FinetuneConfig, tmp_path / "out" / "config.yaml") == cfg


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
