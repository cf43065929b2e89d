"""The training engine across modules: every model type trains, kill-and-resume, torchrun with gloo."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT
from msabn.core import load_json, set_seed
from msabn.datasets import get_dataset
from msabn.models import create_model
from msabn.synthetic import make_synthetic
from msabn.train import TrainConfig, fit, load_checkpoint
from msabn.transforms import eval_transform, train_transform

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
    assert tr.loss.iloc[1] < tr.loss.iloc[0], f"{arch} (puzzle={puzzle}): the training loss did not fall: {tr.loss.tolist()}"
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
    proc = subprocess.Popen([sys.executable, str(SCRIPT), data_root, cut, "--arch", "abn", "--deterministic"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
