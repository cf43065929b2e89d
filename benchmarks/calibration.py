#!/usr/bin/env python
"""The embedded benchmark's calibration, on the baseline alone (DESIGN.md, "Measuring", step 1).

    python benchmarks/calibration.py                      # both stand-ins, seeds 0 1 2 -> paper_figures/calibration/
    python benchmarks/calibration.py --tables table1 --seeds 0
    python benchmarks/calibration.py --tables table1 --seeds 0 1 2 3 4 --modes Base "Base (other init)" \
        --vary spurious=0.9 epochs=8 n_test=3000        # a variation of the frozen smoke settings (Base only)

For the CIFAR-like stand-in (Table 1's smoke data) and the fine-grained one (Table 4's), exactly as the smoke preset
makes, decodes and trains them (same backbone, recipe, sizes and seeds), it trains per seed:
- Base: the smoke preset's Base cell;
- Base (other init): the same, with another weight initialisation (same data order and augmentation): the pair
  (Base, Base other init) measures the seed-to-seed spread of a paired model difference;
- habitat probe: Base trained and tested on images whose object box is blanked (filled with mid-grey): what the
  habitat alone gives (about `spurious` in distribution, chance on the shifted test);
- object oracle: Base trained and tested on the object's crop (its box, resized to the input size): whether the
  class-deciding details are learnable at the network's input size.
(the probe and the oracle need the splits decoded in memory: Tables 1, 4 and 5; Tables 2 and 3, whose recipes
augment image by image, train Base and Base (other init) from the files, as their smoke tables do)
and prints one line per model and split (mean ± std over seeds), the calibration's targets beside them, and the
machine figure (bare Base ResNet-20 step at 32 px, batch 128). No ABN/MSABN model is trained here.
Writes --out/README.md (the table), results.json and records.jsonl (one line per run, as it finishes: a rerun
skips the runs recorded there, so an interrupted calibration continues).

`--vary KEY=VALUE ...` trains a variation of the frozen settings, for the next calibration step: any field of
msabn.data.synthetic.SyntheticConfig (`n_test` sets both test splits' sizes, `size` both the drawing's side and the
network's input side; a range as `scale=0.15,0.6`), the training recipe's `epochs`, `lr` and `batch_size`, and
`backbone`. Its runs are recorded with the variation and tabled apart from the frozen settings' ones.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from msabn.core import load_json, save_json, set_seed
from msabn.data import BATCHED_RECIPES, MemoryImages, SyntheticConfig
from msabn.experiments import get_experiment, load_splits
from msabn.models import create_model
from msabn.train import evaluate, fit, machine_figure, machine_figure_line

SPLITS = ("test_iid", "test")
OTHER_INIT = 1000  # the other initialisation's seed offset


def _like(d: MemoryImages, images: torch.Tensor, boxes: torch.Tensor) -> MemoryImages:
    return MemoryImages(images, d.targets, d.classes, boxes, d.recipe, d.train, split=d.split, name=d.name)


def blanked(d: MemoryImages) -> MemoryImages:
    "The habitat probe's images: every object box filled with mid-grey."
    images = d.images.clone()
    for i, (x0, y0, x1, y1) in enumerate(d.boxes.floor().long().tolist()):
        images[i, :, y0:y1 + 1, x0:x1 + 1] = 128
    return _like(d, images, d.boxes)


def cropped(d: MemoryImages) -> MemoryImages:
    "The object oracle's images: each object's box, resized to the input size."
    S, out = d.size, torch.empty_like(d.images)
    for i, (x0, y0, x1, y1) in enumerate(d.boxes.round().long().tolist()):
        crop = d.images[i:i + 1, :, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].float()
        out[i] = F.interpolate(crop, size=(S, S), mode="bilinear", align_corners=False).round().clamp(0, 255).byte()[0]
    return _like(d, out, torch.tensor([[0.0, 0.0, S, S]]).repeat(len(out), 1))


MODES = {
    "Base": (None, 0),
    "Base (other init)": (None, OTHER_INIT),
    "habitat probe": (blanked, 0),
    "object oracle": (cropped, 0),
}


TRAIN_KEYS, SYNTHETIC_KEYS = ("epochs", "lr", "batch_size"), {f.name for f in fields(SyntheticConfig)}


def parse_vary(items: list[str]) -> dict:
    "KEY=VALUE strings as a dict of numbers (a comma makes a tuple); an unknown key is refused, naming the valid ones."
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in SYNTHETIC_KEYS | set(TRAIN_KEYS) | {"backbone"}:
            raise SystemExit(f"--vary {item!r}: expected KEY=VALUE with KEY one of backbone, {', '.join(TRAIN_KEYS)} "
                             f"or a SyntheticConfig field ({', '.join(sorted(SYNTHETIC_KEYS))})")
        num = lambda v, key=key: v if key == "backbone" else (int(v) if v.lstrip("-").isdigit() else float(v))
        out[key] = tuple(num(v) for v in value.split(",")) if "," in value else num(value)
    return out


def varied(exp, vary: dict):
    "The smoke experiment with a variation applied to its data and recipe (and its column's backbone)."
    syn = {k: v for k, v in vary.items() if k in SYNTHETIC_KEYS}
    if "n_test" in syn: syn["n_test_iid"] = syn["n_test"]
    column = replace(exp.columns[0], backbone=vary["backbone"]) if "backbone" in vary else exp.columns[0]
    data = replace(
        exp.data, synthetic={**exp.data.synthetic, **syn}, **({"size": syn["size"]} if "size" in syn else {})
    )
    return replace(exp, data=data, columns=(column,),
                   train=replace(exp.train, **{k: v for k, v in vary.items() if k in TRAIN_KEYS}))


def label(vary: dict) -> str:
    "A variation as the command line spells it ('' for the frozen settings)."
    return " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in vary.items())


def check_modes(table: str, modes: list[str]):
    "Refuse, before anything runs, a probe or oracle on a table whose smoke data are read image by image (Tables 2/3)."
    recipe = get_experiment(table, "smoke").data.recipe
    views = [m for m in modes if MODES[m][0]]
    if views and recipe not in BATCHED_RECIPES:
        raise SystemExit(f"{table}: its smoke data are read image by image (the {recipe!r} recipe has no batch-wise "
                         "augmentation), "
                         "so only the modes Base and 'Base (other init)' can train on it, not "
                         f"{', '.join(map(repr, views))}")


def run(
    table: str, seeds: list[int], data_root: Path, modes: list[str], log: Path, vary: dict | None = None
) -> list[dict]:
    exp = varied(get_experiment(table, "smoke"), vary or {})
    column, row = exp.columns[0], next(r for r in exp.rows if r.name == "Base")
    splits = load_splits(exp.data, data_root, decoded=True)
    views = any(MODES[m][0] for m in modes)
    assert not views or all(isinstance(v, MemoryImages) for v in splits.values()), ("check_modes lets views through on "
                                                                                    "decoded data only")
    var = label(vary or {})
    out, done = [], {(r["table"], r.get("vary", ""), r["mode"], r["seed"]) for r in _records(log)}
    for mode in modes:
        view, init = MODES[mode]
        data = {k: view(v) if view else v for k, v in splits.items()}
        for seed in seeds:
            if (table, var, mode, seed) in done: continue
            cfg = exp.train_config(column, row, seed, device="cpu")
            set_seed(seed + init)
            model = create_model(row.arch, column.backbone, data["train"].num_classes, **row.model_kwargs())
            t = time.perf_counter()
            fit(model, data["train"], None, cfg)
            seconds = time.perf_counter() - t
            acc = {s: evaluate(model, data[s], replace(cfg, progress=False))["acc"] for s in SPLITS}
            rec = {
                "table": table,
                "stands_for": exp.data.stands_for,
                **({"vary": var} if var else {}),
                "mode": mode,
                "seed": seed,
                **acc,
                "train_seconds": round(seconds, 1),
                "image_steps": len(data["train"]) * cfg.epochs,
            }
            print(json.dumps(rec), flush=True)
            with log.open("a") as f: f.write(json.dumps(rec) + "\n")
            out.append(rec)
    return out


def _records(log: Path) -> list[dict]:
    "The runs recorded so far (one JSON line each): a rerun skips them, so an interrupted calibration continues."
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def summary(records: list[dict], vary: bool = False) -> list[str]:
    """One markdown line per (stand-in, model): mean ± std over seeds of each split, and the paired Base difference;
    the frozen settings' runs, or (`vary`) the variations', one group per variation."""
    def ms(v): return f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"
    records = [r for r in records if bool(r.get("vary")) == vary]
    lead = "| variation " if vary else ""
    lines = [
        f"{lead}| stand-in | model | n | test_iid | shifted test | iid - shifted |",
        "| --- " * (7 if vary else 6) + "|",
    ]
    for table, var in dict.fromkeys((r["table"], r.get("vary", "")) for r in records):
        rs = [r for r in records if (r["table"], r.get("vary", "")) == (table, var)]
        lead = f"| `{var}` " if vary else ""
        for mode in dict.fromkeys(r["mode"] for r in rs):
            m = [r for r in rs if r["mode"] == mode]
            lines.append(f"{lead}| {m[0]['stands_for']} ({table}) | {mode} | {len(m)} | "
                         f"{ms([r['test_iid'] for r in m])} | "
                         f"{ms([r['test'] for r in m])} | {ms([r['test_iid'] - r['test'] for r in m])} |")
        a = {r["seed"]: r for r in rs if r["mode"] == "Base"}
        b = {r["seed"]: r for r in rs if r["mode"] == "Base (other init)"}
        both = sorted(set(a) & set(b))
        if len(both) > 1:
            d = {s: [a[k][s] - b[k][s] for k in both] for s in SPLITS}
            lines.append(f"{lead}| {rs[0]['stands_for']} ({table}) | Base - Base (other init), paired | {len(both)} | "
                         f"{ms(d['test_iid'])} | {ms(d['test'])} | |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", nargs="+", default=["table1", "table4"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vary", nargs="+", default=[], metavar="KEY=VALUE", help="a variation of the frozen settings (see "
                                                                              "above)")
    p.add_argument("--out", default="paper_figures/calibration")
    a = p.parse_args()
    vary = parse_vary(a.vary)
    for t in a.tables: check_modes(t, a.modes)
    torch.set_num_threads(a.threads)
    fig = machine_figure()
    print(machine_figure_line(fig, a.threads), flush=True)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    log = out / "records.jsonl"
    with tempfile.TemporaryDirectory() as d:
        for t in a.tables: run(t, a.seeds, Path(d), a.modes, log, vary)
    records = _records(log)
    lines, variations = summary(records), summary(records, vary=True)
    print("\n".join(variations if vary else lines))
    res = out / "results.json"
    machines = load_json(res).get("machine_img_per_s_by_run", []) if res.exists() else []
    machines.append({"vary": label(vary), "machine_img_per_s": round(fig)})
    save_json(
        {
            "machine_img_per_s": round(fig),
            "machine_img_per_s_by_run": machines,
            "threads": a.threads,
            "records": records,
        },
        res,
    )
    (out / "README.md").write_text(page(lines, variations))


def page(lines: list[str], variations: list[str]) -> str:
    "The folder's page: what was trained, the frozen settings' table, the variations' table, and where the protocol is."
    text = ("# Calibration of the embedded benchmark\n\nThe Base model alone, trained as the smoke preset trains it, "
            "and its "
            "companions (another initialisation, the habitat-only probe, the object oracle); mean ± std over seeds, "
            "accuracy in %. "
            "Made by `python benchmarks/calibration.py`; the machine figure of each invocation (the bare Base "
            "ResNet-20 train step "
            "at 32 px, batch 128) is in results.json, and moves times, not accuracies. The protocol, the targets and "
            "what the "
            "tables mean: the synthetic page (`nbs/api/data/03_synthetic.ipynb`, \"Calibration\"). Every run is a line "
            "of "
            "records.jsonl.\n\n## The frozen smoke settings\n\n" + "\n".join(lines) + "\n")
    if len(variations) > 2:
        text += (
            "\n## Variations of them (Base only, for the next calibration step; not frozen)\n\n"
            "Each made by `python benchmarks/calibration.py --tables TABLE --seeds 0 1 2 3 4 --modes Base "
            "\"Base (other init)\" --vary ...`, TABLE the stand-in's table, with the variation shown. Table 4's "
            "runs from before "
            "its stand-in was frozen at 64 px spell their settings out in full (backbone, size, n_train, epochs, "
            "n_test, lr, "
            "spurious), so that they stay what they were whatever the frozen settings are.\n\n"
            + "\n".join(variations)
            + "\n"
        )
    return text


if __name__ == "__main__":
    main()
