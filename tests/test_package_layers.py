"""The layering of the packages: bert/ (models) at the bottom, data/ above it, helper/ on top; inside helper/, the
training modules below the stage runner; no import circles."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

# helper/'s training modules: what a Lightning run of the Python API needs. They never import the stage runner.
TRAINING = ["adaptors", "distiller", "finetuner", "metrics", "teacher_cache", "training", "hgckpt", "checkpoint"]


def imported_modules(path) -> set[str]:
    """Dotted names of every module `path` imports, wherever the import statement stands (`from a import b` gives
    `a` and `a.b`: b may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def imported_packages(path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


@pytest.mark.parametrize(("package", "forbidden"), [("bert", {"helper", "data"}), ("data", {"helper"})])
def test_lower_packages_do_not_import_higher_ones(package, forbidden):
    files = sorted((ROOT / package).glob("*.py"))
    assert files
    offending = {f.name: sorted(imported_packages(f) & forbidden) for f in files}
    assert not {name: bad for name, bad in offending.items() if bad}


@pytest.mark.parametrize("module", TRAINING)
def test_training_modules_do_not_import_stage_code(module):
    assert "helper.stages" not in imported_modules(ROOT / "helper" / f"{module}.py")


def test_no_import_circle():
    """Project modules as a graph of their imports (wherever they stand): no cycle."""
    files = {p: ".".join(p.relative_to(ROOT).with_suffix("").parts) for p in ROOT.glob("[bdh]*/*.py")}
    modules = {name.removesuffix(".__init__") for name in files.values()}
    graph = {files[p].removesuffix(".__init__"): sorted(m for m in imported_modules(p) if m in modules) for p in files}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            assert state.get(nxt) != 1, f"import circle: {' -> '.join([*path, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_parser_sees_every_kind_of_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import helper.x\nfrom data.y import z\n\ndef f():\n    from helper import w\n")
    assert imported_packages(probe) == {"helper", "data"}
    assert {"helper.x", "data.y", "data.y.z", "helper", "helper.w"} <= imported_modules(probe)
