#!/usr/bin/env python
"""Build msabn's docs site and README without Quarto.

nbdev renders its docs with Quarto, which cannot be installed everywhere (it downloads a binary). This
script renders the same nbdev-processed notebooks (`show_doc` output, hidden cells removed, front matter)
with well-kept Python tools instead:

1. nbdev's own processors (`nbdev.serve.proc_nbs`) turn `nbs/` into `_proc/`, exactly as for Quarto;
2. nbconvert turns each processed notebook into Markdown, honouring the Quarto cell options that nbdev
   emits (`echo: false`, `include: false`, `output: false`);
3. MkDocs with the Material theme (fonts and search bundled, no CDN) builds a static site with navigation
   between every page, into `_site/` by default.

It also writes `README.md` from `nbs/index.ipynb` (what `nbdev_readme` does with Quarto), so that the two
stay in sync: `python tools/build_site.py --check-readme` fails when README.md is stale.

Usage: python tools/build_site.py [--out _site] [--readme | --check-readme]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import yaml
from nbconvert import MarkdownExporter
from nbdev.config import get_config

# in order
SECTIONS = {"api": "API", "tutorials": "Tutorials", "explanations": "Explanations", "experiments": "Experiments"}
# nbs/api/<layer>/ -> its title in the API section, in the package's order (a layer imports only the ones before it)
API_LAYERS = {"data": "Data", "models": "Models", "train": "Training", "explain": "Explaining",
              "hitl": "Human in the loop", "experiments": "Experiments", "report": "Report"}
_DIRECTIVE = re.compile(r"^\s*#\|\s*([\w-]+)\s*:?\s*(.*)$")


def front_matter(nb) -> dict:
    "The YAML front matter nbdev puts in a raw first cell (title, description, output-file)."
    for cell in nb.cells:
        src = cell.source.strip()
        if cell.cell_type == "raw" and src.startswith("---"):
            cell.source = ""
            return yaml.safe_load(src.strip("-\n")) or {}
    return {}


def quarto_options(cell) -> dict:
    "Quarto's `#| key: value` options at the top of a code cell; removes them from the source."
    opts, lines = {}, cell.source.splitlines()
    while lines and (m := _DIRECTIVE.match(lines[0])):
        opts[m.group(1)] = m.group(2).strip().lower()
        lines.pop(0)
    cell.source = "\n".join(lines)
    return opts


def prepare(nb, site_url: str, here: Path) -> dict:
    "Apply Quarto's cell options and turn links to the online docs into relative links; returns the front matter."
    fm = front_matter(nb)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "raw" and not cell.source.strip(): continue
        if cell.cell_type == "code":
            opts = quarto_options(cell)
            if opts.get("include") == "false": continue
            tags = set(cell.metadata.get("tags", []))
            if opts.get("echo") == "false": tags.add("remove_input")
            if opts.get("output") == "false": tags.add("remove_output")
            cell.metadata["tags"] = sorted(tags)
            for out in cell.get("outputs", []):
                if "text/markdown" in out.get("data", {}):
                    out["data"]["text/markdown"] = _relink(out["data"]["text/markdown"], site_url, here)
        else:
            cell.source = _relink(cell.source, site_url, here)
        cells.append(cell)
    nb.cells = cells
    title, desc = fm.get("title"), fm.get("description")
    head = (f"# {title}\n\n" if title else "") + (f"> {desc}\n" if desc else "")
    if head: nb.cells.insert(0, nbformat.v4.new_markdown_cell(head))
    return fm


def _relink(text: str, site_url: str, here: Path) -> str:
    "Links to the online docs (nbdev's doc links) become relative links to the local Markdown pages."
    def sub(m):
        target, anchor = m.group(1), m.group(2) or ""
        rel = Path(target).with_suffix(".md")
        return _relative(rel, here) + (("#" + _slug(anchor[1:])) if anchor else "")
    base = re.escape(site_url.rstrip("/"))
    # a private name (`_resume`) has no entry on its page: keep it as code, not as a link to a missing anchor
    text = re.sub(r"\[(`_[^`]*`)\]\(" + base + r"/[\w./-]+?\.html#_[\w.-]*\)", r"\1", text)
    return re.sub(base + r"/([\w./-]+?)\.html(#[\w.-]+)?", sub, text)


def _slug(text: str) -> str:
    "Python-Markdown's heading ids (toc's default slugify): nbdev's `#Class.method` anchors become `#classmethod`."
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _relative(target: Path, here: Path) -> str:
    "Path to `target` (relative to the site root) from the page `here` (relative to the site root)."
    up = len(here.parent.parts)
    return "/".join([".."] * up + list(target.parts))


def to_markdown(nb) -> tuple[str, dict]:
    "Markdown for a prepared notebook, and its extracted images."
    exporter = MarkdownExporter()
    exporter.register_preprocessor("nbconvert.preprocessors.TagRemovePreprocessor", enabled=True)
    from traitlets.config import Config
    c = Config()
    c.TagRemovePreprocessor.remove_input_tags = {"remove_input"}
    c.TagRemovePreprocessor.remove_all_outputs_tags = {"remove_output"}
    c.TagRemovePreprocessor.enabled = True
    c.ExtractOutputPreprocessor.enabled = True
    exporter = MarkdownExporter(config=c)
    nb.metadata.setdefault("language_info", {"name": "python"})   # code fences say `python` (nbdev_clean drops it)
    body, resources = exporter.from_notebook_node(nb)
    body = re.sub(r"<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->\n?", "", body)
    body = re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"
    return body, resources.get("outputs", {})


_DEFAULT_EXP = re.compile(r"^#\|\s*default_exp\s+(\S+)", re.M)
_SHOW_DOC = re.compile(r"```python\ndef (\w+)\((.*?)\n```", re.S)


def _source_nb(rel: Path) -> Path:
    return get_config().nbs_path / rel


def page_module(nb_path: Path):
    "The module a notebook exports (None for a page that exports nothing)."
    import importlib
    src = "\n".join(c.source for c in nbformat.read(nb_path, as_version=4).cells) if nb_path.exists() else ""
    m = _DEFAULT_EXP.search(src)
    if not m: return None
    name = m.group(1).removesuffix(".__init__").removesuffix("__init__").rstrip(".")
    return importlib.import_module(f"{get_config().lib_name}.{name}" if name else get_config().lib_name)


def classes_as_classes(body: str, module) -> str:
    ("show_doc writes every signature as `def`: a class reads `class`, and a NamedTuple lists its fields with their "
     "comments.")
    import inspect
    if module is None: return body
    def sub(m):
        obj = getattr(module, m.group(1), None)
        if not inspect.isclass(obj): return m.group(0)
        if hasattr(obj, "_fields"):   # a NamedTuple: its fields, as its source writes them
            src = inspect.getsource(obj).splitlines()
            fields = [line.strip() for line in src[1:] if ":" in line and line.strip().split(":")[0] in obj._fields]
            return (
                "```python\nclass " + m.group(1) + "(NamedTuple):\n" + "\n".join("    " + f for f in fields) + "\n```"
            )
        return "```python\nclass " + m.group(1) + "(" + m.group(2) + "\n```"
    return _SHOW_DOC.sub(sub, body)


def render_pages(proc: Path, dst: Path, site_url: str) -> list[tuple[Path, str]]:
    "Write one Markdown page (plus images) per processed notebook; return (page, title) pairs."
    pages = []
    for src in sorted(proc.rglob("*.ipynb")):
        rel = src.relative_to(proc)
        if any(p.startswith((".", "_")) for p in rel.parts): continue
        nb = nbformat.read(src, as_version=4)
        fm = front_matter(nbformat.read(src, as_version=4))
        out_name = Path(fm.get("output-file", rel.stem + ".html")).with_suffix(".md").name
        page = rel.parent / out_name
        if page.name == "index.md" and rel.parent != Path("."): page = rel.parent / (rel.stem + ".md")
        prepare(nb, site_url, page)
        body, images = to_markdown(nb)
        body = classes_as_classes(body, page_module(_source_nb(rel)))
        # images are named output_N_M.png: give them a folder per page and point the Markdown at it
        img_dir = page.with_suffix("").name + "_files"
        for name, data in images.items():
            (dst / page.parent / img_dir).mkdir(parents=True, exist_ok=True)
            (dst / page.parent / img_dir / name).write_bytes(data)
            body = body.replace(f"]({name})", f"]({img_dir}/{name})")
        (dst / page).parent.mkdir(parents=True, exist_ok=True)
        (dst / page).write_text(body, encoding="utf-8")
        pages.append((page, fm.get("title") or rel.stem))
    return pages


RESULTS = "results"   # paper_figures/ is copied here: every table's and figure's page, the studies, the benchmarks


def copy_results(root: Path, docs: Path) -> list[tuple[Path, str]]:
    ("Copy paper_figures/ into the site and list its pages for the navigation: the overview, the paper's order, the "
     "rest.")
    src = root / "paper_figures"
    if not src.is_dir(): return []
    shutil.copytree(src, docs / RESULTS, ignore=shutil.ignore_patterns(".*"))
    pages = sorted(p.relative_to(docs) for p in (docs / RESULTS).rglob("*.md"))
    order = ("table1", "table2", "table3", "table4", "table5", "fig1", "fig8_9")
    def key(p: Path):
        top = len(p.parts) == 2
        paper = next((i for i, o in enumerate(order) if p.name.startswith(o)), len(order))
        return (not top, "studies" not in p.parts, p.parent.as_posix(), p.name != "README.md", paper, p.name)
    out = []
    for p in sorted(pages, key=key):
        first = next((line[2:].strip() for line in (docs / p).read_text(encoding="utf-8").splitlines()
                      if line.startswith("# ")), None)
        # a fragment another page includes (the explainers' table.md), not a page of its own
        if first is None: continue
        out.append((p, "Overview" if p == Path(RESULTS) / "README.md" else first.split(" (ours:")[0]))
    return out


def experiments_in_paper_order(pages: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    "The templates' pages as the paper numbers them (tables 1-5, then the figures)."
    from msabn.experiments.catalog import TEMPLATES
    order = list(TEMPLATES.values())
    return sorted(pages, key=lambda pt: order.index(pt[0].stem) if pt[0].stem in order else len(order))


def _index_first(pages: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    "Pages in notebook order, each folder's index page (its overview) first."
    return sorted(pages, key=lambda pt: (pt[0].parent.parts, pt[0].stem != "index"))


def mkdocs_config(cfg, pages: list[tuple[Path, str]], docs_dir: Path, site_dir: Path, css: Path | None) -> dict:
    "MkDocs settings: Material theme, no web fonts or CDN, nav = home, then one section per notebook folder."
    nav = [{"Home": "index.md"}]
    for folder, title in SECTIONS.items():
        mine = [(p, t) for p, t in _index_first(pages) if p.parts[0] == folder and len(p.parts) == 2]
        if folder == "experiments": mine = experiments_in_paper_order(mine)
        sec = [{t: p.as_posix()} for p, t in mine]
        if folder == "api":
            for layer, name in API_LAYERS.items():
                sub = [{t: p.as_posix()} for p, t in _index_first(pages) if p.parts[:2] == ("api", layer)]
                if sub: sec.append({name: sub})
        if sec: nav.append({title: sec})
    results = [{t: p.as_posix()} for p, t in pages if p.parts[0] == RESULTS]
    if results: nav.append({"Results": results})
    conf = {
        "site_name": cfg.get("title", cfg.lib_name),
        "site_description": cfg.get("description", ""),
        "repo_url": cfg.get("git_url", ""),
        "docs_dir": str(docs_dir),
        "site_dir": str(site_dir),
        "use_directory_urls": False,  # api/core.md -> api/core.html, the same names nbdev's links use
        "theme": {
            "name": "material",
            "font": False,
            "features": ["navigation.sections", "navigation.footer", "content.code.copy"],
        },
        "plugins": ["search", "offline"],
        "markdown_extensions": [
            "tables",
            "attr_list",
            "admonition",
            "md_in_html",
            "toc",
            "pymdownx.superfences",
            "pymdownx.highlight",
        ],
        "nav": nav,
        # a link to a page or heading that does not exist fails the build (--strict)
        "validation": {"links": {"not_found": "warn", "anchors": "warn", "unrecognized_links": "warn"}},
    }
    if css: conf["extra_css"] = [css.name]
    return conf


def build(out: str = "_site", readme: bool = True, quiet: bool = False) -> Path:
    "Process the notebooks with nbdev, render them to Markdown, build the site with MkDocs; return the site folder."
    from nbdev.serve import proc_nbs
    cfg = get_config()
    root = cfg.config_path
    site_url = cfg.doc_host.rstrip("/") + cfg.doc_baseurl
    proc = proc_nbs(cfg.nbs_path, force=True, n_workers=0)
    site = (root / out).resolve()
    with tempfile.TemporaryDirectory(prefix="msabn-site-") as tmp:
        docs = Path(tmp) / "docs"
        pages = render_pages(proc, docs, site_url) + copy_results(root, docs)
        css = cfg.nbs_path / "styles.css"
        if css.exists(): shutil.copy(css, docs / css.name)
        conf = mkdocs_config(cfg, pages, docs, site, css if css.exists() else None)
        (Path(tmp) / "mkdocs.yml").write_text(yaml.safe_dump(conf, sort_keys=False))
        if readme: write_readme(docs / "index.md", root / "README.md")
        cmd = [sys.executable, "-m", "mkdocs", "build", "--clean", "--strict", "-f", str(Path(tmp) / "mkdocs.yml")]
        if quiet: cmd.append("-q")
        subprocess.run(cmd, check=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    return site


def readme_text(index_md: Path) -> str:
    "README.md is the home page's Markdown, its site-relative links made absolute so that they work on GitHub and PyPI."
    cfg = get_config()
    site = cfg.doc_host.rstrip("/") + cfg.doc_baseurl.rstrip("/")
    raw = (
        cfg.git_url.replace("https://github.com/", "https://raw.githubusercontent.com/").rstrip("/") + f"/{cfg.branch}"
    )
    text = index_md.read_text(encoding="utf-8")
    text = re.sub(r"(!\[[^\]]*\]\()" + RESULTS + r"/", rf"\1{raw}/paper_figures/", text)          # pictures: the files
    text = re.sub(r"(\]\()(?!https?://|#)([\w./-]+?)\.md\b", rf"\1{site}/\2.html", text)         # pages: the docs site
    return (
        "<!-- Generated from nbs/index.ipynb by tools/build_site.py: edit the notebook, not this file. -->\n\n" + text
    )


def write_readme(index_md: Path, readme: Path):
    readme.write_text(readme_text(index_md), encoding="utf-8")


def check_readme() -> bool:
    "True when README.md is what nbs/index.ipynb renders to (the home page alone is processed, not every notebook)."
    import nbdev.serve_drv
    from nbdev.processors import FilterDefaults
    cfg = get_config()
    with tempfile.TemporaryDirectory() as tmp:
        proc, docs = Path(tmp) / "proc", Path(tmp) / "docs"
        proc.mkdir()
        nbdev.serve_drv.main((cfg.nbs_path / "index.ipynb", proc / "index.ipynb", FilterDefaults))
        render_pages(proc, docs, cfg.doc_host.rstrip("/") + cfg.doc_baseurl)
        want = readme_text(docs / "index.md")
    have = (cfg.config_path / "README.md").read_text(encoding="utf-8")
    return want == have


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="_site", help="output folder, relative to the repository root")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    ap.add_argument("--check-readme", action="store_true", help="only check that README.md is up to date")
    a = ap.parse_args()
    if a.check_readme:
        ok = check_readme()
        print("README.md is up to date" if ok else "README.md is stale: run python tools/build_site.py")
        sys.exit(0 if ok else 1)
    site = build(a.out, readme=not a.no_readme)
    print(f"site written to {Path(a.out) / 'index.html'}")
