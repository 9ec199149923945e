"""README.md and docs/: the configuration reference is current, relative links resolve, Python blocks compile.

Convention for ```python blocks in README.md and docs/*.md: a block right after `<!-- not run: <why> -->` is only
compiled; any other block is run (from the repository root, in a fresh interpreter) and must exit 0.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helper.config import config_reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not run: [^>]+-->\s*$")


def test_configuration_reference_is_current():
    page = ROOT / "docs" / "configuration.md"
    assert page.read_text() == config_reference(), (
        "docs/configuration.md is stale: refresh it with `python docs/make_config_reference.py`"
    )


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if m := re.match(r"#{1,6} (.*)", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text()))  # links in code are not links
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            bad.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            bad.append(f"{target}: no heading with that anchor in {file.relative_to(ROOT)}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


def python_blocks() -> list:
    """pytest.param(code, run, id=where) for every ```python block of the pages."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) == "python":
                line = text.count("\n", 0, m.start()) + 1
                before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
                where = f"{page.relative_to(ROOT)}:{line}"
                out.append(pytest.param(where, m.group(2), not NOT_RUN.search(before), id=where))
    return out


@pytest.mark.parametrize("where, code, run", python_blocks())
def test_python_blocks(where, code, run):
    compile(code, where, "exec")  # every block is at least valid Python
    if run:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{where} failed (mark it `<!-- not run: why -->` if it cannot):\n{proc.stderr}"


def test_python_blocks_found():
    assert python_blocks(), "README.md has no ```python block: the convention above checks nothing"
