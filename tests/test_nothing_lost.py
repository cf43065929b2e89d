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
    "The README's main command on a fresh clone: Tables 4/5 kept as they were, their results.json entries gone."
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
    save_json({"fingerprint": fp, "overrides": dict(exp.overrides), "cells": cells,
               "splits": list(exp.data.eval_splits), "data": {"train": 30, "test": 30}, "num_classes": 10},
              folder / "metrics.json")
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


class _Tensors(torch.utils.data.Dataset):
    "n random 3 x 32 x 32 images of dataset seed `seed`, labels from `labels` (default: cycling over two classes)."
    def __init__(self, n=6, seed=0, labels=None):
        self.x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        self.targets = list(labels) if labels is not None else [i % 2 for i in range(n)]
    def __len__(self): return len(self.targets)
    def __getitem__(self, i): return {"image": self.x[i], "label": self.targets[i], "index": i}


def _fit(out, data, epochs=1, **kw):
    from msabn.core import set_seed
    from msabn.models import create_model
    from msabn.train import TrainConfig, fit
    set_seed(0)
    cfg = TrainConfig(epochs=epochs, batch_size=2, lr=0.05, progress=False, device="cpu", deterministic=True)
    return fit(create_model("base", "resnet20", 2), data, None, cfg, out_dir=out, **kw)


def test_resuming_on_other_data_is_refused_naming_what_differs(tmp_path):
    from msabn.train import ConfigChangedError
    out = tmp_path / "run"
    _fit(out, _Tensors(4))
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigChangedError, match=r"was trained on other data \(train 4 -> 6, labels '[0-9a-f]+' -> "):
        _fit(out, _Tensors(6, seed=1, labels=[1, 1, 0, 0, 1, 0]), epochs=2, resume=True)
    with pytest.raises(ConfigChangedError, match=r"other data \(labels"):   # as many images, other labels
        _fit(out, _Tensors(4, labels=[1, 1, 0, 0]), epochs=2, resume=True)
    assert (out / "checkpoint.pt").read_bytes() == before
    assert _fit(out, _Tensors(4), epochs=2, resume=True)["epochs"] == 2   # the same data resumes


def test_a_checkpoint_with_nan_weights_is_refused_and_never_written(tmp_path):
    from msabn.train import CheckpointError, load_checkpoint, write_checkpoint
    out = tmp_path / "run"
    _fit(out, _Tensors(4))
    ck = load_checkpoint(out / "checkpoint.pt")
    good = (out / "checkpoint.pt").read_bytes()
    ck["model"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in ck["model"].items()}
    with pytest.raises(CheckpointError, match="not saved: the weights hold NaN or infinite values .* kept as it was"):
        write_checkpoint({k: v for k, v in ck.items() if k != "format"}, out / "checkpoint.pt")
    assert (out / "checkpoint.pt").read_bytes() == good
    torch.save(ck, out / "checkpoint.pt")                        # one written by other means
    with pytest.raises(CheckpointError, match=r"NaN weights in .*checkpoint.pt: \d+ tensor\(s\)"):
        load_checkpoint(out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="NaN weights in") as e:
        _fit(out, _Tensors(4), epochs=2, resume=True)
    assert "last good checkpoint" not in str(e.value) and "model it was made for" not in str(e.value)


def test_a_linked_box_file_is_edited_where_it_points(tmp_path):
    shared = tmp_path / "shared" / "boxes.json"
    BoxStore(shared).set(1, (0, 0, 4, 4), (8, 8))
    (tmp_path / "mine").mkdir(); link = tmp_path / "mine" / "boxes.json"
    link.symlink_to(shared)
    BoxStore(link).set(2, (1, 1, 5, 5), (8, 8))
    assert link.is_symlink() and link.resolve() == shared.resolve()
    assert BoxStore(shared).boxes == {1: (0, 0, 4, 4), 2: (1, 1, 5, 5)}
    assert (shared.parent / "boxes.json.bak").is_file() and not (link.parent / "boxes.json.bak").exists()


