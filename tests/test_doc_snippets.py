"""Every ```python block of README.md and docs/**/*.md runs, so the docs cannot rot.

The blocks of one page run in order in one namespace, in a fresh working directory
(a tutorial's later blocks use what its earlier ones made). A name a block uses without
defining it comes from ``tests/doc_fixtures.py`` (tiny random models, batches, loaders).
Comments right before a block steer it:

* ``<!-- snippet: fresh -->`` starts a new namespace (independent quickstarts on one page);
  ``fixtures=causal_lm`` (or ``classifier``) picks which model the fixtures stand for;
* ``<!-- snippet: skip (why) -->`` leaves the block out (it needs something a test cannot
  have: several processes, a GPU, a download). At most ``MAX_SKIPPED`` blocks may be skipped.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import doc_fixtures

ROOT = Path(__file__).resolve().parents[1]
MAX_SKIPPED = 4
BLOCK = re.compile(r"(?P<pre>(?:<!--[^>]*-->\s*\n)*)```python\n(?P<code>.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*snippet:\s*(?P<what>[^>]*?)\s*-->")


def pages() -> list[str]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [str(p.relative_to(ROOT)) for p in found if BLOCK.search(p.read_text())]


def blocks(page: str) -> list[tuple[int, str, list[str]]]:
    """``(line, code, markers)`` of every python block of ``page``."""
    text = (ROOT / page).read_text()
    out = []
    for m in BLOCK.finditer(text):
        markers = [mk.group("what") for mk in MARKER.finditer(m.group("pre"))]
        line = text[: m.start("code")].count("\n") + 1
        out.append((line, m.group("code"), markers))
    return out


def used_names(code: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name)}


def run_page(page: str, workdir: Path) -> tuple[int, str | None]:
    """Run ``page``'s blocks in ``workdir``; ``(blocks run, the first failure or None)``."""
    os.chdir(workdir)
    torch.manual_seed(0)
    try:
        doc_fixtures.setup_page(page, workdir)
    except Exception as exc:
        return 0, f"setting up {page} fails: {exc!r}"
    namespace: dict = {}
    profile = None
    ran = 0
    for line, code, markers in blocks(page):
        words = " ".join(markers).split()
        if "skip" in words:
            continue
        if "fresh" in words:
            namespace, profile = {}, None
        profile = next((w.split("=", 1)[1] for w in words if w.startswith("fixtures=")), profile)
        missing = {n for n in used_names(code) if n not in namespace and not hasattr(builtins, n)}
        namespace.update(doc_fixtures.namespace_for(page, missing, profile))
        namespace["__name__"] = "__doc_snippet__"
        try:
            exec(compile(code, f"{page}:{line}", "exec"), namespace)
        except Exception as exc:  # reported per page by the test
            return ran, f"the block at {page}:{line} fails: {exc!r}"
        ran += 1
    return ran, None


@pytest.fixture(scope="module")
def page_results(tmp_path_factory):
    """Every page's result, from one child process.

    The blocks register layer kinds, families and modes and patch ``from_pretrained``
    (``enable_huggingface_checkpointing``): a child process keeps that out of the other tests.
    """
    out = tmp_path_factory.mktemp("doc-snippets")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "tests.test_doc_snippets", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("page", pages())
def test_page_blocks_run(page, page_results):
    ran, error = page_results[page]
    assert error is None, error


def test_few_blocks_are_skipped():
    every = [(page, line, ms) for page in pages() for line, _, ms in blocks(page)]
    skipped = [(page, line) for page, line, ms in every if any(m.startswith("skip") for m in ms)]
    bare = [(page, line) for page, line, ms in every
            if any(m.startswith("skip") and "(" not in m for m in ms)]
    assert not bare, f"a skip marker must say why, e.g. <!-- snippet: skip (needs 2 processes) -->: {bare}"
    assert len(skipped) <= MAX_SKIPPED, f"{len(skipped)} of {len(every)} blocks skipped: {skipped}"
    assert len(every) - len(skipped) >= 20, "the README and docs should show (and test) more code"


def test_marker_parsing_finds_skips_and_fresh(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("<!-- snippet: skip (needs a GPU) -->\n```python\nx = 1\n```\n"
                    "<!-- snippet: fresh -->\n```python\ny = 2\n```\n```python\nz\n```\n")
    found = [(code, ms) for _, code, ms in
             [(m.start(), m.group("code"), [k.group("what") for k in MARKER.finditer(m.group("pre"))])
              for m in BLOCK.finditer(page.read_text())]]
    assert found == [("x = 1\n", ["skip (needs a GPU)"]), ("y = 2\n", ["fresh"]), ("z\n", [])]


if __name__ == "__main__":  # the child process of ``page_results``
    torch.set_num_threads(1)
    results_dir = Path(sys.argv[1])
    results = {}
    for number, page in enumerate(pages()):
        workdir = results_dir / f"page{number}"
        workdir.mkdir()
        results[page] = run_page(page, workdir)
    (results_dir / "results.json").write_text(json.dumps(results))
