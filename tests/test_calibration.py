"""The calibration instrument (benchmarks/calibration.py): a variation of the frozen smoke settings is trained,
recorded with its variation, tabled apart from the frozen settings' runs, and not trained twice; a bad variation
is refused before anything trains."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from conftest import ROOT

from msabn.experiments import get_experiment

SCRIPT = [sys.executable, "benchmarks/calibration.py"]
TINY = ["--tables", "table1", "--seeds", "0", "1", "--modes", "Base", "Base (other init)", "--threads", "1",
        "--vary", "n_train=48", "n_test=24", "epochs=1", "spurious=0.9"]


def _run(args, out):
    return subprocess.run(SCRIPT + args + ["--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def test_a_variation_is_recorded_tabled_apart_and_resumed(tmp_path):
    out = tmp_path / "cal"
    r = _run(TINY, out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and {x["vary"] for x in recs} == {"n_train=48 n_test=24 epochs=1 spurious=0.9"}
    assert {(x["mode"], x["seed"]) for x in recs} == {(m, s) for m in ("Base", "Base (other init)") for s in (0, 1)}
    # 48 images x 1 epoch: the variation was applied
    assert all(x["image_steps"] == 48 and 0 <= x["test"] <= 100 for x in recs)
    page = (out / "README.md").read_text()
    assert "## Variations of them" in page and ("| `n_train=48 n_test=24 epochs=1 spurious=0.9` | CIFAR-100 (table1) | "
                                                "Base - Base (other init), paired | 2 |") in page
    assert "## The frozen smoke settings" in page and str(tmp_path) not in page
    again = _run(TINY, out)                                # every run recorded: nothing is trained again
    assert again.returncode == 0 and len((out / "records.jsonl").read_text().splitlines()) == 4, again.stderr[-2000:]
    assert len(json.loads((out / "results.json").read_text())["machine_img_per_s_by_run"]) == 2


def test_a_bad_variation_is_refused_naming_the_valid_keys(tmp_path):
    r = _run(["--tables", "table1", "--vary", "spurios=0.9"], tmp_path / "cal")
    assert r.returncode != 0 and "--vary 'spurios=0.9'" in r.stderr and "spurious" in r.stderr and "epochs" in r.stderr
    assert not (tmp_path / "cal").exists()                 # refused before anything was written


def test_a_size_variation_draws_and_feeds_the_network_at_that_size():
    spec = importlib.util.spec_from_file_location("calibration", ROOT / "benchmarks" / "calibration.py")
    cal = importlib.util.module_from_spec(spec); spec.loader.exec_module(cal)
    frozen = get_experiment("table4", "smoke")
    exp = cal.varied(frozen, cal.parse_vary(["size=48", "spurious=0.4", "epochs=16"]))
    assert exp.data.size == 48 and exp.data.synthetic["size"] == 48    # no resize between the drawing and the network
    assert exp.data.synthetic["spurious"] == 0.4 and exp.train.epochs == 16
    assert frozen.data.size == 64 and frozen.data.synthetic["spurious"] == 0.925   # the frozen preset is untouched


def test_a_probe_on_data_read_image_by_image_is_refused_before_anything_runs(tmp_path):
    r = _run(["--tables", "table2", "--modes", "Base", "habitat probe"], tmp_path / "cal")
    assert (
        r.returncode != 0 and "table2" in r.stderr and "'imagenet' recipe" in r.stderr and "'habitat probe'" in r.stderr
    )
    assert "machine figure" not in r.stdout and not (tmp_path / "cal").exists()
