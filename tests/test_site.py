"""The docs site: built without Quarto from the nbdev-processed notebooks, opened in a real browser."""
import html
import re
import subprocess
import sys

import pytest
from conftest import ROOT, SCREENSHOTS, serve_folder


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "tools/build_site.py", "--out", str(out), "--no-readme"], cwd=ROOT, check=True,
                   capture_output=True)
    return out


def test_site_has_every_notebook(site):
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    assert "index.html" in pages
    nbs = [
        p
        for p in (ROOT / "nbs").rglob("*.ipynb")
        if not any(s.startswith((".", "_")) for s in p.relative_to(ROOT / "nbs").parts)
    ]
    assert len(pages - {"404.html"}) >= len(nbs), f"site pages {sorted(pages)} vs notebooks {len(nbs)}"
    core = (site / "api" / "core.html").read_text()
    assert "set_seed" in core and "Atomic file writes" in core
    assert "#| export" not in core and "#| hide" not in core, "nbdev directives must not reach the page"
    assert "fonts.googleapis" not in core, "the site must work offline: no web fonts"
    # the page's text as a reader sees it (the code blocks are syntax-highlighted: one span per token)
    nets = html.unescape(re.sub(r"<[^>]+>", "", (site / "api" / "models" / "networks.html").read_text()))
    assert "class ModelOutput(NamedTuple):" in nets and "logits: torch.Tensor" in nets, "a NamedTuple shows its fields"
    assert "class BaseNet(" in nets and "def BaseNet(" not in nets, "a class reads as a class"
    results = {p.relative_to(site).as_posix() for p in (site / "results").rglob("*.html")}
    assert "results/smoke_seeds-0-1-2/table1_cifar100.html" in results, "the committed results are on the site"


def test_site_in_browser(site, browser_page):
    page = browser_page
    SCREENSHOTS.mkdir(exist_ok=True)
    with serve_folder(site) as url:
        page.goto(f"{url}/index.html")
        assert page.title().startswith("msabn")
        assert page.locator("h1").first.inner_text().strip() == "msabn"
        page.screenshot(path=str(SCREENSHOTS / "site-home.png"))
        # navigation: the API section links to the core page, and following the link renders it
        nav_link = page.locator("nav.md-nav--primary a.md-nav__link", has_text="core").first
        nav_link.click()
        page.wait_for_load_state()
        assert page.url.endswith("/api/core.html")
        assert page.locator("h1").first.inner_text().strip() == "core"
        # a documented function's signature, from show_doc
        sig = page.locator("pre", has_text="def set_seed(").first
        assert sig.is_visible()
        assert "deterministic:bool=False" in sig.inner_text()
        page.screenshot(path=str(SCREENSHOTS / "site-core.png"), full_page=False)
        # at 1280 px every code block fits its column: long lines wrap, none hides its end behind a scrollbar
        cut = page.eval_on_selector_all("pre > code", "cs => cs.filter(c => c.scrollWidth > c.clientWidth + 2).length")
        assert page.locator("pre > code").count() > 5 and cut == 0, f"{cut} code blocks wider than the column"
        # and back home through the header link
        page.locator("a.md-header__button.md-logo").click()
        page.wait_for_load_state()
        assert page.url.endswith("/index.html")
        # every internal link of the home page resolves
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        internal = {h.split("#")[0] for h in hrefs if h.startswith(url)}
        for h in sorted(internal):
            resp = page.request.get(h)
            assert resp.ok, f"broken link {h}: {resp.status}"
