"""The layering of the packages: bert/ (models) at the bottom, data/ above it, helper/ on top."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT


def imported_packages(path) -> set[str]:
    """Top-level names of every module `path` imports, wherever the import statement stands."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(("package", "forbidden"), [("bert", {"helper", "data"}), ("data", {"helper"})])
def test_lower_packages_do_not_import_higher_ones(package, forbidden):
    files = sorted((ROOT / package).glob("*.py"))
    assert files
    offending = {f.name: sorted(imported_packages(f) & forbidden) for f in files}
    assert not {name: bad for name, bad in offending.items() if bad}


def test_the_parser_sees_every_kind_of_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import helper.x\nfrom data.y import z\n\ndef f():\n    from helper import w\n")
    assert imported_packages(probe) == {"helper", "data"}
