#!/usr/bin/env python
"""How much frac_attn_out's reading moves Figs. 8/9's pools on the embedded benchmark.

The paper binarises the attention map "by thresholding the intensity values at 0.2" (section 4.3): msabn reads the
map as it is (`paper`); min-max normalising each map first (`normalized`) was msabn's earlier reading. Declared before
measuring, and measured on nothing else:

- models: the smoke preset's Table 1 MSABN rows, g·(1+A) (the row the smoke Figs. 8/9 fine-tune) and g·A, seeds
  0, 1, 2, their last epoch (`checkpoint.pt`, the smoke preset's source model), from complete run folders whose
  fingerprints are the current preset's (`msabn_run table1 --preset smoke` makes them);
- images: the 1,000 smoke Table 1 training images under the evaluation pipeline (what Figs. 8/9 score), with the
  dataset's boxes;
- per reading, row and seed: the pool size |{frac_attn_out > lambda_out}| for lambda_out in 0.0 ... 0.7 (the paper's
  CUB grid); the smoke Figs. 8/9 points (50% and 100% of the images annotated): the lambda_out each reading gives and
  how many images the two readings' 50% pools share; the mean frac_attn_out.

Every map is computed once per model; both readings score the same maps. One torch thread; nothing is timed.

usage: python benchmarks/frac_readings.py [--runs runs] [--data data] [--seeds 0 1 2] [--json PATH]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from msabn.core import save_json
from msabn.experiments import cell_folder, experiment_folder, fingerprint, get_experiment, load_splits, run_state
from msabn.explain import collect_attention, frac_attn_out
from msabn.hitl import PAPER_LAMBDAS, dataset_boxes, model_from_checkpoint

READINGS = {"paper": False, "normalized": True}   # reading -> frac_attn_out's normalize
ROWS = ("MSABN g·(1+A)", "MSABN g·A")
FRACTIONS = (0.5, 1.0)                            # the smoke Figs. 8/9 points


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs", help="the runs folder holding runs/smoke/table1/seed<k>")
    ap.add_argument("--data", default="data", help="the data root (the embedded data are made there)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", default=None, help="also write every number here")
    return ap.parse_args(argv)


def lambda_for(frac: np.ndarray, share: float) -> float:
    "msabn.hitl.ordering.lambda_for_fraction on bare scores."
    k = int(round(share * len(frac)))
    return 0.0 if k >= len(frac) else float(np.sort(frac)[::-1][k])


def measure(model, data, boxes, size) -> dict:
    rec = collect_attention(model, data, batch_size=128, device="cpu")
    maps = torch.from_numpy(rec.attn_map).float()[:, None]
    out = {}
    for name, norm in READINGS.items():
        f = frac_attn_out(maps, torch.from_numpy(boxes), 0.2, image_size=size, normalize=norm).numpy()
        pools = {f"{lam:g}": int((f > lam).sum()) for lam in PAPER_LAMBDAS["cub"]}
        lams = {f"{s:g}": lambda_for(f, s) for s in FRACTIONS}
        out[name] = {"frac": f, "mean": float(f.mean()), "pools": pools, "lambdas": lams}
    k = int(round(FRACTIONS[0] * len(rec)))
    pools = {name: set(np.argsort(-out[name]["frac"], kind="stable")[:k].tolist()) for name in READINGS}
    out["shared_50"] = len(pools["paper"] & pools["normalized"]) / k
    for name in READINGS: del out[name]["frac"]
    return out


def table(res: dict) -> str:
    "The pools per lambda_out, both readings side by side (mean over seeds, min-max)."
    seeds = sorted({s for r in res.values() for s in r})
    def cell(row, reading, key, sub):
        v = [res[row][s][reading][key][sub] for s in seeds]
        return f"{np.mean(v):.0f} ({min(v)}-{max(v)})" if key == "pools" else f"{np.mean(v):.3f}"
    head = " | ".join(f"{row}: {r}" for row in res for r in READINGS)
    L = [f"| lambda_out | {head} |", "| --- |" + " --- |" * (len(res) * len(READINGS))]
    for lam in PAPER_LAMBDAS["cub"]:
        cells = " | ".join(cell(row, r, "pools", f"{lam:g}") for row in res for r in READINGS)
        L.append(f"| {lam:g} | {cells} |")
    for s in FRACTIONS:
        cells = " | ".join(cell(row, r, "lambdas", f"{s:g}") for row in res for r in READINGS)
        L.append(f"| lambda_out for {100 * s:.0f}% | {cells} |")
    means = " | ".join(f"{np.mean([res[row][s][r]['mean'] for s in seeds]):.3f}" for row in res for r in READINGS)
    L.append(f"| mean frac_attn_out | {means} |")
    shared = {row: np.mean([res[row][s]["shared_50"] for s in seeds]) for row in res}
    both = ", ".join(f"{row} {v:.2f}" for row, v in shared.items())
    return "\n".join(L) + f"\n\nShare of the 50% pool both readings pick: {both}"


def main(argv=None):
    a = parse(argv)
    torch.set_num_threads(1)
    exp = get_experiment("table1", "smoke")
    column = exp.columns[0]
    data = load_splits(exp.data, Path(a.data), train_augment=False)["train"]
    boxes, size = dataset_boxes(data)
    res = {row: {} for row in ROWS}
    for seed in a.seeds:
        folder = experiment_folder(a.runs, exp, seed)
        state = run_state(folder, fingerprint(exp, seed))
        if state != "complete":
            raise SystemExit(f"{folder} is {state}, not a complete run of this smoke preset: run "
                             f"`msabn_run table1 --preset smoke --seeds {seed}` first")
        for row in ROWS:
            model = model_from_checkpoint(cell_folder(folder, column.backbone, row) / "checkpoint.pt")
            res[row][seed] = measure(model, data, boxes, size)
            r = res[row][seed]
            at = lambda reading, r=r: " / ".join(str(r[reading]["pools"][k]) for k in ("0", "0.3", "0.5"))
            print(f"seed {seed} {row}: pool at 0 / 0.3 / 0.5: paper {at('paper')}, normalized {at('normalized')}; "
                  f"50% pools share {r['shared_50']:.2f}", flush=True)
    print(f"\n{len(data)} training images, seeds {a.seeds}\n\n" + table(res))
    if a.json: save_json({"images": len(data), "seeds": a.seeds, "results": res}, a.json)


if __name__ == "__main__":
    main()
