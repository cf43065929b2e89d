#!/usr/bin/env python
"""Data throughput on this machine: images/s that reach the model through a DataLoader.

    python benchmarks/data_throughput.py [--passes 3]

Measures, side by side in one run, with 0 DataLoader workers (torch's default threads, then 1 thread) and 2 workers:
- the fine-grained training pipeline at the paper's 352 px (Tables 4-5: CUB, Stanford Cars, batch 16) on
  CUB-200-2011-format JPEGs of CUB's typical size (about 500 x 375);
- the CIFAR training pipeline at 32 px (Table 1, batch 256) on CIFAR-100-format pickles;
and how fast the embedded synthetic benchmark is made (both presets, one process).

Nothing is downloaded: the inputs are fixtures in the real formats, written to a temporary folder. Each figure
is the median of several timed passes over the data after one untimed warm-up pass (workers are kept alive
between passes, so worker start-up is not counted). A benchmark, not a test: it prints numbers and asserts
nothing about them. On a CPU shared with other processes, torch's multi-threaded ops in the main process can
be far slower than one thread (threads waiting for busy cores): the 1-thread row shows it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from msabn.data import (
    SYNTHETIC_PRESETS,
    collate,
    get_dataset,
    make_synthetic,
    train_transform,
    write_cifar100_fixture,
    write_cub_fixture,
)


def images_per_second(ds, batch_size: int, workers: int, passes: int, threads: int | None = None) -> float:
    "Median images/s over `passes` full passes (after one warm-up pass); `threads`: torch threads of this process."
    before = torch.get_num_threads()
    if threads: torch.set_num_threads(threads)
    try:
        dl = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
        rates = []
        for p in range(passes + 1):
            t0, n = time.perf_counter(), 0
            for b in dl: n += len(b["label"])
            if p: rates.append(n / (time.perf_counter() - t0))
    finally: torch.set_num_threads(before)
    return statistics.median(rates)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--passes", type=int, default=3, help="timed passes per figure (median reported)")
    args = ap.parse_args()
    print(f"CPU cores visible: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cub_fixture(tmp/"cub", num_classes=8, n_train=16, n_test=1, size=(375, 500))
        cub = get_dataset("cub", tmp/"cub", "train", transform=train_transform("fine_grained", 352))
        write_cifar100_fixture(tmp/"cifar", n_train=5120, n_test=10)
        cifar = get_dataset("cifar100", tmp/"cifar", "train", transform=train_transform("cifar", 32), verify=False)
        for name, ds, bs in (
            ("fine_grained train, 352 px, CUB-format JPEGs", cub, 16),
            ("cifar train, 32 px, CIFAR-100 pickles", cifar, 256),
        ):
            # in the main process torch uses every core for each op; DataLoader workers use one thread each
            for w, threads, how in (
                (0, None, f"0 workers, {torch.get_num_threads()} torch threads"),
                (0, 1, "0 workers, 1 torch thread"),
                (2, None, "2 workers (1 thread each)"),
            ):
                rows.append((name, how, images_per_second(ds, bs, w, args.passes, threads), len(ds), bs))
                print(
                    f"{rows[-1][0]:46s} {how:34s} {rows[-1][2]:8.0f} images/s  ({len(ds)} images, batch {bs})",
                    flush=True,
                )
        for preset, cfg in SYNTHETIC_PRESETS.items():
            t0 = time.perf_counter()
            make_synthetic(tmp/f"syn_{preset}", cfg)
            dt = time.perf_counter() - t0
            n = cfg.n_train + cfg.n_test + cfg.n_test_iid
            rows.append((f"make_synthetic('{preset}'), {cfg.size} px", "1 process", n / dt, n, None))
            print(f"{rows[-1][0]:46s} {rows[-1][1]:34s} {n / dt:8.0f} images/s  ({n} images in {dt:.1f} s)", flush=True)
    print("\n| what | DataLoader | images/s |\n| --- | --- | --- |")
    for name, how, rate, *_ in rows: print(f"| {name} | {how} | {rate:.0f} |")


if __name__ == "__main__":
    main()