def test_float_cifar_pixels_are_read_as_pixels_or_refused(tmp_path):
    import pickle

    import numpy as np

    from msabn.data import CIFAR100, DataError
    from msabn.data.formats import write_cifar100_fixture
    root = write_cifar100_fixture(tmp_path, n_train=4, n_test=2)
    pk = root / "cifar-100-python" / "train"
    entry = pickle.loads(pk.read_bytes())
    want = CIFAR100(root, "train", verify=False).load_image(1)
    entry["data"] = entry["data"].astype(np.float32)                 # re-saved as floats 0..255
    pk.write_bytes(pickle.dumps(entry))
    with pytest.warns(UserWarning, match="float32 whole numbers 0..255: read as uint8 pixels"):
        ds = CIFAR100(root, "train", verify=False)
    assert torch.equal(ds.load_image(1), want)                       # not 255x too bright
    entry["data"] = entry["data"] / 255                              # floats 0..1
    pk.write_bytes(pickle.dumps(entry))
    with pytest.raises(DataError, match=r"train: 'data' holds float\d+ values from [0-9.]+ to 1; expected uint8 "):
        CIFAR100(root, "train", verify=False)


def test_a_float_cars_class_is_refused_naming_the_file_and_value(tmp_path):
    import numpy as np
    import scipy.io

    from msabn.data import DataError, StanfordCars
    from msabn.data.formats import CARS_ANNOS, write_cars_fixture
    base = write_cars_fixture(tmp_path, num_classes=3, n_train=1, n_test=1)
    mat = base / CARS_ANNOS["train"]
    annos = scipy.io.loadmat(mat)["annotations"]
    rows = [{k: a[k] for k in annos.dtype.names} for a in annos.reshape(-1)]
    rows[1]["class"] = np.array([[1.7]])
    dt = [(k, "O") for k in annos.dtype.names]
    table = np.array([tuple(r[k] for k in annos.dtype.names) for r in rows], dt).reshape(1, -1)
    scipy.io.savemat(mat, {"annotations": table})
    with pytest.raises(DataError, match=r"cars_train_annos.mat: annotation 2 \(00002.jpg\) has class 1.7, not a whole"):
        StanfordCars(tmp_path, "train")


def test_a_fully_transparent_image_is_refused_and_transparency_goes_on_white(tmp_path):
    import numpy as np
    from PIL import Image

    from msabn.data import DataError, read_image
    a = np.zeros((4, 4, 4), np.uint8); a[..., 0] = 200                # red, hidden by alpha 0
    Image.fromarray(a, "RGBA").save(tmp_path / "clear.png")
    with pytest.raises(DataError, match="clear.png: every pixel is fully transparent"):
        read_image(tmp_path / "clear.png")
    a[0, 0, 3] = 255                                                  # one visible pixel
    Image.fromarray(a, "RGBA").save(tmp_path / "cut.png")
    import msabn.data.items as items
    items._SAID_ALPHA.clear()
    with pytest.warns(UserWarning, match="transparent pixels composited on white"):
        x = read_image(tmp_path / "cut.png")
    assert x[:, 0, 0].tolist() == [200, 0, 0] and x[:, 1, 1].tolist() == [255, 255, 255]


