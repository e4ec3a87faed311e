"""The import rules of DESIGN.md, checked on the code: pure folders never load Ray, imports run one way."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PURE = ("common", "data", "rewards", "learner")  # Ray-free: testable and usable without a cluster
# folder -> the folders it must never import (the floors above it)
NEVER = {"common": ("data", "rewards", "learner", "actors", "cluster", "bench"),
         "learner": ("data", "rewards", "actors", "cluster", "bench"),
         "data": ("rewards", "actors", "cluster", "bench"),
         "rewards": ("actors", "cluster", "bench"),
         "actors": ("cluster", "bench")}


def _modules(folder: str) -> list[str]:
    return sorted(".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / folder).glob("*.py")
                  if p.name != "__init__.py")


def test_pure_folders_import_no_ray():
    mods = [m for f in PURE for m in _modules(f)]
    assert "rewards.scoring" in mods and "rewards.judge" in mods and "data.tiny_model" in mods
    code = ("import importlib, sys\n"
            f"for m in {mods!r}:\n"
            "    importlib.import_module(m)\n"
            "print(sorted(k for k in sys.modules if k == 'ray' or k.startswith('ray.')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"Ray loaded by importing {PURE}: {out.stdout.strip()[:300]}"


def _imported_folders(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_imports_run_one_way():
    upward = [f"{p.relative_to(REPO)} imports {sorted(_imported_folders(p) & set(banned))}"
              for folder, banned in NEVER.items() for p in sorted((REPO / folder).glob("*.py"))
              if _imported_folders(p) & set(banned)]
    assert upward == []
