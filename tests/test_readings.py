"""Where the paper is silent or ambiguous: frac_attn_out's two readings, Figs. 8/9's "best performing model" on a
validation split held out of the training images, the committed smoke results kept valid, and the --set keys."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from msabn.core import load_json
from msabn.experiments import (
    cell_folder,
    experiment_folder,
    get_experiment,
    load_splits,
    run_copy_replace,
    run_table,
    with_overrides,
)
from msabn.experiments.tables import cell_fingerprint
from msabn.explain import frac_attn_out

ROOT = Path(__file__).resolve().parents[1]


def _half_box_maps(background: float, obj: float, dip: float | None = None) -> torch.Tensor:
    "An 8 x 8 attention map whose object fills the left half; `dip` puts one background pixel lower."
    m = torch.full((1, 1, 8, 8), background)
    m[..., :, :4] = obj
    if dip is not None: m[0, 0, 5, 6] = dip
    return m


@pytest.mark.parametrize("background, obj, dip, paper, normalized", [
    (0.45, 0.60, None, 0.500, 0.000),   # every pixel counts as it is; normalised, the background is the minimum
    (0.25, 0.90, 0.10, 0.492, 0.000),   # 31 of 63 attention pixels outside; normalised the background is 0.19 < 0.2
])
def test_frac_attn_out_reads_the_map_as_the_paper_states_it_and_normalises_on_request(background, obj, dip, paper,
                                                                                      normalized):
    m, box = _half_box_maps(background, obj, dip), torch.tensor([[0., 0., 4., 8.]])
    assert round(frac_attn_out(m, box).item(), 3) == paper
    assert round(frac_attn_out(m, box, normalize=True).item(), 3) == normalized


def test_the_committed_smoke_results_keep_their_fingerprints():
    "Every cell of paper_figures/smoke_seeds-0-1-2 is still what the smoke preset trains: its results stay valid."
    res = load_json(ROOT / "paper_figures" / "smoke_seeds-0-1-2" / "results.json")
    checked = 0
    for run in res["runs"]:
        if run["kind"] != "table": continue
        exp = get_experiment(run["experiment"], "smoke")
        for c in run["cells"]:
            column = next(x for x in exp.columns if x.paper == c["column"])
            row = next(x for x in exp.rows if x.name == c["row"])
            fp = cell_fingerprint(exp, column, row, run["seed"])
            assert fp == c["fingerprint"], (run["experiment"], c["row"], run["seed"])
            checked += 1
    assert checked == 60   # Tables 1-5 at three seeds: 4, 3, 3, 5 and 5 rows of one backbone each


def test_the_best_source_model_never_trains_on_its_validation_images_and_the_choice_is_recorded(tmp_path, monkeypatch):
    import msabn.train.engine as engine
    batches, real = [], engine._batches
    def spy(data, b, cfg, device, train=False):
        batches.append((getattr(data, "dataset", data), train))
        return real(data, b, cfg, device, train=train)
    monkeypatch.setattr(engine, "_batches", spy)
    ov = {"source_model": "best", "rows": "MSABN"}
    t4 = with_overrides(get_experiment("table4", "tiny"), ov)
    run_table(t4, 0, tmp_path / "runs", tmp_path / "data", device="cpu", log=lambda s: None)
    splits = load_splits(t4.data, tmp_path / "data", decoded=True)
    train, valid = splits["train"], splits["valid"]
    full = load_splits(get_experiment("table4", "tiny").data, tmp_path / "data", decoded=True)["train"]
    px = lambda d: [bytes(x.numpy()) for x in d.images]
    assert (len(train), len(valid)) == (29, 3) and not set(px(train)) & set(px(valid))    # 10% of 32, per class
    assert sorted(px(train) + px(valid)) == sorted(px(full))
    trained = [d for d, is_train in batches if is_train]
    evaluated = [d for d, is_train in batches if not is_train]
    assert trained and all(d.split == "train" and px(d) == px(train) for d in trained)
    assert any(d.split == "valid" for d in evaluated)                                  # the best epoch is chosen on it

    cell = cell_folder(experiment_folder(tmp_path / "runs", t4, 0), "resnet20", "MSABN")
    cfg = load_json(cell / "config.json")
    assert cfg["train"]["keep_best"] and cfg["data"]["valid"] == 3 and cfg["data"]["valid_split"] == "valid"
    assert (cfg["validation"]["fraction"], cfg["validation"]["seed"], cfg["validation"]["of"]) == (0.1, 0, 32)
    assert (cell / "best.pt").is_file() and load_json(cell / "done.json")["best_epoch"] == 1

    fig = replace(with_overrides(get_experiment("fig8_9", "tiny"), ov), sources={"table4": "Fig. 8"})
    m = run_copy_replace(fig, 0, tmp_path / "runs", tmp_path / "data", device="cpu", log=lambda s: None)
    curve = m["curves"][0]["curve"]
    assert {k: curve["source"][k] for k in ("source_model", "checkpoint", "epoch")} == \
           {"source_model": "best", "checkpoint": "best.pt", "epoch": 1} and 0 <= curve["source"]["valid_acc"] <= 100
    assert curve["n_scored"] == len(train) and curve["config"]["frac_reading"] == "paper"     # training images only
    run_cfg = json.loads((experiment_folder(tmp_path / "runs", fig, 0) / "config.json").read_text())
    assert run_cfg["experiment"]["source_model"] == "best" and run_cfg["overrides"]["source_model"] == "best"


def test_a_best_source_without_a_held_out_split_is_refused_before_anything_trains(tmp_path):
    with pytest.raises(ValueError, match="holds none out of its training images"):
        with_overrides(get_experiment("fig8_9", "paper"), {"valid_fraction": 0})
    fig = replace(get_experiment("fig8_9", "tiny"), source_model="best")
    with pytest.raises(ValueError, match="holds none out"):
        with_overrides(fig, {"finetune_epochs": 1})
