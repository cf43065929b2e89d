#!/usr/bin/env python
"""Sort the imports of notebook export cells the way ruff's isort wants them in the exported modules.

nbdev exports `from msabn.x.y import z` as a relative import; ruff sorts relative imports (the local-folder section,
furthest first) apart from absolute first-party ones, so a notebook's import order is computed on the exported form
and written back in absolute form. Run it after editing an export cell's imports, then `nbdev_export`.

Usage: python tools/sort_notebook_imports.py [NOTEBOOK ...]   (default: every notebook under nbs/api/)
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from nbdev.maker import relative_import

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXP = re.compile(r"^#\|\s*default_exp\s+(\S+)", re.M)
EXPORT = re.compile(r"^#\|\s*export[is]?\b")


def to_relative(src: str, module: str) -> str:
    "nbdev's own conversion of `from msabn.a.b import c` inside module msabn.<module>."
    folder = "/".join(["msabn"] + module.split(".")[:-1])
    return re.sub(r"^(\s*)from (msabn(?:\.\w+)*) import",
                  lambda m: f"{m.group(1)}from {relative_import(m.group(2), folder)} import", src, flags=re.M)


def to_absolute(src: str, module: str) -> str:
    "The inverse: relative imports of msabn.<module> written as absolute ones."
    pkg = ["msabn"] + module.split(".")[:-1]
    def sub(m):
        base = pkg[:len(pkg) - len(m.group(2)) + 1]
        return f"{m.group(1)}from {'.'.join(base + ([m.group(3)] if m.group(3) else []))} import"
    return re.sub(r"^(\s*)from (\.+)([\w.]*) import", sub, src, flags=re.M)


def ruff_isort(code: str) -> str:
    r = subprocess.run(["ruff", "check", "--select", "I", "--fix", "--stdin-filename", "msabn/x.py", "-"],
                       input=code, capture_output=True, text=True, cwd=ROOT)
    return r.stdout or code


def sort_notebook(path: Path) -> bool:
    "Sort every export cell's imports in place; True when the notebook changed."
    nb = json.loads(path.read_text(encoding="utf-8"))
    m = DEFAULT_EXP.search("\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"))
    if not m: return False
    changed = False
    for c in nb["cells"]:
        src = "".join(c["source"])
        if c["cell_type"] != "code" or not EXPORT.match(src) or "import" not in src: continue
        new = to_absolute(ruff_isort(to_relative(src, m.group(1)) + "\n").rstrip("\n"), m.group(1))
        if new != src: c["source"], changed = new.splitlines(keepends=True), True
    if changed: path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return changed


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "nbs" / "api").rglob("*.ipynb"))
    for p in paths:
        if sort_notebook(p): print(f"sorted {p}")
