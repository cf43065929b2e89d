#!/usr/bin/env python
"""How strong a shortcut is the synthetic benchmark's habitat? A small CNN trained briefly at several `spurious`.

    python benchmarks/synthetic_regimes.py --preset cifar --spurious 0.1 0.5 0.7 0.9 --epochs 10
    python benchmarks/synthetic_regimes.py --preset fine_grained --spurious 0.1 0.5 --epochs 10

A design check of msabn.data.synthetic, not a result of the paper's models: for each value of `spurious` (the
probability that a training image shows its class's habitat) it makes the preset's dataset, trains a plain
6-layer CNN (BN-ReLU convolutions of width W, 2W, 4W, global average pooling; a stride-2 stem at 64 px and up)
from scratch with SGD for a few epochs on the CPU, and prints its accuracy on the training split, the
in-distribution test split and the shifted test split (habitat independent of class) after every epoch.
A model that uses only the habitat scores about `spurious` on train/test_iid and 1/K on the shifted test; one
that uses only the object scores the same on all three.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from msabn.core import set_seed
from msabn.data import SYNTHETIC_PRESETS, collate, eval_transform, get_dataset, make_synthetic, recipe_for

SPLITS = ("train", "test_iid", "test")


def load(root: Path, split: str, recipe: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = get_dataset("synthetic", root, split, transform=eval_transform(recipe, size))
    b = collate([ds[i] for i in range(len(ds))])
    return b["image"], b["label"]


def small_cnn(width: int, num_classes: int, stem_stride: int) -> nn.Module:
    def block(i, o, s):
        return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))
    W = width
    return nn.Sequential(block(3, W, stem_stride), block(W, W, 1), block(W, 2 * W, 2), block(2 * W, 2 * W, 1),
                         block(2 * W, 4 * W, 2), block(4 * W, 4 * W, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4 * W, num_classes))


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return float(torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)]).eq(y).float().mean())


def run(preset: str, spurious: float, epochs: int, width: int, seed: int, workdir: Path) -> dict:
    cfg = SYNTHETIC_PRESETS[preset]
    root = make_synthetic(workdir/f"{preset}_{spurious}", cfg, spurious=spurious)
    recipe = recipe_for("synthetic", cfg.fine_grained)
    data = {s: load(root, s, recipe, cfg.size) for s in SPLITS}
    set_seed(seed)
    net = small_cnn(width, cfg.num_classes, 2 if cfg.size >= 64 else 1)
    x, y = data["train"]
    steps = epochs * -(-len(x) // 64)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    t0 = time.perf_counter()
    for ep in range(epochs):
        net.train()
        for idx in torch.randperm(len(x)).split(64):
            xb = x[idx]
            flip = torch.rand(len(xb)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)  # the recipes' horizontal flip
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        acc = {s: accuracy(net, *data[s]) for s in SPLITS}
        print(f"  spurious {spurious}  epoch {ep + 1:2d}  " + "  ".join(f"{s} {a:.3f}" for s, a in acc.items())
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return acc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--preset", default="cifar", choices=list(SYNTHETIC_PRESETS))
    ap.add_argument("--spurious", type=float, nargs="+", default=[0.1, 0.5, 0.7, 0.9])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--width", type=int, default=16, help="channels of the first stage (then 2x, 4x)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = SYNTHETIC_PRESETS[args.preset]
    print(f"preset {args.preset}: {cfg}\nsmall CNN width {args.width}, {args.epochs} epochs, SGD 0.05 one-cycle, batch "
          "64, "
          f"torch threads {torch.get_num_threads()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sp in args.spurious: results[sp] = run(args.preset, sp, args.epochs, args.width, args.seed, Path(tmp))
    print(f"\n| spurious | train | test_iid | test (shifted) |  (chance {1 / cfg.num_classes:.2f})\n| --- | --- | --- "
          "| --- |")
    for sp, acc in results.items(): print(f"| {sp} | " + " | ".join(f"{acc[s]:.2f}" for s in SPLITS) + " |")


if __name__ == "__main__":
    main()
