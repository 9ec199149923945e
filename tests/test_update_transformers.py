"""update_transformers.py: passes on the installed transformers, fails clearly on a layout mismatch, writes nothing."""

from __future__ import annotations

import dataclasses
import os
import runpy
from pathlib import Path

import pytest
import transformers

import update_transformers
from bert import families

ROOT = Path(__file__).resolve().parents[1]


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {
        os.path.join(d, f): (st.st_size, st.st_mtime_ns)
        for d, _, files in os.walk(root)
        for f in files
        if not f.endswith(".pyc") and (st := os.stat(os.path.join(d, f)))
    }


def test_main_passes_for_every_family_and_writes_nothing(capsys):
    installed = Path(transformers.__file__).parent
    before = tree_state(installed)
    assert update_transformers.main() == 0
    assert tree_state(installed) == before
    out = capsys.readouterr().out
    assert transformers.__version__ in out
    header, *rows = [line for line in out.splitlines() if " | " in line]
    assert header.startswith("family") and all(row.endswith("| ok") for row in rows)
    assert [row.split("|")[0].strip() for row in rows] == [f.name for f in families.FAMILIES]
    assert all("| sdpa " in row for row in rows if not row.startswith("MPNet"))


def test_layout_mismatch_exits_non_zero_with_a_clear_message(monkeypatch, capsys):
    broken = dataclasses.replace(families.FAMILIES[0], layers_path="encoder.layers")
    monkeypatch.setattr(families, "FAMILIES", (broken,))
    assert update_transformers.main() == 1
    captured = capsys.readouterr()
    assert "| FAIL" in captured.out
    assert "does not match bert/families.py" in captured.err
    assert "BERT" in captured.err and "'encoder.layers'" in captured.err


@pytest.mark.parametrize(
    "change",
    [{"ffn": ("output.dense", "intermediate.dense")}, {"ffn_size_key": "hidden_dim"}],
    ids=["swapped-ffn-paths", "wrong-width-key"],
)
def test_a_wrong_feed_forward_entry_fails_its_family(monkeypatch, capsys, change):
    broken = dataclasses.replace(families.FAMILIES[0], **change)
    monkeypatch.setattr(families, "FAMILIES", (broken,))
    assert update_transformers.main() == 1
    assert "BERT" in capsys.readouterr().err


def test_script_exit_status(monkeypatch):
    monkeypatch.setattr(families, "FAMILIES", families.FAMILIES[:1])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "update_transformers.py"), run_name="__main__")
    assert exit_.value.code == 0
