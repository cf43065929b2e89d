"""End-to-end `fit` throughput beside the bare train step, old path (DataLoader, per image) against new (decoded
tensors, batch-wise augmentation), for Base, ABN and both MSABNs on CIFAR ResNet-20 at 32 px, batch 128, on the
embedded benchmark.

Prints the machine figure first (the bare Base ResNet-20 step at 32 px, batch 128, in img/s), then per model, measured
round-robin in one process (same model, batch and threads) and reported as medians over the rounds:
- bare: the train step alone (forward, loss, backward, SGD step) on one batch already in memory;
- fit new / fit old: the images/s of a fit epoch (the epoch after a warm-up epoch: data, step, bookkeeping; the
  checkpoint written after it is not counted) on the decoded dataset (msabn.data.memory.decode) and on the
  file-backed one (PNG files, train_transform per image, a DataLoader with --workers workers);
- the ratios fit / bare, taken per round, then the median.
The target is fit new / bare >= 0.9. On a shared machine the absolute numbers move; read the ratios.

Then, with --official PATH (a folder holding the official ABN code of Fukui et al., CVPR 2019, e.g. files copied from
github.com/machine-perception-robotics-group/attention_branch_network: models/cifar/resnet.py and, optionally,
models/imagenet/resnet.py; fetched for the run, never part of msabn), our ABN's train step against the official one:
- 32 px: the official CIFAR ResNet ABN (resnet(depth=20)) against create_model("abn", "resnet20"), batch 128;
- 224 px (when models/imagenet/resnet.py is there and --batch-224 > 0): the official ImageNet resnet50 ABN against
  create_model("abn", "resnet50"), 1000 classes, batch --batch-224.
The official step is its train() loop's (cifar.py / imagenet.py): model(inputs) -> (att_outputs, per_outputs, _),
CrossEntropyLoss on both, summed, optimizer.zero_grad(), backward, SGD step (lr 0.1, momentum 0.9, its script's weight
decay: 5e-4 CIFAR, 1e-4 ImageNet), loss.item(), NCHW input as its DataLoader gives it; its DataParallel wrapper is a
pass-through on a CPU and its top-1/top-5 bookkeeping is left out (as our confusion matrix is). Ours is fit's step:
the batch made channels_last, msabn.train.engine.TrainStep (model + L_attn + L_cls), zero_grad, backward, SGD step with
the same hyper-parameters, float(loss); with --compile SIZE also TrainConfig(compile=True)'s torch.compile(TrainStep)
at that size (its compile time is printed, not timed). Same batch (one fixed random batch), classes and threads;
each round times --abn-steps steps of every variant in turn (after one warm-up step each); ratios per round, then the
median.
Without --official that part is skipped, and the benchmark says so.

usage: python benchmarks/engine_speed.py [--rounds 3] [--n-train 512] [--threads 2] [--workers 0]
                                         [--models NAME ...] [--official PATH [--abn-steps 3] [--batch-224 8]
                                         [--steps-224 1] [--compile 32 224]]
"""
import argparse
import dataclasses
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from msabn.core import device_name, set_seed
from msabn.data import decode, get_dataset, make_synthetic, train_transform
from msabn.models import create_model
from msabn.train import TrainConfig, TrainStep, fit

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


OFFICIAL_FILES = {32: "models/cifar/resnet.py", 224: "models/imagenet/resnet.py"}
OFFICIAL_WD = {32: 5e-4, 224: 1e-4}  # the weight decay defaults of the official cifar.py and imagenet.py


def official_models(folder) -> dict:
    ("The official ABN model files found in `folder`, by input size; a clear error before any work when the CIFAR one "
     "is missing.")
    folder = Path(folder).expanduser()
    if not (folder / OFFICIAL_FILES[32]).is_file():
        raise SystemExit(f"--official {folder}: expected the official ABN code there (a {OFFICIAL_FILES[32]} with its "
                         "CIFAR "
                         "ResNet ABN, e.g. copied from "
                         "github.com/machine-perception-robotics-group/attention_branch_network), "
                         f"found {sorted(p.name for p in folder.iterdir()) if folder.is_dir() else 'no such folder'}")
    mods = {}
    for size, rel in OFFICIAL_FILES.items():
        if not (folder / rel).is_file(): continue
        spec = importlib.util.spec_from_file_location(f"official_abn_{size}", folder / rel)
        mods[size] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[size])
    return mods


