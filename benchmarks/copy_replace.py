#!/usr/bin/env python
"""Copy-replace fine-tuning against vanilla fine-tuning on the embedded benchmark (the paper's Figs. 8/9, on a CPU).

The data: the embedded benchmark's CIFAR-like preset as it ships (`make_synthetic(root, "cifar")`: 2,000
training images of 32 px, 10 classes, each class with its own background "habitat" in 50% of the training
images, and the *shifted* test split of 1,000 images where the habitat is independent of the class). A model
that learned the habitat fails on the shifted split; copy-replace with the pasted object's label breaks the
habitat-label link on the annotated images.

Per seed (one trained model per seed, so the spread covers training and fine-tuning):
1. train an MSABN (CIFAR ResNet-20, the efficient variant: the same 32 x 32 map as the literal one, 2.2x
   faster to train on this CPU) with the CIFAR recipe (crop + flip, SGD lr 0.1 momentum 0.9 wd 5e-4, /10 at
   50% and 75%, batch 64) for 10 epochs;
2. score its attention on the training images (frac_attn_out, threshold 0.2, the dataset's true boxes: the
   paper's simulated annotator);
3. fine-tune a copy with the paper's fine-tuning schedule shortened for the CPU (SGD lr 0.1 momentum 0.9
   wd 1e-4, /10 at 50% and 75%, no augmentation but copy-replace; 4 epochs, batch 64):
   - vanilla (no copy-replace), the baseline;
   - copy-replace (p = 1, label of the pasted object) on the pool frac_attn_out > lambda_out, for the
     lambda_out whose pools hold 10%, 25%, 50% and 100% of the training images (the x axis of Figs. 8/9);
   - copy-replace on the first 10% of the images in each ordering (frac_attn_out, misclassified first,
     lowest confidence, random): the accuracy gained per box drawn;
4. measure accuracy and mean frac_attn_out on the shifted test split.

These settings were fixed before the first full run and are not tuned to its result. They are shorter than
the paper's (300 + 50 epochs, batch 16) so that three seeds run on a 2-core CPU in about an hour;
`--paper-finetune` uses the paper's fine-tuning schedule instead.

Outputs (`--out`, default paper_figures/copy_replace/): results.md (tables), curve.png (Fig. 8/9 style, with
the gain over vanilla beside it), results.json (every run, the summaries, the settings, provenance and timing).
Every fine-tuning's numbers are saved in `--runs` as they finish and reused on a rerun, so an interrupted run
continues; `--replot` rewrites results.md and curve.png from results.json without running anything.

Run time: 56 min for the default (3 seeds, one thread) on the project's 2-core CPU shared with other work
(load average 3-5); one seed is 16-22 min of it.

usage: python benchmarks/copy_replace.py [--seeds 0 1 2] [--threads 1] [--quick] [--replot]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from msabn.copy_replace import PAPER_FINETUNE, score_attention
from msabn.core import load_json, provenance, save_json, set_seed
from msabn.datasets import get_dataset
from msabn.models import create_model
from msabn.ordering import (ORDERINGS, compare_orderings, copy_replace_curve, lambda_for_fraction, orderings_table,
                            plot_curve, summarize_runs)
from msabn.synthetic import make_synthetic
from msabn.train import TrainConfig, fit
from msabn.transforms import eval_transform, train_transform

ROOT = Path(__file__).resolve().parents[1]
PAPER_GAINS = ("CUB-200-2011, 20% annotated: +6 / +5 / +3 points (ResNet-50 / ResNeXt-50 / EfficientNet-B3); almost all: "
               "+12.5 / +12.5 / +6. Stanford Cars, 20%: +2 / +1.5 / +0.5; almost all: +4.5 / +3.5 / +1.5 (read off Figs. 8 and 9).")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of the model to fine-tune")
    ap.add_argument("--ft-epochs", type=int, default=4, help="fine-tuning epochs (both methods)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0], help="pool sizes of the curve")
    ap.add_argument("--budget", type=float, default=0.1, help="boxes drawn in the orderings comparison, as a share of the training images")
    ap.add_argument("--orderings", nargs="+", default=list(ORDERINGS))
    ap.add_argument("--variant", default="efficient", choices=["efficient", "literal"])
    ap.add_argument("--paper-finetune", action="store_true", help="the paper's fine-tuning schedule (50 epochs, batch 16)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=str(ROOT / "data" / "synthetic-cifar"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "copy_replace"))
    ap.add_argument("--out", default=str(ROOT / "paper_figures" / "copy_replace"))
    ap.add_argument("--replot", action="store_true", help="rewrite results.md and curve.png from --out/results.json, running nothing")
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run on 96 images (for tests), not a result")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.epochs, a.ft_epochs, a.batch, a.fractions, a.budget = a.seeds[:1], 1, 1, 16, [0.5, 1.0], 0.25
    return a


def train_base(seed: int, a, train, out_dir: Path) -> torch.nn.Module:
    "The model to fine-tune: trained once per seed, then found again in out_dir (fit resumes a finished run as is)."
    set_seed(seed)
    model = create_model("msabn", "resnet20", train.num_classes, variant=a.variant)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch, lr=0.1, weight_decay=5e-4, seed=seed, progress=False)
    fit(model, train, None, cfg, out_dir=out_dir, resume=True)
    return model.eval()


def merge(per_seed: list[dict], fractions: list[float], budget: int) -> tuple[dict, dict]:
    "Curve and orderings results of all seeds as one of each: names by nominal fraction, spread over seeds."
    rows, orows, lams, before = [], [], {f: [] for f in fractions}, []
    for s in per_seed:
        for r in s["curve"]["runs"]:
            name = r["name"] if r["name"] == "vanilla" else f"fraction={s['names'][r['name']]:g}"
            rows.append({**r, "name": name})
        orows += s["orderings"]["runs"]
        for f, lam in zip(fractions, s["lambdas"]): lams[f].append(lam)
        before.append(s["curve"]["before"])
    summ = {r["name"]: r for r in summarize_runs(rows)}
    points = [{"lambda_out": float(np.mean(lams[f])), "lambda_out_per_seed": lams[f], **summ[f"fraction={f:g}"]} for f in fractions]
    mean = lambda k: float(np.mean([b[k] for b in before]))
    sd = lambda k: float(np.std([b[k] for b in before], ddof=1)) if len(before) > 1 else None
    curve = {"points": points, "vanilla": summ["vanilla"], "runs": rows,
             "before": {"acc": mean("acc"), "acc_std": sd("acc"), "frac_attn_out": mean("frac_attn_out"),
                        "train_acc": mean("train_acc"), "train_frac_attn_out": mean("train_frac_attn_out")}}
    osum = summarize_runs(orows)
    van = {r["seed"]: r["acc"] for r in orows if r["name"] == "vanilla"}
    table = []
    for r in osum:
        if r["name"] == "vanilla": continue
        by, b = r["name"].rsplit("@", 1)
        per_box = [(x["acc"] - van[x["seed"]]) / int(b) for x in orows if x["name"] == r["name"]]
        table.append({**r, "ordering": by, "budget": int(b), "gain_per_box": float(np.mean(per_box)),
                      "gain_per_box_std": float(np.std(per_box, ddof=1)) if len(per_box) > 1 else None})
    return curve, {"table": table, "vanilla": next(r for r in osum if r["name"] == "vanilla"), "runs": orows}


def pm(m, s, nd=1, sign=False):
    if m is None: return "-"
    t = f"{m:+.{nd}f}" if sign else f"{m:.{nd}f}"
    return t if s is None else f"{t} ± {s:.{nd}f}"


def report(res: dict) -> str:
    "results.md from results.json."
    curve, orders, st = res["curve"], res["orderings"], res["settings"]
    seeds, n_train, n_test, seconds, cmd = st["seeds"], res["n_train"], res["n_test"], res["timing"]["total_s"], res["command"]
    v, b = curve["vanilla"], curve["before"]
    L = ["# Copy-replace fine-tuning on the embedded benchmark", "",
         f"Produced by `{cmd}` ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}: {', '.join(map(str, seeds))}; {seconds / 60:.0f} min on the "
         f"project's 2-core CPU shared with other work, {st['threads']} thread(s)). Mean ± standard deviation over seeds; one "
         f"trained model per seed ({n_train} training images). Accuracy and frac_attn_out are measured on the **shifted test split** ({n_test} images whose "
         f"background habitat is independent of the class). See `benchmarks/copy_replace.py` for every setting.", "",
         "## Accuracy against the fraction of training images annotated (Figs. 8/9)", "",
         "The pool for a point is every training image with frac_attn_out > lambda_out (the dataset's true boxes stand in "
         "for the person); lambda_out is chosen per model so that the pool holds the stated share (its mean over seeds is shown). "
         "Gain: copy-replace minus vanilla fine-tuning of the same seed, same schedule.", "",
         "| images annotated | lambda_out (mean) | copy-replace acc (%) | vanilla acc (%) | gain (points) | test frac_attn_out: copy-replace | vanilla | change |",
         "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in curve["points"]:
        L.append(f"| {p['pool_size']} ({100 * p['fraction_annotated']:.0f}%) | {p['lambda_out']:.3f} | {pm(p['acc'], p['acc_std'])} | "
                 f"{pm(v['acc'], v['acc_std'])} | **{pm(p['gain'], p['gain_std'], sign=True)}** | {pm(p['frac_attn_out'], None, 3)} | "
                 f"{v['frac_attn_out']:.3f} | {pm(None if p['frac_attn_out'] is None else p['frac_attn_out'] - v['frac_attn_out'], None, 3, sign=True)} |")  # an empty pool: -
    L += ["", f"Before fine-tuning: test accuracy {pm(b['acc'], b['acc_std'])}%, test frac_attn_out {b['frac_attn_out']:.3f}; "
          f"training accuracy {b['train_acc']:.1f}%, training frac_attn_out {b['train_frac_attn_out']:.3f}. "
          f"Vanilla fine-tuning: test accuracy {pm(v['acc'], v['acc_std'])}%, test frac_attn_out {v['frac_attn_out']:.3f}.", "",
          f"The paper, for scale (real datasets and models, 50 fine-tuning epochs): {PAPER_GAINS}", "",
          "![accuracy against the fraction of training images annotated](curve.png)", "",
          "Left: test accuracy (mean and spread over seeds; the seeds' models differ, so the spread is mostly theirs). "
          "Right: the gain over vanilla fine-tuning of the same model and seed (mean ± std of the paired differences).", "",
          "## Which images to box first: accuracy gained per box drawn", "",
          f"Each ordering shows the person (the simulated annotator: the dataset's true boxes) its first "
          f"{orders['table'][0]['budget'] if orders['table'] else '?'} training images ({100 * st['budget']:.0f}%); copy-replace "
          f"fine-tuning on those, minus vanilla fine-tuning of the same seed.", "",
          orderings_table(orders), ""]
    return "\n".join(L)


def main(argv=None):
    a = parse(argv)
    if a.replot:  # the pictures and tables again, from results.json (keeps the run's own timing)
        return write(load_json(Path(a.out) / "results.json"), Path(a.out))
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    if a.quick:
        root = make_synthetic(Path(a.data) / "quick", "cifar", n_train=96, n_test=48, n_test_iid=8)
    else:
        root = make_synthetic(a.data, "cifar")
    ev = eval_transform("cifar", 32)
    train_aug = get_dataset("synthetic", root, "train", transform=train_transform("cifar", 32))
    train_ev, test_ev = (get_dataset("synthetic", root, s, transform=ev) for s in ("train", "test"))
    n = len(train_ev)
    ft = PAPER_FINETUNE if a.paper_finetune else replace(PAPER_FINETUNE, epochs=a.ft_epochs, batch_size=a.batch)
    ft = replace(ft, progress=False)
    budget = max(2, int(round(a.budget * n)))
    runs = Path(a.runs) / ("quick" if a.quick else "")
    per_seed, timing = [], {}
    for seed in a.seeds:
        t0 = time.perf_counter()
        model = train_base(seed, a, train_aug, runs / f"seed{seed}" / "base")
        scores = score_attention(model, train_ev)
        lams = [lambda_for_fraction(scores, f) for f in a.fractions]
        print(f"seed {seed}: model trained/loaded in {time.perf_counter() - t0:.0f} s; training accuracy {scores.acc:.1f}%, "
              f"mean frac_attn_out {scores.frac_attn_out.mean():.3f}; lambda_out for {a.fractions}: {[round(l, 3) for l in lams]}", flush=True)
        curve = copy_replace_curve(model, train_ev, test_ev, lams, ft, seeds=[seed], scores=scores, out_dir=runs / "finetune", progress=False)
        names = {f"lambda={l:g}": f for l, f in zip(lams, a.fractions)}
        for p in curve["points"]:
            print(f"  lambda_out {p['lambda_out']:.3f} ({p['pool_size']} images): copy-replace {pm(p['acc'], None)}% vs vanilla "
                  f"{pm(curve['vanilla']['acc'], None)}%", flush=True)
        orders = compare_orderings(model, train_ev, test_ev, [budget], ft, seeds=[seed], orderings=a.orderings, scores=scores,
                                   out_dir=runs / "finetune", progress=False)
        per_seed.append({"seed": seed, "lambdas": lams, "names": names, "curve": curve, "orderings": orders})
        timing[f"seed{seed}_s"] = time.perf_counter() - t0
        print(f"seed {seed} done in {timing[f'seed{seed}_s']:.0f} s", flush=True)
    curve, orders = merge(per_seed, a.fractions, budget)
    seconds = time.perf_counter() - t_start
    args, skip = [], False
    for t in sys.argv[1:]:  # the command as run, without the folder options (no paths in what is committed)
        if skip: skip = False; continue
        if t in ("--data", "--runs", "--out"): skip = True; continue
        if not t.startswith(("--data=", "--runs=", "--out=")): args.append(t)
    cmd = " ".join(["python benchmarks/copy_replace.py"] + args)
    settings = {k: v for k, v in vars(a).items() if k not in ("data", "runs", "out", "replot")}
    res = {"curve": curve, "orderings": orders, "per_seed": per_seed, "settings": settings,
           "finetune": asdict(ft), "n_train": n, "n_test": len(test_ev), "timing": {**timing, "total_s": seconds},
           "provenance": provenance("cpu"), "command": cmd}
    write(res, Path(a.out))
    print(f"total {seconds / 60:.1f} min")


def write(res: dict, out: Path):
    "results.json, curve.png and results.md."
    out.mkdir(parents=True, exist_ok=True)
    save_json(res, out / "results.json")
    st = res["settings"]
    fig = plot_curve({f"(MSABN-{st['variant']}, ResNet-20)": res["curve"]}, gain=True,
                     title=f"embedded benchmark, shifted test split ({len(st['seeds'])} seed{'s' if len(st['seeds']) > 1 else ''})")
    fig.savefig(out / "curve.png", dpi=100)
    (out / "results.md").write_text(report(res))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