# --- unclear, made clear ---------------------------------------------------------------------------------------------
def test_a_full_disk_while_saving_a_checkpoint_says_so_and_keeps_the_previous(tmp_path, monkeypatch):
    import errno

    import msabn.core as core
    from msabn.train import write_checkpoint
    good = write_checkpoint({"model": {"w": torch.ones(2)}}, tmp_path / "checkpoint.pt").read_bytes()
    real = core.os.fdopen
    class Full:
        def __init__(self, f): self.f, self.n = f, 0
        def write(self, b):
            self.n += 1
            if self.n > 2: raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)
        def __getattr__(self, k): return getattr(self.f, k)
        def __enter__(self): return self
        def __exit__(self, *a): return self.f.__exit__(*a)
    monkeypatch.setattr(core.os, "fdopen", lambda *a, **k: Full(real(*a, **k)))
    with pytest.raises(OSError, match=r"could not write checkpoint.pt in .*No space left on device.*the previous "
                                      r"checkpoint.pt, if there was one, is intact") as e:
        write_checkpoint({"model": {"w": torch.zeros(1000)}}, tmp_path / "checkpoint.pt")
    assert e.value.errno == errno.ENOSPC
    assert (tmp_path / "checkpoint.pt").read_bytes() == good and len(list(tmp_path.iterdir())) == 1


def test_a_diverged_model_is_named_with_its_lr_and_not_saved(tmp_path):
    from msabn.core import set_seed
    from msabn.models import create_model
    from msabn.train import NonFiniteLossError, TrainConfig, fit
    out = tmp_path / "run"
    _fit(out, _Tensors(2))
    good = (out / "checkpoint.pt").read_bytes()
    set_seed(0); model = create_model("base", "resnet20", 2)
    def blow_up(epoch, step):                                        # the last step of epoch 2 leaves inf weights
        for p in model.parameters(): p.data.fill_(float("inf"))
    cfg = TrainConfig(epochs=2, batch_size=2, lr=0.05, progress=False, device="cpu", deterministic=True)
    with pytest.raises(NonFiniteLossError, match=r"the model diverged: \d+ weight tensor\(s\) hold NaN or infinite "
                                                 r"values after epoch 2 \(base resnet20, lr 0.05\).*last good "
                                                 r"checkpoint is kept: checkpoint.pt"):
        fit(model, _Tensors(2), None, cfg, out_dir=out, resume=True, on_step=blow_up)
    assert (out / "checkpoint.pt").read_bytes() == good
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1   # no accuracy recorded beside a NaN loss


def test_a_linked_report_folder_is_written_where_it_points(tmp_path):
    _tables(tmp_path / "runs", ("table4",), (0,))
    (tmp_path / "elsewhere").mkdir(); (tmp_path / "pf").mkdir()
    (tmp_path / "pf" / "tiny_seeds-0").symlink_to(tmp_path / "elsewhere")
    for _ in range(2):                                              # the second report used to fail in rmtree
        write_report(tmp_path / "runs", tmp_path / "pf", "tiny", [0], log=QUIET)
    assert (tmp_path / "pf" / "tiny_seeds-0").is_symlink() and (tmp_path / "elsewhere" / "table4_cub.md").is_file()


