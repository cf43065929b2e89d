"""End-to-end `fit` throughput beside the bare train step, old path (DataLoader, per image) against new (decoded tensors,
batch-wise augmentation), for Base, ABN and both MSABNs on CIFAR ResNet-20 at 32 px, batch 128, on the embedded benchmark.

Prints the machine figure first (the bare Base ResNet-20 step at 32 px, batch 128, in img/s), then per model, measured
round-robin in one process (same model, batch and threads) and reported as medians over the rounds:
- bare: the train step alone (forward, loss, backward, SGD step) on one batch already in memory;
- fit new / fit old: the images/s of a fit epoch (the epoch after a warm-up epoch: data, step, bookkeeping; the
  checkpoint written after it is not counted) on the decoded dataset (msabn.batched.decode) and on the file-backed one
  (PNG files, train_transform per image, a DataLoader with --workers workers);
- the ratios fit / bare, taken per round, then the median.
The target is fit new / bare >= 0.9. On a shared machine the absolute numbers move; read the ratios.

usage: python benchmarks/engine_speed.py [--rounds 3] [--n-train 512] [--threads 2] [--workers 0]
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from msabn.batched import decode
from msabn.core import device_name, set_seed
from msabn.datasets import get_dataset
from msabn.models import create_model
from msabn.synthetic import make_synthetic
from msabn.train import TrainConfig, TrainStep, fit
from msabn.transforms import train_transform

MODELS = {"Base": dict(arch="base"), "ABN": dict(arch="abn"),
          "MSABN (literal)": dict(arch="msabn"), "MSABN (efficient)": dict(arch="msabn", variant="efficient")}
BATCH = 128


def _model(opts, k):
    set_seed(0)
    return create_model(backbone="resnet20", num_classes=k, **opts)


def bare_step(opts, k, cfg, steps=4):
    "img/s of the train step alone, after one warm-up step, as fit runs it (channels_last, same loss, SGD)."
    model = _model(opts, k).to(memory_format=torch.channels_last)
    step = TrainStep(model, cfg)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, k, (BATCH,), generator=g)
    model.train()
    for i in range(steps + 1):
        if i == 1: t0 = time.perf_counter()
        _, terms = step(x, y)
        opt.zero_grad(set_to_none=True); terms["loss"].backward(); opt.step()
    return steps * BATCH / (time.perf_counter() - t0)


def fit_speed(opts, data, cfg, out):
    "img/s of the second epoch of a two-epoch fit (the first is a warm-up)."
    fit(_model(opts, data.num_classes), data, None, cfg, out_dir=out)
    return float(pd.read_csv(out / "history.csv")["images_per_s"].iloc[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the old path")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_synthetic(tmp / "data", "cifar", n_train=a.n_train, n_test=16, n_test_iid=16)
        files = get_dataset("synthetic", root, "train", transform=train_transform("cifar", 32))
        mem = decode(files, "cifar", 32)
        cfg = TrainConfig(epochs=2, batch_size=BATCH, lr=0.1, num_workers=a.workers, progress=False, device="cpu")
        k = files.num_classes
        machine = statistics.median(bare_step(MODELS["Base"], k, cfg) for _ in range(3))
        print(f"machine figure: bare Base ResNet-20 step, 32 px, batch {BATCH}: {machine:.0f} img/s "
              f"({device_name('cpu')}, torch threads {a.threads})")
        print(f"{a.n_train} training images, {a.rounds} rounds round-robin, medians; old path: {a.workers} DataLoader workers\n")
        runs = {m: {"bare": [], "new": [], "old": []} for m in a.models}
        for r in range(a.rounds):
            for m in a.models:
                opts = MODELS[m]
                runs[m]["bare"].append(bare_step(opts, k, cfg))
                runs[m]["new"].append(fit_speed(opts, mem, cfg, tmp / f"new-{m}-{r}".replace(" ", "_")))
                runs[m]["old"].append(fit_speed(opts, files, cfg, tmp / f"old-{m}-{r}".replace(" ", "_")))
        med = statistics.median
        print(f"{'model':<20}{'bare img/s':>11}{'fit new':>9}{'new/bare':>10}{'fit old':>9}{'old/bare':>10}{'new/old':>9}")
        for m, v in runs.items():
            nb = med(n / b for n, b in zip(v["new"], v["bare"]))
            ob = med(o / b for o, b in zip(v["old"], v["bare"]))
            no = med(n / o for n, o in zip(v["new"], v["old"]))
            print(f"{m:<20}{med(v['bare']):>11.0f}{med(v['new']):>9.0f}{nb:>10.2f}{med(v['old']):>9.0f}{ob:>10.2f}{no:>9.2f}")


if __name__ == "__main__":
    main()
