"""Data side, across modules: every loader on its real-format fixture, through the pipelines and a DataLoader;
boxes that follow their objects; the synthetic benchmark read as CUB; bad input named clearly."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from msabn.data import (
    RECIPES,
    BoxWarning,
    DataError,
    SyntheticConfig,
    box_check_item,
    box_follows_object,
    collate,
    eval_transform,
    get_dataset,
    make_synthetic,
    recipe_for,
    split_plan,
    train_transform,
    write_cars_fixture,
    write_cifar100_fixture,
    write_cub_fixture,
    write_diagset_fixture,
    write_imagenet_fixture,
)
from msabn.data.transforms import _resize_short


# --- fixtures written once per session in the real formats ---------------------------------------------
@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_cub_fixture(root/"cub", num_classes=3, n_train=3, n_test=2)
    # a user's own folder without boxes
    write_cub_fixture(root/"cub_nobox", num_classes=3, n_train=3, n_test=2, boxes=False)
    write_cars_fixture(root/"cars", num_classes=3, n_train=3, n_test=2)
    write_cifar100_fixture(root/"cifar", n_train=24, n_test=12)
    write_imagenet_fixture(root/"imagenet", n_train=3, n_test=2)
    write_diagset_fixture(root/"diag_blobs", "blobs", n_per_class=2, size=40)
    write_diagset_fixture(root/"diag_folders", "folders", n_per_class=2, size=40)
    make_synthetic(root/"syn", "cifar", n_train=400, n_test=200, n_test_iid=200)
    return root

# name, folder, extra loader arguments, (train items, test items), classes, has boxes
LOADERS = [
    ("cub", "cub", {}, (9, 6), 3, True),
    ("cub", "cub_nobox", {}, (9, 6), 3, False),
    ("cars", "cars", {}, (9, 6), 3, True),
    ("cifar100", "cifar", {"verify": False}, (24, 12), 100, False),
    ("imagenet", "imagenet", {}, (9, 6), 3, False),
    ("diagset", "diag_blobs", {}, (16, 16), 8, False),
    ("diagset", "diag_folders", {}, (16, 16), 8, False),
    ("synthetic", "syn", {}, (400, 200), 10, True),
]


@pytest.mark.parametrize("name,folder,kw,sizes,k,boxes", LOADERS, ids=[f"{l[0]}-{l[1]}" for l in LOADERS])
def test_each_loader_reads_its_fixture_and_batches(data_root, name, folder, kw, sizes, k, boxes):
    recipe = recipe_for(name)
    for split, n in zip(("train", "test"), sizes, strict=True):
        ds = get_dataset(
            name,
            data_root / folder,
            split,
            transform=train_transform(recipe, 32) if split == "train" else eval_transform(recipe, 32),
            **kw,
        )
        assert (len(ds), ds.num_classes, ds.has_boxes) == (n, k, boxes)
        assert len(ds.classes) == k and ds.targets.shape == (n,) and int(ds.class_counts.sum()) == n
        if boxes: assert ds.boxes.shape == (n, 4) and (ds.boxes[:, 2:] > ds.boxes[:, :2]).all()
        batch = next(
            iter(
                DataLoader(
                    ds, batch_size=4, shuffle=True, collate_fn=collate, generator=torch.Generator().manual_seed(0)
                )
            )
        )
        assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
        assert batch["label"].dtype == torch.long and batch["index"].dtype == torch.long
        assert (batch["label"] == ds.targets[batch["index"]]).all(), "index points back at the item's label"
        assert ("box" in batch) == boxes
        if boxes: assert batch["box"].shape == (4, 4) and (batch["box"] >= 0).all() and (batch["box"] <= 32).all()


def test_dataloader_workers_pickle_every_loader(data_root):
    "Two worker processes load every kind of dataset (the DiagSet blob reader keeps no open file across the pickle)."
    for name, folder, kw, *_ in LOADERS:
        ds = get_dataset(name, data_root/folder, "test", transform=eval_transform(recipe_for(name), 32), **kw)
        labels = torch.cat([b["label"] for b in DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)])
        assert labels.tolist() == ds.targets.tolist(), name


def test_fixture_objects_sit_in_their_boxes_after_the_eval_pipeline(data_root):
    "CUB and Cars fixtures draw a solid rectangle in each box; after resizing, the box still frames it."
    for name in ("cub", "cars"):
        ds = get_dataset(name, data_root/name, "train", transform=eval_transform("fine_grained", 96, normalize=False))
        for i in range(len(ds)):
            s = ds[i]
            x0, y0, x1, y1 = s["box"][0].round().int().tolist()
            inner = s["image"][:, y0 + 3:y1 - 3, x0 + 3:x1 - 3]
            assert inner.std(dim=(1, 2)).max() < 0.06, f"{name} item {i}: the box does not hold the solid object"


@pytest.mark.parametrize("recipe", RECIPES)
def test_boxes_follow_objects_through_every_pipeline(recipe):
    "A checkerboard object drawn into the image lies inside the transformed box, which hugs it (many draws)."
    fails = []
    for size in (32, 48, 96):
        for make in (train_transform, eval_transform):
            t = make(recipe, size)
            for seed in range(20):
                torch.manual_seed(100 + seed)
                src = _resize_short(size) + 8 if recipe in ("imagenet", "diagset") else size + 8
                g = torch.Generator().manual_seed(seed)
                w, h = (int(v) for v in torch.randint(src // 5, src // 2, (2,), generator=g))
                x0, y0 = (int(v) for v in torch.randint(0, src - max(w, h), (2,), generator=g))
                slack = 2.0 + {"fine_grained": 6 * size / 352, "imagenet": 3.0}.get(recipe, 0.0)
                ok, msg = box_follows_object(
                    t(box_check_item(src, (x0, y0, x0 + w, y0 + h), cell=max(2, src // 32))), recipe, slack
                )
                if not ok: fails.append((size, make.__name__, seed, msg))
    assert not fails, fails[:3]


def test_fine_grained_pipeline_at_the_papers_size():
    "The fine-grained recipe at 352 px (the paper's) on a CUB-sized image."
    t = train_transform("fine_grained")
    for seed in range(4):
        torch.manual_seed(seed)
        out = t(box_check_item(400, (60, 90, 260, 300), cell=12))
        assert out["image"].shape == (3, 352, 352)
        ok, msg = box_follows_object(out, "fine_grained", slack=8.0)
        assert ok, msg


# --- the synthetic benchmark, read through the CUB loader -----------------------------------------------
def test_synthetic_read_as_cub_has_the_promised_properties(data_root):
    root = data_root/"syn"
    cub = {s: get_dataset("cub", root, s) for s in ("train", "test")}
    syn = {s: get_dataset("synthetic", root, s) for s in ("train", "test", "test_iid")}
    assert [len(d) for d in syn.values()] == [400, 200, 200]
    assert torch.equal(cub["train"].targets, syn["train"].targets) and torch.equal(cub["test"].boxes, syn["test"].boxes)
    assert get_dataset("cub", root/"test_iid", "test").targets.tolist() == syn["test_iid"].targets.tolist()
    # the habitat predicts the label in train and test_iid, not on the shifted test
    agree = {s: float((d.habitats == d.targets).float().mean()) for s, d in syn.items()}
    # spurious 0.8
    assert abs(agree["train"] - 0.8) < 0.08 and abs(agree["test_iid"] - 0.8) < 0.1 and agree["test"] < 0.2, agree
    # ... and so do the pixels outside the box (their mean colour, through a linear classifier fit on train)
    def feats(d):
        out = []
        for i in range(len(d)):
            s = d[i]; im = s["image"].float(); x0, y0, x1, y1 = s["box"][0].int().tolist()
            m = torch.ones(im.shape[-2:], dtype=torch.bool); m[y0:y1, x0:x1] = False
            out.append(im[:, m].mean(1))
        return torch.stack(out)
    f = {s: feats(d) for s, d in syn.items()}
    mu, sd = f["train"].mean(0), f["train"].std(0)
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 10)  # a multinomial logistic regression on the background's mean colour
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)
    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin((f["train"] - mu) / sd), syn["train"].targets)
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        acc = {s: float((lin((f[s] - mu) / sd).argmax(1) == syn[s].targets).float().mean()) for s in syn}
    # > 5x chance; about chance on the shift
    assert acc["train"] > 0.5 and acc["test_iid"] > 0.5 and acc["test"] < 0.2, acc
    # boxes from about 35% to 70% of the side (outline and outward rounding: up to 2 px more), anywhere
    side = (syn["train"].boxes[:, 2:] - syn["train"].boxes[:, :2]).max(1).values / 32
    assert side.min() >= 0.3 and side.max() <= 0.77 and side.min() < 0.45 and side.max() > 0.6


def test_synthetic_is_deterministic_and_never_overwritten(tmp_path):
    def digest(folder):
        h = hashlib.sha256()
        for p in sorted(folder.rglob("*")):
            if p.is_file(): h.update(p.relative_to(folder).as_posix().encode()); h.update(p.read_bytes())
        return h.hexdigest()
    kw = dict(n_train=30, n_test=10, n_test_iid=10)
    a, b = make_synthetic(tmp_path/"a", "fine_grained", **kw), make_synthetic(tmp_path/"b", "fine_grained", **kw)
    assert digest(a) == digest(b)
    assert digest(make_synthetic(tmp_path/"c", "fine_grained", seed=3, **kw)) != digest(a)
    # same settings: reused
    assert make_synthetic(tmp_path/"a", SyntheticConfig(fine_grained=True, clutter=1.0, scale=(0.6, 0.8), **kw)) == a
    with pytest.raises(FileExistsError, match=r"other settings \(spurious: 0.8 there, 0.9 asked\)"):
        make_synthetic(tmp_path/"a", "fine_grained", spurious=0.9, **kw)
    assert json.loads((a/"synthetic.json").read_text())["config"]["spurious"] == 0.8


def test_split_plan_shift():
    "Over many images: habitat == label at rate `spurious` in train/test_iid, independent on the shifted test."
    cfg = SyntheticConfig(n_train=20000, n_test=20000, n_test_iid=20000, spurious=0.7)
    for split, want in (("train", 0.7), ("test_iid", 0.7), ("test", 0.1)):
        labels, habitats = split_plan(cfg, split)
        assert abs((labels == habitats).mean() - want) < 0.01, split
        if split == "test":  # independence: every (label, habitat) pair about equally frequent
            counts = np.bincount(labels * 10 + habitats, minlength=100)
            assert counts.min() > 0.7 * 200 and counts.max() < 1.3 * 200


# --- bad input: named, or skipped with a count when asked ------------------------------------------------
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst

def _set_line(f: Path, i: int, text: str):
    lines = f.read_text().splitlines(); lines[i] = text; f.write_text("\n".join(lines) + "\n")


def test_bad_cub_input_is_named(data_root, tmp_path):
    cub = data_root/"cub"/"CUB_200_2011"
    d = _copy(cub, tmp_path/"no_labels"); (d/"image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"image_class_labels.txt: annotation file not found"):
        get_dataset("cub", d, "train")
    d = _copy(cub, tmp_path/"no_boxes"); (d/"bounding_boxes.txt").unlink()   # optional: the same images, without boxes
    assert (
        get_dataset("cub", d, "train").boxes is None
        and get_dataset("cub", d, "test").image_ids == get_dataset("cub", cub, "test").image_ids
    )
    # present: then every image needs its line
    d = _copy(cub, tmp_path/"half_boxes"); _set_line(d/"bounding_boxes.txt", 4, "")
    with pytest.raises(DataError, match=r"bounding_boxes.txt: no line for image id\(s\) \[5\]"):
        get_dataset("cub", d, "train")
    d = _copy(cub, tmp_path/"no_image"); (d/"images"/"002.class_b"/"class_b_0001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"class_b_0001.jpg: image file not found"):
        get_dataset("cub", d, "train")
    with pytest.warns(UserWarning, match=r"skipped 1 of 9 images"):
        assert len(get_dataset("cub", d, "train", on_bad="skip")) == 8
    d = _copy(cub, tmp_path/"unreadable"); (d/"images"/"001.class_a"/"class_a_0002.jpg").write_bytes(b"GIF89a broken")
    with pytest.raises(DataError, match=r"class_a_0002.jpg: cannot read the image"): get_dataset("cub", d, "train")[1]
    with pytest.raises(DataError, match=r"class_a_0002.jpg: cannot read the image"):
        get_dataset("cub", d, "train", check_images=True)
    d = _copy(cub, tmp_path/"outside"); _set_line(d/"bounding_boxes.txt", 0, "1 -3.0 -4.0 900.0 20.0")
    with pytest.warns(BoxWarning, match=r"class_a_0001.jpg: box \(-3, -4, 897, 16\) reaches outside"):
        box = get_dataset("cub", d, "train")[0]["box"]
    assert box[0, :2].tolist() == [0, 0] and box[0, 2] == box.canvas_size[1]
    d = _copy(cub, tmp_path/"zero"); _set_line(d/"bounding_boxes.txt", 3, "4 5.0 5.0 10.0 0.0")
    with pytest.raises(DataError, match=r"bounding_boxes.txt:4: the box of image 4 .* has zero area"):
        get_dataset("cub", d, "test")
    d = _copy(cub, tmp_path/"label"); _set_line(d/"image_class_labels.txt", 2, "3 0")
    with pytest.raises(DataError, match=r"image_class_labels.txt:3: class id 0 of image 3 .* is out of range"):
        get_dataset("cub", d, "train")


def test_bad_other_input_is_named(data_root, tmp_path):
    d = _copy(data_root/"cifar", tmp_path/"cifar")
    with pytest.raises(DataError, match="md5 check failed"): get_dataset("cifar100", d, "train")
    e = pickle.loads((d/"cifar-100-python"/"test").read_bytes()); e["fine_labels"][0] = -1
    (d/"cifar-100-python"/"test").write_bytes(pickle.dumps(e))
    with pytest.raises(DataError, match=r"test \(row 0\): label -1 is out of range; expected 0..99"):
        get_dataset("cifar100", d, "test", verify=False)
    d = _copy(data_root/"diag_folders", tmp_path/"diag"); shutil.rmtree(d/"test"/"R3")
    with pytest.raises(DataError, match=r"not a DiagSet tree: no patches of class\(es\) \['R3'\]"):
        get_dataset("diagset", d, "test")
    d = _copy(data_root/"diag_blobs", tmp_path/"blobs"); shutil.rmtree(d/"blobs"/"S"/"10x"/"te001")
    with pytest.raises(FileNotFoundError, match=r"no folder for scan\(s\) \['te001'\]"):
        get_dataset("diagset", d, "test")
    with pytest.warns(UserWarning, match="skipped 1 of 2 scans"):
        assert len(get_dataset("diagset", d, "test", on_bad="skip")) == 8
    (d/"partitions"/"DiagSet-A.2"/"validation.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"validation.csv: partition file not found"):
        get_dataset("diagset", d, "val")
    with pytest.raises(FileNotFoundError, match=r"cars_meta.mat: annotation file not found"):
        get_dataset("cars", tmp_path, "train")
    with pytest.raises(ValueError, match=r"diagset has no split 'dev'"): get_dataset("diagset", d, "dev")


# --- faults that used to be silent or unclear ------------------------------------------------------------
def _ramp16() -> np.ndarray:
    return np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (32, 1))  # 32 x 64, 0..65535, mean 32767.5


def test_16bit_images_are_scaled_not_saturated(tmp_path):
    "convert('RGB') clipped 16-bit grayscale at 255 (98% white); now scaled by 255/65535, in read_image and a loader."
    import cv2
    from PIL import Image

    from msabn.data import read_image
    cv2.imwrite(str(tmp_path/"g16.png"), _ramp16())
    assert Image.open(tmp_path/"g16.png").mode == "I;16"
    im = read_image(tmp_path/"g16.png").float()
    assert abs(im.mean().item() - 127.5) < 0.5 and (im == 255).float().mean() < 0.05
    cv2.imwrite(str(tmp_path/"rgb16.png"), np.stack([_ramp16()] * 3, -1))
    assert abs(read_image(tmp_path/"rgb16.png").float().mean().item() - 127.5) < 0.5
    Image.fromarray(_ramp16().astype(np.int32)).save(tmp_path/"i32.tif")
    assert abs(read_image(tmp_path/"i32.tif").float().mean().item() - 127.5) < 0.5
    Image.fromarray((_ramp16() / 65535).astype(np.float32)).save(tmp_path/"f32.tif")
    assert abs(read_image(tmp_path/"f32.tif").float().mean().item() - 127.5) < 0.5
    Image.fromarray(np.full((4, 4), -5.0, np.float32)).save(tmp_path/"neg.tif")
    with pytest.raises(
        DataError, match=r"neg.tif: a 32-bit float image with values -5..-5; expected values in \[0, 1\]"
    ):
        read_image(tmp_path/"neg.tif")
    root = write_imagenet_fixture(tmp_path/"inet", wnids=("n1", "n2"), n_train=1, n_test=1)
    cv2.imwrite(str(root/"train"/"n1"/"deep.png"), _ramp16())
    ds = get_dataset("imagenet", root, "train")
    item = ds[[f.name for f in ds.files].index("deep.png")]
    assert abs(item["image"].float().mean().item() - 127.5) < 0.5


def test_empty_annotations_and_empty_splits_are_named(data_root, tmp_path):
    ("Empty annotation files gave a CUB dataset of 0 items; every loader now refuses an empty split, naming where it "
     "looked.")
    from msabn.data import CUB_FILES
    d = _copy(data_root/"cub"/"CUB_200_2011", tmp_path/"cub")
    for f in CUB_FILES: (d/f).write_text("")
    with pytest.raises(DataError, match=r"empty annotation file\(s\) images.txt, image_class_labels.txt, "
                                        r"train_test_split.txt, "
                       r"bounding_boxes.txt, classes.txt; expected images.txt: one line per image '<image_id> "
                       r"<image_name>'"):
        get_dataset("cub", d, "train")
    d = _copy(data_root/"cub"/"CUB_200_2011", tmp_path/"cub_all_train")
    (d/"train_test_split.txt").write_text("".join(f"{k} 1\n" for k in range(1, 16)))
    assert len(get_dataset("cub", d, "train")) == 15
    with pytest.raises(DataError, match=r"train_test_split.txt: no image has is_training_image 0, so the test split is "
                                        r"empty"):
        get_dataset("cub", d, "test")
    (tmp_path/"inet"/"train").mkdir(parents=True); (tmp_path/"inet"/"val").mkdir()
    with pytest.raises(DataError, match=r"inet/train: no class folders; expected one folder of images per class"):
        get_dataset("imagenet", tmp_path/"inet", "train")
    write_cifar100_fixture(tmp_path/"cifar", n_train=0)
    with pytest.raises(DataError, match=r"cifar-100-python/train: holds no images"):
        get_dataset("cifar100", tmp_path/"cifar", "train", verify=False)
    d = _copy(data_root / "diag_blobs", tmp_path / "diag")
    (d / "partitions" / "DiagSet-A.2" / "test.csv").write_text("scan_id\n")
    with pytest.raises(DataError, match=r"test.csv: lists no scans; expected a CSV with a column scan_id"):
        get_dataset("diagset", d, "test")
    d = _copy(data_root/"cub"/"CUB_200_2011", tmp_path/"cub_unreadable")
    for p in (d/"images").rglob("*.jpg"): p.write_bytes(b"not a jpeg")
    with (
        pytest.warns(UserWarning, match="skipped 9 of 9"),
        pytest.raises(DataError, match=r"the train split has no images: all 9 were skipped"),
    ):
        get_dataset("cub", d, "train", on_bad="skip", check_images=True)


def test_annotation_files_not_in_utf8_are_named_with_line_and_encoding(data_root, tmp_path):
    ("A Latin-1 images.txt raised a bare UnicodeDecodeError; now the file, the line, the byte and the encoding are "
     "named.")
    d = _copy(data_root/"cub"/"CUB_200_2011", tmp_path/"latin")
    text = (d/"images.txt").read_text().replace("class_b_0001", "class_b_0001\xe9")
    (d/"images.txt").write_bytes(text.encode("latin-1"))
    line = next(n for n, s in enumerate(text.splitlines(), 1) if "\xe9" in s)
    with pytest.raises(DataError, match=rf"images.txt:{line}: not UTF-8 text \(byte 0xe9\); expected UTF-8 \(or "
                                        r"ASCII\) lines "
                       r"'<image_id> <image_name>'; convert the file"):
        get_dataset("cub", d, "train")
    d = _copy(data_root/"cub"/"CUB_200_2011", tmp_path/"bom")  # a byte-order mark (Windows editors) is read as UTF-8
    for f in ("images.txt", "bounding_boxes.txt"):
        (d / f).write_bytes(b"\xef\xbb\xbf" + (d / f).read_bytes().replace(b"\n", b"\r\n"))
    assert len(get_dataset("cub", d, "train")) == 9


def test_indices_work_like_a_sequence_and_bad_ones_are_named(data_root):
    ("ds[-1] is the last item (its 'index' non-negative); out of range names index and length; floats/strings/bools "
     "refused.")
    ds = get_dataset("cub", data_root/"cub", "test")
    assert len(ds) == 6 and ds[-1]["index"] == 5 and ds[-6]["index"] == 0 and ds[np.int64(2)]["index"] == 2
    for i in (6, -7):
        with pytest.raises(IndexError, match=rf"index {i} out of range for a dataset of 6 items \(valid: 0..5, or "
                                             r"-6..-1 from the end\)"):
            ds[i]
    for bad in (1.7, "1", True, slice(0, 2)):
        with pytest.raises(TypeError, match=r"CUB indices must be integers"):
            ds[bad]


def test_fault_sweep_images(tmp_path):
    "Faults of the sweep on image files: each read as expected or refused with the file named."
    import struct
    import warnings
    import zlib

    from PIL import Image

    from msabn.data import read_image
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    (tmp_path / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(DataError, match=r"bomb.png: refused \(Image size \(400000000 pixels\) exceeds limit.*raise "
                                        r"PIL.Image.MAX_IMAGE_PIXELS"):
        read_image(tmp_path/"bomb.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
        tmp_path / "a.jpg", quality=95
    )
    (tmp_path/"cut.jpg").write_bytes((tmp_path/"a.jpg").read_bytes()[:1500])
    with pytest.raises(DataError, match=r"cut.jpg: cannot read the image \(OSError: image file is truncated"):
        read_image(tmp_path / "cut.jpg")
    Image.new("RGB", (1, 1), (9, 8, 7)).save(tmp_path/"dot.png")
    assert read_image(tmp_path/"dot.png").flatten().tolist() == [9, 8, 7]
    Image.new("RGB", (32, 32), (200, 30, 30)).convert("CMYK").save(tmp_path/"cmyk.jpg", quality=95)
    assert (read_image(tmp_path/"cmyk.jpg").float().mean((1, 2)) - torch.tensor([200., 30, 30])).abs().max() < 3
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.save(tmp_path / "pal.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path/"pal.png")[:, 0, 0].tolist() == [255, 0, 0]
    Image.new("L", (5, 7), 80).save(tmp_path / "gray.png")
    assert read_image(tmp_path / "gray.png")[:, 0, 0].tolist() == [80] * 3


def test_fault_sweep_layouts(data_root, tmp_path):
    "Faults of the sweep on layouts: boxes that are not numbers, unicode class folders, stray files, broken pickles."
    d = _copy(data_root / "cub" / "CUB_200_2011", tmp_path / "nan")
    _set_line(d / "bounding_boxes.txt", 0, "1 nan 2.0 10.0 10.0")
    with pytest.raises(DataError, match=r"bounding_boxes.txt:1: the box of image 1 .* is not finite \(nan 2 10 10\)"):
        get_dataset("cub", d, "train")
    d = _copy(data_root / "cub" / "CUB_200_2011", tmp_path / "inf")
    _set_line(d / "bounding_boxes.txt", 0, "1 1.0 2.0 inf 10.0")
    with pytest.raises(DataError, match=r"bounding_boxes.txt:1: .* is not finite"): get_dataset("cub", d, "train")
    root = write_imagenet_fixture(tmp_path/"inet", wnids=("n01440764", "caf\u00e9_\u9ce5"), n_train=2, n_test=1)
    (root/"train"/"n01440764"/"LOC_notes.txt").write_text("x"); (root/"train"/"README").write_text("x")
    ds = get_dataset("imagenet", root, "train")
    assert ds.classes == ["caf\u00e9_\u9ce5", "n01440764"] and len(ds) == 4 and ds[0]["image"].shape[0] == 3
    d = _copy(data_root/"cifar", tmp_path/"cifar")
    f = d/"cifar-100-python"/"train"; f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"train: not a CIFAR-100 python pickle"):
        get_dataset("cifar100", d, "train", verify=False)
    e = pickle.loads((data_root / "cifar" / "cifar-100-python" / "test").read_bytes())
    e["fine_labels"] = e["fine_labels"][:5]
    (d/"cifar-100-python"/"test").write_bytes(pickle.dumps(e))
    with pytest.raises(DataError, match=r"test: 12 images but 5 fine_labels"):
        get_dataset("cifar100", d, "test", verify=False)


def test_data_layouts_and_data_present_agree_with_the_loaders(data_root, tmp_path):
    "DATA_LAYOUTS (moved from msabn.experiments) keeps its texts; data_present finds every fixture the loaders read."
    import msabn.experiments as ex
    from msabn.data import DATA_LAYOUTS, DATASETS, data_present
    assert DATA_LAYOUTS == ex.DATA_LAYOUTS
    assert set(DATA_LAYOUTS) == set(DATASETS) - {"synthetic"}
    for name, folder in (("cub", "cub"), ("cars", "cars"), ("cifar100", "cifar"), ("imagenet", "imagenet"),
                         ("diagset", "diag_blobs"), ("diagset", "diag_folders"), ("synthetic", "syn")):
        assert data_present(name, data_root/folder) and not data_present(name, tmp_path/"nowhere"), (name, folder)
        if hasattr(ex, "_data_present") and name != "synthetic": assert ex._data_present(name, data_root/folder)
    d = _copy(data_root/"cub"/"CUB_200_2011", tmp_path/"no_classes"); (d/"classes.txt").unlink()
    assert not data_present("cub", d), "every file the loader needs is a marker"
    assert data_present("cub", data_root/"cub_nobox"), "the boxes are optional"
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"): data_present("mnist", tmp_path)
