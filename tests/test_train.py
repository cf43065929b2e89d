"""The training engine across modules: every model type trains, kill-and-resume, torchrun with gloo; and the faults
(occupied folders, changed recipes, bad configs and data, failing writes, interruptions) said clearly and losing
nothing."""
import errno
import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch
from conftest import ROOT
from torch.utils.data import Dataset

import msabn.core
import msabn.train.checkpoints
import msabn.train.engine
from msabn.core import load_json, set_seed
from msabn.data import eval_transform, get_dataset, make_synthetic, train_transform
from msabn.explain import collect_attention
from msabn.models import create_model
from msabn.train import (
    CheckpointError,
    ConfigChangedError,
    NonFiniteLossError,
    RunExistsError,
    RunInUseError,
    TrainConfig,
    evaluate,
    fit,
    load_checkpoint,
)

SCRIPT = ROOT / "tests" / "scripts" / "train_tiny.py"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic", "cifar", n_train=128, n_test=64, n_test_iid=64)


@pytest.mark.parametrize("arch,puzzle", [("base", False), ("abn", False), ("msabn", False), ("msabn", True)])
def test_tiny_run_trains_and_writes_its_files(data_root, tmp_path, arch, puzzle):
    train = get_dataset("synthetic", data_root, "train", transform=train_transform("cifar", 32))
    test = get_dataset("synthetic", data_root, "test_iid", transform=eval_transform("cifar", 32))
    set_seed(0)
    model = create_model(arch, "resnet20", train.num_classes)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, puzzle=puzzle, progress=False)
    fit(model, train, test, cfg, out_dir=tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "history.csv", "metrics.json", "checkpoint.pt"}
    hist = pd.read_csv(tmp_path / "history.csv")
    tr = hist[hist.split == "train"]
    assert list(tr.epoch) == [1, 2]
    assert tr.loss.iloc[1] < tr.loss.iloc[0], (f"{arch} (puzzle={puzzle}): the training loss did not fall: "
                                               f"{tr.loss.tolist()}")
    assert tr.attn.notna().all() == (arch != "base")
    assert tr.re.notna().all() == puzzle
    assert set(hist.split) == {"train", "test_iid"}
    cfg_json = load_json(tmp_path / "config.json")
    assert cfg_json["train"]["puzzle"] is puzzle and cfg_json["model"]["arch"] == arch
    assert "time_utc" in cfg_json["provenance"]
    metrics = load_json(tmp_path / "metrics.json")
    assert 0 <= metrics["final"]["test_iid"]["acc"] <= 100 and metrics["final"]["test_iid"]["n"] == 64
    assert load_checkpoint(tmp_path / "checkpoint.pt", model)["epoch"] == 2


def _run(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True, **kw)


