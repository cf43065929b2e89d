#!/usr/bin/env python
"""Speed of the MaxBoxAccV2 threshold sweep (msabn.explain.localization.box_hits), old and new side by side in one run.

    python benchmarks/localization_speed.py [--rounds 5] [--threads 1]

"old" is the first version of msabn.explain.localization.box_hits, kept here verbatim in behaviour: for every image and
every threshold, `scipy.ndimage.label` (4-connected) and `find_objects` in a Python loop. "new" is the current
`box_hits`: all (image, threshold) binary images of a chunk stacked into one tall image, one `cv2.findContours`
call, vectorised IoUs. The two differ in what they count as a region (4- vs 8-connectivity, holes' contours), so
the agreement of their hits is printed too (it is not 100% by design).

Settings: maps at the resolutions of the explainers benchmark (64 px images from 2x2, 4x4 and 16x16 maps), and
at the paper's sizes (224 px from 7x7/14x14/56x56, 352 px from 11x11/22x22/88x88), 100 thresholds, IoU 0.3/0.5/0.7.
Rounds alternate old and new; the first round is a warm-up; medians of the rest are printed.
A benchmark, not a test: it prints numbers and asserts nothing about them.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy import ndimage

from msabn.explain import as_boxes, box_hits, normalize_maps

THRESHOLDS = tuple(np.arange(0, 1, 0.01))  # the first version's thresholds


def old_box_hits(maps, boxes, thresholds=THRESHOLDS, deltas=(0.3, 0.5, 0.7), image_size=None):
    "The first version: a Python loop over images and thresholds, one scipy label per binary image."
    maps = normalize_maps(maps, image_size)
    gt = as_boxes(boxes, len(maps), tuple(maps.shape[-2:])).numpy()
    d = np.asarray(deltas)
    hits = np.zeros((len(maps), len(thresholds), len(d)), dtype=bool)
    for i, m in enumerate(maps[:, 0].cpu().numpy()):
        for j, t in enumerate(thresholds):
            labels, n = ndimage.label(m >= t)
            if n == 0: continue
            sl = ndimage.find_objects(labels)
            rb = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in sl], dtype=float)
            b = gt[i]
            ix = np.clip(np.minimum(rb[:, 2], b[2]) - np.maximum(rb[:, 0], b[0]), 0, None)
            iy = np.clip(np.minimum(rb[:, 3], b[3]) - np.maximum(rb[:, 1], b[1]), 0, None)
            inter = ix * iy
            iou = inter / ((rb[:, 2] - rb[:, 0]) * (rb[:, 3] - rb[:, 1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
            hits[i, j] = iou.max() >= d
    return hits


def smooth_maps(n: int, side: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    "Random coarse maps (a blob plus noise) and a box per image around the blob."
    g = torch.Generator().manual_seed(seed)
    maps = 0.3 * torch.rand(n, 1, side, side, generator=g)
    cy, cx = torch.randint(0, side, (n,), generator=g), torch.randint(0, side, (n,), generator=g)
    maps[torch.arange(n), 0, cy, cx] += 1
    cell = size / side
    boxes = torch.stack([(cx - 1).clamp(min=0) * cell, (cy - 1).clamp(min=0) * cell,
                         (cx + 2).clamp(max=side) * cell, (cy + 2).clamp(max=side) * cell], 1).float()
    return maps, boxes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    settings = [(64, 2, 64), (64, 4, 64), (64, 16, 64), (224, 14, 16), (352, 22, 8), (352, 88, 8)]
    print("| image | map | images | old (img/s) | new (img/s) | new / old | hits agree |")
    print("|---|---|---|---|---|---|---|")
    for size, side, n in settings:
        maps, boxes = smooth_maps(n, side, size, seed=size + side)
        times = {"old": [], "new": []}
        for r in range(a.rounds + 1):
            for name, fn in (("old", old_box_hits), ("new", box_hits)):
                t0 = time.perf_counter()
                h = fn(maps, boxes, image_size=(size, size))
                if r: times[name].append(time.perf_counter() - t0)
                if name == "old": h_old = h
                else: h_new = h
        old, new = (n / statistics.median(times[k]) for k in ("old", "new"))
        print(f"| {size} px | {side}x{side} | {n} | {old:.1f} | {new:.1f} | {new / old:.1f}x | "
              f"{100 * (h_old == h_new).mean():.1f}% |",
              flush=True)


if __name__ == "__main__":
    main()
