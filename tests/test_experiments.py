"""The paper experiments: templates, presets, the papermill runner (msabn_run) and the report (msabn_report)."""
from __future__ import annotations

import ast
import contextlib
import errno
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import nbformat
import psutil
import pytest
import torch
from conftest import ROOT

from msabn.core import load_json, save_json
from msabn.data import train_transform, write_cub_fixture
from msabn.experiments import (
    PROGRESS_FILE,
    TEMPLATES,
    ProgressFile,
    data_folder,
    fingerprint,
    get_experiment,
    run_experiments,
    run_folder,
    run_state,
    write_status,
)
from msabn.experiments import main as run_main
from msabn.report import collect_runs, table_frame, write_table_run
from msabn.report import main as report_main

TEMPLATE_DIR = ROOT / "nbs" / "experiments"
QUIET = lambda s: None


# --- the templates ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,template", sorted(TEMPLATES.items()))
def test_template_has_one_parameters_cell_no_outputs_and_a_header(name, template):
    path = TEMPLATE_DIR / f"{template}.ipynb"
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'; papermill needs exactly one"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0] is tagged[0], f"{path.name}: the parameters cell must be the first code cell"
    defaults = {
        t.id: ast.literal_eval(n.value)
        for n in ast.parse(tagged[0].source).body
        if isinstance(n, ast.Assign)
        for t in n.targets
    }
    assert defaults["preset"] == "smoke" and defaults["seed"] == 0, (f"{path.name}: the defaults must be the smoke "
                                                                     f"preset: {defaults}")
    assert {"preset", "seed", "data_root", "runs_dir", "device", "num_workers", "threads"} <= set(defaults)
    for c in code:
        assert not c.outputs and c.execution_count is None, f"{path.name}: committed with outputs"
    head = nb.cells[0]
    assert head.cell_type == "markdown" and head.source.startswith("# ")
    assert "Reproduces the paper's" in head.source and "`smoke`" in head.source and "`paper`" in head.source
    assert "@@" not in head.source, f"{path.name}: an unfilled placeholder in the header"
    assert "min" in head.source and "GPU-hour" in head.source, (f"{path.name}: the header must say how long each "
                                                                "preset takes")
    assert f'run_experiment("{name}"' in "".join(c.source for c in code), (f"{path.name}: must call run_experiment for "
                                                                           f"{name}")
    assert (TEMPLATE_DIR / ".notest").exists(), ("nbdev_test must skip the templates (the tests run them through "
                                                 "papermill)")


def test_console_scripts_are_declared():
    text = (ROOT / "settings.ini").read_text()
    line = next(l for l in text.splitlines() if l.startswith("console_scripts"))
    assert "msabn_run=msabn.experiments:main" in line and "msabn_report=msabn.report:main" in line


# --- every template on the tiny preset, and the report made from it --------------------------------------
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    ("Every experiment of the tiny preset, run once by msabn_run with each template's work done in this process, on "
     "one torch thread; what it showed in progress.txt. (The fast dev run in tests/test_overrides.py puts every "
     "template through papermill: here a kernel start per template would only repeat it.)")
    base = tmp_path_factory.mktemp("tiny")
    shown = io.StringIO()
    # the progress display writes to stdout: here not a terminal, so plain lines
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(shown):
        mp.setattr(RUNNER, "execute_template", _in_process)
        rep = run_experiments(["all"], "tiny", runs_dir=base / "runs", data_root=base / "data", threads=1, log=QUIET)
    (base / "progress.txt").write_text(shown.getvalue())
    return base, rep


def test_every_template_runs_and_writes_its_files(tiny_runs):
    base, rep = tiny_runs
    assert [(r["experiment"], r["result"]) for r in rep] == [(n, "complete") for n in TEMPLATES], rep
    for name, template in TEMPLATES.items():
        folder = run_folder(base / "runs", "tiny", name, 0)
        files = {p.name for p in folder.iterdir()}
        assert {"config.json", "metrics.json", "status.json", "attention.png"} <= files, (name, files)
        cfg = load_json(folder / "config.json")
        assert cfg["seed"] == 0 and cfg["fingerprint"] == fingerprint(get_experiment(name, "tiny"), 0)
        assert {"versions", "git", "device", "time_utc"} <= set(cfg["provenance"])
        st = load_json(folder / "status.json")
        assert st["status"] == "complete" and st["notebook"] == f"{template}.ipynb" and st["wall_seconds"] > 0
        assert "seconds" not in st, ("status.json is the runner's: its time is wall_seconds; the template's is "
                                     "metrics.json's seconds")
        assert load_json(folder / "metrics.json")["seconds"] > 0
        if name.startswith("table"):
            assert "history.csv" in files
            m = load_json(folder / "metrics.json")
            exp = get_experiment(name, "tiny")
            assert len(m["cells"]) == len(exp.cells())
            for c in m["cells"]:
                for s in exp.data.eval_splits: assert 0 <= c[f"acc@{s}"] <= 100
                assert (folder / "cells" / c["backbone"]).is_dir()


def test_report_from_the_tiny_runs(tiny_runs, tmp_path):
    base, _ = tiny_runs
    assert report_main(["--preset", "tiny", "--runs-dir", str(base / "runs"), "--out", str(tmp_path / "pf")]) == 0
    folder = tmp_path / "pf" / "tiny_seeds-0"
    for t in TEMPLATES.values(): assert (folder / f"{t}.md").is_file(), t
    for t in [TEMPLATES[n] for n in ("table1", "table2", "table3", "table4", "table5")]:
        assert (folder / f"{t}.png").is_file() and (folder / f"{t}_attention.png").is_file()
    assert (folder / "fig8_copy_replace.png").is_file() and (folder / "fig9_copy_replace.png").is_file()
    t1 = (folder / "table1_cifar100.md").read_text()
    assert "preset `tiny`, seeds 0, n = 1" in t1 and "68.71 ± 0.202" in t1 and "standing in for CIFAR-100" in t1
    t3 = (folder / "table3_diagset.md").read_text()
    # no ABN on the EfficientNet column
    assert "Balanced accuracy" in t3 and "38.57" in t3 and "not run (as the paper)" in t3
    index = (tmp_path / "pf" / "README.md").read_text()
    assert "msabn_run all --preset tiny --seeds 0 && msabn_report --preset tiny --seeds 0" in index
    for t in TEMPLATES.values(): assert f"{t}.md" in index


