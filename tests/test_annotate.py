"""The box store and the box editor under faults: two writers at once, hand-edited and damaged files, failed saves,
unwritable folders, indices and boxes that are not what they claim, and a widget sending what is not a box.
Each test names the fault; every one failed (or lost a box silently) before the store and the editor refused it."""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import tempfile
from contextlib import redirect_stderr

import pytest
import torch
from filelock import FileLock

from msabn.data import eval_transform, get_dataset, make_synthetic
from msabn.hitl import BoxEditor, BoxStore, BoxStoreError

torch.set_num_threads(1)
N_SETS = 100


def _writer(path: str, start: int, ready, go, acked):
    ("A second notebook on the same project: boxes images start, start + 2, ...; reopens when told to, as the message "
     "says.")
    store = BoxStore(path)
    ready.put(start); go.wait(120)
    done = []
    for k in range(N_SETS):
        i = start + 2 * k
        while True:
            try: store.set(i, (0, 0, 1 + k % 7, 1 + k % 5), (8, 8)); break
            except BoxStoreError: store = BoxStore(path)
        done.append(i)
    acked.put(done)


def test_two_processes_lose_no_acknowledged_box(tmp_path):
    "Two processes, 100 sets each on one file: every set that returned is on disk (before: 148 of 300, no error)."
    path = tmp_path / "boxes.json"
    BoxStore(path)
    ctx = mp.get_context("spawn")
    ready, go, acked = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(path), j, ready, go, acked)) for j in (0, 1)]
    for p in procs: p.start()
    [ready.get(timeout=120) for _ in procs]       # both imported and opened (spawn: seconds on a busy machine) ...
    go.set()                                      # ... then both hammer the file at once
    done = [acked.get(timeout=60) for _ in procs]
    for p in procs: p.join(30); assert p.exitcode == 0
    on_disk = BoxStore(path).indices
    assert sorted(done[0] + done[1]) == list(range(2 * N_SETS))
    assert on_disk == list(range(2 * N_SETS)), f"{2 * N_SETS - len(on_disk)} acknowledged boxes are not on disk"


def test_same_image_from_two_writers_is_refused_then_replaced(tmp_path):
    a, b = BoxStore(tmp_path / "boxes.json"), BoxStore(tmp_path / "boxes.json")
    a.set(3, (0, 0, 4, 4), (8, 8))
    with pytest.raises(BoxStoreError, match=r"image 3 was changed by another writer .*now box \[0.0, 0.0, 4.0, 4.0\]"):
        b.set(3, (1, 1, 2, 2), (8, 8))
    assert BoxStore(tmp_path / "boxes.json").get(3) == (0, 0, 4, 4)
    a.skip(5)                                                   # another image: merged into b's next edit, no error
    b.set(3, (1, 1, 2, 2), (8, 8))                              # seen now: replaced on purpose
    assert a.reload().get(3) == (1, 1, 2, 2) and a.skipped == [5]


def test_indices_are_whole_numbers_in_range(tmp_path):
    s = BoxStore(tmp_path / "b.json", meta={"n_images": 10})
    with pytest.raises(TypeError, match=r"b.json: an image index is a whole number >= 0 .*got 'x' \(str\)"):
        s.set("x", (0, 0, 1, 1), (8, 8))
    with pytest.raises(TypeError, match=r"got 2.0 \(float\)"): s.skip(2.0)
    with pytest.raises(IndexError, match=r"image index -1 is outside the dataset; expected 0 <= index < 10"):
        s.set(-1, (0, 0, 1, 1), (8, 8))
    # beyond the dataset the file is of
    with pytest.raises(IndexError, match=r"image index 10 is outside"): s.skip(10)
    with pytest.raises(ValueError, match=r"image 2: image_size is two whole numbers > 0"):
        s.set(2, (0, 0, 1, 1), (8, -8))
    assert json.loads(s.path.read_text())["boxes"] == {} and json.loads(s.path.read_text())["skipped"] == []