def test_killed_and_resumed_equals_uninterrupted(data_root, tmp_path):
    "SIGKILL after the first epoch's checkpoint, then resume: the same weights as a run never stopped."
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = _run([data_root, whole, "--arch", "abn", "--deterministic"], timeout=300)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), data_root, cut, "--arch", "abn", "--deterministic"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = cut / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline: time.sleep(0.05)
    proc.send_signal(signal.SIGKILL); proc.wait()
    first = torch.load(ckpt, weights_only=False)
    assert first["epoch"] == 1, "the kill should land in the second epoch"
    r = _run([data_root, cut, "--arch", "abn", "--deterministic", "--resume"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming from checkpoint.pt" in r.stdout + r.stderr
    a, b = torch.load(whole / "checkpoint.pt", weights_only=False), torch.load(ckpt, weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after kill and resume"


def test_torchrun_two_gloo_processes_match_one_process(data_root, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = _run([data_root, one, "--arch", "msabn", "--epochs", "3"], timeout=300)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(SCRIPT), str(data_root), str(two), "--arch", "msabn", "--epochs", "3"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m1, m2 = load_json(one / "metrics.json"), load_json(two / "metrics.json")
    assert set(m1) == set(m2) and set(m1["final"]) == set(m2["final"])
    assert set(m1["final"]["test_iid"]) == set(m2["final"]["test_iid"])
    assert m2["final"]["test_iid"]["n"] == m1["final"]["test_iid"]["n"] == 64, "every test image counted once"
    assert m2["final"]["train"]["n"] == m1["final"]["train"]["n"] == 128
    assert load_json(two / "config.json")["world_size"] == 2
    h1, h2 = pd.read_csv(one / "history.csv"), pd.read_csv(two / "history.csv")
    assert list(h1.columns) == list(h2.columns) and len(h1) == len(h2)
    # the same global batch and data order: training losses agree closely, accuracies about the same
    tr1, tr2 = h1[h1.split == "train"], h2[h2.split == "train"]
    assert abs(tr1.loss.iloc[0] - tr2.loss.iloc[0]) < 0.05 * tr1.loss.iloc[0], (tr1.loss.tolist(), tr2.loss.tolist())
    assert abs(m1["final"]["train"]["acc"] - m2["final"]["train"]["acc"]) < 15, (m1["final"], m2["final"])
    # only rank 0 wrote files
    assert {p.name for p in two.iterdir()} == {"config.json", "history.csv", "metrics.json", "checkpoint.pt"}


# --- fast faults: synthetic tensors, ResNet-20 at 32 px, batch 2, fixed seeds ------------------------------------

class Tensors(Dataset):
    "n random 3 x 32 x 32 images, labels cycling over k classes (or given), with `targets` unless told not to."
    def __init__(self, n=6, k=2, labels=None, nan_at=(), targets=True):
        self.x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        for i in nan_at: self.x[i, 0, 0, 0] = float("nan")
        self.labels = list(labels) if labels is not None else [i % k for i in range(n)]
        if targets: self.targets = self.labels
    def __len__(self): return len(self.labels)
    def __getitem__(self, i): return {"image": self.x[i], "label": self.labels[i], "index": i}


CFG = TrainConfig(epochs=1, batch_size=2, lr=0.05, progress=False, device="cpu", deterministic=True)


def _model(seed=0, k=2, arch="base"):
    set_seed(seed)
    return create_model(arch, "resnet20", k)


def _fit(out, cfg=CFG, data=None, **kw):
    return fit(_model(), data if data is not None else Tensors(), None, cfg, out_dir=out, **kw)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_occupied_out_dir_is_refused_and_overwrite_keeps_the_old_run(tmp_path):
    out = tmp_path / "run"
    _fit(out)
    before = _snapshot(out)
    with pytest.raises(RunExistsError, match="pass resume=True to continue it, or overwrite=True") as e:
        _fit(out, TrainConfig(**{**CFG.__dict__, "lr": 0.01}))
    assert isinstance(e.value, FileExistsError) and str(out) in str(e.value)
    assert _snapshot(out) == before, "a refused fit must leave the run as it was"
    _fit(out, overwrite=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and _snapshot(aside[0]) == before, "overwrite=True keeps the old run, byte for byte, aside"
    assert {p.name for p in out.iterdir()} == {"config.json", "history.csv", "metrics.json", "checkpoint.pt"}


def test_a_second_fit_on_the_same_folder_fails_at_once(tmp_path):
    out, inside, release, seen = tmp_path / "run", threading.Event(), threading.Event(), {}
    def hold(epoch, step):
        inside.set(); release.wait(60)
    def first():
        try: _fit(out, on_step=hold)
        except BaseException as e: seen["first"] = e
    t = threading.Thread(target=first); t.start()
    assert inside.wait(60), "the first fit never started"
    t0 = time.perf_counter()
    with pytest.raises(RunInUseError, match="is in use: another fit is writing there"):
        _fit(out, TrainConfig(**{**CFG.__dict__, "lr": 0.5}))
    assert time.perf_counter() - t0 < 10, "the second fit must fail at once, not wait"
    release.set(); t.join(60)
    assert "first" not in seen, seen
    assert (
        load_json(out / "config.json")["train"]["lr"] == 0.05
        and load_checkpoint(out / "checkpoint.pt")["config"]["lr"] == 0.05
    )
    assert not (out / ".lock").exists()


def test_resume_with_a_changed_recipe_is_refused(tmp_path):
    out = tmp_path / "run"
    _fit(out, TrainConfig(**{**CFG.__dict__, "epochs": 2}))
    before = _snapshot(out)
    changed = TrainConfig(**{**CFG.__dict__, "epochs": 3, "lr": 0.5, "batch_size": 4})
    with pytest.raises(ConfigChangedError, match=r"batch_size: 2 -> 4; lr: 0\.05 -> 0\.5"):
        _fit(out, changed, resume=True)
    with pytest.raises(ConfigChangedError, match="already trained 2 epochs, more than epochs=1"):
        _fit(out, CFG, resume=True)
    assert _snapshot(out) == before


def test_resume_with_more_epochs_and_runtime_changes_continues(tmp_path, capsys):
    out = tmp_path / "run"
    _fit(out)
    more = TrainConfig(**{**CFG.__dict__, "epochs": 2, "eval_batch_size": 4, "num_workers": 0})
    m = _fit(out, more, resume=True)
    said = capsys.readouterr().out
    assert "epochs 1 -> 2: training continues to epoch 2" in said and "eval_batch_size None -> 4" in said, said
    assert pd.read_csv(out / "history.csv").epoch.tolist() == [1, 2] and m["epochs"] == 2
    assert load_json(out / "config.json")["resumed_from"]["changes"]["epochs"] == [1, 2]


@pytest.mark.parametrize("field,value,expected", [
    ("lr", float("nan"), "a finite number > 0"), ("alpha", float("nan"), "a finite number >= 0"),
    ("eval_every", 0, ">= 1"),
    ("eval_batch_size", -5, ">= 1"), ("epochs", 2.5, "a whole number"), ("batch_size", "32", "a whole number"),
    ("lr_gamma", -0.1, "(0, 1]"), ("momentum", 1.5, "[0, 1)"), ("weight_decay", -1.0, ">= 0"),
    ("milestones", (0.75, 0.5), "increasing fractions"), ("milestones", (0.5, 2.0), "(0, 1)"),
    ("amp", "fp16", "'auto', 'bf16' or 'off'"),
    ("puzzle_grid", (0, 2), "two whole numbers >= 1"), ("keep_best", 1, "True or False"), ("seed", -3, "[0, 2**32)")])
def test_train_config_refuses_values_that_cannot_train(field, value, expected):
    with pytest.raises(ValueError) as e: TrainConfig(**{field: value})
    assert (
        f"TrainConfig.{field} must be" in str(e.value) and expected in str(e.value) and repr(value) in str(e.value)
    ), str(e.value)


def test_summary_is_the_experiments_line():
    c = TrainConfig(epochs=4, batch_size=32, lr=0.1, milestones=(0.5, 0.75), weight_decay=5e-4)
    assert c.summary() == "4 epochs, batch 32, lr 0.1, milestones (0.5, 0.75), wd 0.0005"


@pytest.mark.parametrize("data,match", [
    (Tensors(0), "train_data is empty"), (Tensors(1), r"train_data has 1 image\(s\): not one training step at "
                                                      r"batch_size 2"),
    (Tensors(6, labels=[0, 1, 2, 0, 1, 0]), "label 2 .* the model, which has 2 classes"),
    (Tensors(6, labels=[0, 1, 2, 0, 1, 0], targets=False), "label 2 .* the model, which has 2 classes")])
def test_data_that_cannot_train_is_refused_before_any_step(tmp_path, data, match):
    steps = []
    with pytest.raises(ValueError, match=match):
        fit(_model(), data, None, CFG, out_dir=tmp_path / "run", on_step=lambda e, s: steps.append(s))
    if hasattr(data, "targets"): assert steps == [] and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_partial_batch_trains():
    m = fit(_model(), Tensors(3), None, TrainConfig(**{**CFG.__dict__, "batch_size": 32}))
    assert m["final"]["train"]["n"] == 3


def test_evaluate_takes_the_config(capfd):
    r = evaluate(_model(), Tensors(5), TrainConfig(batch_size=2, eval_batch_size=4, device="cpu", progress=False))
    assert r["n"] == 5 and 0 <= r["acc"] <= 100
    with pytest.raises(ValueError, match="the data is empty"): evaluate(_model(), Tensors(0), CFG)


def test_progress_false_means_silent_and_true_shows_bars(tmp_path, capfd):
    data = Tensors(4)
    fit(_model(), data, data, CFG, out_dir=tmp_path / "a"); evaluate(_model(), data, CFG)
    collect_attention(_model(arch="abn"), data, device="cpu", progress=CFG.progress)
    quiet = capfd.readouterr()
    assert quiet.out == "" and quiet.err == "", quiet
    loud = TrainConfig(**{**CFG.__dict__, "progress": True})
    fit(_model(), data, data, loud, out_dir=tmp_path / "b"); evaluate(_model(), data, loud)
    shown = capfd.readouterr()
    assert "epoch 1/1" in shown.out + shown.err and "eval" in shown.err, shown


# --- the fault sweep ----------------------------------------------------------------------------------------------

class _Killed(BaseException):
    "Stands in for a kill: nothing after it runs in fit."


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out, real = tmp_path / "run", torch.save
    two = TrainConfig(**{**CFG.__dict__, "epochs": 2})
    calls = []
    def full(obj, f):
        calls.append(1)
        if len(calls) == 2: raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f)
    monkeypatch.setattr(msabn.core.torch, "save", full)
    with pytest.raises(OSError, match="could not write checkpoint.pt .*No space left on device.*is intact") as e:
        _fit(out, two)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(msabn.core.torch, "save", real)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert not list(out.glob(".*.tmp")), "no temporary file is left behind"
    _fit(out, two, resume=True)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2


def test_a_write_killed_midway_leaves_the_checkpoint_and_its_temporary_is_removed(tmp_path, capsys):
    out = tmp_path / "run"
    _fit(out)
    # what kill -9 during the write leaves
    (out / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"the first half of a checkpoint")
    _fit(out, TrainConfig(**{**CFG.__dict__, "epochs": 2}), resume=True)
    assert "removed .checkpoint.pt.k1ll3d.tmp" in capsys.readouterr().out
    assert not list(out.glob(".*.tmp")) and load_checkpoint(out / "checkpoint.pt")["epoch"] == 2


def test_truncated_or_foreign_checkpoint_on_resume_says_what_to_do(tmp_path):
    out = tmp_path / "run"
    _fit(out)
    good = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="belongs to another model: num_classes is 2 in the checkpoint but "
                                              "3.*overwrite=True"):
        fit(_model(k=3), Tensors(6, k=3), None, CFG, out_dir=out, resume=True)
    (out / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint.*overwrite=True"):
        _fit(out, resume=True)


def test_read_only_out_dir_is_refused_before_training(tmp_path, monkeypatch):
    class ReadOnly:
        def __init__(self, *a, **kw): pass
        def acquire(self): raise PermissionError(errno.EACCES, "Permission denied")
        def release(self): pass
    monkeypatch.setattr(msabn.train.checkpoints, "FileLock", ReadOnly)
    steps = []
    with pytest.raises(PermissionError, match="cannot write to out_dir .*run.*choose a folder you can write to"):
        _fit(tmp_path / "run", on_step=lambda e, s: steps.append(s))
    assert steps == []


def test_nan_in_the_inputs_names_the_images(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"dataset indices \[\d\] contain NaN or infinite values"):
        _fit(tmp_path / "run", data=Tensors(6, nan_at=(3,)))


def test_resume_on_an_empty_folder_starts_fresh_but_never_over_results(tmp_path, capsys):
    empty = tmp_path / "empty"; empty.mkdir()
    _fit(empty, resume=True)
    assert "first run in empty/ (no checkpoint to resume from yet): training from the start" in capsys.readouterr().out
    (empty / "checkpoint.pt").unlink()           # results without their checkpoint: starting fresh would replace them
    with pytest.raises(RunExistsError, match="no checkpoint.pt to resume from, only history.csv, metrics.json"):
        _fit(empty, resume=True)
    with pytest.raises(ValueError, match="pass one of them"): _fit(empty, resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"): _fit(tmp_path / "file")


def test_ctrl_c_during_the_epochs_evaluation_loses_no_epoch(tmp_path, monkeypatch):
    two = TrainConfig(**{**CFG.__dict__, "epochs": 2})
    data = Tensors(6)
    whole = _model(); fit(whole, data, data, two, out_dir=tmp_path / "whole")
    real, calls = msabn.train.engine.evaluate, []
    def ctrl_c(*a, **kw):
        calls.append(1)
        if len(calls) == 1: raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(msabn.train.engine, "evaluate", ctrl_c)
    with pytest.raises(KeyboardInterrupt): fit(_model(), data, data, two, out_dir=tmp_path / "cut")
    ck = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (ck["epoch"], ck["step"], ck["pending_eval"]) == (1, 0, True), ("the trained epoch is saved, its evaluation "
                                                                           "pending")
    cut = _model(); fit(cut, data, data, two, out_dir=tmp_path / "cut", resume=True)
    for (k, a), b in zip(whole.state_dict().items(), cut.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    h = lambda d: (
        pd.read_csv(tmp_path / d / "history.csv").drop(columns=["seconds", "images_per_s"]).fillna(-1).to_dict()
    )
    assert h("whole") == h("cut")


def test_killed_before_the_history_is_written_is_repaired_on_resume(tmp_path, monkeypatch):
    out, real = tmp_path / "run", msabn.train.engine._write_history
    def killed(rows, path):
        if len(rows) == 2: raise _Killed()
        real(rows, path)
    monkeypatch.setattr(msabn.train.engine, "_write_history", killed)
    with pytest.raises(_Killed): _fit(out, TrainConfig(**{**CFG.__dict__, "epochs": 2}))
    monkeypatch.setattr(msabn.train.engine, "_write_history", real)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2 and len(pd.read_csv(out / "history.csv")) == 1
    m = _fit(out, TrainConfig(**{**CFG.__dict__, "epochs": 2}), resume=True)
    assert pd.read_csv(out / "history.csv").epoch.tolist() == [1, 2]
    assert load_json(out / "metrics.json")["final"]["train"]["n"] == m["final"]["train"]["n"] == 6