def test_every_template_shows_its_progress_and_leaves_no_progress_file(tiny_runs):
    base, _ = tiny_runs
    lines = (base / "progress.txt").read_text().splitlines()
    assert lines and "\r" not in "".join(lines), "not a terminal: plain lines, no bar"
    for k, name in enumerate(TEMPLATES, 1):
        mine = [l for l in lines if l.startswith(f"[{k}/{len(TEMPLATES)}] {name} tiny seed 0: ")]
        exp = get_experiment(name, "tiny")
        if exp.kind == "table":
            n = len(exp.cells())
            assert sum(": cell " in l and " done: acc@" in l for l in mine) == n, (name, mine)
            assert (
                sum(bool(re.search(r": 1 epoch of \d+ steps?$", l)) for l in mine) == n
                and sum(": epoch 1/1 · " in l for l in mine) == n
            ), (name, mine)
        else:
            unit = "panel" if exp.kind == "attention_figure" else "curve"
            assert any(f": {unit} 1/" in l and " done" in l for l in mine), (name, mine)
        assert not (run_folder(base / "runs", "tiny", name, 0) / PROGRESS_FILE).exists(), (f"{name}: the runner "
                                                                                           "removes the display's file")


def test_second_run_skips_complete_runs(tiny_runs):
    base, _ = tiny_runs
    ckpt = run_folder(base / "runs", "tiny", "table4", 0) / "cells" / "resnet20" / "msabn" / "checkpoint.pt"
    before = ckpt.stat().st_mtime_ns
    rep = run_experiments(["all"], "tiny", runs_dir=base / "runs", data_root=base / "data", threads=1, log=QUIET)
    assert {r["result"] for r in rep} == {"skipped"}
    assert ckpt.stat().st_mtime_ns == before


def test_reports_never_mix_presets(tiny_runs):
    base, _ = tiny_runs
    recs, _ = collect_runs(base / "runs", "tiny")
    mixed = recs + [replace(next(r for r in recs if r.name == "table1"), preset="smoke", seed=3)]
    with pytest.raises(ValueError, match="refusing to mix presets in one table: table1"):
        table_frame(mixed, "table1")


