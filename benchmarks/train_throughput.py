"""Training throughput of the engine (msabn.train.engine.fit) and the share of time spent outside the model.

Trains Base, ABN and MSABN (literal and efficient) on CIFAR ResNet-20 at 32 px, batch 128, on the embedded
benchmark (2048 training images), for a few epochs each, and prints per model: images/s end to end, images/s
of the model step alone (forward, loss, backward, SGD step), and the share of wall time spent outside the
model step (waiting for data, logging, checkpointing). Each epoch writes a checkpoint and the history, as in
a real run. Medians over epochs (the first is a warm-up and is left out).

usage: python benchmarks/train_throughput.py [--epochs 4] [--workers 0] [--threads 2]
"""
import argparse
import statistics
import tempfile
from pathlib import Path

import pandas as pd
import torch

from msabn.core import device_name, set_seed
from msabn.data import get_dataset, make_synthetic, train_transform
from msabn.models import create_model
from msabn.train import TrainConfig, fit

MODELS = {"Base": dict(arch="base"), "ABN": dict(arch="abn"),
          "MSABN (literal)": dict(arch="msabn"), "MSABN (efficient)": dict(arch="msabn", variant="efficient")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--n-train", type=int, default=2048)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(Path(tmp) / "data", "cifar", n_train=a.n_train, n_test=64, n_test_iid=64)
        data = get_dataset("synthetic", root, "train", transform=train_transform("cifar", 32))
        print(f"device: {device_name('auto')}, torch threads {a.threads}, workers {a.workers}, {len(data)} images, "
              f"batch 128, {a.epochs} epochs (first left out)\n")
        print(f"{'model':<20}{'img/s (run)':>12}{'img/s (model)':>15}{'outside model':>15}{'  of which data':>16}")
        for name, opts in MODELS.items():
            set_seed(0)
            model = create_model(backbone="resnet20", num_classes=data.num_classes, **opts)
            cfg = TrainConfig(epochs=a.epochs, batch_size=128, lr=0.1, num_workers=a.workers, progress=False)
            out = Path(tmp) / name.replace(" ", "_")
            res = fit(model, data, None, cfg, out_dir=out)
            hist = pd.read_csv(out / "history.csv")
            run_ips = statistics.median(hist["images_per_s"].iloc[1:])
            t = res["timing"]
            outside = (t["total_s"] - t["model_s"]) / t["total_s"]
            model_ips = len(data) // 128 * 128 * a.epochs / t["model_s"]
            data_share = 100 * t["data_s"] / t["total_s"]
            print(f"{name:<20}{run_ips:>12.0f}{model_ips:>15.0f}{100 * outside:>14.1f}%{data_share:>15.1f}%")


if __name__ == "__main__":
    main()
