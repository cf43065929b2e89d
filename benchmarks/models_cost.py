#!/usr/bin/env python
"""Cost of the paper's models, side by side in one run: parameters, GMACs and median training-step time.

Models: Base, ABN, MSABN (literal: the paper as written), MSABN (efficient: our top-down variant),
Puzzle-MSABN (literal) and Puzzle-MSABN (efficient), each with its ratio to ABN.
Settings: CIFAR ResNet-20 at 32 px, batch 128, 100 classes (Table 1), and timm ResNet-50 at 224 px,
batch 8, 200 classes (the CUB setting of Table 4, at 224 px).

A training step is: forward, L_cls + L_attn (+ L_re with the Puzzle module, 2x2 tiles), backward, SGD step.
Steps are timed round-robin (one step of every model per round, so that a load change on a shared machine
hits all models alike); the first `--warmup` rounds are not timed; the median of the timed rounds is shown.
GMACs are one inference forward pass per image (torch.utils.flop_counter on the meta device); a
Puzzle-MSABN has its MSABN's inference cost.

Threads: one by default. On a CPU shared with other work, two processes that each run two OpenMP threads
on two cores slow each other down far more than twice (we measured 3x per step), and such a run measures the
neighbour, not the models; `--threads 2` uses both cores when the machine is otherwise idle.

usage: python benchmarks/models_cost.py [--rounds-cifar 4] [--rounds-r50 3] [--warmup 1] [--threads 1] [--quick]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
import torch.nn.functional as F

from msabn.models import count_macs, count_params, create_model, puzzle_loss

MODELS = {  # label -> (arch, options, puzzle)
    "Base": ("base", {}, False),
    "ABN": ("abn", {}, False),
    "MSABN (literal)": ("msabn", {"variant": "literal"}, False),
    "MSABN (efficient)": ("msabn", {"variant": "efficient"}, False),
    "Puzzle-MSABN (literal)": ("msabn", {"variant": "literal"}, True),
    "Puzzle-MSABN (efficient)": ("msabn", {"variant": "efficient"}, True),
}
SETTINGS = {  # name -> (backbone, image size, batch, classes)
    "CIFAR ResNet-20": ("resnet20", 32, 128, 100),
    "ResNet-50": ("resnet50", 224, 8, 200),
}


def train_step(model, opt, x, y, puzzle: bool) -> float:
    "One training step; returns its wall time in seconds."
    t0 = time.perf_counter()
    out = model(x)
    loss = F.cross_entropy(out.logits, y)
    if out.attn_logits is not None: loss = loss + F.cross_entropy(out.attn_logits, y)
    if puzzle: loss = loss + puzzle_loss(model, x, y, out)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def bench(setting: str, rounds: int, warmup: int) -> list[dict]:
    backbone, size, batch, k = SETTINGS[setting]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, size, size, generator=g), torch.randint(0, k, (batch,), generator=g)
    rows, runs = [], []
    for label, (arch, opts, puzzle) in MODELS.items():
        with torch.device("meta"): meta = create_model(arch, backbone, k, **opts)
        torch.manual_seed(0)
        model = create_model(arch, backbone, k, **opts).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        rows.append(dict(model=label, params=count_params(model), macs=count_macs(meta, (1, 3, size, size)), times=[]))
        runs.append((model, opt, puzzle))
    for r in range(warmup + rounds):
        for row, (model, opt, puzzle) in zip(rows, runs, strict=True):
            t = train_step(model, opt, x, y, puzzle)
            if r >= warmup: row["times"].append(t)
        print(f"  {setting}: round {r + 1}/{warmup + rounds} done", flush=True)
    del runs
    gc.collect()
    abn = next(r for r in rows if r["model"] == "ABN")
    for r in rows:
        r["step"] = statistics.median(r["times"])
        r["step_ratio"], r["macs_ratio"] = r["step"] / statistics.median(abn["times"]), r["macs"] / abn["macs"]
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds-cifar", type=int, default=4, help="timed rounds for CIFAR ResNet-20")
    ap.add_argument("--rounds-r50", type=int, default=3, help="timed rounds for ResNet-50")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (see the module docstring)")
    ap.add_argument("--quick", action="store_true", help="1 timed round, no warm-up (a smoke test, not a measurement)")
    a = ap.parse_args()
    if a.quick: a.rounds_cifar = a.rounds_r50 = 1; a.warmup = 0
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; warm-up rounds {a.warmup}")
    t0 = time.perf_counter()
    for setting, rounds in (("CIFAR ResNet-20", a.rounds_cifar), ("ResNet-50", a.rounds_r50)):
        backbone, size, batch, k = SETTINGS[setting]
        rows = bench(setting, rounds, a.warmup)
        print(f"\n{setting} ({backbone}), {size} px, batch {batch}, {k} classes; median of {rounds} timed steps")
        print("| model | params (M) | GMACs/image | train step (s) | step / ABN | GMACs / ABN |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['model']} | {r['params'] / 1e6:.3f} | {r['macs'] / 1e9:.3f} | {r['step']:.3f} | "
                  f"{r['step_ratio']:.2f} | {r['macs_ratio']:.2f} |")
        print(
            "all step times (s): "
            + "; ".join(f"{r['model']}: " + ", ".join(f"{t:.2f}" for t in r["times"]) for r in rows)
        )
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
