"""A tiny training run used by tests/test_train.py: single process, under torchrun, or killed and resumed.

usage: python train_tiny.py DATA_ROOT OUT_DIR [--arch msabn] [--epochs 2] [--resume] [--deterministic] [--memory]
(--memory: train and evaluate on the decoded in-memory data, msabn.data.memory)
"""
import argparse

import torch

from msabn.core import set_seed
from msabn.data import decode, eval_transform, get_dataset, train_transform
from msabn.models import create_model
from msabn.train import TrainConfig, distributed, fit

ap = argparse.ArgumentParser()
ap.add_argument("root"); ap.add_argument("out")
ap.add_argument("--arch", default="msabn"); ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--batch-size", type=int, default=32)
ap.add_argument("--memory", action="store_true")
ap.add_argument("--resume", action="store_true"); ap.add_argument("--deterministic", action="store_true")
a = ap.parse_args()
torch.set_num_threads(1)
with distributed() as (rank, world):
    train = get_dataset("synthetic", a.root, "train", transform=train_transform("cifar", 32))
    test = get_dataset("synthetic", a.root, "test_iid", transform=eval_transform("cifar", 32))
    if a.memory: train, test = decode(train, "cifar", 32), decode(test, "cifar", 32, train=False)
    set_seed(0)
    model = create_model(a.arch, "resnet20", train.num_classes)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=0.05, progress=False, deterministic=a.deterministic)
    fit(model, train, test, cfg, out_dir=a.out, resume=a.resume)