@pytest.mark.parametrize(
    "skipped, entry", [(["3", 2.5], "'3'"), ([2.5], "2.5"), ([-1], "-1"), ([True], "True"), ([12], "12")])
def test_hand_edited_skipped_is_refused_naming_file_and_entry(tmp_path, skipped, entry):
    p = tmp_path / "boxes.json"
    p.write_text(json.dumps({"format": "msabn-boxes-v1", "meta": {"n_images": 10}, "boxes": {}, "skipped": skipped}))
    before = p.read_bytes()
    with pytest.raises(BoxStoreError, match=rf"boxes.json is not a valid box file: entry {entry} of 'skipped' is not "
                                            r"an image index"):
        BoxStore(p)
    assert p.read_bytes() == before


@pytest.mark.parametrize("key", ["07", "-1", "x", "12"])
def test_hand_edited_box_keys_are_refused(tmp_path, key):
    p = tmp_path / "boxes.json"
    p.write_text(json.dumps({"format": "msabn-boxes-v1", "meta": {"n_images": 10}, "skipped": [],
                             "boxes": {key: {"box": [0, 0, 2, 2], "image_size": [8, 8]}}}))
    with pytest.raises(BoxStoreError, match=rf"entry '{key}' of 'boxes'"): BoxStore(p)


def _deny(*a, **k): raise PermissionError(13, "Permission denied", "/somewhere/.boxes.json.x.tmp")


