"""The in-memory engine (msabn.data.memory): decoded datasets give the file-backed items, the batch-wise augmentation is
the per-image transforms v2 pipeline given the same random parameters (boxes moved exactly alike), and fit on it
trains and resumes exactly after a kill."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from conftest import ROOT
from torch.utils._pytree import tree_flatten, tree_unflatten
from torchvision.transforms import v2

from msabn.core import set_seed
from msabn.data import (
    augment_batch,
    decode,
    eval_transform,
    get_dataset,
    make_box,
    make_synthetic,
    memory_batches,
    sample_params,
    select_params,
    train_transform,
)
from msabn.models import create_model
from msabn.train import EpochBatches, TrainConfig, evaluate, fit

SCRIPT = ROOT / "tests" / "scripts" / "train_tiny.py"


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return {"cifar": make_synthetic(base / "cifar", "cifar", n_train=64, n_test=16, n_test_iid=16),
            "fine_grained": make_synthetic(base / "fg", "fine_grained", n_train=32, n_test=8, n_test_iid=8)}


def _apply(t, item, params):
    "One v2 transform on an item dict with its random parameters given (not drawn)."
    flat, spec = tree_flatten(item)
    need = t._needs_transform_list(flat)
    return tree_unflatten([t.transform(x, params) if n else x for x, n in zip(flat, need, strict=True)], spec)


def _per_image(tf: v2.Compose, item: dict, p: dict, noise, monkeypatch) -> dict:
    "The recipe's real per-image pipeline (train_transform) on one item, every random choice taken from p."
    for t in tf.transforms:
        if isinstance(t, v2.RandomCrop):
            pad = list(t.padding)
            item = _apply(t, item, dict(needs_crop=True, top=int(p["top"]), left=int(p["left"]), height=t.size[0],
                                        width=t.size[1], needs_pad=True, padding=[pad[0], pad[2], pad[1], pad[3]]))
        elif isinstance(t, v2.RandomHorizontalFlip):
            if p["flip"]: item = _apply(t, item, {})
        elif isinstance(t, v2.ColorJitter):
            item = _apply(t, item, dict(fn_idx=p["order"].tolist(), brightness_factor=float(p["brightness"]),
                                        contrast_factor=float(p["contrast"]), saturation_factor=float(p["saturation"]),
                                        hue_factor=None))
        elif isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.GaussianBlur):
            if p["blur"]: item = _apply(t.transforms[0], item, {"sigma": [float(p["sigma"])] * 2})
        elif isinstance(t, v2.RandomSolarize):
            if p["solarize"]: item = _apply(t, item, {})
        elif isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.GaussianNoise):
            if p["noise_on"]:
                monkeypatch.setattr(torch, "randn_like", lambda x, **kw: noise.clone())
                item = _apply(t.transforms[0], item, {})
                monkeypatch.undo()
        else:
            assert not isinstance(t, (v2.RandomApply, v2.RandomCrop)) and "Random" not in type(t).__name__, t
            item = t(item)
    return item


def _one(params, i):
    return {k: (v[i] if k != "noise" else None) for k, v in params.items()}


@pytest.mark.parametrize("recipe", ["cifar", "fine_grained"])
def test_batched_augmentation_is_the_per_image_pipeline(roots, recipe, monkeypatch):
    "Same random parameters: images equal (the uint8 steps of the colour pipeline to one level), boxes exactly."
    size = 32
    files = get_dataset("synthetic", roots[recipe], "train")
    mem = decode(files, recipe, size)
    n = 16
    params = sample_params(recipe, n, size, torch.Generator().manual_seed(3))
    if recipe == "fine_grained":  # exercise every branch at least once
        params["blur"][:4], params["solarize"][2:6], params["noise_on"][1:5] = True, True, True
        params["noise"] = torch.randn(
            int(params["noise_on"].sum()), 3, size, size, generator=torch.Generator().manual_seed(4)
        )
    x, boxes = augment_batch(mem.images[:n], mem.boxes[:n], recipe, params)
    tf = train_transform(recipe, size)
    rows = params["noise_on"].cumsum(0) - 1 if "noise_on" in params else None
    for i in range(n):
        noise = params["noise"][rows[i]] if rows is not None and params["noise_on"][i] else None
        ref = _per_image(tf, files[i], _one(params, i), noise, monkeypatch)
        assert torch.equal(boxes[i], ref["box"].as_subclass(torch.Tensor).reshape(4)), (i, boxes[i], ref["box"])
        d = (x[i] - ref["image"]).abs()
        if recipe == "cifar": assert d.max() < 1e-6, (i, d.max())
        else:  # a uint8 level after normalisation (std 0.225) is 0.0175: rare ties of float rounding before truncation,
            # which a later jitter step can double
            assert d.max() < 0.06 and (d > 1e-5).float().mean() < 0.01, (i, d.max(), (d > 1e-5).float().mean())


def test_boxes_move_with_the_object_on_crops_at_every_offset(roots):
    "Every crop offset and flip, boxes against the per-image pipeline, bit for bit (a box near the border is clamped)."
    files = get_dataset("synthetic", roots["cifar"], "train")
    mem = decode(files, "cifar", 32)
    tf = train_transform("cifar", 32)
    offs = torch.arange(9)
    params = {"top": offs.repeat_interleave(9).repeat(2), "left": offs.repeat(9).repeat(2),
              "flip": torch.arange(162) >= 81}
    img = mem.images[:1].expand(162, -1, -1, -1)
    box = torch.tensor([[0.3, 29.5, 7.25, 32.0]]).expand(162, -1)
    _, boxes = augment_batch(img, box, "cifar", params)
    item = {**mem.with_transform(None)[0], "box": make_box(box[0], (32, 32))}
    for i in range(162):
        ref = _per_image(tf, dict(item), _one(params, i), None, None)
        assert torch.equal(boxes[i], ref["box"].as_subclass(torch.Tensor).reshape(4)), (i, boxes[i], ref["box"])


def test_sampled_parameters_follow_the_pipelines_distributions():
    p = sample_params("fine_grained", 4000, 32, torch.Generator().manual_seed(0))
    for k in ("brightness", "contrast", "saturation"):
        assert 0.6 <= p[k].min() and p[k].max() <= 1.4 and abs(p[k].mean() - 1.0) < 0.02
    assert abs(p["flip"].float().mean() - 0.5) < 0.03 and abs(p["blur"].float().mean() - 0.3) < 0.03
    assert abs(p["solarize"].float().mean() - 0.2) < 0.03 and abs(p["noise_on"].float().mean() - 0.3) < 0.03
    assert (p["order"].sort(1).values == torch.arange(3)).all()            # a permutation per image
    first = torch.bincount(p["order"][:, 0], minlength=3).float() / 4000   # each operation first a third of the time
    assert (first - 1 / 3).abs().max() < 0.03
    c = sample_params("cifar", 4000, 32, torch.Generator().manual_seed(0))
    assert set(c["top"].unique().tolist()) == set(range(9)) == set(c["left"].unique().tolist())
    again = sample_params("fine_grained", 4000, 32, torch.Generator().manual_seed(0))
    assert all(torch.equal(p[k], again[k]) for k in p)                     # the generator alone decides
    share = select_params(p, slice(1, None, 2))
    assert torch.equal(share["noise"], p["noise"][(p["noise_on"].cumsum(0) - 1)[1::2][p["noise_on"][1::2]]])


@pytest.mark.parametrize("recipe", ["cifar", "fine_grained"])
def test_decoded_dataset_gives_the_file_backed_items(roots, recipe):
    files = get_dataset("synthetic", roots[recipe], "test_iid")
    mem = decode(files, recipe, 32, train=False)
    assert (len(mem), mem.classes, mem.num_classes, mem.split) == (
        len(files),
        files.classes,
        files.num_classes,
        files.split,
    )
    assert torch.equal(mem.targets, files.targets) and torch.equal(mem.habitats, files.habitats)
    resized = files.with_transform(v2.Resize((32, 32)))
    for i in range(len(files)):
        a, b = mem.with_transform(None)[i], resized[i]
        assert set(a) == set(b) and a["label"] == b["label"] and a["index"] == b["index"] == i
        assert (
            torch.equal(a["image"], b["image"]) and torch.equal(a["box"], b["box"]) and a["box"].canvas_size == (32, 32)
        )
        # its eval pipeline, per item
        assert torch.equal(mem[i]["image"], files.with_transform(mem.transform)[i]["image"])
    batch = next(memory_batches(mem, EpochBatches(len(mem), 4, shuffle=False, train=False), train=False))
    assert torch.allclose(
        batch["image"], torch.stack([files.with_transform(mem.transform)[i]["image"] for i in range(4)])
    )


def test_decode_refuses_what_it_cannot_hold(roots):
    files = get_dataset("synthetic", roots["cifar"], "train")
    with pytest.raises(MemoryError, match="per-image pipeline"): decode(files, "cifar", 32, max_bytes=1000)
    with pytest.raises(ValueError, match="per-image pipeline"): decode(files, "imagenet", 32)


def test_fit_on_the_decoded_data_trains(roots, tmp_path):
    train = decode(get_dataset("synthetic", roots["cifar"], "train"), "cifar", 32)
    test = decode(get_dataset("synthetic", roots["cifar"], "test_iid"), "cifar", 32, train=False)
    set_seed(0)
    model = create_model("abn", "resnet20", train.num_classes)
    fit(
        model,
        train,
        test,
        TrainConfig(epochs=3, batch_size=16, lr=0.05, progress=False, device="cpu"),
        out_dir=tmp_path,
    )
    tr = pd.read_csv(tmp_path / "history.csv").query("split == 'train'")
    assert tr.loss.iloc[-1] < tr.loss.iloc[0], tr.loss.tolist()


def _tiny(args):
    return [
        sys.executable,
        str(SCRIPT),
        *map(str, args),
        "--arch",
        "base",
        "--deterministic",
        "--memory",
        "--batch-size",
        "8",
    ]


def test_memory_path_killed_and_resumed_equals_uninterrupted(roots, tmp_path):
    "SIGKILL after the first epoch's checkpoint, then resume: the same weights as a run never stopped."
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = subprocess.run(_tiny([roots["cifar"], whole]), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(_tiny([roots["cifar"], cut]), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, deadline = cut / "checkpoint.pt", time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline: time.sleep(0.02)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1, "the kill should land in the second epoch"
    r = subprocess.run(_tiny([roots["cifar"], cut, "--resume"]), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = torch.load(whole / "checkpoint.pt", weights_only=False), torch.load(ckpt, weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]: assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after kill and resume"


def test_evaluate_on_the_decoded_data_equals_the_file_backed_evaluation(roots):
    files = get_dataset("synthetic", roots["cifar"], "test_iid", transform=eval_transform("cifar", 32))
    mem = decode(files, "cifar", 32, train=False)
    set_seed(0)
    model = create_model("msabn", "resnet20", files.num_classes)
    cfg = TrainConfig(batch_size=4, progress=False, device="cpu", amp="off")
    a, b = evaluate(model, mem, cfg), evaluate(model, files, cfg)
    assert a["n"] == b["n"] == len(files) and a["acc"] == b["acc"]
    assert abs(a["loss"] - b["loss"]) < 1e-4 * max(1.0, abs(b["loss"])), (a, b)


@pytest.mark.parametrize("recipe", ["cifar", "fine_grained"])
def test_each_image_is_augmented_alike_whatever_the_number_of_processes(roots, recipe):
    mem = decode(get_dataset("synthetic", roots[recipe], "train"), recipe, 32)
    def epoch(rank, world):
        b = EpochBatches(len(mem), 8, seed=5, rank=rank, world_size=world); b.set_epoch(2)
        return list(memory_batches(mem, b, train=True))
    one, r0, r1 = epoch(0, 1), epoch(0, 2), epoch(1, 2)
    for a, b0, b1 in zip(one, r0, r1, strict=True):
        assert torch.equal(a["index"][0::2], b0["index"]) and torch.equal(a["index"][1::2], b1["index"])
        assert torch.equal(a["image"][0::2], b0["image"]) and torch.equal(a["image"][1::2], b1["image"])
        assert torch.equal(a["box"][1::2], b1["box"])