def test_ctrl_c_and_sigterm_end_in_one_line(tmp_path, monkeypatch, capsys):
    import signal

    import msabn.report.write as write
    _tables(tmp_path / "runs", ("table4",), (0,))
    def interrupted(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(write, "write_report", interrupted)
    assert report_main(["--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "pf")]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "msabn_report: interrupted; the earlier report is left as it was (nothing half-written)"]
    monkeypatch.setattr(runner, "run_experiments", lambda **kw: os.kill(os.getpid(), signal.SIGTERM))
    assert runner.main(["table1", "--runs-dir", str(tmp_path / "r")]) == 143
    assert capsys.readouterr().err.strip().splitlines() == [
        "msabn_run: terminated (SIGTERM); the run in progress is half-written: the same command redoes it, keeping its "
        "finished cells"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_late_or_vague_messages_are_early_and_say_what_to_do(tmp_path):
    import numpy as np

    from msabn.models import create_model
    model = create_model("base", "resnet20", 2)
    with pytest.raises(ValueError, match=r"looks like channels last \(B x H x W x C\): permute it"):
        model(torch.zeros(2, 32, 32, 3))
    store = BoxStore(tmp_path / "b.json", meta={"n_images": np.int64(5)})   # numpy ints: a plain JSON TypeError before
    assert store.set(1, (0, 0, 4, 4), (8, 8)) and store.meta["n_images"] == 5
    with pytest.raises(ValueError, match=r"b2.json: meta 'when' is a .* which a box file cannot hold"):
        BoxStore(tmp_path / "b2.json", meta={"when": object()})
    with pytest.raises(OverrideError, match=r"size='4096': expected .* <= 2048"):
        parse_overrides(["size=4096"])
    assert runner.main(["table1", "--seeds", str(2**32), "--runs-dir", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def test_data_that_cannot_serve_are_refused_before_a_run_folder_is_made(tmp_path, capsys, monkeypatch):
    import msabn.experiments.data as data

    ro, runs = tmp_path / "read_only", ["--runs-dir", str(tmp_path / "r")]
    ro.mkdir()
    os.chmod(ro, 0o555)   # read-only to users; root writes anyway, so os.access is told what a user would see
    real_access = os.access
    monkeypatch.setattr(data.os, "access", lambda p, mode: Path(p) != ro and real_access(p, mode))
    assert runner.main(["table1", "--data-root", str(ro), *runs]) == 2
    assert f"but {ro} is not a folder msabn can write to" in capsys.readouterr().err
    monkeypatch.undo()
    os.chmod(ro, 0o755)
    for split in ("train", "test"):     # an own dataset of one class
        (tmp_path / "mine" / split / "cat").mkdir(parents=True)
        (tmp_path / "mine" / split / "cat" / "0.png").write_bytes(b"")
    own = ["--set", "dataset=folder", "--set", "data=mine", "--data-root", str(tmp_path)]
    assert runner.main(["table1", *own, *runs]) == 2
    assert "holds 1 class folder(s) ['cat']; a classifier needs two or more" in capsys.readouterr().err
    assert not (tmp_path / "r").exists(), "nothing may start before the data are checked"


# --- the box store's journal: fast edits on large files, nothing lost -----------------------------------------------
@pytest.fixture
def journaled(monkeypatch):
    "Every box file takes its edits in the journal (as files of over JOURNAL_FROM bytes do); folded every 5 edits."
    import msabn.hitl.annotate as annotate
    monkeypatch.setattr(annotate, "JOURNAL_FROM", 0)
    monkeypatch.setattr(annotate, "COMPACT_EVERY", 5)


def test_journal_edits_are_on_disk_seen_by_other_writers_and_folded(tmp_path, journaled):
    path = tmp_path / "boxes.json"
    a, b = BoxStore(path, meta={"n_images": 100}), BoxStore(path)
    a.set(1, (0, 0, 4, 4), (8, 8)); a.skip(2)
    assert json.loads(path.read_text())["boxes"] == {}                   # in the journal, not the box file yet ...
    assert BoxStore(path).boxes == {1: (0, 0, 4, 4)} and BoxStore(path).skipped == [2]   # ... and read back from it
    with pytest.raises(BoxStoreError, match="image 1 was changed by another writer"):
        b.set(1, (1, 1, 2, 2), (8, 8))                                   # conflicts are still refused
    b.set(3, (0, 0, 2, 2), (8, 8)); a.remove(1)
    assert a.boxes == {3: (0, 0, 2, 2)} and b.reload().boxes == {3: (0, 0, 2, 2)}
    a.set(4, (0, 0, 2, 2), (8, 8))                                       # the 5th journal line: folded into the file
    assert path.with_name("boxes.json.journal").stat().st_size == 0
    on_disk = json.loads(path.read_text())
    assert on_disk["boxes"].keys() == {"3", "4"} and on_disk["skipped"] == [2]
    assert json.loads(path.with_name("boxes.json.bak").read_text()) == on_disk   # .bak: the same whole state
    b.set(5, (0, 0, 2, 2), (8, 8))                                       # b sees that the file was rewritten
    with BoxStore(path) as c: assert c.indices == [3, 4, 5]
    assert json.loads(path.read_text())["boxes"].keys() == {"3", "4", "5"}     # close() folds the journal


def test_journal_torn_line_is_dropped_and_a_damaged_one_refused(tmp_path, journaled):
    path = tmp_path / "boxes.json"; journal = path.with_name("boxes.json.journal")
    s = BoxStore(path); s.set(1, (0, 0, 4, 4), (8, 8))
    with open(journal, "ab") as f: f.write(b'{"image": 2, "entry": {"box": [0, ')   # a crash mid-append
    t = BoxStore(path)
    assert t.boxes == {1: (0, 0, 4, 4)}
    t.set(3, (0, 0, 2, 2), (8, 8))                                       # the torn line is cut off, not glued to
    assert BoxStore(path).indices == [1, 3]
    with open(journal, "ab") as f: f.write(b'{"image": 2, "entry": {"box": [0, 0, 9, 9], "image_size": [8, 8]}, '
                                           b'"skipped": false}\n')
    before = journal.read_bytes()
    with pytest.raises(BoxStoreError, match=r"boxes.json.journal line 3 is not an edit of this box file .*reaches "
                                            r"outside.*move the journal away"):
        BoxStore(path)
    assert journal.read_bytes() == before


def test_a_damaged_box_file_is_recovered_from_bak_and_the_journal(tmp_path, journaled):
    path = tmp_path / "boxes.json"
    s = BoxStore(path)
    for i in range(7): s.set(i, (0, 0, 2, 2), (8, 8))                   # folded after 5; 2 in the journal
    path.write_text(path.read_text()[:30])
    with pytest.raises(BoxStoreError, match="the previous version is in boxes.json.bak"): BoxStore(path)
    shutil.copyfile(path.with_name("boxes.json.bak"), path)             # what the message says to do
    assert BoxStore(path).indices == list(range(7))                       # nothing lost


def test_two_writers_on_a_journal_lose_no_acknowledged_box(tmp_path, journaled):
    import threading
    path = tmp_path / "boxes.json"; BoxStore(path)
    done = {0: [], 1: []}
    def writer(start):
        s = BoxStore(path)
        for k in range(40):
            i = start + 2 * k
            while True:
                try: s.set(i, (0, 0, 1 + k % 7, 1 + k % 5), (8, 8)); break
                except BoxStoreError: s = BoxStore(path)
            done[start].append(i)
    ts = [threading.Thread(target=writer, args=(j,)) for j in (0, 1)]
    for t in ts: t.start()
    for t in ts: t.join(120)
    assert sorted(done[0] + done[1]) == list(range(80)) and BoxStore(path).indices == list(range(80))


def test_a_large_image_is_decoded_once_and_a_folder_named_like_an_image_is_said(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    import msabn.data.items as items
    from msabn.data import DataError, read_image
    monkeypatch.setattr(items, "DECODED", items._Decoded(64, min_pixels=100))
    Image.fromarray(np.full((20, 30, 3), 7, np.uint8)).save(tmp_path / "big.png")
    decoded = []
    real = items._decode
    monkeypatch.setattr(items, "_decode", lambda p: decoded.append(p) or real(p))
    a = read_image(tmp_path / "big.png"); a[:] = 0                     # a caller pasting into its copy ...
    b = read_image(tmp_path / "big.png")
    assert len(decoded) == 1 and int(b.min()) == 7                     # ... does not change what the next read gets
    Image.fromarray(np.full((20, 30, 3), 9, np.uint8)).save(tmp_path / "big.png")
    os.utime(tmp_path / "big.png", ns=(1, 1))
    assert int(read_image(tmp_path / "big.png").min()) == 9 and len(decoded) == 2   # an edited file is read again
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(DataError, match="x.jpg: a folder, not an image file"): read_image(tmp_path / "x.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    with pytest.raises(FileNotFoundError, match="loop.jpg: a link to nothing"): read_image(tmp_path / "loop.jpg")


def test_sweep_fixes(tmp_path, bench, capsys):
    from msabn.data import get_dataset
    BoxStore(tmp_path / "b.json").set(1, (0, 0, 2, 2), (8, 8))
    bom = tmp_path / "bom.json"; bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "b.json").read_bytes())
    assert BoxStore(bom).boxes == {1: (0, 0, 2, 2)}                     # saved by an editor that adds a BOM
    assert report_main(["--seeds", "-1", "--out", str(tmp_path / "pf")]) == 2
    assert "msabn_report: --seeds -1: a seed is a whole number, 0 or more" in capsys.readouterr().err
    raw = get_dataset("synthetic", bench, "train")
    with pytest.raises(ValueError, match=r"under one pixel wide or high .*normalised \[0, 1\] boxes\?"):
        CopyReplace(raw, [1, 2], boxes={1: (0, 0, 0.5, 0.5), 2: (0, 0, 0.4, 0.4)})
    with pytest.raises(OverrideError, match=r"override epochs=\[2\]: a list; expected a whole number"):
        parse_overrides('{"epochs": [2]}')                              # was taken as epochs=2 unseen
    assert parse_overrides('{"rows": ["Base", "ABN"]}') == {"rows": "Base,ABN"}
    from msabn.train import CheckpointError, load_checkpoint
    (tmp_path / "checkpoint.pt").mkdir()
    with pytest.raises(CheckpointError, match="checkpoint.pt is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_the_last_unclear_sweep_items_say_what_is_wrong(tmp_path, capsys):
    from msabn.report import write_index
    (tmp_path / "f").write_text("")
    with pytest.raises(BoxStoreError, match=r"f/boxes.json: the box file cannot be made: .*/f is a file, not a folder"):
        BoxStore(tmp_path / "f" / "boxes.json")
    (tmp_path / "b.json.journal").mkdir()
    with pytest.raises(BoxStoreError, match=r"b.json.journal: the box file's journal is a folder"):
        BoxStore(tmp_path / "b.json").set(1, (0, 0, 2, 2), (8, 8))
    assert runner.main(["table1", "--fast-dev-run", "0", "--runs-dir", str(tmp_path / "r")]) == 2
    assert "--fast-dev-run 0: expected a whole number of batches, 1 or more" in capsys.readouterr().err
    (tmp_path / "pf" / "studies" / "one").mkdir(parents=True)    # a folder of studies, each with its own page
    (tmp_path / "pf" / "studies" / "one" / "README.md").write_text("# A study of one thing\n")
    index = write_index(tmp_path / "pf", log=QUIET).read_text()
    assert "- [one/](studies/one/README.md): A study of one thing" in index and "Files: \n" not in index, index


def test_a_full_disk_or_a_file_in_the_way_while_making_the_embedded_data_names_the_folder(tmp_path, monkeypatch):
    import errno

    import msabn.data.synthetic as synthetic
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"f/s: .*f is a file, so the embedded data cannot be written there"):
        synthetic.make_synthetic(tmp_path / "f" / "s", "cifar", n_train=4, n_test=2, n_test_iid=2)
    def full(*a, **k): raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(synthetic, "_write_cub", full)
    with pytest.raises(OSError, match=r"writing the embedded data into .*/s failed \(No space left on device\); "
                                      r"nothing was left behind") as e:
        synthetic.make_synthetic(tmp_path / "s", "cifar", n_train=4, n_test=2, n_test_iid=2)
    assert e.value.errno == errno.ENOSPC and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_renamed_seed_folder_is_named_as_such(tmp_path):
    from msabn.report import collect_runs
    _tables(tmp_path / "runs", ("table4",), (1,))
    (tmp_path / "runs" / "tiny" / "table4" / "seed1").rename(tmp_path / "runs" / "tiny" / "table4" / "seed5")
    records, left_out = collect_runs(tmp_path / "runs", "tiny")
    assert records == [] and left_out == ["tiny/table4/seed5: made for seed 1, not 5 (a renamed or copied folder?): "
                                          "rename it back to seed1, or remove it, not reported"]