# --- interrupted and failed runs ---------------------------------------------------------------------------
def test_run_killed_mid_run_is_redone_not_reported(tmp_path, monkeypatch):
    runs, data = tmp_path / "runs", tmp_path / "data"
    folder = run_folder(runs, "tiny", "table4", 0)
    cmd = [sys.executable, "-c", "from msabn.experiments import main; main()", "table4", "--preset", "tiny",
           "--runs-dir", str(runs), "--data-root", str(data), "--threads", "1"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first_cell = folder / "cells" / "resnet20" / "base" / "done.json"
    try:
        deadline = time.time() + 240
        while not first_cell.exists():   # mid-run: the first cell is trained, the others are not
            assert proc.poll() is None, "msabn_run ended before it could be killed"
            assert time.time() < deadline, "msabn_run did not get to its first cell in time"
            time.sleep(0.2)
    finally:
        # the runner and its kernel, as a crash or kill -9 would: jupyter_client starts the kernel in a session of its
        # own, which killpg leaves to die a moment later, still holding its cell's lock
        kernel = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for p in kernel:
            with contextlib.suppress(psutil.NoSuchProcess): p.kill()
        psutil.wait_procs(kernel, timeout=30)
        proc.wait()
    fp = fingerprint(get_experiment("table4", "tiny"), 0)
    assert run_state(folder, fp) == "half-written"
    recs, left_out = collect_runs(runs, "tiny")
    assert recs == [] and left_out == ["tiny/table4/seed0: half-written, not reported"]
    log = []
    monkeypatch.setattr(RUNNER, "execute_template", _in_process)   # the redo: the template's work in this process
    rep = run_experiments(["table4"], "tiny", runs_dir=runs, data_root=data, threads=1, log=log.append)
    assert rep[0]["found"] == "half-written" and rep[0]["result"] == "complete", (rep, log)
    assert any("half-written" in l and "redoing" in l for l in log), log
    assert run_state(folder, fp) == "complete"
    recs, _ = collect_runs(runs, "tiny")
    assert [(r.name, r.seed) for r in recs] == [("table4", 0)]
    assert len(recs[0].metrics["cells"]) == 5


def test_failed_run_is_recorded_and_the_others_go_on(tmp_path, capsys):
    runs, data = tmp_path / "runs", tmp_path / "data"
    # table2's embedded data folder is taken by something else: make_synthetic refuses to write into it
    blocked = data_folder(get_experiment("table2", "tiny").data, data)
    blocked.mkdir(parents=True)
    (blocked / "notes.txt").write_text("not a dataset")
    code = run_main(
        ["table2", "table1", "--preset", "tiny", "--runs-dir", str(runs), "--data-root", str(data), "--threads", "1"]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "1 run(s) done" in out and "1 failed: table2 seed 0" in out, out
    st = load_json(run_folder(runs, "tiny", "table2", 0) / "status.json")
    assert st["status"] == "failed" and "is not empty and holds no synthetic dataset" in st["error"], st
    assert (run_folder(runs, "tiny", "table2", 0) / "table2_imagenet.ipynb").exists(), ("the executed notebook shows "
                                                                                        "where it failed")
    assert load_json(run_folder(runs, "tiny", "table1", 0) / "status.json")["status"] == "complete"
    recs, left_out = collect_runs(runs, "tiny")
    assert [r.name for r in recs] == ["table1"] and left_out == ["tiny/table2/seed0: failed, not reported"]


# --- bad input ------------------------------------------------------------------------------------------
def test_paper_preset_without_data_root_names_the_dataset_and_layout(tmp_path, capsys):
    assert run_main(["table4", "--preset", "paper", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "cub: no --data-root was given" in err and "images.txt" in err and "bounding_boxes.txt" in err, err
    assert not (tmp_path / "runs").exists(), "nothing may start before the data are checked"


def test_paper_preset_names_only_the_missing_datasets(tmp_path):
    write_cub_fixture(tmp_path / "data" / "cub")
    with pytest.raises(FileNotFoundError) as e:   # fig1 needs Tables 4 (CUB: present) and 5 (Stanford Cars: missing)
        run_experiments(["fig1"], "paper", data_root=tmp_path / "data", runs_dir=tmp_path / "runs", log=QUIET)
    msg = str(e.value)
    assert "cars: not found in" in msg and "cars_meta.mat" in msg and "cub:" not in msg, msg
    assert not (tmp_path / "runs").exists()


def test_unknown_table_lists_the_valid_ones(tmp_path, capsys):
    assert run_main(["table6", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "unknown table or figure 'table6'" in err and ", ".join(TEMPLATES) in err, err


# --- the paper preset is the paper's settings ----------------------------------------------------------------
def _ops(recipe: str, size: int) -> dict:
    "The training pipeline's operations by class name (RandomApply unwrapped), with their key settings."
    out = {}
    for t in train_transform(recipe, size).transforms:
        for op in getattr(t, "transforms", [t]):
            out[type(op).__name__] = op
    return out

PAPER_SETTINGS = {  # the paper's settings, typed from its text and tables
    "table1": dict(
        dataset="cifar100",
        size=32,
        epochs=300,
        batch={"ResNet-20": 256, "ResNet-56": 256, "ResNet-110": 256},
        milestones=(0.5, 0.75),
        wd=5e-4,
        seeds=(0, 1, 2),
        rows=["Base", "ABN", "MSABN g·A", "MSABN g·(1+A)"],
    ),
    "table2": dict(
        dataset="imagenet",
        size=224,
        epochs=90,
        batch={"ResNet-101": 512, "EfficientNet-B1": 256},
        milestones=(0.33, 0.66),
        wd=1e-4,
        seeds=(0,),
        rows=["Base", "ABN", "MSABN"],
    ),
    "table3": dict(
        dataset="diagset",
        size=224,
        epochs=90,
        batch={"ResNet-101": 512, "EfficientNet-B1": 256},
        milestones=(0.33, 0.66),
        wd=1e-4,
        seeds=(0,),
        rows=["Base", "ABN", "MSABN"],
    ),
    "table4": dict(
        dataset="cub",
        size=352,
        epochs=300,
        batch={"ResNet-50": 16, "ResNeXt-50": 16, "EfficientNet-B3": 16},
        milestones=(0.5, 0.75),
        wd=1e-4,
        seeds=(0, 1, 2),
        rows=["Base", "ABN", "MSABN", "MSABN+Puzzle", "MSABN (efficient)"],
    ),
    "table5": dict(
        dataset="cars",
        size=352,
        epochs=300,
        batch={"ResNet-50": 16, "ResNeXt-50": 16, "EfficientNet-B3": 16},
        milestones=(0.5, 0.75),
        wd=1e-4,
        seeds=(0, 1, 2),
        rows=["Base", "ABN", "MSABN", "MSABN+Puzzle", "MSABN (efficient)"],
    ),
}
BACKBONES = {
    "ResNet-20": "resnet20",
    "ResNet-56": "resnet56",
    "ResNet-110": "resnet110",
    "ResNet-101": "resnet101",
    "EfficientNet-B1": "efficientnet_b1",
    "ResNet-50": "resnet50",
    "ResNeXt-50": "resnext50_32x4d",
    "EfficientNet-B3": "efficientnet_b3",
}


@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
def test_paper_preset_matches_spec(name):
    want, exp = PAPER_SETTINGS[name], get_experiment(name, "paper")
    assert exp.data.dataset == want["dataset"] and exp.data.size == want["size"] and exp.data.synthetic is None
    assert [r.name for r in exp.rows] == want["rows"] and exp.seeds == want["seeds"]
    assert [c.paper for c in exp.columns] == list(want["batch"])
    for c in exp.columns:
        assert c.backbone == BACKBONES[c.paper]
        for r in exp.rows:
            if c.paper in r.skip: continue
            t = exp.train_config(c, r, 0)
            assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay, t.milestones, t.lr_gamma) == (
                want["epochs"],
                want["batch"][c.paper],
                0.1,
                0.9,
                want["wd"],
                want["milestones"],
                0.1,
            ), (c.paper, r.name, t)
            assert t.puzzle == (r.name == "MSABN+Puzzle") and t.class_weighted == (name == "table3")
            # Tables 4/5 also keep their best epoch on a held-out tenth (Figs. 8/9's source); all report the last
            held = name in ("table4", "table5")
            assert t.keep_best is held and exp.data.valid_fraction == (0.1 if held else 0)
    skipped = {(c.paper, r.name) for c in exp.columns for r in exp.rows if c.paper in r.skip}
    assert skipped == {(c, "ABN") for c in want["batch"] if c.startswith("EfficientNet")}
    mech = {r.name: (r.arch, r.mechanism, r.variant) for r in exp.rows}
    if name == "table1":
        assert mech["MSABN g·A"] == ("msabn", "multiply", "literal") and mech["MSABN g·(1+A)"] == (
            "msabn",
            "residual",
            "literal",
        )
    else:
        assert mech["MSABN"] == ("msabn", "residual", "literal")


def test_paper_augmentations_match_spec():
    data = {n: get_experiment(n, "paper").data for n in PAPER_SETTINGS}
    ops = {n: _ops(d.recipe, d.size) for n, d in data.items()}
    # Table 1: random crop (pad 4) + h-flip
    assert {"RandomCrop", "RandomHorizontalFlip"} <= set(ops["table1"]) and ops["table1"]["RandomCrop"].padding == [
        4,
        4,
        4,
        4,
    ]
    assert not {"ColorJitter", "RandomVerticalFlip", "RandomResizedCrop"} & set(ops["table1"])
    # Table 2: random crop 224 + h-flip
    assert {"RandomResizedCrop", "RandomHorizontalFlip"} <= set(ops["table2"]) and tuple(
        ops["table2"]["RandomResizedCrop"].size
    ) == (224, 224)
    assert not {"ColorJitter", "RandomVerticalFlip"} & set(ops["table2"])
    # Table 3: crop 224, h/v-flip, color jitter
    assert {"RandomCrop", "RandomHorizontalFlip", "RandomVerticalFlip", "ColorJitter"} <= set(ops["table3"])
    assert ops["table3"]["RandomCrop"].size == (224, 224)
    # Tables 4/5: resize 352, h-flip, color jitter, gaussian blur and noise, solarize
    for n in ("table4", "table5"):
        assert {
            "Resize",
            "RandomHorizontalFlip",
            "ColorJitter",
            "GaussianBlur",
            "GaussianNoise",
            "RandomSolarize",
        } <= set(ops[n])
        assert list(ops[n]["Resize"].size) == [352, 352]


def test_paper_figure_presets_match_spec():
    fig = get_experiment("fig8_9", "paper")
    t = fig.finetune
    assert (t.epochs, t.batch_size, t.lr, t.momentum, t.weight_decay, t.milestones) == (
        50,
        16,
        0.1,
        0.9,
        1e-4,
        (0.5, 0.75),
    )
    assert fig.lambdas["table4"] == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7) and fig.lambdas["table5"] == (
        0.0,
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
    )
    assert fig.fractions is None
    assert (
        fig.finetune_seeds == (0, 1, 2)
        and fig.seeds == (0, 1, 2)
        and fig.row == "MSABN"
        and fig.label_policy == "donor"
    )
    assert fig.source_model == "best" and fig.frac_reading == "paper"   # best on a held-out split; the map as it is
    assert fig.eval_split is None   # the tables' test split
    f1 = get_experiment("fig1", "paper")
    assert f1.sources == ("table4", "table5") and f1.rows[:3] == ("Base", "ABN", "MSABN")


def test_smoke_keeps_every_table_s_rows_and_recipe():
    for name in PAPER_SETTINGS:
        paper, smoke = get_experiment(name, "paper"), get_experiment(name, "smoke")
        assert [r.name for r in smoke.rows] == [r.name for r in paper.rows]
        assert {c.paper for c in smoke.columns} <= {c.paper for c in paper.columns}
        assert smoke.data.recipe == paper.data.recipe and smoke.data.dataset == "synthetic"
        assert (smoke.train.momentum, smoke.train.weight_decay, smoke.train.milestones, smoke.train.class_weighted) == \
               (paper.train.momentum, paper.train.weight_decay, paper.train.milestones, paper.train.class_weighted)


# --- Figs. 8/9 at fixed shares: one row per share, whatever lambda each seed's model needed ---------------------
def _fig_run(seed: int, lam: float, gain: float):
    from msabn.report import RunRecord
    points = [{"lambda_out": lam, "pool_size": 100, "fraction_annotated": 0.2, "acc": 10 + gain, "gain": gain},
              {"lambda_out": 0.0, "pool_size": 500, "fraction_annotated": 1.0, "acc": 12 + gain, "gain": 2 + gain}]
    curve = {"before": {"acc": 9.0}, "vanilla": {"acc": 10.0}, "points": points}
    metrics = {"curves": [{"source": "table4", "figure": "Fig. 8", "column": "ResNet-50", "backbone": "resnet20",
                           "split": "test", "curve": curve}]}
    return RunRecord("fig8_9", "smoke", seed, Path("."), metrics)


def test_copy_replace_points_group_by_share_when_lambda_is_chosen_per_model():
    from msabn.report import markdown_curves
    md = markdown_curves([_fig_run(0, 0.91, 1.0), _fig_run(1, 0.93, 3.0)])
    rows = [l for l in md.splitlines() if l.startswith("| 0")]
    assert len(rows) == 2, rows                       # one row per share (20%, 100%), not one per seed's lambda
    share20 = next(r for r in rows if "| 0.20 |" in r)
    # gains 1 and 3: mean 2, sample std 1.41, 95% t interval 2 ± 12.71 x 1.41 / sqrt(2)
    assert "0.92 (mean)" in share20 and "+2.0 [-10.7, +14.7] |" in share20, share20


def test_figure_runs_are_redone_when_a_source_table_changes(monkeypatch):
    import msabn.experiments as E
    before = {n: fingerprint(get_experiment(n, "tiny"), 0) for n in ("fig1", "fig8_9", "table1")}
    t4 = get_experiment("table4", "tiny")
    monkeypatch.setitem(
        E.EXPERIMENTS["tiny"], "table4", replace(t4, train=replace(t4.train, epochs=t4.train.epochs + 1))
    )
    after = {n: fingerprint(get_experiment(n, "tiny"), 0) for n in before}
    assert after["fig1"] != before["fig1"] and after["fig8_9"] != before["fig8_9"], ("figures must follow their source "
                                                                                     "tables")
    assert after["table1"] == before["table1"]


# --- the runner's reliability: each fault below once went unsaid or lost work ---------------------------------------
RUNNER = sys.modules[run_experiments.__module__]        # where run_experiments looks up execute_template
FOLDERS = sys.modules[write_status.__module__]          # where status.json is written

def _stub_template(calls=None, fail=()):
    "An execute_template that writes what a template writes (config.json, metrics.json), without a kernel or training."
    def run(name, preset, seed, runs_dir, data_root, device="auto", num_workers=None, templates=None, threads=None,
            batch=None):
        if calls is not None: calls.append(name)
        if name in fail: raise RuntimeError(f"{name} broke")
        folder, fp = run_folder(runs_dir, preset, name, seed), fingerprint(get_experiment(name, preset), seed)
        save_json({"fingerprint": fp}, folder / "config.json")
        save_json({"fingerprint": fp, "made": "now"}, folder / "metrics.json")
        return folder / f"{TEMPLATES[name]}.ipynb"
    return run

def _in_process(name, preset, seed, runs_dir, data_root, device="auto", num_workers=None, templates=None, threads=None,
                batch=None):
    "An execute_template that runs the template's work in this process (no kernel start): real training."
    from msabn.experiments import run_experiment
    before = torch.get_num_threads()
    if threads: torch.set_num_threads(int(threads))   # as the template's first cell does
    try: run_experiment(name, preset=preset, seed=seed, runs_dir=runs_dir, data_root=data_root, device=device,
                        log=QUIET)
    finally: torch.set_num_threads(before)
    return run_folder(runs_dir, preset, name, seed) / f"{TEMPLATES[name]}.ipynb"

def _aside(folder: Path) -> list[Path]:
    return sorted(folder.parent.glob(f"{folder.name}.old-*"))


def test_damaged_status_is_redone_keeping_the_old_files_aside(tmp_path, monkeypatch):
    "Before: msabn_run deleted metrics.json, then failed to parse the damaged status and aborted, on every rerun."
    monkeypatch.setattr(RUNNER, "execute_template", _stub_template())
    runs, fp = tmp_path / "runs", fingerprint(get_experiment("table1", "tiny"), 0)
    folder = run_folder(runs, "tiny", "table1", 0)
    folder.mkdir(parents=True)
    save_json({"fingerprint": fp, "cells": "the old results"}, folder / "metrics.json")
    (folder / "status.json").write_text('{"status": "compl')
    log = []
    rep = run_experiments(["table1", "table2"], "tiny", runs_dir=runs, data_root=tmp_path / "data", log=log.append)
    assert [(r["experiment"], r["found"], r["result"]) for r in rep] == [
        ("table1", "damaged", "complete"),
        ("table2", "new", "complete"),
    ]
    old = _aside(folder)
    assert len(old) == 1 and load_json(old[0] / "metrics.json")["cells"] == "the old results"
    assert (old[0] / "status.json").read_text() == '{"status": "compl'
    assert any("cannot be read" in l and f"kept in {old[0].name}" in l for l in log), log
    assert run_state(folder, fp) == "complete"
    assert [
        r["result"] for r in run_experiments(["table1"], "tiny", runs_dir=runs, data_root=tmp_path / "data", log=QUIET)
    ] == ["skipped"]


def test_force_retrains_and_keeps_the_old_results_aside(tmp_path, monkeypatch):
    ("Before: --force re-executed the template, whose cells returned their cached done.json: old numbers reported as "
     "fresh.")
    import msabn.experiments as E
    t1 = get_experiment("table1", "tiny")
    monkeypatch.setitem(E.EXPERIMENTS["tiny"], "table1", replace(t1, rows=t1.rows[:1]))
    monkeypatch.setattr(RUNNER, "execute_template", _in_process)
    runs, data = tmp_path / "runs", tmp_path / "data"
    folder = run_folder(runs, "tiny", "table1", 0)
    ckpt = folder / "cells" / "resnet20" / "base" / "checkpoint.pt"
    assert run_experiments(["table1"], "tiny", runs_dir=runs, data_root=data, log=QUIET)[0]["result"] == "complete"
    before = ckpt.stat().st_mtime_ns
    log = []
    rep = run_experiments(["table1"], "tiny", runs_dir=runs, data_root=data, force=True, log=log.append)
    assert rep[0]["found"] == "complete" and rep[0]["result"] == "complete"
    assert ckpt.stat().st_mtime_ns != before, "--force must retrain, not reuse the cached cells"
    old = _aside(folder)
    assert len(old) == 1 and (old[0] / "cells" / "resnet20" / "base" / "checkpoint.pt").stat().st_mtime_ns == before
    assert (old[0] / "metrics.json").is_file() and any("--force" in l and f"kept in {old[0].name}" in l for l in log), (
        log
    )


def test_stale_run_folder_is_kept_aside_not_deleted(tmp_path, monkeypatch):
    "Before: a run made with other settings (e.g. an older results version) lost its metrics.json to the rerun."
    monkeypatch.setattr(RUNNER, "execute_template", _stub_template())
    runs = tmp_path / "runs"
    folder = run_folder(runs, "tiny", "table1", 0)
    folder.mkdir(parents=True)
    write_status(folder, "complete", "an-older-version")
    save_json({"fingerprint": "an-older-version", "cells": "old"}, folder / "metrics.json")
    (folder / "my_notes.txt").write_text("what I wanted to keep")
    log = []
    rep = run_experiments(["table1"], "tiny", runs_dir=runs, data_root=tmp_path / "data", log=log.append)
    assert rep[0]["found"] == "stale" and rep[0]["result"] == "complete"
    old = _aside(folder)
    assert len(old) == 1 and (old[0] / "my_notes.txt").read_text() == "what I wanted to keep"
    assert load_json(old[0] / "metrics.json")["cells"] == "old" and not (folder / "my_notes.txt").exists()
    assert any("other settings" in l and f"kept in {old[0].name}" in l for l in log), log


def test_stale_cell_folder_is_kept_aside_not_deleted(tmp_path):
    "Before: train_cell shutil.rmtree'd a cell folder made with other settings."
    from msabn.experiments import load_splits, train_cell
    exp = get_experiment("table1", "tiny")
    (column, row), data = exp.cells()[0], load_splits(exp.data, tmp_path / "data")
    out = tmp_path / "cells" / column.backbone / row.slug
    out.mkdir(parents=True)
    save_json({"cell": {"fingerprint": "other"}}, out / "config.json")
    (out / "notes.txt").write_text("keep me")
    log = []
    rec = train_cell(exp, column, row, 0, data, out, log=log.append)
    old = _aside(out)
    assert len(old) == 1 and (old[0] / "notes.txt").read_text() == "keep me" and (out / "done.json").is_file()
    assert 0 <= rec["acc@test"] <= 100 and any(f"kept aside in {old[0].name}" in l for l in log), log


def test_damaged_cell_record_resumes_instead_of_crashing(tmp_path):
    "Before: a truncated done.json (disk full, a hand edit) made train_cell raise on every rerun."
    from msabn.experiments import load_splits, train_cell
    exp = get_experiment("table1", "tiny")
    (column, row), data = exp.cells()[0], load_splits(exp.data, tmp_path / "data")
    out = tmp_path / "cell"
    rec = train_cell(exp, column, row, 0, data, out, log=QUIET)
    (out / "done.json").write_text('{"row": "Ba')
    again = train_cell(exp, column, row, 0, data, out, log=QUIET)
    assert again["acc@test"] == rec["acc@test"] and load_json(out / "done.json")["fingerprint"] == rec["fingerprint"]


BAD_ARGS = {
    "negative seed": (["--seeds", "0", "-1"], "--seeds -1: a seed is a whole number, 0 or more"),
    "negative workers": (["--workers", "-3"], "--workers -3: expected 0"),
    "negative threads": (["--threads", "-1"], "--threads -1: expected 1 or more"),
    "zero threads": (["--threads", "0"], "--threads 0: expected 1 or more"),
    "nonsense device": (
        ["--device", "gpu"],
        "--device gpu: not a device name; expected auto, cpu, cuda, cuda:N or mps",
    ),
    "cuda without a GPU": (
        ["--device", "cuda"],
        "--device cuda: device 'cuda' was asked for, but PyTorch sees no CUDA GPU",
    ),
    "cuda index beyond the GPUs": (
        ["--device", "cuda:3"],
        "--device cuda:3: device 'cuda:3' was asked for, but only 1 GPU(s) exist",
    ),
    "runs dir is a file": (["--runs-dir", "{file}"], "is a file; expected a folder for the run folders"),
    "data root is a file": (["--data-root", "{file}"], "is a file; expected the folder holding one folder per dataset"),
}

@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments_are_refused_before_anything_runs(case, tmp_path, monkeypatch, capsys):
    "Before: found only after a kernel started (about 20 s per run), or a raw traceback (--runs-dir FILE)."
    import torch
    monkeypatch.setattr(RUNNER, "execute_template", _stub_template(fail=list(TEMPLATES)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: case == "cuda index beyond the GPUs")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    (tmp_path / "afile").write_text("")
    args, msg = BAD_ARGS[case]
    args = [a.replace("{file}", str(tmp_path / "afile")) for a in args]
    argv = [
        "table1",
        "--preset",
        "tiny",
        "--data-root",
        str(tmp_path / "data"),
        "--runs-dir",
        str(tmp_path / "runs"),
        *args,
    ]
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("msabn_run: ") and msg in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists(), ("nothing may start before the "
                                                                                   "arguments are checked")


# --- the fault sweep: what else a user meets with msabn_run -----------------------------------------------------------
def test_import_works_without_fcntl(tmp_path):
    "Before: `import fcntl` at the top made `import msabn.experiments` (and the report) fail on Windows."
    import msabn
    code = "import sys; sys.modules['fcntl'] = None\nimport msabn.experiments, msabn.report\nprint('ok')"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(msabn.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_missing_templates_are_named_before_anything_runs(tmp_path, capsys):
    "Before: every run started, failed on its missing template, and the batch exited 1."
    (tmp_path / "templates").mkdir()
    assert (
        run_main(
            [
                "fig1",
                "--preset",
                "tiny",
                "--templates",
                str(tmp_path / "templates"),
                "--runs-dir",
                str(tmp_path / "runs"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "lacks table4_cub.ipynb, table5_cars.ipynb, fig1_attention_maps.ipynb" in err, err
    assert not (tmp_path / "runs").exists()


def test_unwritable_runs_dir_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    "Before: a PermissionError traceback from the first mkdir (simulated: the tests may run as root)."
    monkeypatch.setattr(RUNNER, "execute_template", _stub_template(fail=list(TEMPLATES)))
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real(p, mode, **kw))
    assert (
        run_main(
            ["table1", "--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"--runs-dir {tmp_path / 'runs'}: cannot write in {tmp_path} (permission denied)" in err, err


def test_second_msabn_run_on_the_same_runs_dir_is_refused(tmp_path, capsys):
    from filelock import FileLock
    (tmp_path / "runs").mkdir()
    with FileLock(str(tmp_path / "runs" / ".msabn_run.lock")):
        assert (
            run_main(
                [
                    "table1",
                    "--preset",
                    "tiny",
                    "--runs-dir",
                    str(tmp_path / "runs"),
                    "--data-root",
                    str(tmp_path / "data"),
                ]
            )
            == 2
        )
    assert "another msabn_run is using" in capsys.readouterr().err


def test_disk_full_stops_cleanly_and_deletes_nothing(tmp_path, monkeypatch, capsys):
    "Before: an OSError traceback (ENOSPC is not caught); now one line, and the complete runs untouched."
    monkeypatch.setattr(RUNNER, "execute_template", _stub_template())
    runs, data = tmp_path / "runs", tmp_path / "data"
    run_experiments(["table1"], "tiny", runs_dir=runs, data_root=data, log=QUIET)
    before = {p.name: p.read_bytes() for p in run_folder(runs, "tiny", "table1", 0).iterdir()}
    def full(*a, **k): raise OSError(errno.ENOSPC, "No space left on device", str(runs / "x"))
    monkeypatch.setattr(FOLDERS, "save_json", full)
    assert run_main(["table1", "table2", "--preset", "tiny", "--runs-dir", str(runs), "--data-root", str(data)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "nothing was deleted" in err and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in run_folder(runs, "tiny", "table1", 0).iterdir()} == before


def test_ctrl_c_exits_130_and_the_run_is_redone(tmp_path, monkeypatch, capsys):
    "Before: a KeyboardInterrupt traceback; now one line saying the run is redone by the same command."
    def interrupted(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(RUNNER, "execute_template", interrupted)
    runs, data = tmp_path / "runs", tmp_path / "data"
    argv = ["table1", "--preset", "tiny", "--runs-dir", str(runs), "--data-root", str(data)]
    assert run_main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    folder, fp = run_folder(runs, "tiny", "table1", 0), fingerprint(get_experiment("table1", "tiny"), 0)
    assert run_state(folder, fp) == "half-written"
    monkeypatch.setattr(RUNNER, "execute_template", _stub_template())
    rep = run_experiments(["table1"], "tiny", runs_dir=runs, data_root=data, log=QUIET)
    assert rep[0]["found"] == "half-written" and rep[0]["result"] == "complete", rep


def test_figure_is_not_started_when_its_source_table_failed(tmp_path, monkeypatch):
    "Before: the figure's kernel started only to fail on the missing table."
    calls = []
    monkeypatch.setattr(RUNNER, "execute_template", _stub_template(calls, fail=("table4",)))
    rep = run_experiments(["fig1"], "tiny", runs_dir=tmp_path / "runs", data_root=tmp_path / "data", log=QUIET)
    assert [(r["experiment"], r["result"]) for r in rep] == [
        ("table4", "failed"),
        ("table5", "complete"),
        ("fig1", "failed"),
    ]
    assert calls == ["table4", "table5"] and rep[2]["error"] == "not run: table4 seed 0 failed in this batch"


def test_a_seed_given_twice_runs_once():
    from msabn.experiments import plan
    assert plan(["table1"], "tiny", [0, 0]) == [("table1", 0)]


def test_a_run_made_from_python_counts_as_complete(tmp_path, monkeypatch):
    "run_table called directly leaves no status.json: its metrics.json, written last with the fingerprint, decides."
    monkeypatch.setattr(RUNNER, "execute_template", _stub_template(fail=list(TEMPLATES)))
    exp = get_experiment("table1", "tiny")
    folder, fp = (
        write_table_run(tmp_path / "runs", "table1", 0, {r.name: [50.0] for r in exp.rows}),
        fingerprint(exp, 0),
    )
    (folder / "status.json").unlink()   # as run_table leaves a run made from Python: results only
    assert run_state(folder, fp) == "complete"
    rep = run_experiments(["table1"], "tiny", runs_dir=tmp_path / "runs", data_root=tmp_path / "data", log=QUIET)
    assert rep[0]["result"] == "skipped"
    recs, _ = collect_runs(tmp_path / "runs", "tiny")
    assert [r.name for r in recs] == ["table1"]


# --- progress a person can watch --------------------------------------------------------------------
def _in_process_with(overrides_seen=None):
    ("An execute_template that runs the template's work in this process (real training, its progress file included), "
     "overrides too.")
    def run(
        name,
        preset,
        seed,
        runs_dir,
        data_root,
        device="auto",
        num_workers=None,
        templates=None,
        threads=None,
        overrides=None,
        batch=None,
    ):
        from msabn.experiments import run_experiment
        run_experiment(
            name,
            preset=preset,
            seed=seed,
            runs_dir=runs_dir,
            data_root=data_root,
            device=device,
            log=QUIET,
            overrides=overrides,
        )
        return run_folder(runs_dir, preset, name, seed) / f"{TEMPLATES[name]}.ipynb"
    return run


def test_progress_is_a_line_per_cell_and_epoch_and_changes_no_result(tmp_path, monkeypatch, capsys):
    ("Before: one line per run, nothing while it trained. Now, not on a terminal: each cell's start, each epoch's end, "
     "each cell's end.")
    monkeypatch.setattr(RUNNER, "execute_template", _in_process_with())
    argv = ["table1", "--preset", "tiny", "--set", "epochs=2", "--data-root", str(tmp_path / "data")]
    assert run_main(argv + ["--runs-dir", str(tmp_path / "shown")]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = [l for l in lines if l.startswith("[1/1] table1 tiny+")]
    cells = get_experiment("table1", "tiny").cells()
    # start, epoch 1/2, epoch 2/2, done: per cell, never per step (2 steps an epoch)
    assert len(shown) == 4 * len(cells), lines
    for k, (column, row) in enumerate(cells, 1):
        mine = [
            l.split(" seed 0: ", 1)[1] for l in shown if f": cell {k}/{len(cells)} {row.name} {column.backbone}" in l
        ]
        assert [m.split(" · ")[0].split(" done")[0] for m in mine] == [f"cell {k}/4 {row.name} {column.backbone}: 2 "
                                                                       "epochs of 2 steps",
               f"cell {k}/4 {row.name} {column.backbone}: epoch 1/2", f"cell {k}/4 {row.name} {column.backbone}: epoch "
                                                                      "2/2",
               f"cell {k}/4 {row.name} {column.backbone}"], mine
        assert " img/s · cell ETA " in mine[1] and " · run ETA ~" in mine[1] and " done: acc@test_iid " in mine[3], mine
    assert (
        lines[0].startswith("msabn_run: machine figure ") and " img/s (the bare Base ResNet-20 train step" in lines[0]
    ), lines
    assert lines[1].startswith("[run 1/1] table1 seed 0") and lines[-3].startswith("[done 1/1] table1 seed 0"), lines
    where = lines[-1]   # the exact folder, and the command that reports it
    assert where.startswith(f"msabn_run: the run folder is {tmp_path / 'shown'}/tiny+"), where
    assert "report: msabn_report --preset tiny+" in where, where
    assert not list((tmp_path / "shown").rglob(PROGRESS_FILE)), "the display's file is removed once shown"
    assert run_main(argv + ["--runs-dir", str(tmp_path / "quiet"), "--no-progress"]) == 0
    assert "cell 1/4" not in capsys.readouterr().out
    a, b = (load_json(next((tmp_path / d).glob("tiny+*/table1/seed0")) / "metrics.json") for d in ("shown", "quiet"))
    assert a["fingerprint"] == b["fingerprint"] and [c["acc@test"] for c in a["cells"]] == [
        c["acc@test"] for c in b["cells"]
    ]


def test_a_broken_progress_file_is_ignored(tmp_path, monkeypatch, capsys):
    "A progress file that is not JSON, cut short or not an object shows nothing and breaks nothing."
    stub = _stub_template()
    def broken(name, preset, seed, runs_dir, **kw):
        folder = run_folder(runs_dir, preset, name, seed)
        for junk in ("{not json", '{"k": 1, "events": [{"seq": 1, "te', "[1, 2, 3]", '{"k": "x", "n": null, "events": '
                                                                                     '"no"}'):
            (folder / PROGRESS_FILE).write_text(junk); time.sleep(0.6)   # the display reads it every second
        return stub(name, preset, seed, runs_dir, **kw)
    monkeypatch.setattr(RUNNER, "execute_template", broken)
    assert (
        run_main(
            ["table1", "--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data")]
        )
        == 0
    )
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out and not any(l.startswith("[1/1]") for l in cap.out.splitlines()), cap
    assert load_json(run_folder(tmp_path / "runs", "tiny", "table1", 0) / "status.json")["status"] == "complete"
    assert not (run_folder(tmp_path / "runs", "tiny", "table1", 0) / PROGRESS_FILE).exists()


def test_ctrl_c_while_progress_is_shown_still_exits_130(tmp_path, monkeypatch, capsys):
    def interrupted(name, preset, seed, runs_dir, **kw):
        folder = run_folder(runs_dir, preset, name, seed)
        pf = ProgressFile(folder / PROGRESS_FILE, [1.0, 1.0])
        pf.begin(1, "Base resnet20", epochs=1, steps=2, batch_size=16)
        time.sleep(1.5)
        raise KeyboardInterrupt
    monkeypatch.setattr(RUNNER, "execute_template", interrupted)
    assert (
        run_main(
            ["table1", "--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data")]
        )
        == 130
    )
    cap = capsys.readouterr()
    assert (
        "[1/1] table1 tiny seed 0: cell 1/2 Base resnet20: 1 epoch of 2 steps" in cap.out and "interrupted" in cap.err
    ), cap
    assert not any(t.name == "msabn-progress" for t in threading.enumerate()), "the display's thread ends with the run"
    assert not (run_folder(tmp_path / "runs", "tiny", "table1", 0) / PROGRESS_FILE).exists()


# --- common random numbers: what the paired studies rely on ----------------------------------------------
class _Logged(torch.utils.data.Dataset):
    "A training split that records every item it hands out: (index, sum of the augmented pixels)."
    def __init__(self, data, log):
        self.data, self.log = data, log
        self.targets, self.num_classes, self.classes = data.targets, data.num_classes, getattr(data, "classes", None)

    def __len__(self): return len(self.data)

    def __getitem__(self, i):
        item = self.data[i]
        self.log.append((int(i), round(float(item["image"].float().sum()), 3)))
        return item


def _start_and_batches(tmp_path, monkeypatch, common_init: bool):
    import msabn.experiments.tables as T
    from msabn.experiments import load_splits, train_cell, with_overrides
    exp = get_experiment("table1", "tiny")
    if common_init: exp = with_overrides(exp, {"common_init": "true"})
    data = load_splits(exp.data, tmp_path / "data")   # the per-image pipeline: every training item passes _Logged
    real_fit, starts, logs = T.fit, {}, {}
    def fit(model, *a, **kw):
        starts[current] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_fit(model, *a, **kw)
    monkeypatch.setattr(T, "fit", fit)
    for row in exp.rows:
        current, logs[row.name] = row.name, []
        split = {**data, "train": _Logged(data["train"], logs[row.name])}
        train_cell(
            exp,
            exp.columns[0],
            row,
            0,
            split,
            tmp_path / f"{common_init}-{row.slug}-{row.mechanism}",
            log=lambda s: None,
        )
    return starts, logs


def test_common_init_gives_the_rows_of_a_seed_one_start_and_one_sequence_of_batches(tmp_path, monkeypatch):
    starts, logs = _start_and_batches(tmp_path, monkeypatch, common_init=True)
    base = starts["Base"]
    for row, sd in starts.items():
        shared = [k for k in sd if k in base]
        assert len(shared) == len(base), f"{row} lacks some of Base's layers"
        for k in shared: assert torch.equal(sd[k], base[k]), f"{row}'s {k} starts elsewhere than Base's"
        assert (row == "Base") == all(k in base for k in sd), "the branch's own layers are its own"
    assert all(len(v) > 0 and v == logs["Base"] for v in logs.values()), ("every row sees the same items, augmented "
                                                                          "alike")
    # the MSABN mechanisms differ in nothing but the mechanism: every weight starts equal
    assert all(torch.equal(starts["MSABN g·A"][k], v) for k, v in starts["MSABN g·(1+A)"].items())


def test_without_common_init_the_backbones_start_apart(tmp_path, monkeypatch):
    starts, logs = _start_and_batches(tmp_path, monkeypatch, common_init=False)
    conv = "backbone.model.conv1.weight"
    assert not torch.equal(starts["Base"][conv], starts["ABN"][conv]), "the draw, not the architecture, set ABN's start"
    assert logs["Base"] == logs["ABN"], "the batches and augmentation are shared already"
