#!/usr/bin/env python
"""Report source files over 300 lines and functions over 60 lines without a reason.

A long function passes when its docstring holds a line starting with ``Long:`` that says why
(e.g. ``Long: one linear recipe; splitting it would scatter the steps``). Exit code 1 when
anything is reported. ``python scripts/check_sizes.py [--tests] [paths...]``.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FILE, MAX_FUNCTION = 300, 60
ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["benchmark", "tasks", "learners", "scripts", "run_benchmark.py"]


def problems(path: Path) -> list[str]:
    text = path.read_text()
    name = path.relative_to(ROOT).as_posix()
    found = []
    lines = len(text.splitlines())
    if lines > MAX_FILE:
        found.append(f"{name}: {lines} lines (over {MAX_FILE})")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            if length > MAX_FUNCTION and not any(line.strip().startswith("Long:") for line in doc.splitlines()):
                found.append(f"{name}:{node.lineno}: {node.name}() is {length} lines (over {MAX_FUNCTION}, "
                             "no 'Long:' reason in its docstring)")
    return found


def main(argv: list[str]) -> int:
    targets = [a for a in argv if not a.startswith("--")] or DEFAULT + (["tests"] if "--tests" in argv else [])
    files = sorted(f for t in targets for f in ([ROOT / t] if (ROOT / t).is_file() else (ROOT / t).rglob("*.py")))
    found = [p for f in files for p in problems(f)]
    print("\n".join(found) if found else f"{len(files)} files: none over {MAX_FILE} lines, "
          f"no function over {MAX_FUNCTION} lines without a reason")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