class OfficialStep:
    ("The official train() loop's step: CE on both branches' outputs, summed, zero_grad, backward, SGD step, "
     "loss.item().")
    def __init__(self, model: nn.Module, wd: float):
        self.model, self.crit = model.train(), nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=wd)

    def __call__(self, x, y):
        att_outputs, per_outputs, _ = self.model(x)
        loss = self.crit(att_outputs, y) + self.crit(per_outputs, y)
        self.opt.zero_grad(); loss.backward(); self.opt.step()
        return loss.item()


class OursStep:
    ("fit's step: the batch made channels_last, TrainStep (torch.compile'd when cfg.compile, as fit does), zero_grad, "
     "backward, SGD.")
    def __init__(self, model: nn.Module, cfg: TrainConfig):
        self.model = model.to(memory_format=torch.channels_last).train()
        step = TrainStep(self.model, cfg)
        self.fn = torch.compile(step) if cfg.compile else step
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def __call__(self, x, y):
        _, terms = self.fn(x.contiguous(memory_format=torch.channels_last), y)
        self.opt.zero_grad(set_to_none=True); terms["loss"].backward(); self.opt.step()
        return float(terms["loss"].detach())


def abn_variants(mods: dict, size: int, k: int, compiled: bool) -> dict:
    "The steps to compare at one input size: the official one, ours as fit runs it, and ours torch.compile'd if asked."
    set_seed(0)
    off = mods[32].resnet(depth=20, num_classes=k) if size == 32 else mods[224].resnet50(num_classes=k)
    cfg = TrainConfig(
        epochs=1, batch_size=1, lr=0.1, momentum=0.9, weight_decay=OFFICIAL_WD[size], progress=False, device="cpu"
    )
    backbone = "resnet20" if size == 32 else "resnet50"
    steps = {"official": OfficialStep(off, OFFICIAL_WD[size]), "ours": OursStep(_model_abn(backbone, k), cfg)}
    if compiled:
        steps["ours, compiled"] = OursStep(_model_abn(backbone, k), dataclasses.replace(cfg, compile=True))
    return steps


def _model_abn(backbone, k):
    set_seed(0)
    return create_model("abn", backbone, num_classes=k)


def compare_official(mods: dict, size: int, batch: int, k: int, rounds: int, n_steps: int, compiled: bool) -> dict:
    "img/s of every variant per round (round-robin: n_steps steps of each in turn), on one fixed batch."
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, size, size, generator=g), torch.randint(0, k, (batch,), generator=g)
    steps = abn_variants(mods, size, k, compiled)
    for name, step in steps.items():
        t0 = time.perf_counter(); step(x, y)
        if name == "ours, compiled": print(f"  {size} px: torch.compile + first step of ours "
                                           f"{time.perf_counter() - t0:.0f} s")
    runs = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(n_steps): step(x, y)
            runs[name].append(n_steps * batch / (time.perf_counter() - t0))
    return runs


def print_official(results: dict):
    ("One row per input size: img/s of each variant (medians) and their ratios to the official step (per round, then "
     "median).")
    med = statistics.median
    print(f"\n{'ABN train step':<16}{'batch':>6}{'classes':>8}{'official img/s':>15}{'ours':>7}{'ours/official':>14}"
          f"{'compiled':>9}{'compiled/official':>18}")
    for (size, batch, k), runs in results.items():
        off = runs["official"]
        row = f"{f'{size} px':<16}{batch:>6}{k:>8}{med(off):>15.1f}{med(runs['ours']):>7.1f}"
        row += f"{med(o / f for o, f in zip(runs['ours'], off, strict=True)):>14.2f}"
        if "ours, compiled" in runs:
            c = runs["ours, compiled"]
            row += f"{med(c):>9.1f}{med(a / f for a, f in zip(c, off, strict=True)):>18.2f}"
        print(row)


