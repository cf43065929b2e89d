"""Overrides (msabn_run --set, papermill's `overrides`), the fast dev run on the real-format fixtures, and the user's
own data."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT

from msabn.core import load_json
from msabn.data import (
    write_cars_fixture,
    write_cifar100_fixture,
    write_cub_fixture,
    write_diagset_fixture,
    write_imagenet_fixture,
)
from msabn.experiments import (
    BY_KEY,
    TEMPLATES,
    cell_folder,
    experiment_folder,
    fingerprint,
    get_experiment,
    main,
    preset_folder,
    run_experiment,
    run_table,
    with_overrides,
)
from msabn.report import main as report_main


def _fixtures(root: Path) -> Path:
    "Every paper dataset in its real on-disk format, a few images each, under one data root."
    write_cub_fixture(root / "cub"); write_cars_fixture(root / "cars"); write_cifar100_fixture(root / "cifar100")
    write_imagenet_fixture(root / "imagenet"); write_diagset_fixture(root / "diagset")
    return root


def test_an_override_changes_the_trained_config_and_the_fingerprint(tmp_path):
    base = get_experiment("table1", "tiny")
    exp = with_overrides(base, {"epochs": 2, "rows": "Base", "lr": 0.05})
    assert fingerprint(exp, 0) != fingerprint(base, 0)
    assert fingerprint(with_overrides(base, {"epochs": 3}), 0) != fingerprint(exp, 0)
    assert experiment_folder(tmp_path, exp, 0) != experiment_folder(tmp_path, base, 0)   # never the preset's folder
    run_table(exp, 0, tmp_path / "runs", tmp_path / "data", log=lambda s: None)
    folder = experiment_folder(tmp_path / "runs", exp, 0)
    assert folder.parent.parent.name == preset_folder(exp) and preset_folder(exp).startswith("tiny+")
    cfg = load_json(cell_folder(folder, "resnet20", "Base") / "config.json")
    assert (cfg["train"]["epochs"], cfg["train"]["lr"]) == (2, 0.05)
    run = load_json(folder / "config.json")
    assert (
        run["overrides"] == {"epochs": "2", "lr": "0.05", "rows": "Base"}
        and run["label"] == "preset tiny, modified: epochs=2, lr=0.05, rows=Base"
    )
    assert load_json(folder / "metrics.json")["fingerprint"] == fingerprint(exp, 0) and not run["dry_run"]
    assert not (tmp_path / "runs" / "tiny").exists()


@pytest.mark.parametrize("sets, says", [
    (["epoch=60"], "unknown override 'epoch'; valid keys: epochs, batch_size, lr, size, backbones, rows"),
    (["epochs=0"], "epochs='0': expected a whole number >= 1"),
    (["dataset=mnist"], "expected one of cifar100, imagenet, diagset, cub, cars"),
    (["rows=Puzzle"], "'Puzzle' is in no table; table4's rows: Base, ABN, MSABN, MSABN+Puzzle"),
    (["size=30"], "size=30: below the total stride 32 of resnet50"),
    (["rows=ABN", "backbones=efficientnet_b3"], "ABN is trained on none of EfficientNet-B3"),
    (["lambdas=0.5"], "override lambdas changes none of table4"),
])
def test_bad_overrides_are_refused_before_anything_trains(sets, says, tmp_path, capsys):
    data = _fixtures(tmp_path / "data")
    argv = ["table4", "--preset", "paper", "--data-root", str(data), "--runs-dir", str(tmp_path / "runs")]
    assert main(argv + [x for s in sets for x in ("--set", s)]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_figures_need_boxes_and_the_row_they_fine_tune(tmp_path, capsys):
    argv = [
        "fig8_9",
        "--preset",
        "paper",
        "--data-root",
        str(_fixtures(tmp_path / "data")),
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    assert main(argv + ["--set", "dataset=imagenet", "--set", "data=imagenet"]) == 2
    assert "fig8_9 needs an object box per image, but table4 would read imagenet" in capsys.readouterr().err
    assert main(argv + ["--set", "rows=Base"]) == 2
    assert "expected rows to include MSABN" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# the cost of the fast dev run below on 2 CPU cores: the real models, loaders and pipeline, one cell per table and model
# kind
CHEAP = [
    "--set",
    "size=64",
    "--set",
    "backbones=resnet20,efficientnet_b1,efficientnet_b3",
    "--set",
    "rows=Base,MSABN g·(1+A),MSABN",
    "--set",
    "finetune_seeds=0",
    "--set",
    "lambdas=0.5",
    "--set",
    "verify=false",
    "--threads",
    "1",
]


def test_fast_dev_run_of_every_template_on_the_fixtures_is_labelled_a_dry_run(tmp_path, capsys):
    data, runs, out = _fixtures(tmp_path / "data"), tmp_path / "runs", tmp_path / "paper_figures"
    t0 = time.perf_counter()
    assert (
        main(
            [
                "all",
                "--preset",
                "paper",
                "--fast-dev-run",
                "1",
                "--data-root",
                str(data),
                "--runs-dir",
                str(runs),
                "--seeds",
                "0",
            ]
            + CHEAP
        )
        == 0
    )
    said = capsys.readouterr().out
    assert "msabn_run: 7 run(s) done" in said and "DRY RUN: a few batches per run" in said, said
    (var,) = [p.name for p in runs.iterdir() if p.is_dir()]
    assert (
        f"the 7 run folders are in {runs / var}/; report: msabn_report --preset {var} --seeds 0 --runs-dir {runs}"
        in said
    )
    (var,) = [p.name for p in runs.iterdir() if p.is_dir()]
    assert var.startswith("paper+dry-"), var
    for name, template in TEMPLATES.items():
        folder = runs / var / name / "seed0"
        for f in ("config.json", "metrics.json"):
            rec = load_json(folder / f)
            assert rec["dry_run"] is True and rec["label"].startswith("DRY RUN"), (name, f)
        # every template, executed by papermill with its -p parameters: the one test that runs each through a kernel
        nb = nbformat.read(folder / f"{template}.ipynb", as_version=4)
        shows = ("print(", "display(", "Image(")
        showing = [c for c in nb.cells if c.cell_type == "code" and any(f in c.source for f in shows)]
        assert showing and all(c.get("outputs") for c in showing), f"{name}: an executed cell shows nothing"
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and 'preset = "paper"' in injected[0].source, f"{name}: no injected parameters"
        assert "overrides = {" in injected[0].source and "fast_dev_run" in injected[0].source, name
    cell = load_json(cell_folder(runs / var / "table4" / "seed0", "efficientnet_b3", "MSABN") / "config.json")
    assert cell["dry_run"] is True and cell["train"]["limit_train_batches"] == 1 and cell["train"]["epochs"] == 1
    # never the paper's
    assert report_main(["--preset", "paper", "--seeds", "0", "--runs-dir", str(runs), "--out", str(out)]) == 2
    assert "no complete runs of preset 'paper'" in capsys.readouterr().err
    assert report_main(["--preset", var, "--seeds", "0", "--runs-dir", str(runs), "--out", str(out)]) == 0
    page = out / f"{var}_seeds-0"
    assert (
        "DRY RUN" in (page / "README.md").read_text()
        and "their numbers are not results" in (page / "README.md").read_text()
    )
    for md in ("table1_cifar100.md", "table4_cub.md", "fig1_attention_maps.md", "fig8_9_copy_replace.md"):
        assert "DRY RUN" in (page / md).read_text(), md
    print(f"fast dev run of every template: {time.perf_counter() - t0:.0f} s")


def test_own_cub_layout_dataset_with_ten_classes(tmp_path, capsys):
    write_cub_fixture(tmp_path / "data" / "birds", num_classes=10, n_train=1, n_test=1)
    argv = [
        "table4",
        "--preset",
        "paper",
        "--data-root",
        str(tmp_path / "data"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--seeds",
        "0",
        "--set",
        "dataset=cub",
        "--set",
        "data=birds",
        "--fast-dev-run",
        "1",
        "--set",
        "batch_size=2",
        "--set",
        "size=64",
        "--set",
        "backbones=efficientnet_b3",
        "--set",
        "rows=Base",
        "--set",
        "valid_fraction=0",
        "--threads",
        "1",
    ]
    assert main(argv) == 0, capsys.readouterr()   # one image per class: none can be held out for choosing an epoch
    exp = with_overrides(
        get_experiment("table4", "paper"),
        {
            "dataset": "cub",
            "data": "birds",
            "fast_dev_run": 1,
            "batch_size": 2,
            "size": 64,
            "backbones": "efficientnet_b3",
            "rows": "Base",
            "valid_fraction": 0,
        },
    )
    m = load_json(experiment_folder(tmp_path / "runs", exp, 0) / "metrics.json")
    assert m["data"] == {"train": 10, "test": 10} and m["overrides"]["data"] == "birds"
    ck = load_json(cell_folder(experiment_folder(tmp_path / "runs", exp, 0), "efficientnet_b3", "Base") / "config.json")
    assert ck["model"]["num_classes"] == 10, ck["model"]


def test_own_cub_folder_without_boxes_trains_the_table_at_the_dry_run_batch(tmp_path, capsys):
    ("Tables train on a CUB-layout folder without bounding_boxes.txt (nothing they compute needs a box); a fast dev "
     "run caps the batch.")
    write_cub_fixture(tmp_path / "data" / "birds", num_classes=4, n_train=3, n_test=3, boxes=False)
    sets = [
        "--set",
        "dataset=cub",
        "--set",
        "data=birds",
        "--set",
        "size=64",
        "--set",
        "backbones=resnet50",
        "--set",
        "rows=Base",
    ]
    argv = [
        "table4",
        "--preset",
        "paper",
        "--data-root",
        str(tmp_path / "data"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--seeds",
        "0",
        "--fast-dev-run",
        "2",
        "--threads",
        "1",
    ] + sets
    assert main(argv) == 0, capsys.readouterr()
    said = capsys.readouterr().out
    # the [run] line
    assert "batch 16 -> 1 (a fast dev run's, to fit a laptop; --set batch_size=16 keeps the paper's)" in said, said
    exp = with_overrides(
        get_experiment("table4", "paper"),
        {"dataset": "cub", "data": "birds", "size": 64, "backbones": "resnet50", "rows": "Base", "fast_dev_run": 2},
    )
    folder = experiment_folder(tmp_path / "runs", exp, 0)
    run, m = load_json(folder / "config.json"), load_json(folder / "metrics.json")
    assert "batch 16 -> 1" in run["label"] and run["dry_run"]
    assert m["data"] == {"train": 11, "valid": 1, "test": 12}   # the paper preset holds a tenth out (for Figs. 8/9)
    for row in ("Base",):
        cell = load_json(cell_folder(folder, "resnet50", row) / "config.json")
        assert (cell["train"]["batch_size"], cell["train"]["eval_batch_size"], cell["model"]["num_classes"]) == (
            1,
            1,
            4,
        ), cell["train"]
    assert "frac_attn_out" not in (folder / "metrics.json").read_text(), "no box, no localisation number"
    assert (folder / "attention.png").is_file()


@pytest.mark.parametrize("name", ["fig1", "fig8_9"])
def test_figures_refuse_a_folder_without_boxes_before_anything_runs(name, tmp_path):
    write_cub_fixture(tmp_path / "data" / "birds", num_classes=10, n_train=1, n_test=1, boxes=False)
    with pytest.raises(ValueError, match=f"{name} needs an object box per image, but table4 would read "
                       f".*birds/CUB_200_2011, which has no bounding_boxes.txt"):
        run_experiment(name, "paper", runs_dir=tmp_path / "runs", data_root=tmp_path / "data", log=lambda s: None,
                       overrides={"dataset": "cub", "data": "birds", "fast_dev_run": 2})
    assert not (tmp_path / "runs").exists()


def test_a_fast_dev_run_scores_the_figures_attention_on_its_eval_batches_only(tmp_path):
    "Figs. 1/8/9 score attention on 2 evaluation batches (of 1: the dry run's batch), not on the whole split."
    kw = dict(
        preset="tiny",
        runs_dir=tmp_path / "runs",
        data_root=tmp_path / "data",
        log=lambda s: None,
        overrides={"fast_dev_run": 2},
    )
    for t in ("table4", "table5"): run_experiment(t, **kw)
    m1 = run_experiment("fig1", **kw)
    # of the 8 test images: 2 batches of 1
    assert m1["dry_run"] and {s["images"] for p in m1["panels"] for s in p["models"]} == {2}
    m89 = run_experiment("fig8_9", **kw)
    assert [(c["curve"]["n_scored"], c["curve"]["n_train"], c["curve"]["n_test"]) for c in m89["curves"]] == [
        (2, 32, 2)
    ] * 2


# --- papermill as the templates' own pages write it -----------------------------------------------------------
def _documented_papermill(template: Path) -> str:
    "The papermill command a template's first cell gives, character for character."
    head = nbformat.read(template, as_version=4).cells[0].source
    cmds = [ln.strip() for ln in head.splitlines() if ln.strip().startswith("papermill ")]
    assert len(cmds) == 1, f"{template.name}: expected one papermill command in its first cell, found {cmds}"
    return cmds[0]

def _papermill(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("IN_TEST", None)
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)

def test_the_documented_papermill_command_runs_as_written_and_writes_into_the_repository(tmp_path):
    ("papermill ... -p overrides '{...}' from the repository's folder; then the KEY=VALUE form from another folder: "
     "the same run folder.")
    template = ROOT / "nbs" / "experiments" / "table1_cifar100.ipynb"
    cmd = _documented_papermill(template)
    assert cmd.startswith("papermill nbs/experiments/table1_cifar100.ipynb out.ipynb -p preset tiny -p overrides '{"), (
        cmd
    )
    # a clone of the templates: the test writes nothing into the repository
    clone = tmp_path / "clone"
    (clone / "nbs" / "experiments").mkdir(parents=True)
    shutil.copy(template, clone / "nbs" / "experiments")
    r = _papermill(cmd, clone)
    assert r.returncode == 0, r.stderr[-3000:]
    out = nbformat.read(clone / "out.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs)
    folder = next(Path(ln.split(": ", 1)[1]) for ln in printed.splitlines() if ln.startswith("run folder: "))
    assert folder.parent.parent.parent == clone / "runs" and folder.parent.parent.name.startswith("tiny+"), folder
    assert load_json(folder / "metrics.json")["overrides"] == {"epochs": "1"}
    assert (clone / "data").is_dir() and not (clone / "nbs" / "experiments" / "runs").exists()
    # the KEY=VALUE form, started from the templates' folder as Jupyter would: the repository's folders again
    r = _papermill(
        "papermill table1_cifar100.ipynb again.ipynb -p preset tiny -p overrides 'epochs=1'",
        clone / "nbs" / "experiments",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    again = "".join(
        o.get("text", "")
        for c in nbformat.read(clone / "nbs" / "experiments" / "again.ipynb", as_version=4).cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert f"run folder: {folder}" in again
    # a string that is neither: one line in the notebook, no traceback
    r = _papermill(
        "papermill table1_cifar100.ipynb bad.ipynb -p preset tiny -p overrides 'epochs: 60'",
        clone / "nbs" / "experiments",
    )
    assert r.returncode != 0
    bad = nbformat.read(clone / "nbs" / "experiments" / "bad.ipynb", as_version=4)
    errors = [o for c in bad.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].traceback == [
        "OverrideError: overrides 'epochs: 60': expected a JSON object such as '{\"epochs\": 60}' or KEY=VALUE pairs "
        "such as "
        "'epochs=60,size=224'; valid keys: " + ", ".join(BY_KEY)], errors
