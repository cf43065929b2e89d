#!/usr/bin/env python
"""Milliseconds per box edit (`BoxStore.set`) at 2,000 and 50,000 boxes: is an annotation tool interactive at
ImageNet-validation scale?

What is measured: a box file is filled with N boxes (written once, outside the timing), opened, and then `--edits`
boxes are set one after the other on random images, each edit on disk (fsync) when it returns, as in the box editor.
Printed: the median and the 90th percentile of the milliseconds per edit over `--repeats` runs of `--edits` edits
each (the median of the per-run medians), and the slowest single edit (the one that folds the journal into the box
file every COMPACT_EVERY edits, or none). The target: a median <= 50 ms per edit at 50,000 boxes.

The machine figure (the bare Base ResNet-20 train step) is printed first, so that the numbers can be compared
across machines; disk speed matters more here than the figure, and the folder's file system is printed too.

    python benchmarks/box_store.py [--sizes 2000 50000] [--edits 200] [--repeats 3] [--dir /tmp] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import msabn.hitl.annotate as annotate
from msabn.hitl import BoxStore
from msabn.hitl.annotate import STORE_FORMAT


def _fill(path: Path, n: int):
    "A box file of n boxes on 64 x 64 images, as BoxStore writes it."
    boxes = {str(i): {"box": [1.0, 2.0, 30.5, 40.25], "image_size": [64, 64], "time": "2026-01-01T00:00:00Z"}
             for i in range(n)}
    data = {"format": STORE_FORMAT, "meta": {"n_images": 2 * n}, "boxes": boxes, "skipped": []}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _run(folder: Path, n: int, edits: int, seed: int) -> tuple[list[float], float]:
    "Milliseconds of each of `edits` edits on a store of n boxes, and the seconds to open it."
    path = folder / f"boxes_{n}_{seed}.json"
    _fill(path, n)
    t0 = time.perf_counter(); store = BoxStore(path); opened = time.perf_counter() - t0
    rng, ms = random.Random(seed), []
    for _ in range(edits):
        i = rng.randrange(2 * n)
        x0, y0 = rng.uniform(0, 30), rng.uniform(0, 30)
        t = time.perf_counter()
        store.set(i, (x0, y0, x0 + 10, y0 + 10), (64, 64))
        ms.append(1000 * (time.perf_counter() - t))
    assert len(BoxStore(path)) >= n, "every edit must be on disk"     # reopened: the journal replayed
    getattr(store, "close", lambda: None)()   # (a store without a journal has nothing to fold)
    return ms, opened


def _fs(folder: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(folder)], capture_output=True, text=True).stdout
        return out.splitlines()[-1].split()[1]
    except (OSError, IndexError): return "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 50000])
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the box files go (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-figure", action="store_true", help="skip the machine figure (seconds)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not a.no_figure:
        from msabn.train import machine_figure, machine_figure_line
        print(machine_figure_line(machine_figure(), a.threads))
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        folder = Path(tmp)
        journal = getattr(annotate, "JOURNAL_FROM", None)
        print(f"box files in {folder} ({_fs(folder)}); " + (f"journal from {journal // 1024} KiB, folded every "
              f"{annotate.COMPACT_EVERY} edits" if journal is not None else "no journal: the whole file at every edit"))
        print("| boxes | ms per edit: median | p90 | slowest edit (ms) | open (s) | runs x edits |")
        print("| ---: | ---: | ---: | ---: | ---: | --- |")
        for n in a.sizes:
            runs = [_run(folder, n, a.edits, seed) for seed in range(a.repeats)]
            med = statistics.median(statistics.median(ms) for ms, _ in runs)
            p90 = statistics.median(sorted(ms)[int(0.9 * (len(ms) - 1))] for ms, _ in runs)
            worst = max(max(ms) for ms, _ in runs)
            opened = statistics.median(o for _, o in runs)
            print(f"| {n:,} | {med:.1f} | {p90:.1f} | {worst:.1f} | {opened:.2f} | {a.repeats} x {a.edits} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
