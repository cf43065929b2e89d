"""Shared test set-up: offline by construction, a headless Chromium, a static file server."""
from __future__ import annotations

import functools
import http.server
import ipaddress
import os
import shutil
import socket
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # timm/huggingface_hub must never reach for weights
# pytest-xdist runs a worker per core (pyproject.toml): each worker's torch, and the kernels and scripts it starts,
# take their share of the cores instead of all of them, so that the workers' threads never fight over one core
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1: os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))
os.environ.setdefault("MPLBACKEND", "Agg")

# pytest-xdist hands a worker one test file at a time, in collection order (pyproject.toml turns off its reordering by
# test count): the files that start kernels, a browser or the site build go first, longest first, so that the short
# files fill in beside them instead of a long one running alone at the end
LONG_FILES = ("test_experiments.py", "test_overrides.py", "test_train.py", "test_annotate_browser.py", "test_site.py",
              "test_models.py", "test_calibration.py")

def pytest_collection_modifyitems(config, items):
    first = {name: k for k, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(LONG_FILES)))   # stable: the rest keep their order

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_screenshots"  # gitignored
CHROMIUM = os.environ.get("MSABN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# --- no network: a test that tries to reach beyond this machine fails loudly ---------------------------
_real_connect = socket.socket.connect

def _loopback_only(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try: ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError: ok = False
        if not ok: raise RuntimeError(f"tests must not use the network: connection to {address!r} refused")
    return _real_connect(self, address)

@pytest.fixture(autouse=True, scope="session")
def no_network():
    socket.socket.connect = _loopback_only
    yield
    socket.socket.connect = _real_connect


# --- a static file server on 127.0.0.1 ----------------------------------------------------------------
@contextmanager
def serve_folder(folder: Path):
    "Serve `folder` over HTTP on a free loopback port; yields the base URL."
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try: yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


# --- headless Chromium through Playwright (Debian's chromium; never `playwright install`) -------------
def require_chromium() -> str:
    "The Chromium binary, or a test failure that says how to get it: never a silent skip."
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's package (apt-get install -y chromium) "
                    "or point MSABN_CHROMIUM at a Chromium binary. .ci/run installs it when missing.")
    return CHROMIUM

@pytest.fixture
def browser_page():
    "A fresh headless Chromium page (own temporary profile), closed after the test."
    from playwright.sync_api import sync_playwright
    exe = require_chromium()
    with tempfile.TemporaryDirectory(prefix="msabn-chromium-") as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=exe, headless=True, args=CHROMIUM_ARGS,
                                                    viewport={"width": 1280, "height": 900})
        try: yield ctx.pages[0] if ctx.pages else ctx.new_page()
        finally: ctx.close()
