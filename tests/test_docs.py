"""The documents the code cites exist in the repository, with the sections it cites.

A clone has only what is committed: a reference to a file outside the repository (the project's
shared notes) or to a section that was renumbered leaves a reader with nothing to open.
"""
from __future__ import annotations

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CITED = re.compile(r"docs/([A-Za-z_]+\.md) §(\d+(?:\.\d+)?)")
BARE = re.compile(r"(?<![\w/.-])(METHOD|PROTOCOLS)\.md")


def _tracked_text_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in out if f.endswith((".py", ".md", ".yaml", ".txt"))
            and f != "tests/test_docs.py"]   # this file names the patterns it looks for


def _sections(doc: str):
    """Section numbers of the headings of ``docs/<doc>`` (``## 1. ...``, ``### 1.6 ...``)."""
    with open(os.path.join(ROOT, "docs", doc), encoding="utf-8") as f:
        return {m.group(1) for m in re.finditer(r"^#{2,4} (\d+(?:\.\d+)?)\.? ", f.read(), re.M)}


def test_cited_sections_exist_and_no_citation_leaves_the_repository():
    cited, bare = {}, []
    for path in _tracked_text_files():
        with open(os.path.join(ROOT, path), encoding="utf-8", errors="replace") as f:
            text = f.read()
        for doc, section in CITED.findall(text):
            cited.setdefault((doc, section), []).append(path)
        prose = re.sub(r"```.*?```", "", text, flags=re.S) if path.endswith(".md") else text
        for m in BARE.finditer(prose):   # (fenced blocks: the README's folder listing)
            bare.append(f"{path}: {prose[max(0, m.start() - 30):m.end() + 10]!r}")
    assert ("METHOD.md", "1.6") in cited          # the losses cite the method's loss section
    missing = [f"{doc} §{sec} (cited in {', '.join(sorted(set(paths)))})"
               for (doc, sec), paths in sorted(cited.items())
               if not os.path.isfile(os.path.join(ROOT, "docs", doc)) or sec not in _sections(doc)]
    assert not missing, missing
    assert not bare, "cite docs/METHOD.md / docs/PROTOCOLS.md, the files in the repository: " \
        + "; ".join(bare)




def test_every_test_a_document_cites_exists():
    """docs/differences.md marks a step **same** with the test that pins it: each cited
    ``tests/<file>.py::<test>`` must exist (a renamed test would leave the claim unpinned)."""
    import ast
    names = {}
    for f in os.listdir(os.path.join(ROOT, "tests")):
        if f.startswith("test_") and f.endswith(".py"):
            tree = ast.parse(open(os.path.join(ROOT, "tests", f), encoding="utf-8").read())
            names[f[:-3]] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    missing = []
    for doc in ("docs/differences.md", "README.md", "docs/PROTOCOLS.md", "docs/METHOD.md"):
        text = open(os.path.join(ROOT, doc), encoding="utf-8").read()
        # "tests/test_models.py::test_a, test_b": every name after the first counts too
        for m in re.finditer(r"tests/(test_\w+)\.py::([\w, ]+)", text):
            module = m.group(1)
            for name in [n.strip() for n in m.group(2).split(",") if n.strip()]:
                if not name.startswith("test_"):
                    break
                if name.split("[")[0] not in names.get(module, set()):
                    missing.append(f"{doc}: tests/{module}.py::{name}")
    assert missing == []
