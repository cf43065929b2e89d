#!/usr/bin/env python
"""Seconds and memory per read of a huge PNG (`msabn.data.read_image`): decoded once, then read from the cache.

What is measured: a `--side` x `--side` RGB PNG (a smooth gradient with a grid, default 10,000 px: 100 megapixels) is
written once, then read `--reads` times in a fresh process. Printed: the seconds of the first read (the decoding)
and the median of the later reads (the decoded-image cache: a copy of the cached tensor), and the process's peak
resident memory (VmHWM) after the reads; then the same with the cache off (MSABN_IMAGE_CACHE_MB=0), where every
read decodes.

    python benchmarks/large_image.py [--side 10000] [--reads 3] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _write(path: Path, side: int):
    "The picture, built from uint8 rows (no side x side integer arrays: the parent stays small)."
    ramp = (np.arange(side) * 255 // side).astype(np.uint8)
    a = np.empty((side, side, 3), np.uint8)
    a[..., 0] = ramp[None, :]
    a[..., 1] = ramp[:, None]
    a[..., 2] = (((np.arange(side)[:, None] // 64) + (np.arange(side)[None, :] // 64)) % 2 * 255).astype(np.uint8)
    Image.fromarray(a).save(path, compress_level=1)


def _peak_mib() -> float:
    "This process's peak resident memory (VmHWM: unlike ru_maxrss, not carried over from the parent by exec)."
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"): return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reads(path: str, n: int) -> dict:
    "In this process: the seconds of each read and the peak resident memory (MiB)."
    from msabn.data import read_image
    secs = []
    for _ in range(n):
        t = time.perf_counter(); x = read_image(path); secs.append(time.perf_counter() - t)
        assert x.shape[0] == 3
    return {"secs": secs, "peak_mib": _peak_mib()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=10000)
    ap.add_argument("--reads", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child: print(json.dumps(_reads(a.child, a.reads))); return 0
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        path = Path(tmp) / "huge.png"
        t = time.perf_counter(); _write(path, a.side)
        mib, secs = path.stat().st_size / 2**20, time.perf_counter() - t
        print(f"{a.side} x {a.side} PNG, {mib:.0f} MiB, written in {secs:.1f} s")
        print("| cache | first read (s) | later reads, median (s) | peak memory (MiB) |")
        print("| --- | ---: | ---: | ---: |")
        for label, mb in (("on (default, 1024 MiB)", None), ("off (MSABN_IMAGE_CACHE_MB=0)", "0")):
            env = {**os.environ, **({"MSABN_IMAGE_CACHE_MB": mb} if mb is not None else {})}
            if mb is None: env.pop("MSABN_IMAGE_CACHE_MB", None)
            out = subprocess.run([sys.executable, __file__, "--child", str(path), "--reads", str(a.reads)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            later = statistics.median(r["secs"][1:]) if len(r["secs"]) > 1 else float("nan")
            print(f"| {label} | {r['secs'][0]:.2f} | {later:.2f} | {r['peak_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
