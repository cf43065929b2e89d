#!/usr/bin/env python
"""Explanation quality and cost, measured: intrinsic attention maps (CAM, ABN, MSABN, Puzzle-MSABN) against post-hoc
explainers (Grad-CAM, Grad-CAM++, Eigen-CAM, Score-CAM on the Base model), on the same test images and boxes.

    python benchmarks/explainers.py                      # Table 1's embedded stand-in: trains small models (CPU)
    python benchmarks/explainers.py --dataset cub --data-root PATH [--checkpoint "Base=runs/.../checkpoint.pt" ...]

What it does, in one run:
1. Data: the embedded stand-in of Table 1's smoke preset, the calibrated one (the same files `msabn_run table1` makes
   under data/, reused when there), read at --size; or CUB-200-2011 / Stanford Cars from --data-root. The training
   split trains, the test split is scored (the embedded benchmark's `test` split is the shifted one: habitat independent
   of the class; its `test_iid` split gives the models' in-distribution accuracy beside it).
2. Models: Base, ABN, MSABN (literal), MSABN (efficient) and Puzzle-MSABN (literal MSABN + Puzzle module), each trained
   with msabn.train.engine.fit (seeded, deterministic kernels; runs/explainers/<settings>/<model>/, resumed when already
   there) or loaded from --checkpoint LABEL=PATH (an msabn checkpoint; the model is rebuilt from its signature).
3. Localisation: every explainer on the test split (GT-known: the maps of the true class), every score of
   msabn.explain.localization, per image in results.json, summarised in table.md.
4. Throughput: one batch of test images, every explainer in turn per round (round-robin, so a load change hits all
   alike), the first --warmup rounds untimed, the median of the rest; images/s includes the forward pass. The ratio
   "Grad-CAM time / intrinsic time" is measured on the *same* model and batch for each model.
5. A grid of maps on the same test images (grid.png).
6. More seeds (--more-seeds; on the embedded benchmark seeds 1 and 2 by default): the models trained again from those
   seeds and scored the same way, so that each map's lead over CAM is a paired difference over seeds, stated with its
   minimum detectable effect (msabn_report's rule); throughput and the grid stay on the --seed models.
Outputs go to --out (default paper_figures/explainers/): table.md, grid.png, results.json; `--replot` rewrites
table.md from results.json without running anything.

Threads: one by default (--threads) for torch, OpenCV and NumPy's BLAS: the CPU is shared, and one thread measures the
explainers, not the neighbours (Eigen-CAM's SVD ran 10x slower with BLAS's default threads on the busy 2-core machine).
A benchmark, not a test: it reports what it measures and asserts nothing about it.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import torch
from threadpoolctl import threadpool_limits

from msabn.core import provenance, save_json, set_seed
from msabn.data import collate, decode, eval_transform, get_dataset, recipe_for, train_transform
from msabn.experiments import get_experiment, load_splits
from msabn.explain import Explainer, Explanation, create_explainer, evaluate_explainer, normalize_maps
from msabn.models import count_params, create_model
from msabn.report import fmt_interval, paired
from msabn.train import TrainConfig, evaluate, fit, load_checkpoint, machine_figure, machine_figure_line

ROOT = Path(__file__).resolve().parents[1]

MODELS = {  # label -> (arch, options, puzzle)
    "Base": ("base", {}, False),
    "ABN": ("abn", {}, False),
    "MSABN": ("msabn", {"variant": "literal"}, False),
    "MSABN (efficient)": ("msabn", {"variant": "efficient"}, False),
    "Puzzle-MSABN": ("msabn", {"variant": "literal"}, True),
}
# label -> (model label, explainer name): what is scored and shown
LOCALIZE = {
    "CAM (Base)": ("Base", "cam"),
    "ABN": ("ABN", "attention"),
    "MSABN": ("MSABN", "attention"),
    "MSABN (efficient)": ("MSABN (efficient)", "attention"),
    "Puzzle-MSABN": ("Puzzle-MSABN", "attention"),
    "Grad-CAM (Base)": ("Base", "gradcam"),
    "Grad-CAM++ (Base)": ("Base", "gradcam++"),
    "Eigen-CAM (Base)": ("Base", "eigencam"),
    "Score-CAM (Base)": ("Base", "scorecam"),
    "centre baseline": ("Base", "centre"),   # a fixed centred Gaussian: what a map scores by knowing nothing
}
PRESETS = {  # dataset -> defaults (all overridable on the command line)
    "synthetic": dict(
        backbone="resnet10t_narrow",
        backbone_kwargs={},
        size=64,  # timm's ResNet-10-T, 16-128 wide
        epochs=10,
        batch_size=32,
        lr=0.1,
        weight_decay=5e-4,
    ),  # Table 1's weight decay
    "cub": dict(
        backbone="resnet50", backbone_kwargs={}, size=352, epochs=300, batch_size=16, lr=0.1, weight_decay=1e-4
    ),
    "cars": dict(
        backbone="resnet50", backbone_kwargs={}, size=352, epochs=300, batch_size=16, lr=0.1, weight_decay=1e-4
    ),
}
SCORES = [
    ("acc", "accuracy (%)"),
    ("gt_known_loc", "GT-known loc (%)"),
    ("max_box_acc_v2", "MaxBoxAccV2 (%)"),
    ("pointing", "pointing (%)"),
    ("pointing_15px", "pointing ±15 px (%)"),
    ("energy_pointing", "energy pointing (%)"),
    ("frac_attn_out", "frac_attn_out"),
    ("constant_maps", "constant maps"),
]


class CentreBaseline(Explainer):
    ("No explanation at all: the same centred Gaussian (sigma a quarter of the side) for every image; logits from the "
     "model.")
    name, intrinsic = "centre", True

    @torch.inference_mode()
    def _explain(self, x, targets):
        logits = self.model.eval()(x).logits.float()
        H, W = x.shape[-2:]
        ys, xs = (
            (torch.arange(H, device=x.device) + 0.5 - H / 2) / (H / 4),
            (torch.arange(W, device=x.device) + 0.5 - W / 2) / (W / 4),
        )
        g = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / 2)
        t = logits.argmax(1) if targets is None else torch.as_tensor(targets, device=logits.device)
        return Explanation(normalize_maps(g.expand(len(x), 1, H, W).contiguous()), logits, t, (H, W))


def make_explainer(name: str, model) -> Explainer:
    return CentreBaseline(model) if name == "centre" else create_explainer(name, model)


def slug(s: str) -> str: return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dataset", choices=tuple(PRESETS), default="synthetic")
    ap.add_argument("--data-root", type=Path, default=None, help="CUB/Cars root; for synthetic: the data root it is "
                                                                 "made under (default data/)")
    ap.add_argument("--backbone")
    ap.add_argument("--backbone-kwargs", type=json.loads, help='JSON, e.g. \'{"channels": [16, 32, 64, 128]}\'')
    ap.add_argument("--size", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float); ap.add_argument("--weight-decay", type=float)
    ap.add_argument("--seed", type=int, default=0, help="the models scored, timed and shown")
    ap.add_argument("--more-seeds", type=int, nargs="*", default=None,
                    help="seeds trained again for the paired differences (default: 1 2 on the embedded benchmark, none "
                         "on CUB/Cars)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="where to train and explain (timings are for this device)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH",
                    help=f"load a model instead of training it; LABEL one of {list(MODELS)}")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N test images")
    ap.add_argument("--eval-batch", type=int, default=50, help="images per explainer call when scoring")
    ap.add_argument("--throughput-batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10); ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--grid-images", type=int, default=5)
    ap.add_argument("--synthetic-overrides", type=json.loads, default={}, help="SyntheticConfig fields over Table 1's "
                                                                               "stand-in (quick tests only)")
    ap.add_argument("--out", type=Path, default=ROOT / "paper_figures" / "explainers")
    ap.add_argument("--replot", action="store_true", help="rewrite table.md from --out/results.json, running nothing")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "explainers")
    a = ap.parse_args(argv)
    for k, v in PRESETS[a.dataset].items():
        if getattr(a, k) is None: setattr(a, k, v)
    if a.more_seeds is None: a.more_seeds = [1, 2] if a.dataset == "synthetic" else []
    if a.seed in a.more_seeds: ap.error(f"--more-seeds {a.more_seeds} repeats --seed {a.seed}")
    a.checkpoints = {}
    for c in a.checkpoint:
        label, sep, path = c.partition("=")
        if not sep or label not in MODELS: ap.error(f"--checkpoint {c!r}: expected LABEL=PATH with LABEL one of "
                                                    f"{list(MODELS)}")
        a.checkpoints[label] = Path(path)
    if a.checkpoints and a.more_seeds: ap.error("--checkpoint loads one model per label; pass --more-seeds without "
                                                f"seeds (not {a.more_seeds})")
    return a


def load_data(a):
    ("Training split (decoded into memory where it fits), the scored test split, the in-distribution one (or None), "
     "the recipe.")
    if a.dataset == "synthetic":   # Table 1's calibrated stand-in, its files drawn at 32 px, read at --size
        spec = get_experiment("table1", "smoke").data
        spec = replace(spec, size=a.size, synthetic={**spec.synthetic, **a.synthetic_overrides})
        splits = load_splits(spec, a.data_root or ROOT / "data")
        return decode(splits["train"], spec.recipe, a.size), splits["test"], splits["test_iid"], spec.recipe
    if a.data_root is None: sys.exit(f"--dataset {a.dataset} needs --data-root (the dataset's folder in its real "
                                     "layout)")
    recipe = recipe_for(a.dataset)
    train = get_dataset(a.dataset, a.data_root, "train", transform=train_transform(recipe, a.size))
    return train, get_dataset(a.dataset, a.data_root, "test", transform=eval_transform(recipe, a.size)), None, recipe


def get_models(a, train, test, test_iid=None, seed: int | None = None) -> tuple[dict, dict]:
    "Train (or resume, or load) every model from `seed` (--seed by default); returns label -> model and label -> facts."
    seed = a.seed if seed is None else seed
    settings = dict(
        dataset=a.dataset,
        backbone=a.backbone,
        backbone_kwargs=a.backbone_kwargs,
        size=a.size,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        weight_decay=a.weight_decay,
        seed=seed,
        n_train=len(train),
        synthetic=a.synthetic_overrides,
        **({"stand_in": "table1 smoke"} if a.dataset == "synthetic" else {}),
    )
    run_dir = a.runs / hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    models, facts = {}, {}
    for label, (arch, opts, puzzle) in MODELS.items():
        t0, train_info = time.perf_counter(), {}
        if label in a.checkpoints:
            ckpt = load_checkpoint(a.checkpoints[label])
            sig = {k: v for k, v in ckpt["signature"].items() if k != "shapes"}
            model = create_model(**sig)
            model.load_state_dict(ckpt["model"])
            source = f"checkpoint {a.checkpoints[label].name}"
        else:
            set_seed(seed)
            model = create_model(arch, a.backbone, train.num_classes, backbone_kwargs=a.backbone_kwargs, **opts)
            cfg = TrainConfig(
                epochs=a.epochs,
                batch_size=a.batch_size,
                lr=a.lr,
                weight_decay=a.weight_decay,
                momentum=0.9,
                milestones=(0.5, 0.75),
                puzzle=puzzle,
                seed=seed,
                deterministic=True,
                device=a.device,
                progress=False,
                channels_last=False,
            )
            fit(
                model,
                train,
                None,
                cfg,
                out_dir=run_dir / slug(label),
                resume=True,
                extra_config={"benchmark": settings},
            )
            source = "trained here"
            with open(run_dir / slug(label) / "history.csv") as f:   # the epochs' own times (also when resumed)
                rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
            train_info = {
                "train_seconds": sum(float(r["seconds"]) for r in rows),
                "train_acc_last_epoch": float(rows[-1]["acc"]),
            }
        model = model.to(a.device).eval()
        ev_cfg = TrainConfig(eval_batch_size=a.eval_batch, device=a.device, channels_last=False, progress=False)
        ev = evaluate(model, test, ev_cfg)
        iid = {} if test_iid is None else {"test_iid_acc": evaluate(model, test_iid, ev_cfg)["acc"]}
        facts[label] = {
            "source": source,
            "arch": model.config["arch"],
            "options": {k: model.config[k] for k in ("variant", "mechanism") if k in model.config},
            "puzzle": puzzle,
            "params": count_params(model),
            "test_acc": ev["acc"],
            **iid,
            **train_info,
        }
        print(
            f"{label}: {source}, test accuracy {ev['acc']:.1f}%"
            + (f" (in distribution {iid['test_iid_acc']:.1f}%)" if iid else "")
            + f" ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        models[label] = model
    return models, facts, run_dir


def localize(models: dict, test, a) -> tuple[dict, dict]:
    "Every explainer of LOCALIZE on the test split (GT-known): label -> summary, label -> per-image scores."
    scores, per_image = {}, {}
    for label, (m, name) in LOCALIZE.items():
        t0 = time.perf_counter()
        r = evaluate_explainer(
            make_explainer(name, models[m]), test, batch_size=a.eval_batch, targets="label", limit=a.limit
        )
        scores[label], per_image[label] = r["summary"], r["per_image"]
        s = r["summary"]
        print(f"{label}: GT-known {s['gt_known_loc']:.1f}%, MaxBoxAccV2 {s['max_box_acc_v2']:.1f}%, pointing "
              f"{s['pointing']:.1f}%, "
              f"energy {s['energy_pointing']:.1f}%, frac_attn_out {s['frac_attn_out']:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return scores, per_image


PAIRED = ("max_box_acc_v2", "gt_known_loc", "pointing")   # the scores whose lead over CAM is tabled over seeds


def paired_over_seeds(by_seed: dict) -> dict:
    "Per explainer and score: each seed's difference to CAM (Base), their mean, 95% interval, MDE and verdict."
    out = {}
    for label in LOCALIZE:
        if label == "CAM (Base)": continue
        out[label] = {}
        for key in PAIRED:
            d = [s[label][key] - s["CAM (Base)"][key] for s in by_seed.values()]
            p = paired(None, d)   # msabn_report's one verdict rule; "above 0": ahead of CAM
            out[label][key] = {"diffs": d, "mean": p.mean, "std": p.std, "lo": p.lo, "hi": p.hi, "mde": p.mde,
                               "verdict": p.verdict}
    return out


def bootstrap(per: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    "95% percentile intervals over images (resampled with replacement) of the dataset-level scores."
    rng = np.random.default_rng(seed)
    n = len(per["box_iou"])
    idx = rng.integers(0, n, (n_boot, n))
    out = {
        "frac_attn_out": per["frac_attn_out"][idx].mean(1),
        "gt_known_loc": 100 * (per["box_iou"][idx] >= 0.5).mean(1),
        "pointing": 100 * per["pointing"][idx].mean(1),
        "pointing_15px": 100 * per["pointing_15px"][idx].mean(1),
        "energy_pointing": 100 * per["energy_pointing"][idx].mean(1),
    }
    hits = per["box_hits"].astype(np.float32)                       # images x thresholds x deltas
    out["max_box_acc_v2"] = np.array([100 * hits[i].mean(0).max(0).mean() for i in idx[:200]])
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in out.items()}


def throughput(explainers: dict, x: torch.Tensor, rounds: int, warmup: int) -> dict:
    "Median seconds per call of every explainer on the same batch, timed round-robin."
    times = {k: [] for k in explainers}
    for r in range(warmup + rounds):
        for k, ex in explainers.items():
            t0 = time.perf_counter()
            e = ex(x)
            _ = e.maps.sum().item()   # the maps exist (no lazy work left)
            if r >= warmup: times[k].append(time.perf_counter() - t0)
    return {
        k: {"median_s": statistics.median(v), "images_per_s": len(x) / statistics.median(v), "times_s": v}
        for k, v in times.items()
    }


SHORT = {
    "CAM (Base)": "CAM",
    "ABN": "ABN",
    "MSABN": "MSABN",
    "MSABN (efficient)": "MSABN eff.",
    "Puzzle-MSABN": "Puzzle-\nMSABN",
    "Grad-CAM (Base)": "Grad-CAM",
    "Grad-CAM++ (Base)": "Grad-\nCAM++",
    "Eigen-CAM (Base)": "Eigen-CAM",
    "Score-CAM (Base)": "Score-CAM",
}


def grid(models, test, recipe, n: int, path: Path):
    "Test images in rows; the input and every explainer's map (true class) side by side, with the object box."
    import matplotlib.pyplot as plt

    from msabn.explain import denormalize, draw_box, overlay_attention
    b = collate([test[i] for i in range(min(n, len(test)))])
    imgs, H = denormalize(b["image"], recipe), b["image"].shape[-2]
    cols = [("input", None)] + [
        (label, make_explainer(name, models[m])(b["image"], b["label"]))
        for label, (m, name) in LOCALIZE.items()
        if name != "centre"
    ]
    cols = [(label, e if e is None else e._replace(maps=e.maps.cpu())) for label, e in cols]
    fig, axes = plt.subplots(
        len(imgs), len(cols), figsize=(0.8 * len(cols), 0.8 * len(imgs) + 0.45), dpi=72, squeeze=False
    )
    for c, (label, e) in enumerate(cols):
        for r in range(len(imgs)):
            ax = axes[r, c]; ax.axis("off")
            ax.imshow(
                imgs[r].permute(1, 2, 0).numpy() if e is None else overlay_attention(imgs[r], e.maps[r]),
                interpolation="nearest",
            )
            draw_box(ax, b["box"][r], lw=0.8)
        axes[0, c].set_title("input" if e is None else f"{SHORT[label]}\nH/{H // e.native_size[0]}", fontsize=7)
    fig.tight_layout(pad=0.15)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=72)
    plt.close(fig)
    buf.seek(0)   # a 256-colour palette keeps the committed picture small (about a quarter of the RGB file)
    PIL.Image.open(buf).convert("RGB").quantize(256, method=PIL.Image.Quantize.MEDIANCUT).save(path, optimize=True)


def fmt(v, key):
    if key == "frac_attn_out": return f"{v:.3f}"
    if key == "constant_maps": return str(int(v))
    return f"{v:.1f}"


def _in_order(found: dict, order) -> list[str]:
    "The keys of `found` in the order the script defines them (results.json stores them sorted), then any others."
    return [k for k in order if k in found] + [k for k in found if k not in order]


def seeds_section(res: dict) -> list[str]:
    ("The scores on every seed's models and each map's lead over CAM as a paired difference over seeds (lines of "
     "table.md).")
    leads, seeds = res.get("paired_over_seeds"), res.get("seeds", {})
    if not leads: return []
    names = {"max_box_acc_v2": "MaxBoxAccV2", "gt_known_loc": "GT-known loc", "pointing": "pointing"}
    per = lambda f: " / ".join(f(v) for v in seeds.values())
    lines = [
        "",
        f"The same models trained from seeds {', '.join(seeds)} and scored the same way (values in seed "
        "order), and each "
        f"explainer's score minus CAM (Base)'s on the same seed's models: the mean and its 95% interval over the "
        f"{len(seeds)} seeds, and msabn_report's verdict (*above 0*: ahead of CAM; *smaller than X*: a lead or "
        "lag of X "
        "points or more is ruled out; *undecided*: neither):",
        "",
        "| explainer | "
        + " | ".join(f"{names[k]} per seed (%)" for k in PAIRED)
        + " | "
        + " | ".join(f"{names[k]} - CAM" for k in PAIRED)
        + " |",
        "|---|" + "---|" * (2 * len(PAIRED)),
    ]
    for label in LOCALIZE:
        cells = [per(lambda v, k=k, label=label: f"{v['scores'][label][k]:.1f}") for k in PAIRED]
        if label in leads:   # recomputed from the per-seed differences: one rule, whichever version wrote results.json
            ps = [paired(None, leads[label][k]["diffs"]) for k in PAIRED]
            cells += [f"{fmt_interval(p.mean, p.lo, p.hi)}: {p.verdict}" for p in ps]
        else: cells += ["-"] * len(PAIRED)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | test accuracy per seed (%) | in-distribution test accuracy per seed (%) |",
        "|---|---|---|",
    ]
    for m in _in_order(res["models"], MODELS):
        acc = lambda k, m=m: per(lambda v: f"{v['models'][m][k]:.1f}" if k in v["models"][m] else "-")
        lines.append(f"| {m} | {acc('test_acc')} | {acc('test_iid_acc')} |")
    return lines


def table(res: dict) -> str:
    lines = [f"Localisation on the {res['data']['name']} test split ({res['scores']['CAM (Base)']['n']} images, "
             f"{res['settings']['size']} px, "
             "GT-known: maps of the true class); accuracy is the explained model's. Higher is better except "
             "frac_attn_out.", "",
             "| explainer | map | " + " | ".join(h for _, h in SCORES) + " |", "|---|---|" + "---|" * len(SCORES)]
    for label, s in ((k, res["scores"][k]) for k in _in_order(res["scores"], LOCALIZE)):
        ci = res["intervals_95"][label]
        cell = lambda k, s=s, ci=ci: (
            fmt(s[k], k)
            + (f" [{fmt(ci[k][0], k)}, {fmt(ci[k][1], k)}]" if k in ("gt_known_loc", "max_box_acc_v2") else "")
        )
        lines.append(f"| {label} | {res['native'][label]} | " + " | ".join(cell(k) for k, _ in SCORES) + " |")
    lines += ["", "In brackets: 95% bootstrap intervals over test images (results.json has them for every score).", "",
              "The models "
              f"({' '.join(str(v) for v in (res['settings']['backbone'], res['settings']['backbone_kwargs']) if v)}, "
              f"{res['settings']['size']} px, "
              f"{res['settings']['epochs']} epochs at batch {res['settings']['batch_size']}, seed "
              f"{res['settings']['seed']}):", "",
              "| model | parameters | training (s) | train accuracy, last epoch (%) | in-distribution test accuracy "
              "(%) | test accuracy (%) | prediction = habitat's class (%) |",
              "|---|---|---|---|---|---|---|"]
    for m, f in ((k, res["models"][k]) for k in _in_order(res["models"], MODELS)):
        val = lambda k, spec, f=f: format(f[k], spec) if k in f else "-"
        lines.append(f"| {m} | {f['params']:,} | {val('train_seconds', '.0f')} | {val('train_acc_last_epoch', '.1f')} "
                     f"| {val('test_iid_acc', '.1f')} | {f['test_acc']:.1f} | "
                     f"{val('pred_is_habitat_class', '.1f')} |")
    lines += seeds_section(res)
    tp = res["throughput"]
    machine = ""
    if tp.get("machine_figure_img_s") is not None:
        line = machine_figure_line(tp["machine_figure_img_s"], tp["threads"])
        machine = "; " + line.replace("machine figure: ", "machine figure (") + ")"
    lines += ["", f"Explanation throughput (images/s, forward pass included; batch {tp['batch']}, {tp['device']}, "
                  f"{tp['threads']} thread(s), "
              f"median of {tp['rounds']} round-robin rounds{machine}) and the cost of Grad-CAM relative to the "
              "intrinsic map on the same model:", "",
              "| model | intrinsic map (img/s) | Grad-CAM on the same model (img/s) | Grad-CAM time / intrinsic time: "
              "median (range) of the rounds |",
              "|---|---|---|---|"]
    for m, r in ((k, tp["same_model"][k]) for k in _in_order(tp["same_model"], MODELS)):
        lo, hi = r["ratio_range"]
        lines.append(f"| {m} | {r['intrinsic_images_per_s']:.0f} | {r['gradcam_images_per_s']:.0f} | {r['ratio']:.1f}x "
                     f"({lo:.1f}-{hi:.1f}) |")
    lines += ["", "Post-hoc explainers on the Base model, same batch and rounds:", "", "| explainer | img/s | time / "
                                                                                       "CAM time |", "|---|---|---|"]
    cam = tp["per_explainer"]["CAM (Base)"]["median_s"]
    for k in ("CAM (Base)", "Grad-CAM (Base)", "Grad-CAM++ (Base)", "Eigen-CAM (Base)", "Score-CAM (Base)"):
        r = tp["per_explainer"][k]
        lines.append(f"| {k} | {r['images_per_s']:.1f} | {r['median_s'] / cam:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    a = parse(argv)
    if a.replot:   # the table again from the committed results, with today's verdict rule
        res = json.loads((a.out / "results.json").read_text())
        (a.out / "table.md").write_text(table(res))
        print(f"wrote {a.out / 'table.md'} from {a.out / 'results.json'}")
        return res
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        # NumPy's BLAS too (Eigen-CAM's SVD): oversubscribed threads measure the neighbours
        with threadpool_limits(a.threads):
            return run(a)
    finally:   # leave the calling process as it was (tests import this script)
        torch.set_num_threads(before[0]); cv2.setNumThreads(before[1])


def run(a) -> dict:
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    # the figure beside every time below (DESIGN.md, "Measuring")
    fig = machine_figure() if a.device == "cpu" else None
    if fig is not None: print(machine_figure_line(fig, a.threads), flush=True)
    t_start = time.perf_counter()
    train, test, test_iid, recipe = load_data(a)
    print(f"data: {a.dataset}, {len(train)} training and {len(test)} test images, {train.num_classes} classes, "
          f"{a.size} px", flush=True)
    models, facts, run_dir = get_models(a, train, test, test_iid)

    scores, per_image = localize(models, test, a)
    intervals = {label: bootstrap(per_image[label], seed=a.seed) for label in LOCALIZE}
    native = {}
    habitats = getattr(test, "habitats", None)
    # the embedded benchmark: how often a model's prediction is the class of the image's habitat
    if habitats is not None:
        intrinsic = {m: label for label, (m, name) in LOCALIZE.items() if name in ("cam", "attention")}
        for m, label in intrinsic.items():
            p = per_image[label]
            facts[m]["pred_is_habitat_class"] = 100 * float((p["pred"] == habitats[p["index"]].numpy()).mean())
            print(
                f"{m}: prediction = the habitat's class on {facts[m]['pred_is_habitat_class']:.1f}% of test images",
                flush=True,
            )
    x = collate([test[i] for i in range(min(a.throughput_batch, len(test)))])["image"].to(a.device)
    for label, (m, name) in LOCALIZE.items():
        native[label] = (
            "-" if name == "centre" else "x".join(str(v) for v in make_explainer(name, models[m])(x[:1]).native_size)
        )

    # each model's intrinsic map and Grad-CAM on the same model are timed one right after the other in every round,
    # so the per-round ratio compares them under the same load; the other post-hoc explainers follow
    pairs = {
        "Base": "CAM (Base)",
        "ABN": "ABN",
        "MSABN": "MSABN",
        "MSABN (efficient)": "MSABN (efficient)",
        "Puzzle-MSABN": "Puzzle-MSABN",
    }
    timed = {}
    for m, intrinsic in pairs.items():
        timed[intrinsic] = make_explainer(LOCALIZE[intrinsic][1], models[m])
        timed["Grad-CAM (Base)" if m == "Base" else f"Grad-CAM ({m})"] = create_explainer("gradcam", models[m])
    for label in ("Grad-CAM++ (Base)", "Eigen-CAM (Base)", "Score-CAM (Base)"):
        timed[label] = make_explainer(LOCALIZE[label][1], models["Base"])
    tp = throughput(timed, x, a.rounds, a.warmup)
    same = {}
    for m, intrinsic in pairs.items():
        g, i = tp["Grad-CAM (Base)" if m == "Base" else f"Grad-CAM ({m})"], tp[intrinsic]
        per_round = [tg / ti for tg, ti in zip(g["times_s"], i["times_s"], strict=True)]
        same[m] = {
            "intrinsic": intrinsic,
            "intrinsic_images_per_s": i["images_per_s"],
            "gradcam_images_per_s": g["images_per_s"],
            "ratio": statistics.median(per_round),
            "ratio_range": [min(per_round), max(per_round)],
        }
        print(f"throughput {m}: intrinsic {i['images_per_s']:.0f} img/s, Grad-CAM {g['images_per_s']:.0f} img/s, "
              f"ratio {same[m]['ratio']:.1f}x (rounds: {min(per_round):.1f}-{max(per_round):.1f})", flush=True)

    accuracies = lambda f: {m: {k: v[k] for k in ("test_acc", "test_iid_acc") if k in v} for m, v in f.items()}
    seeds = {a.seed: {"models": accuracies(facts), "scores": scores}}
    for seed in a.more_seeds:   # the same models from other seeds, scored the same way (not timed, not shown)
        print(f"seed {seed}:", flush=True)
        more, more_facts, _ = get_models(a, train, test, test_iid, seed=seed)
        seeds[seed] = {"models": accuracies(more_facts), "scores": localize(more, test, a)[0]}
    leads = paired_over_seeds({k: v["scores"] for k, v in seeds.items()}) if len(seeds) > 1 else None

    a.out.mkdir(parents=True, exist_ok=True)
    grid(models, test, recipe, a.grid_images, a.out / "grid.png")
    res = {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(a).items()
            if k not in ("out", "runs", "data_root", "checkpoint", "checkpoints")
        },
        "data": {
            "name": "embedded CIFAR-like stand-in of Table 1 (shifted test)" if a.dataset == "synthetic" else a.dataset,
            "train": len(train),
            "test": len(test),
            "classes": train.num_classes,
            "recipe": recipe,
        },
        "models": facts,
        "native": native,
        "scores": scores,
        "intervals_95": intervals,
        "throughput": {
            "batch": len(x),
            "rounds": a.rounds,
            "warmup": a.warmup,
            "threads": torch.get_num_threads(),
            "device": a.device,
            "machine_figure_img_s": fig,
            "per_explainer": tp,
            "same_model": same,
        },
        "seeds": {str(k): v for k, v in seeds.items()},
        "paired_over_seeds": leads,
        "per_image_file": "runs/explainers/<settings>/per_image.npz (not committed)",
        "seconds": time.perf_counter() - t_start,
        "provenance": provenance(a.device),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        run_dir / "per_image.npz", **{f"{slug(l)}/{k}": v for l, p in per_image.items() for k, v in p.items()}
    )
    (a.out / "table.md").write_text(table(res))
    save_json(res, a.out / "results.json")
    print(f"wrote {a.out / 'table.md'}, {a.out / 'grid.png'}, {a.out / 'results.json'} and {run_dir / 'per_image.npz'} "
          f"({res['seconds']:.0f} s in all)")
    return res


if __name__ == "__main__":
    main()