def fit_part(a, k, files, mem, tmp):
    "The fit-vs-bare table: per model, bare step, fit on the new path and on the old path, round-robin."
    cfg = TrainConfig(epochs=2, batch_size=BATCH, lr=0.1, num_workers=a.workers, progress=False, device="cpu")
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
        nb = med(n / b for n, b in zip(v["new"], v["bare"], strict=True))
        ob = med(o / b for o, b in zip(v["old"], v["bare"], strict=True))
        no = med(n / o for n, o in zip(v["new"], v["old"], strict=True))
        print(
            f"{m:<20}{med(v['bare']):>11.0f}{med(v['new']):>9.0f}{nb:>10.2f}{med(v['old']):>9.0f}{ob:>10.2f}{no:>9.2f}"
        )


def official_part(a, mods, k):
    "Our ABN's train step against the official one at 32 px (and 224 px when its ImageNet model is there)."
    sizes = [(32, BATCH, k, a.abn_steps)] + (
        [(224, a.batch_224, 1000, a.steps_224)] if 224 in mods and a.batch_224 > 0 else []
    )
    print(f"\nours vs the official ABN code ({a.official}): {a.rounds} rounds round-robin, {a.abn_steps} steps "
          f"(224 px: {a.steps_224}) of each variant per round, medians")
    if 224 not in mods: print(f"  224 px skipped: no {OFFICIAL_FILES[224]} in {a.official}")
    elif a.batch_224 == 0: print("  224 px skipped: --batch-224 0")
    results = {s[:3]: compare_official(mods, *s[:3], a.rounds, s[3], s[0] in a.compile) for s in sizes}
    print_official(results)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the old path")
    ap.add_argument("--models", nargs="*", default=list(MODELS), help="models of the fit-vs-bare table (none: skip it)")
    ap.add_argument("--official", type=Path, default=None, help="folder with the official ABN code "
                                                                "(models/cifar/resnet.py)")
    ap.add_argument("--batch-224", type=int, default=8, help="batch of the 224 px comparison (0: skip it)")
    ap.add_argument("--compile", type=int, nargs="*", default=[], choices=[32, 224],
                    help="input sizes at which ours also runs torch.compile'd (TrainConfig.compile)")
    ap.add_argument("--abn-steps", type=int, default=3, help="timed steps per variant and round in the official "
                                                             "comparison")
    ap.add_argument("--steps-224", type=int, default=1, help="the same at 224 px")
    a = ap.parse_args()
    bad = [
        f"--{n} {v}"
        for n, v in (
            ("rounds", a.rounds),
            ("n-train", a.n_train),
            ("threads", a.threads),
            ("abn-steps", a.abn_steps),
            ("steps-224", a.steps_224),
        )
        if v < 1
    ] + [f"--{n} {v}" for n, v in (("workers", a.workers), ("batch-224", a.batch_224)) if v < 0]
    if bad: raise SystemExit(f"expected positive counts (workers, batch-224: >= 0), got {', '.join(bad)}")
    unknown = sorted(set(a.models) - set(MODELS))
    if unknown: raise SystemExit(f"--models: unknown {unknown}, expected some of {list(MODELS)}")
    mods = official_models(a.official) if a.official is not None else None
    t_start = time.perf_counter()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_synthetic(tmp / "data", "cifar", n_train=a.n_train, n_test=16, n_test_iid=16)
        files = get_dataset("synthetic", root, "train", transform=train_transform("cifar", 32))
        mem = decode(files, "cifar", 32)
        cfg = TrainConfig(epochs=2, batch_size=BATCH, lr=0.1, progress=False, device="cpu")
        k = files.num_classes
        machine = statistics.median(bare_step(MODELS["Base"], k, cfg) for _ in range(3))
        print(f"machine figure: bare Base ResNet-20 step, 32 px, batch {BATCH}: {machine:.0f} img/s "
              f"({device_name('cpu')}, torch threads {a.threads})")
        print(f"{a.n_train} training images, {a.rounds} rounds round-robin, medians; old path: {a.workers} DataLoader "
              "workers\n")
        if a.models: fit_part(a, k, files, mem, tmp)
        else: print("fit vs bare step: skipped (--models given no model)")
        if mods is None: print("\nours vs the official ABN code: skipped (no --official PATH given)")
        else: official_part(a, mods, k)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
