"""Explainers across modules: every explainer on every model kind, scored on real-format data, and the comparison
script end to end (train, score, time, write; then the same from the checkpoints it saved)."""
import importlib.util
import json
import math

import pytest
import torch
from conftest import ROOT

from msabn.data import collate, eval_transform, get_dataset, make_synthetic, write_cub_fixture
from msabn.explain import (
    POST_HOC,
    create_explainer,
    evaluate_explainer,
    localization_scores,
    summarize_localization,
    target_layer,
)
from msabn.models import create_model


@pytest.fixture(autouse=True)
def one_thread():
    "One torch thread: on a busy 2-core machine two threads per process run these tiny models 30x slower."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = {"channels": [16, 32, 64, 128], "stem_width": 16}
CASES = [  # (arch, options, backbone, backbone_kwargs, input H x W, explainers, map stride of the intrinsic map)
    ("base", {}, "resnet10t", TINY, (64, 96), ["cam", *POST_HOC], 32),
    ("abn", {}, "resnet10t", TINY, (64, 96), ["attention", "cam", "gradcam", "eigencam"], 16),
    ("msabn", {"variant": "literal"}, "resnet10t", TINY, (64, 96), ["attention", "cam", "gradcam++"], 4),
    ("msabn", {"variant": "efficient"}, "resnet10t", TINY, (64, 96), ["attention", "gradcam"], 4),
    ("base", {}, "resnet20", None, (32, 48), ["cam", "gradcam", "scorecam"], 4),
    ("msabn", {}, "resnet20", None, (32, 48), ["attention", "gradcam"], 1),
]


