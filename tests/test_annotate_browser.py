"""The box editor in a real browser: JupyterLab started here on 127.0.0.1, Debian's Chromium driven by Playwright.

It opens (a copy of) the tutorial `nbs/tutorials/box_editor.ipynb` with `SIMULATE = False`, as a person would, and
runs all its cells: none fails, and the cell after the editor says what to do instead of fine-tuning nothing. Then,
with the mouse: a box drawn on the first image, found in the project's box file in the right image coordinates; a
drag on the second image released beside it, saved cut to the image, with nothing left following the mouse; a
click, which leaves no box; then *Fine-tune*, whose line says what runs and how long is left, and whose table shows
before, vanilla and copy-replace side by side. Then it kills the kernel (SIGKILL, as a crash would), lets
JupyterLab restart it, runs the notebook again and finds the boxes still there: in the file, and drawn by the editor.

Everything runs offline: JupyterLab and the widget front ends (ipywidgets' and anywidget's prebuilt lab
extensions; jupyter-bbox-widget ships its JavaScript inside the Python package and anywidget loads it through the
kernel) come from the virtual environment. JupyterLab gets its own temporary config, data, runtime and settings
folders and a token; it and its kernels are stopped at the end.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from conftest import CHROMIUM_ARGS, ROOT, SCREENSHOTS, require_chromium

TUTORIAL = ROOT / "nbs" / "tutorials" / "box_editor.ipynb"
SCALE = 8            # the editor shows a 32 px image 8x enlarged (256 px)
DRAG = ((40, 48), (200, 176))  # from, to: in the displayed image's pixels


# --- JupyterLab on a free loopback port, in folders of its own --------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def _settings(folder: Path):
    "User settings: render every cell (no windowing, so cells can be found) and never ask the internet for news."
    for rel, value in {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
    }.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(value))

@contextmanager
def jupyterlab(root_dir: Path, home: Path):
    "Start JupyterLab serving root_dir; yields (base_url, token, process); stops it and its kernels after."
    port, token = _free_port(), secrets.token_hex(16)
    for d in ("config", "data", "runtime", "settings", "workspaces", "ipython"):
        (home / d).mkdir(parents=True, exist_ok=True)
    _settings(home / "settings")
    env = {k: v for k, v in os.environ.items() if k != "IN_TEST"}
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        IPYTHONDIR=str(home / "ipython"),
        JUPYTER_PLATFORM_DIRS="1",
        PYTHONUNBUFFERED="1",
    )
    log = open(home / "jupyterlab.log", "w")
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--LabApp.expose_app_in_browser=True",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ] + (["--allow-root"] if os.geteuid() == 0 else [])
    proc = subprocess.Popen(cmd, cwd=root_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"JupyterLab did not start:\n{(home / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, token, proc
    finally:
        kids = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(5)
        for k in kids:  # kernels the server started (only ours: children of the process this test started)
            try: k.kill()
            except psutil.NoSuchProcess: pass
        log.close()

def kernel_processes(server: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(server.pid).children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]


# --- driving the notebook -----------------------------------------------------------------------------------
JS_STATE = """() => {
  const nb = window.jupyterapp.shell.currentWidget;
  if (!nb || !nb.content || !nb.sessionContext.session || !nb.sessionContext.session.kernel) return null;
  const cells = nb.content.widgets, errors = [], texts = [];
  for (const c of cells) {
    let t = '';
    if (c.model.type === 'code') for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
      if (o.text) t += [].concat(o.text).join('');
      if (o.data && o.data['text/plain']) t += [].concat(o.data['text/plain']).join('');
    }
    texts.push(t);
  }
  return {status: nb.sessionContext.session.kernel.status, texts, errors,
          counts: cells.map(c => c.model.type === 'code' ? c.model.executionCount : -1)};
}"""

JS_RUN_ALL = """() => {
  const app = window.jupyterapp;
  app.commands.execute('notebook:clear-all-cell-outputs');       // also clears the execution counts
  app.commands.execute('notebook:run-all-cells');
}"""

def run_all(page, timeout: float = 600) -> dict:
    "Run All and wait until every code cell has run; asked again once if the request was lost. The final state."
    for _attempt in (0, 1):
        page.evaluate(JS_RUN_ALL)
        t0 = time.time()
        while time.time() - t0 < timeout:
            st = page.evaluate(JS_STATE)
            if st is not None:
                if st["errors"]: pytest.fail(f"a tutorial cell failed in JupyterLab: {st['errors']}")
                code = [c for c in st["counts"] if c != -1]
                if st["status"] == "idle" and code and all(c is not None for c in code): return st
                # lost: again
                if st["status"] == "idle" and all(c is None for c in code) and time.time() - t0 > 15: break
            time.sleep(0.5)
        else:
            pytest.fail(f"Run All did not finish within {timeout} s: {page.evaluate(JS_STATE)}")
    pytest.fail("Run All never started running")

def wait_kernel_idle(page, timeout: float = 60):
    page.wait_for_function("""() => { const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        return !!(nb && nb.sessionContext && nb.sessionContext.session && nb.sessionContext.session.kernel
                  && nb.sessionContext.session.kernel.status === 'idle'); }""", timeout=timeout * 1000)

def dismiss_dialogs(page, seconds: float = 0):
    ("Close JupyterLab's dialogs (e.g. 'the kernel appears to have died. It will restart automatically.'), for "
     "`seconds`.")
    end = time.time() + seconds
    while True:
        d = page.locator(".jp-Dialog")
        if d.count(): d.locator(".jp-Dialog-button.jp-mod-accept").first.click()
        if time.time() >= end: return
        time.sleep(0.3)

def boxes_in(store: Path) -> dict:
    return json.loads(store.read_text())["boxes"] if store.exists() else {}

JS_WIDGET_TEXT = "() => [...document.querySelectorAll('.widget-html-content')].map(e => e.innerText).join(' | ')"

def wait_for_boxes(page, store: Path, n: int, timeout: float = 20) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(boxes_in(store)) >= n: return boxes_in(store)
        time.sleep(0.2)
    pytest.fail(f"{store.name} did not reach {n} box(es) within {timeout} s: {boxes_in(store)}; the editor shows "
                f"{page.evaluate(JS_WIDGET_TEXT)!r} and the rectangles {page.evaluate(JS_RECTS)}")

def shown_index(page) -> int:
    header = page.locator(".widget-html-content", has_text="frac_attn_out").first.inner_text()
    return int(header.split("image", 1)[1].split()[0])

def drag(page, bb: dict, start: tuple, end: tuple, steps: int = 4, pause: float = 0):
    ("Press at `start`, move to `end` in steps, hold still for `pause` seconds and release there (display pixels "
     "relative to the image's corner).")
    (x0, y0), (x1, y1) = start, end
    page.mouse.move(bb["x"] + x0, bb["y"] + y0)
    page.mouse.down()
    for k in range(1, steps + 1):
        t = k / steps
        page.mouse.move(bb["x"] + x0 + t * (x1 - x0), bb["y"] + y0 + t * (y1 - y0))
    time.sleep(pause)
    page.mouse.up()

JS_RECTS = """() => [...document.querySelectorAll('.msabn-bbox svg rect')].map(e => {
    const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })"""

def largest_rect(page) -> list:
    return max(page.evaluate(JS_RECTS), key=lambda r: r[2] * r[3])


# --- the test -------------------------------------------------------------------------------------------
def test_box_editor_in_jupyterlab():
    exe = require_chromium()
    from playwright.sync_api import sync_playwright
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="msabn-lab-") as tmp:
        tmp = Path(tmp)
        work, project = tmp / "nb", tmp / "nb" / "project"
        work.mkdir()
        nb = json.loads(TUTORIAL.read_text())
        params = [i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1, "the tutorial must have one parameters cell"
        src = "".join(nb["cells"][params[0]]["source"]).splitlines(keepends=True)
        assert sum(ln.startswith(("WORK =", "SIMULATE =")) for ln in src) == 2, src
        # a person's run: a project folder of their own, and no simulated annotator
        person = {"WORK =": f"WORK = {str(project)!r}\n", "SIMULATE =": "SIMULATE = False\n"}
        src = [next((v for k, v in person.items() if ln.startswith(k)), ln) for ln in src]
        nb["cells"][params[0]]["source"] = src
        nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        code = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
        k = next(i for i in code if "".join(nb["cells"][i]["source"]).strip() == "#| notest\nBoxEditorWidget(editor)")
        (work / "box_editor.ipynb").write_text(json.dumps(nb))
        store = project / "boxes.json"

        with jupyterlab(work, tmp / "lab") as (url, token, server), sync_playwright() as pw, \
                tempfile.TemporaryDirectory(prefix="msabn-chromium-") as profile:
            ctx = pw.chromium.launch_persistent_context(profile, executable_path=exe, headless=True, args=CHROMIUM_ARGS,
                                                        viewport={"width": 1400, "height": 1000})
            try:
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                page.goto(f"{url}/lab/tree/box_editor.ipynb?token={token}")
                page.wait_for_selector(".jp-Notebook", timeout=60_000)
                wait_kernel_idle(page)

                # Run All, as a person: every cell runs, none fails; nothing is fine-tuned, and the page says what to do
                st = run_all(page)
                after = "".join(st["texts"][i] for i in code if i > k)
                assert "Nothing is fine-tuned yet (annotated 0 / pool 16)" in after, after
                assert "press 'Fine-tune" in after, after
                assert not store.exists() or not boxes_in(store), "nothing may be boxed for the person"

                # the editor is there: the widget's image, enlarged 8x
                img = page.locator(".msabn-bbox img").first
                img.wait_for(state="visible", timeout=30_000)
                page.wait_for_function("() => { const i = document.querySelector('.msabn-bbox img'); return i && "
                                       "i.complete && i.naturalWidth > 0; }")
                img.scroll_into_view_if_needed()
                nat = page.evaluate("() => { const i = document.querySelector('.msabn-bbox img'); return "
                                    "[i.naturalWidth, i.naturalHeight]; }")
                assert nat == [32 * SCALE, 32 * SCALE], nat
                first = shown_index(page)

                # draw: a mouse drag on the image, held still a moment before the release as a person does
                dismiss_dialogs(page)
                bb = img.bounding_box()
                drag(page, bb, *DRAG, pause=1)
                # the widget maps the page to the image's natural pixels and rounds; the editor divides by the scale.
                # The image may sit at a fractional page offset (it moves with the text above it), and the browser's
                # mouse events carry whole page pixels: so the drag lands within one display pixel of where it was
                # aimed.
                sx, sy = nat[0] / bb["width"], nat[1] / bb["height"]
                (x0, y0), (x1, y1) = DRAG
                aimed = [x0 * sx / SCALE, y0 * sy / SCALE, x1 * sx / SCALE, y1 * sy / SCALE]
                boxes = wait_for_boxes(page, store, 1)
                assert list(boxes) == [str(first)], (boxes, first)
                expect = boxes[str(first)]["box"]
                assert all(abs(g - a) <= 1 / SCALE + 1e-9 for g, a in zip(expect, aimed, strict=True)), (boxes, aimed)
                # whole display pixels, divided by the scale
                assert all(v * SCALE == round(v * SCALE) for v in expect), expect
                assert boxes[str(first)]["image_size"] == [32, 32]
                page.wait_for_selector(f"text=image {first}: saved box", timeout=10_000)
                SCREENSHOTS.mkdir(exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / "box-editor.png"))
                src = img.get_attribute("src")
                page.locator(".msabn-bbox button", has_text="Submit").first.click()
                page.wait_for_selector(f"text=image {first} done", timeout=10_000)
                second = shown_index(page)
                assert second != first
                # the next image is on screen before anyone draws on it (a drag while it loads is not a box), and the
                # last image's box is gone: the widget fades a removed box out over 100 ms, and a press on it then
                # moves the fading box instead of drawing a new one
                page.wait_for_function("(src) => { const i = document.querySelector('.msabn-bbox img'); return i && "
                                       "i.src !== src && i.complete && i.naturalWidth > 0; }", arg=src, timeout=10_000)
                page.wait_for_function("() => !document.querySelector('.msabn-bbox svg rect')", timeout=10_000)

                # a drag released beside the image (to its right): saved, cut to the image
                bb = img.bounding_box()
                drag(page, bb, (160, 100), (32 * SCALE + 40, 200), pause=1)
                boxes = wait_for_boxes(page, store, 2)
                edge = boxes[str(second)]["box"]
                assert edge[2] == 32, edge
                assert all(abs(g - a) <= 1 / SCALE + 1e-9 for g, a in zip(edge, (20, 12.5, 32, 25), strict=True)), edge
                page.wait_for_selector(f"text=image {second}: saved box", timeout=10_000)
                page.wait_for_selector("text=(cut to the image)", timeout=10_000)
                time.sleep(1)
                n_rects, rect = len(page.evaluate(JS_RECTS)), largest_rect(page)
                assert abs(rect[0] + rect[2] - (bb["x"] + bb["width"])) <= 3, (rect, bb)   # drawn as saved: to the edge
                # nothing follows the mouse any more
                for x, y in ((60, 60), (120, 200), (200, 40)): page.mouse.move(bb["x"] + x, bb["y"] + y)
                time.sleep(1)
                assert largest_rect(page) == rect and boxes_in(store)[str(second)]["box"] == edge
                # a click without a drag leaves no box
                page.mouse.click(bb["x"] + 60, bb["y"] + 60)
                page.wait_for_selector("text=a click is not a box", timeout=10_000)
                time.sleep(1)
                assert len(page.evaluate(JS_RECTS)) == n_rects and boxes_in(store)[str(second)]["box"] == edge
                page.screenshot(path=str(SCREENSHOTS / "box-editor-edge.png"))
                page.locator(".msabn-bbox button", has_text="Submit").first.click()
                page.wait_for_selector(f"text=image {second} done", timeout=10_000)

                # fine-tune: a line says what runs, step k of n, the time left; the table shows the three side by side
                page.locator(".msabn-finetune").first.click()
                lines, deadline = set(), time.time() + 600
                while not page.locator(".msabn-result table").count():
                    assert time.time() < deadline, f"no fine-tuning result within 600 s; progress seen: {lines}"
                    lines.add(page.locator(".msabn-progress").first.inner_text())
                    time.sleep(0.5)
                vanilla = "vanilla fine-tuning (no boxes: the baseline): step"
                assert any(vanilla in ln and "left" in ln for ln in lines), lines
                table = page.locator(".msabn-result table").first.inner_text()
                rows = {ln.split("\t")[0]: ln.split("\t")[1:] for ln in table.splitlines() if "\t" in ln}
                names = ("before fine-tuning", "vanilla fine-tuning (no boxes)", "copy-replace (2 boxes)")
                assert set(names) <= set(rows), table
                for name in names:
                    acc, frac = (float(v) for v in rows[name][:2])
                    assert 0 <= acc <= 100 and 0 <= frac <= 1, (name, rows[name])
                page.locator(".msabn-result table").first.scroll_into_view_if_needed()
                page.screenshot(path=str(SCREENSHOTS / "box-editor-finetuned.png"))
                print(f"the widget's table:\n{table}")
                saved = store.read_bytes()

                # kill the kernel as a crash would; JupyterLab (its server) restarts it
                old = kernel_processes(server)
                assert len(old) == 1, old
                old[0].send_signal(signal.SIGKILL)
                old[0].wait(10)
                deadline = time.time() + 60
                while not (kernel_processes(server) and kernel_processes(server)[0].pid != old[0].pid):
                    assert time.time() < deadline, "the kernel was not restarted"
                    time.sleep(0.5)
                dismiss_dialogs(page, 3)
                wait_kernel_idle(page)
                assert store.read_bytes() == saved, "the box file changed when the kernel died"

                # run the notebook again: the store reopens the file, and the editor shows the saved boxes
                st = run_all(page)
                assert store.read_bytes() == saved, "reopening the project must not rewrite the box file"
                after = "".join(st["texts"][i] for i in code if i > k)
                assert "Nothing is fine-tuned yet (annotated 2 / pool 16)" in after, after
                # the editor continues at the next image without a box, and counts the saved ones ...
                page.wait_for_selector("text=annotated 2 / pool", timeout=30_000)
                assert shown_index(page) not in (first, second)
                # ... and going back shows the last saved box, drawn by the widget where it was saved
                dismiss_dialogs(page)
                page.locator(".msabn-previous").first.click()
                page.wait_for_selector(f"text=back to image {second}", timeout=10_000)
                page.wait_for_selector(".msabn-bbox svg rect", timeout=10_000)
                assert shown_index(page) == second
                img = page.locator(".msabn-bbox img").first
                bb = img.bounding_box()
                rect = largest_rect(page)
                got = [rect[0] - bb["x"], rect[1] - bb["y"], rect[0] + rect[2] - bb["x"], rect[1] + rect[3] - bb["y"]]
                want = [v * SCALE / s for v, s in zip(edge, (sx, sy, sx, sy), strict=True)]
                assert all(abs(g - w) <= 3 for g, w in zip(got, want, strict=True)), (got, want)
                page.screenshot(path=str(SCREENSHOTS / "box-editor-after-restart.png"))
            finally:
                ctx.close()
    print(f"browser test: {time.time() - t_start:.0f} s")
