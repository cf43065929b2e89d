"""Copy-replace across modules: pixels on the embedded benchmark, boxes from a person's store file, scores at the
input's size, reproducibility under fit's seeding, the empty pool, and the benchmark script end to end."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import ROOT
from torchvision.transforms.v2 import functional as TF

from msabn.data import ImageDataset, eval_transform, get_dataset, make_synthetic, train_transform
from msabn.hitl import BoxEditor, BoxStore, CopyReplace, EmptyPoolError, box_pixels, finetune, score_attention
from msabn.models import ModelOutput
from msabn.train import SeededSamples, TrainConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("cr") / "syn", "cifar", n_train=40, n_test=16, n_test_iid=4)


def test_pasted_region_is_the_donor_patch_resized(bench):
    raw = get_dataset("synthetic", bench, "train")
    pool = list(range(0, 40, 3))
    cr = CopyReplace(raw, pool)
    torch.manual_seed(0)
    seen = 0
    for i in pool:
        s = cr[i]
        d = s["donor"]
        assert d in pool and d != i
        t, dn = raw[i], raw[d]
        tx0, ty0, tx1, ty1 = box_pixels(t["box"][0].tolist(), 32, 32)
        dx0, dy0, dx1, dy1 = box_pixels(dn["box"][0].tolist(), 32, 32)
        want = TF.resize(
            dn["image"].as_subclass(torch.Tensor)[:, dy0:dy1, dx0:dx1], [ty1 - ty0, tx1 - tx0], antialias=True
        )
        assert torch.equal(s["image"][:, ty0:ty1, tx0:tx1], want)                       # the donor's patch, resized
        outside = torch.ones(32, 32, dtype=torch.bool); outside[ty0:ty1, tx0:tx1] = False
        assert torch.equal(s["image"][:, outside], t["image"][:, outside])              # nothing else changed
        assert s["label"] == int(raw.targets[d]) and s["label"] == dn["label"]         # label of the pasted object
        seen += s["label"] != t["label"]
    assert seen > 0, "with ten classes some donors must be of another class"
    for i in set(range(40)) - set(pool):
        s = cr[i]
        assert s["donor"] == -1 and torch.equal(s["image"], raw[i]["image"]) and s["label"] == raw[i]["label"]


def test_same_class_policy_keeps_labels(bench):
    raw = get_dataset("synthetic", bench, "train")
    cr = CopyReplace(raw, range(40), label_policy="same_class")
    torch.manual_seed(1)
    by_class = {c: (raw.targets == c).sum().item() for c in range(10)}
    for i in range(40):
        s = cr[i]
        assert s["label"] == raw[i]["label"]
        if by_class[raw[i]["label"]] > 1: assert s["donor"] >= 0 and int(raw.targets[s["donor"]]) == s["label"]
        else: assert s["donor"] == -1


def test_person_boxes_from_the_store_file_and_seeded_draws(bench, tmp_path):
    raw = get_dataset("synthetic", bench, "train", transform=train_transform("cifar", 32))
    store = BoxStore(tmp_path / "boxes.json")
    store.set(3, (0, 0, 16, 16), (32, 32))     # the person's boxes: the image's top-left quarter
    store.set(7, (16, 16, 32, 32), (32, 32))
    boxes = BoxStore(tmp_path / "boxes.json").boxes   # as a new kernel reads them
    cr = CopyReplace(raw.with_transform(None), store.indices, boxes=boxes)
    s3, s7 = cr[3], cr[7]
    assert (s3["donor"], s7["donor"]) == (7, 3)
    assert torch.equal(s3["image"][:, :16, :16], cr.dataset[7]["image"][:, 16:, 16:])   # same size: pasted as is
    assert s3["box"].tolist() == [[0, 0, 16, 16]]
    # under fit's seeding, the draws (and the augmentation after them) repeat exactly
    seeded = lambda: SeededSamples(CopyReplace(raw, store.indices, boxes=boxes, p=0.5), seed=4)
    a, b = seeded(), seeded()
    for e in range(3):
        a.set_epoch(e); b.set_epoch(e)
        for i in (3, 7):
            assert a[i]["donor"] == b[i]["donor"] and torch.equal(a[i]["image"], b[i]["image"])


class _BoxMap(nn.Module):
    "A stand-in model whose 8 x 8 attention map is 1 exactly on the cells of one box (in 32 px input pixels)."
    def __init__(self, box32):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        m = torch.zeros(1, 1, 8, 8); x0, y0, x1, y1 = (v // 4 for v in box32); m[..., y0:y1, x0:x1] = 1
        self.register_buffer("m", m)
        self.config = {"num_classes": 2}
    def forward(self, x):
        b = len(x)
        return ModelOutput(
            torch.zeros(b, 2) + self.w, torch.zeros(b, 2), self.m.expand(b, -1, -1, -1), torch.zeros(b, 2, 8, 8)
        )


class _FixedBox(ImageDataset):
    "Four 64 px images with the object in the same box (16, 16, 48, 48)."
    def __init__(self, transform=None):
        super().__init__([0, 1, 0, 1], ["a", "b"], torch.tensor([[16., 16., 48., 48.]] * 4), transform)
    def load_image(self, i):
        from torchvision import tv_tensors
        return tv_tensors.Image(torch.full((3, 64, 64), 50 * i, dtype=torch.uint8))


def test_scores_use_the_box_at_the_input_size():
    # 64 px images resized to 32: the box becomes (8, 8, 24, 24)
    data = _FixedBox(transform=eval_transform("cifar", 32))
    on = score_attention(_BoxMap((8, 8, 24, 24)), data, device="cpu")
    off = score_attention(_BoxMap((0, 0, 8, 8)), data, device="cpu")
    assert on.image_size == (32, 32) and on.boxes.tolist() == [[8, 8, 24, 24]] * 4
    # the 8x8 map, upsampled bilinearly, spills one pixel past each edge of the 16 x 16 box: 64 of 320 attention pixels
    assert np.allclose(on.frac_attn_out, 64 / 320)
    assert off.frac_attn_out.min() == 1.0     # every attention pixel outside the box


def test_empty_pool_is_said_not_run(bench, tmp_path):
    ev = eval_transform("cifar", 32)
    train, test = (
        get_dataset("synthetic", bench, "train", transform=ev),
        get_dataset("synthetic", bench, "test", transform=ev),
    )
    model = _BoxMap((8, 8, 24, 24)); model.config = {"num_classes": 10}
    cfg = TrainConfig(epochs=1, batch_size=8, progress=False)
    with pytest.raises(EmptyPoolError, match="the annotated pool is empty"):
        finetune(model, train, test, cfg, "copy_replace", [])
    ed = BoxEditor(BoxStore(tmp_path / "b.json"), train, [0, 1, 2], model=model, test_data=test, cfg=cfg)
    assert (
        ed.finetune_now() is None
        and "needs boxes on two images at least" in ed.message
        and "0 boxed so far" in ed.message
    )


class _Tiny(nn.Module):
    "A ten-class model of the MSABN kind, small enough to fine-tune in a test."
    def __init__(self):
        super().__init__()
        self.conv, self.config = nn.Conv2d(3, 10, 3, padding=1), {"num_classes": 10}
    def forward(self, x):
        f = self.conv(x)
        return ModelOutput(f.mean((2, 3)), f.mean((2, 3)), torch.sigmoid(f[:, :1]), f)


def test_quiet_finetune_switches_progress_off_through_the_config(bench, monkeypatch):
    ("finetune(quiet=True): no tqdm bar and no epoch line, because fit gets progress=False (redirecting stdout left "
     "the bar on stderr).")
    ev = eval_transform("cifar", 32)
    train, test = (
        get_dataset("synthetic", bench, "train", transform=ev),
        get_dataset("synthetic", bench, "test", transform=ev),
    )
    model = _Tiny()
    cfg = TrainConfig(epochs=1, batch_size=8, progress=True, device="cpu")
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        r = finetune(model, train, test, cfg, "copy_replace", [0, 1, 2], quiet=True)
    assert (out.getvalue(), err.getvalue()) == ("", ""), (out.getvalue()[-300:], err.getvalue()[-300:])
    assert r.pool_size == 3 and cfg.progress                   # the caller's config is left as it was
    seen = []
    import msabn.hitl.copy_replace as cr
    monkeypatch.setattr(cr, "fit", lambda m, d, v, c, **k: seen.append(c.progress))
    finetune(model, train, test, cfg, "vanilla", quiet=True); finetune(model, train, test, cfg, "vanilla")
    assert seen == [False, True]


def test_benchmark_script_quick(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "benchmarks/copy_replace.py",
            "--quick",
            "--threads",
            "1",   # a worker's share of the cores (pytest runs a worker per core): two threads each would fight
            "--data",
            str(tmp_path / "data"),
            "--runs",
            str(tmp_path / "runs"),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["curve.png", "results.json", "results.md"]
    res = json.loads((out / "results.json").read_text())
    pts = res["curve"]["points"]
    # the quick model's scores may tie (attention wholly outside): a pool can fall short
    sizes, n = [p["pool_size"] for p in pts], res["n_train"]
    assert (
        n == 32
        and sizes[-1] == n
        and sizes[0] <= n // 2
        and all((p["acc"] is None) == (p["pool_size"] == 0) for p in pts)
    ), pts
    assert res["machine_img_per_s"] > 0 and res["settings"]["model"].startswith("MSABN g·(1+A)")
    assert "| verdict |" in (out / "results.md").read_text()
    assert {t["ordering"] for t in res["orderings"]["table"]} == {
        "frac_attn_out",
        "misclassified",
        "confidence",
        "random",
    }
    assert "| images annotated |" in (out / "results.md").read_text()
    assert str(tmp_path) not in (out / "results.md").read_text() + (out / "results.json").read_text()


def test_widget_front_end_is_bundled():
    "jupyter-bbox-widget's JavaScript ships inside the Python package (anywidget), whose lab extension is prebuilt."
    import anywidget  # noqa: F401  (the loader of the widget's front end must be installed)
    from jupyter_bbox_widget import BBoxWidget
    assert "http" not in BBoxWidget._esm[:200] and len(BBoxWidget._esm) > 10_000       # inline code, not a URL
    ext = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "anywidget"
    assert (ext / "package.json").exists() and list((ext / "static").glob("remoteEntry.*.js")), ext


def test_a_pool_of_one_image_is_skipped_not_fatal(tmp_path):
    ("Before: finetune_pools skipped empty pools only, and a pool of one (likely in a fast dev run's 4 scored images) "
     "raised.")
    from msabn.data import eval_transform
    from msabn.hitl import finetune_pools
    from msabn.models import create_model
    root = make_synthetic(tmp_path / "syn", "cifar", n_train=8, n_test=4, n_test_iid=4)
    tr, te = (get_dataset("synthetic", root, s, transform=eval_transform("cifar", 32)) for s in ("train", "test"))
    torch.manual_seed(0)
    model = create_model("msabn", "resnet8", tr.num_classes)
    cfg = TrainConfig(epochs=1, batch_size=2, eval_batch_size=4, device="cpu", progress=False, limit_train_batches=1)
    rows = finetune_pools(model, tr, te, {"one": [3], "two": [3, 5]}, cfg, seeds=(0,), progress=False)
    by = {r["name"]: r for r in rows}
    assert by["one"]["skipped"] == "a pool of one image" and by["one"]["acc"] is None
    assert by["two"]["acc"] is not None and by["vanilla"]["acc"] is not None