@pytest.mark.parametrize("arch,opts,backbone,kw,size,names,stride", CASES)
def test_every_explainer_gives_input_size_maps_for_a_batch(arch, opts, backbone, kw, size, names, stride):
    torch.manual_seed(0)
    model = create_model(arch, backbone, 5, backbone_kwargs=kw, **opts).train()
    x = torch.randn(2, 3, *size)
    for name in names:
        e = create_explainer(name, model)(x)
        assert e.maps.shape == (2, 1, *size), (name, e.maps.shape)
        assert torch.isfinite(e.maps).all() and 0 <= e.maps.min() and e.maps.max() <= 1, name
        assert e.logits.shape == (2, 5) and e.targets.shape == (2,)
        h, w = e.native_size
        expected = stride if name in ("attention", "cam") else max(d["reduction"] for d in model.backbone.feature_info)
        assert (size[0] // h, size[1] // w) == (expected, expected), (name, e.native_size)
        assert model.training, f"{name} left the model in eval mode"
        assert all(p.grad is None for p in model.parameters()), f"{name} left gradients behind"


def test_target_layer_by_stride_on_a_cifar_resnet():
    m = create_model("base", "resnet20", 10)
    assert target_layer(m) is m.backbone.model.get_submodule(m.backbone.feature_info[-1]["module"])
    assert [d["reduction"] for d in m.backbone.feature_info][-1] == 4
    with pytest.raises(ValueError, match="no stage at stride 32"):
        target_layer(m, stride=32)


@pytest.fixture(scope="module")
def synthetic_test(tmp_path_factory):
    root = make_synthetic(tmp_path_factory.mktemp("syn") / "fine", "fine_grained", n_train=4, n_test=6, n_test_iid=2)
    return get_dataset("synthetic", root, "test", transform=eval_transform("fine_grained", 64))


def test_scores_on_the_embedded_benchmark_follow_dataset_order_and_boxes(synthetic_test):
    torch.manual_seed(0)
    msabn = create_model("msabn", "resnet10t", 10, backbone_kwargs=TINY)
    base = create_model("base", "resnet10t", 10, backbone_kwargs=TINY)
    for ex in (create_explainer("attention", msabn), create_explainer("gradcam", base)):
        r = evaluate_explainer(ex, synthetic_test, batch_size=4)
        assert r["summary"]["n"] == len(synthetic_test) == 6
        assert r["per_image"]["index"].tolist() == list(range(6))
        assert r["per_image"]["label"].tolist() == synthetic_test.targets.tolist()
        assert all(math.isfinite(v) for v in r["summary"].values())
        assert r["per_image"]["box_hits"].shape == (6, 100, 3)
    # the boxes the scores used are the dataset's, in the transformed image's pixels
    b = collate([synthetic_test[i] for i in range(6)])
    oracle = torch.zeros(6, 1, 64, 64)
    for i, (x0, y0, x1, y1) in enumerate(b["box"].round().long().tolist()): oracle[i, 0, y0:y1, x0:x1] = 1
    s = summarize_localization(localization_scores(oracle, b["box"]))
    assert s["gt_known_loc"] == 100.0 and s["pointing"] == 100.0 and s["frac_attn_out"] == 0.0


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_explainers", ROOT / "benchmarks" / "explainers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_comparison_script_end_to_end_on_a_cub_fixture_then_from_its_checkpoints(tmp_path):
    bench = _load_benchmark()
    write_cub_fixture(tmp_path / "cub", num_classes=3, n_train=2, n_test=1, size=(48, 64))
    common = [
        "--dataset",
        "cub",
        "--data-root",
        str(tmp_path / "cub"),
        "--backbone",
        "resnet10t",
        "--backbone-kwargs",
        json.dumps(TINY),
        "--size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--runs",
        str(tmp_path / "runs"),
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--throughput-batch",
        "2",
        "--grid-images",
        "2",
    ]
    first = bench.main(common + ["--out", str(tmp_path / "out1")])
    out = tmp_path / "out1"
    assert {p.name for p in out.iterdir()} == {"table.md", "grid.png", "results.json"}
    table = (out / "table.md").read_text()
    for label in bench.LOCALIZE: assert f"| {label} |" in table, label
    res = json.loads((out / "results.json").read_text())
    assert set(res["scores"]) == set(bench.LOCALIZE)
    for label, s in res["scores"].items():
        assert s["n"] == 3 and all(math.isfinite(v) for v in s.values()), label
    assert set(res["throughput"]["same_model"]) == set(bench.MODELS)
    assert all(r["ratio"] > 0 for r in res["throughput"]["same_model"].values())
    assert res["native"]["CAM (Base)"] == "2x2" and res["native"]["ABN"] == "4x4" and res["native"]["MSABN"] == "16x16"
    assert str(tmp_path) not in (out / "results.json").read_text(), "no machine paths in the committed results"
    # the same comparison from the checkpoints the first run saved: the same models, so the same scores
    run = next((tmp_path / "runs").iterdir())
    ckpts = [f"--checkpoint={label}={run / bench.slug(label) / 'checkpoint.pt'}" for label in bench.MODELS]
    second = bench.main(common + ["--out", str(tmp_path / "out2")] + ckpts)
    assert all(second["models"][k]["source"].startswith("checkpoint") for k in bench.MODELS)
    for k in bench.MODELS: assert second["models"][k]["test_acc"] == first["models"][k]["test_acc"], k
    for label in bench.LOCALIZE:
        for key in ("gt_known_loc", "max_box_acc_v2", "energy_pointing", "frac_attn_out"):
            assert second["scores"][label][key] == pytest.approx(first["scores"][label][key], abs=1e-9), (label, key)


def test_comparison_script_refuses_a_bad_checkpoint_label_and_conflicting_seeds(tmp_path, capsys):
    bench = _load_benchmark()
    with pytest.raises(SystemExit):
        bench.parse(["--checkpoint", "GradCAM=x.pt"])
    assert "LABEL one of" in capsys.readouterr().err
    for argv, says in ((["--seed", "1", "--more-seeds", "1", "2"], "repeats --seed 1"),
                       # the embedded default: seeds 1 2
                       (["--checkpoint", "Base=x.pt"], "pass --more-seeds without seeds")):
        with pytest.raises(SystemExit):
            bench.parse(argv)
        assert says in capsys.readouterr().err, argv
    assert bench.parse(["--dataset", "cub", "--data-root", "x"]).more_seeds == [] and bench.parse([]).more_seeds == [
        1,
        2,
    ]


def test_comparison_script_on_table1s_stand_in_reads_its_files_and_both_test_splits(tmp_path):
    ("The default data: Table 1's smoke stand-in (here a smaller draw of it), in-distribution accuracy beside the "
     "shifted one.")
    bench = _load_benchmark()
    res = bench.main(
        [
            "--synthetic-overrides",
            json.dumps({"n_train": 8, "n_test": 4, "n_test_iid": 6}),
            "--data-root",
            str(tmp_path / "data"),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--runs",
            str(tmp_path / "runs"),
            "--more-seeds",
            "3",
            "--out",
            str(tmp_path / "out"),
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--throughput-batch",
            "2",
            "--grid-images",
            "2",
        ]
    )
    made = json.loads(next((tmp_path / "data" / "synthetic").glob("synthetic-*/synthetic.json")).read_text())["config"]
    # Table 1's drawing, read at 64 px
    assert made["fine_grained"] is False and made["size"] == 32 and made["n_train"] == 8
    assert res["data"] == {
        "name": "embedded CIFAR-like stand-in of Table 1 (shifted test)",
        "train": 8,
        "test": 4,
        "classes": 10,
        "recipe": "cifar",
    }
    assert {s["n"] for s in res["scores"].values()} == {4}
    for m, f in res["models"].items():
        assert 0 <= f["test_iid_acc"] <= 100 and 0 <= f["pred_is_habitat_class"] <= 100, m
    assert res["throughput"]["machine_figure_img_s"] > 0
    # seed 3's models were trained too, and each map's lead over CAM is the paired difference over the two seeds
    assert list(res["seeds"]) == ["0", "3"] and len(list((tmp_path / "runs").iterdir())) == 2
    for label, by_key in res["paired_over_seeds"].items():
        for key, d in by_key.items():
            want = [
                res["seeds"][s]["scores"][label][key] - res["seeds"][s]["scores"]["CAM (Base)"][key] for s in ("0", "3")
            ]
            assert d["diffs"] == pytest.approx(want) and d["mean"] == pytest.approx(sum(want) / 2), (label, key)
    assert "CAM (Base)" not in res["paired_over_seeds"]
    table = (tmp_path / "out" / "table.md").read_text()
    assert "The same models trained from seeds 0, 3" in table and "| ABN |" in table.split("The same models")[1]
    # the named backbone
    assert "| in-distribution test accuracy (%) |" in table and "The models (resnet10t_narrow, 64 px," in table
