"""The repository's promises: README commands, CI, nbdev settings, clean committed files."""
import configparser
import re
import subprocess

import nbformat
from conftest import ROOT


def readme_blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.+?)\n```", text, flags=re.S)


def test_readme_has_the_main_command_and_ci_runs_the_test_one():
    sh = readme_blocks("sh")
    assert "pip install -e ." in sh and any(b.startswith("msabn_run ") and "msabn_report" in b for b in sh), sh
    test = next(b for b in sh if "nbdev_test" in b)
    assert "pip install" in test and "pytest tests" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, f"the README's test command must appear verbatim in .ci/run:\n{test}"


def test_readme_is_a_front_door_whose_python_runs(tmp_path, monkeypatch):
    "At most 900 words, and its Python blocks (the own-loop and copy-replace examples) run as a user would run them."
    text = (ROOT / "README.md").read_text()
    assert len(text.split()) <= 900, f"README.md has {len(text.split())} words"
    blocks = readme_blocks("python")
    assert len(blocks) >= 2 and "create_model" in blocks[0] and "finetune" in blocks[1], blocks
    monkeypatch.chdir(tmp_path)   # the examples write data/ where they run
    ns = {}
    for b in blocks: exec(compile(b, "README.md", "exec"), ns)
    assert ns["result"].method == "copy_replace" and ns["result"].pool_size == 8
    assert tuple(ns["out"].attn_map.shape[-2:]) == (32, 32)


def test_nbdev_settings():
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    d = cfg["DEFAULT"]
    assert "tags" in d["allowed_cell_metadata_keys"].split(), "nbdev_clean would strip papermill's parameters tag"
    assert set("notest slow cuda".split()) <= set(d["tst_flags"].split())
    assert any(r.startswith("nbdev") and "<3" in r for r in d["dev_requirements"].split()), "nbdev must stay below 3"
    import nbdev
    assert nbdev.__version__.startswith("2."), nbdev.__version__


def tracked_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / f for f in out if (ROOT / f).is_file()]


def test_no_machine_details_in_tracked_files():
    # the pattern is assembled from pieces so that this file does not match itself
    roots = ["wor" + "k", "ro" + "ot", "home/[a-z]+", "Users/[A-Za-z]+"]
    pat = re.compile("(" + "|".join(f"/{r}/" for r in roots) + ")")
    hits = []
    for f in tracked_files():
        if f.suffix in {".png", ".jpg", ".pt", ".gz"}: continue
        try: text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError: continue
        hits += [f"{f.relative_to(ROOT)}: {m.group(0)}" for m in pat.finditer(text)]
    assert not hits, f"absolute machine paths in tracked files: {hits[:5]}"


def test_words_a_newcomer_can_read():
    "The project speaks of the paper and of msabn: no internal brief's name and no tracker numbers in what it ships."
    # assembled from pieces so that this file does not match itself
    pat = re.compile(r"\b(" + "SP" + "EC" + r"\b|" + "iss" + r"ue #?\d+)")
    hits = []
    for f in tracked_files():
        if f.suffix not in {".py", ".ipynb", ".md", ".toml", ".ini", ".cfg", ".txt"}: continue
        text = f.read_text(encoding="utf-8")
        hits += [f"{f.relative_to(ROOT)}: {m.group(0)}" for m in pat.finditer(text)]
    assert not hits, f"tracker or brief words in tracked files: {hits[:5]}"


def test_notebooks_have_no_execution_counts_or_stray_metadata():
    for f in tracked_files():
        if f.suffix != ".ipynb": continue
        nb = nbformat.read(f, as_version=4)
        assert set(nb.metadata) <= {"kernelspec", "jupytext", "widgets"}, f"{f}: notebook metadata {set(nb.metadata)}"
        for c in nb.cells:
            assert set(c.metadata) <= {"tags", "hide_input"}, f"{f}: cell metadata {set(c.metadata)} (run nbdev_clean)"
            if c.cell_type == "code": assert c.execution_count is None, f"{f}: execution counts (run nbdev_clean)"


# counted in logical lines (a statement, however many lines the formatter gives it, or a comment line), so that a
# dict of the paper's settings written one key per line counts as the one statement it is
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 40


def _logical_lines(text: str, first: int = 1, last: int | None = None) -> int:
    "The statements and comment lines of text between lines first and last."
    import io
    import tokenize
    rows = set()
    for t in tokenize.generate_tokens(io.StringIO(text).readline):
        if not first <= t.start[0] <= (last or t.start[0]): continue
        if t.type == tokenize.NEWLINE or (t.type == tokenize.COMMENT and t.line.lstrip().startswith("#")):
            rows.add(t.start[0])
    return len(rows)


def test_modules_and_functions_stay_small():
    # a module reads top-down, a function fits on a screen (msabn/_modidx.py is nbdev's index)
    import ast
    long = []
    for f in sorted((ROOT / "msabn").rglob("*.py")):
        if f.name == "_modidx.py": continue
        text = f.read_text(encoding="utf-8")
        if (n := _logical_lines(text)) > MAX_MODULE_LINES: long.append(f"{f.name}: {n} logical lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _logical_lines(text, node.lineno, node.end_lineno)
                if n > MAX_FUNCTION_LINES: long.append(f"{f.name}:{node.lineno} {node.name}: {n} logical lines")
    assert not long, f"over {MAX_MODULE_LINES} logical lines per module / {MAX_FUNCTION_LINES} per function: {long}"


def test_the_size_rule_counts_statements_not_wrapped_lines():
    wrapped = "def f():\n    x = {\n        'a': 1,\n        'b': 2,\n    }\n    # why\n    return x\n"
    assert _logical_lines(wrapped) == 4   # def, the dict, the comment, return


def test_ci_runs_the_linter():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "ruff check" in ci


# the package's layers, lowest first: a module imports only from its own layer or the ones before it
LAYERS = ("core", "data", "models", "train", "explain", "hitl", "experiments", "report")


def _imported_modules(f, tree):
    "The msabn modules a file imports, as dotted names (relative imports resolved)."
    import ast
    pkg = f.relative_to(ROOT).with_suffix("").parts[:-1]   # ('msabn', 'train') for msabn/train/engine.py
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level: base = ".".join(pkg[:len(pkg) - node.level + 1] + ((node.module,) if node.module else ()))
            else: base = node.module or ""
            if base.startswith("msabn"): yield node.lineno, base
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.startswith("msabn"))


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_module_imports_from_a_layer_above_its_own():
    import ast
    files = [f for f in sorted((ROOT / "msabn").rglob("*.py")) if f.name != "_modidx.py" and f.parent != ROOT / "msabn"
             or f.name == "core.py"]
    assert {f.parent.name for f in files} >= set(LAYERS[1:]), "every layer is a subpackage of msabn/"
    upward = []
    for f in files:
        own = _layer(".".join(f.relative_to(ROOT).with_suffix("").parts))
        for line, mod in _imported_modules(f, ast.parse(f.read_text(encoding="utf-8"))):
            other = _layer(mod)
            if other is None and mod != "msabn.core": upward.append(f"{f.relative_to(ROOT)}:{line} imports {mod} (the "
                                                                    "top)")
            elif other is not None and other > own: upward.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not upward, "imports from a layer above: " + "; ".join(upward)


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    import ast
    f = ROOT / "msabn" / "models" / "networks.py"   # a models module importing the training engine would be refused
    tree = ast.parse(
        "from ..train.engine import fit\nfrom .attention import AttentionBranch\nimport msabn.data.items\n"
    )
    found = {mod: _layer(mod) for _, mod in _imported_modules(f, tree)}
    assert found == {"msabn.train.engine": LAYERS.index("train"), "msabn.models.attention": LAYERS.index("models"),
                     "msabn.data.items": LAYERS.index("data")}


def test_library_lines_fit_the_page():
    "At most 120 characters a line, so that code never overflows the docs' column; nbdev writes one line of its own."
    long = []
    for f in sorted((ROOT / "msabn").rglob("*.py")):
        if f.name == "_modidx.py": continue
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            # nbdev wraps the __all__ it generates at 120 and then puts `__all__ = ` in front of the first line
            if len(line) > 120 and not (line.startswith("__all__ = [") and len(line) <= 130):
                long.append(f"{f.relative_to(ROOT)}:{i} ({len(line)})")
    assert not long, f"library lines over 120 characters: {long[:10]}"