def test_unwritable_folder_is_said_at_open_naming_the_box_file(tmp_path, monkeypatch):
    p = tmp_path / "ro" / "boxes.json"
    monkeypatch.setattr(tempfile, "mkstemp", _deny)            # what a read-only folder does to every save
    with pytest.raises(BoxStoreError, match=r"ro/boxes.json: the box file cannot be written in .*ro \(PermissionError: "
                                            r"Permission denied\)"):
        BoxStore(p)
    monkeypatch.undo()
    BoxStore(p).set(1, (0, 0, 2, 2), (8, 8))
    monkeypatch.setattr(tempfile, "mkstemp", _deny)
    # an existing file: at open too, before any drawing
    with pytest.raises(BoxStoreError, match="cannot be written"): BoxStore(p)
    ro = BoxStore(p, read_only=True)                                               # reading it is fine
    assert ro.boxes == {1: (0, 0, 2, 2)}
    with pytest.raises(BoxStoreError, match="read_only=True: nothing can be saved"): ro.set(2, (0, 0, 2, 2), (8, 8))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_real(tmp_path):
    (tmp_path / "ro").mkdir(); (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(BoxStoreError, match="boxes.json: the box file cannot be written"):
            BoxStore(tmp_path / "ro" / "boxes.json")
    finally: (tmp_path / "ro").chmod(0o755)


def test_failed_save_is_not_acknowledged_and_leaves_memory_as_disk(tmp_path, monkeypatch):
    ("A process killed in the middle of a save (os.replace never happens): the file holds the version before, the "
     "store knows it.")
    s = BoxStore(tmp_path / "boxes.json")
    s.set(1, (0, 0, 2, 2), (8, 8))
    before = s.path.read_bytes()
    def boom(src, dst): raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(BoxStoreError, match=r"boxes.json could not be written .*this edit was not saved"):
        s.set(2, (0, 0, 2, 2), (8, 8))
    monkeypatch.undo()
    assert s.get(2) is None and 2 not in s and s.path.read_bytes() == before      # before: in memory, not on disk
    assert not list(tmp_path.glob("*.tmp"))                                         # no temporary file left behind
    s.set(3, (0, 0, 2, 2), (8, 8))
    assert BoxStore(s.path).indices == [1, 3]


def test_truncated_and_empty_files_are_refused_untouched(tmp_path):
    p = tmp_path / "boxes.json"
    BoxStore(p).set(1, (0, 0, 2, 2), (8, 8)); BoxStore(p).set(2, (0, 0, 2, 2), (8, 8))
    for text in (p.read_text()[:40], ""):
        p.write_text(text)
        with pytest.raises(BoxStoreError, match="not valid JSON.*previous version is in boxes.json.bak"): BoxStore(p)
        assert p.read_text() == text


def test_box_too_thin_to_save_is_refused_not_saved_then_refused_at_open(tmp_path):
    s = BoxStore(tmp_path / "boxes.json")
    with pytest.raises(ValueError, match=r"saved to 0.001 px\): box \(1, 1, 1, 2\) has zero area"):
        s.set(1, (1, 1, 1.0004, 2), (8, 8))
    # before: saved as [1, 1, 1.0, 2], and this open refused the file
    BoxStore(tmp_path / "boxes.json")


def test_deleted_file_is_not_brought_back(tmp_path):
    s = BoxStore(tmp_path / "boxes.json"); s.set(1, (0, 0, 2, 2), (8, 8))
    s.path.unlink()
    with pytest.raises(BoxStoreError, match="was deleted or moved away since it was opened"):
        s.set(2, (0, 0, 2, 2), (8, 8))
    assert not s.path.exists()


def test_lock_held_by_another_writer_times_out_with_a_message(tmp_path):
    s = BoxStore(tmp_path / "boxes.json", timeout=0.2)
    with FileLock(s.lock_path):
        with pytest.raises(BoxStoreError, match=r"another writer held boxes.json.lock for over 0.2 s; this edit was "
                                                r"not saved"):
            s.set(1, (0, 0, 2, 2), (8, 8))
        # opening, too: no raw Timeout
        with pytest.raises(BoxStoreError, match="another writer held"): BoxStore(s.path, timeout=0.2)
    s.set(1, (0, 0, 2, 2), (8, 8))


def test_unicode_paths(tmp_path):
    p = tmp_path / "prøject 標" / "böxes é.json"
    BoxStore(p, meta={"dataset": "ünï"}).set(1, (0, 0, 2, 2), (8, 8))
    assert BoxStore(p, meta={"dataset": "ünï"}).boxes == {1: (0, 0, 2, 2)}
    assert (p.parent / "böxes é.json.lock").exists()


# --- the editor ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_synthetic(tmp_path_factory.mktemp("ann") / "syn", "cifar", n_train=16, n_test=8, n_test_iid=4)
    ev = eval_transform("cifar", 32)
    return get_dataset("synthetic", root, "train", transform=ev), get_dataset("synthetic", root, "test", transform=ev)


def test_editor_refuses_orders_that_are_not_image_indices(data, tmp_path):
    train, _ = data
    s = BoxStore(tmp_path / "b.json")
    # before: image 0
    with pytest.raises(TypeError, match=r"order\[0\]: .*got 0.5 \(float\)"): BoxEditor(s, train, [0.5, 1])
    with pytest.raises(TypeError, match=r"order\[1\]: .*got '2' \(str\)"): BoxEditor(s, train, [1, "2"])
    with pytest.raises(ValueError, match=r"order\[2\]: image 1 is listed twice"): BoxEditor(s, train, [1, 2, 1])
    with pytest.raises(ValueError, match="scale is a whole number >= 1"): BoxEditor(s, train, [1], scale=0)


def test_editor_refuses_a_box_file_of_other_images(data, tmp_path):
    train, _ = data
    with pytest.raises(ValueError, match="a box file of 2000 images, but the training data has 16"):
        BoxEditor(BoxStore(tmp_path / "a.json", meta={"n_images": 2000}), train, [0])
    BoxStore(tmp_path / "b.json").set(20, (0, 0, 2, 2), (32, 32))          # before: dropped silently from fine-tuning
    with pytest.raises(ValueError, match=r"boxes of image\(s\) \[20\], beyond the 16 training images"):
        BoxEditor(BoxStore(tmp_path / "b.json"), train, [0])
    BoxStore(tmp_path / "c.json").set(2, (0, 0, 100, 50), (224, 224))
    with pytest.raises(ValueError, match="image 2 was drawn on a 224x224 image, but training image 2 is 32x32"):
        BoxEditor(BoxStore(tmp_path / "c.json"), train, [0])


@pytest.mark.parametrize("junk", [{"x": 1, "y": 2}, {"x": "a", "y": 0, "width": 8, "height": 8}, None, 7,
                                  {"x": float("inf"), "y": 0, "width": 8, "height": 8}])
def test_widget_sending_what_is_not_a_box(data, tmp_path, junk):
    train, _ = data
    ed = BoxEditor(BoxStore(tmp_path / "b.json"), train, [3, 4])
    # before: a raw KeyError/TypeError in the trait callback
    msg = ed.on_boxes([junk])
    assert ed.error and msg.startswith("image 3: ") and msg.endswith("not saved") and 3 not in ed.store
    ed.submit()
    # Submit is refused while the box is not saved
    assert ed.current == 3 and ed.error


def test_editor_shows_a_conflict_instead_of_raising(data, tmp_path):
    train, _ = data
    ed = BoxEditor(BoxStore(tmp_path / "b.json"), train, [3, 4])
    BoxStore(tmp_path / "b.json").set(3, (0, 0, 16, 16), (32, 32))        # another notebook boxed image 3 meanwhile
    moved = []; ed.watch(moved.append)
    msg = ed.on_boxes([{"x": 8, "y": 8, "width": 64, "height": 64}])
    # the view redraws their box
    assert ed.error and "image 3 was changed by another writer" in msg and moved == [True]
    assert ed.store.get(3) == (0, 0, 16, 16)
    ed.on_boxes([{"x": 8, "y": 8, "width": 64, "height": 64}])            # drawn again: replaced on purpose
    assert BoxStore(tmp_path / "b.json").get(3) == (1, 1, 9, 9)


class _Tiny(torch.nn.Module):
    "A model of the MSABN kind small enough for a test: logits and an attention map."
    def __init__(self):
        super().__init__()
        self.conv, self.config = torch.nn.Conv2d(3, 10, 3, padding=1), {"num_classes": 10}
    def forward(self, x):
        from msabn.models import ModelOutput
        f = self.conv(x)
        return ModelOutput(f.mean((2, 3)), f.mean((2, 3)), torch.sigmoid(f[:, :1]), f)


def test_editor_finetuning_prints_no_progress_bar(data, tmp_path):
    "The editor's own progress replaces fit's: no tqdm bar on stderr even when the config asks for one (before: a bar)."
    from msabn.train import TrainConfig
    train, test = data
    ed = BoxEditor(BoxStore(tmp_path / "b.json"), train, list(range(6)), model=_Tiny(), test_data=test,
                   cfg=TrainConfig(epochs=1, batch_size=8, lr=0.01, progress=True, device="cpu"))
    ed.simulate(3)
    err, steps = io.StringIO(), []
    with redirect_stderr(err): res = ed.finetune_now(progress=lambda d, t: steps.append((d, t)))
    assert res is not None and res.pool_size == 3, ed.message
    assert err.getvalue() == "", err.getvalue()[-500:]
    assert steps[-1] == (4, 4)                    # two runs (vanilla, then copy-replace) of 2 steps each


def test_box_file_damaged_before_finetuning_is_said_not_raised(data, tmp_path):
    ("Another hand damaged the box file after the editor opened it: the button says so (before: boxes from memory, or "
     "a raw error).")
    from msabn.train import TrainConfig
    train, test = data
    ed = BoxEditor(BoxStore(tmp_path / "b.json"), train, list(range(4)), model=_Tiny(), test_data=test,
                   cfg=TrainConfig(epochs=1, batch_size=8, device="cpu"))
    ed.simulate(2)
    (tmp_path / "b.json").write_text("{")
    assert ed.finetune_now() is None and ed.error
    assert "b.json is not a valid box file: not valid JSON" in ed.message and ed.message.endswith(
        "nothing was fine-tuned"
    )
    assert (tmp_path / "b.json").read_text() == "{"
