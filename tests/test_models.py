"""The models across modules: every arch x backbone forward and backward, maps, gradients, memory formats,
the Puzzle module on real backbones, checkpoints through msabn.core, and the cost promises."""
import math

import pytest
import torch
import torch.nn.functional as F

from msabn.core import atomic_torch_save, set_seed
from msabn.models import CIFAR_RESNETS, PAPER_TIMM, ModelOutput, count_macs, create_model, puzzle_loss, upsample_map

CIFAR = ("resnet20", "resnet56", "resnet110")
VARIANTS = {
    "base": ("base", {}),
    "abn": ("abn", {}),
    "msabn": ("msabn", {}),
    "msabn-efficient": ("msabn", {"variant": "efficient"}),
    "msabn-multiply": ("msabn", {"mechanism": "multiply"}),
}


def _losses(out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(out.logits, y)
    return loss + F.cross_entropy(out.attn_logits, y) if out.attn_logits is not None else loss


CASES = [(b, v) for b in CIFAR + PAPER_TIMM for v in ("base", "abn", "msabn", "msabn-efficient")]
CASES += [("resnet20", "msabn-multiply"), ("resnet50", "msabn-multiply")]   # the mechanism changes no shapes


@pytest.mark.parametrize("backbone,variant", CASES)
def test_every_model_runs_forward_and_backward(backbone, variant):
    arch, opts = VARIANTS[variant]
    set_seed(0)
    k, size = 7, (32 if backbone in CIFAR else 64)
    model = create_model(arch, backbone, k, **opts).train()
    x, y = torch.randn(2, 3, size, size), torch.tensor([1, 5])
    out = model(x)
    assert type(out) is ModelOutput and out.logits.shape == (2, k)
    assert out.class_maps.shape[:2] == (2, k)
    if arch == "base":
        assert out.attn_logits is None and out.attn_map is None
        assert out.class_maps.shape[-1] == math.ceil(size / model.backbone.reduction)
    else:
        a = out.attn_map.detach()
        assert out.attn_logits.shape == (2, k) and a.shape[:2] == (2, 1)
        assert float(a.min()) >= 0 and float(a.max()) <= 1
        abn_side = size // 2 if backbone in CIFAR else size // 16           # ABN: block 3's resolution
        assert a.shape[-1] == (abn_side if arch == "abn" else abn_side * (2 if backbone in CIFAR else 4))
        assert out.class_maps.shape[-2:] == a.shape[-2:]
    model.zero_grad()
    _losses(out, y).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, f"{backbone} {variant}: no gradient reaches {dead[:5]} ({len(dead)} parameters)"


@pytest.mark.parametrize("backbone", CIFAR + PAPER_TIMM)
def test_efficient_msabn_flops_within_one_and_a_half_abn(backbone):
    size, k = (32, 100) if backbone in CIFAR else (224, 1000)
    with torch.device("meta"):
        abn, lit, eff = (create_model(a, backbone, k, **o) for a, o in
                         [("abn", {}), ("msabn", {}), ("msabn", {"variant": "efficient"})])
    macs = {n: count_macs(m, (1, 3, size, size)) for n, m in [("abn", abn), ("literal", lit), ("efficient", eff)]}
    assert macs["efficient"] <= 1.5 * macs["abn"], macs
    assert macs["literal"] > 2.5 * macs["abn"], macs   # why the efficient variant exists


def test_paper_literal_msabn_stage_cost_on_resnet50():
    # the expected figures: ResNet-50 4.1 GMACs; the branch's stride-1 layer4 ~46.9 GMACs at 56x56, ~2.9 at 14x14
    with torch.device("meta"): abn, lit = create_model("abn", "resnet50", 1000), create_model("msabn", "resnet50", 1000)
    for m, side, want in [(abn, 14, 2.9), (lit, 56, 46.9)]:
        stage_macs = count_macs(m.attention.stage, (1, 1024, side, side)) / 1e9
        assert abs(stage_macs - want) / want < 0.05, (side, stage_macs)


@pytest.mark.parametrize("backbone", ["regnety_002", "mobilenetv3_small_100"])
def test_other_timm_cnns_work_the_same_way(backbone):
    set_seed(0)
    m = create_model("msabn", backbone, 3, variant="efficient")
    out = m(torch.randn(2, 3, 64, 64))
    assert out.attn_map.shape[-1] == 16 and out.logits.shape == (2, 3)
    _losses(out, torch.tensor([0, 2])).backward()


def test_channels_last_gives_the_same_outputs():
    set_seed(0)
    m = create_model("msabn", "efficientnet_b1", 5, variant="efficient").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        m = m.to(memory_format=torch.channels_last)
        cl = m(x.to(memory_format=torch.channels_last))
    for name, a, b in zip(ModelOutput._fields, ref, cl, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), name
    m.train()
    _losses(m(x.to(memory_format=torch.channels_last)), torch.tensor([0, 4])).backward()


@pytest.mark.parametrize("size", [64, 96, 100])
def test_any_input_size_works_on_timm(size):
    set_seed(0)
    m = create_model("msabn", "efficientnet_b1", 4, variant="efficient").eval()
    with torch.no_grad(): out = m(torch.randn(1, 3, size, size + 8))
    assert out.attn_map.shape[-2:] == (math.ceil(size / 4), math.ceil((size + 8) / 4))
    up = upsample_map(out.attn_map, (size, size + 8))
    assert up.shape[-2:] == (size, size + 8) and float(up.min()) >= 0 and float(up.max()) <= 1 + 1e-6


def test_mechanisms_differ_on_timm():
    set_seed(0)
    res = create_model("abn", "resnet50", 4).eval()
    mul = create_model("abn", "resnet50", 4, mechanism="multiply").eval()
    mul.load_state_dict(res.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): a, b = res(x), mul(x)
    assert torch.equal(a.attn_map, b.attn_map) and not torch.allclose(a.logits, b.logits, atol=1e-3)


def test_puzzle_on_timm_backbone_trains_trunk_and_branch():
    set_seed(0)
    m = create_model("msabn", "resnet50", 6, variant="efficient").train()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 5])
    out = m(x)
    l_re = puzzle_loss(m, x, y, out)
    assert l_re.ndim == 0 and float(l_re.detach()) > 0
    (_losses(out, y) + l_re).backward()
    assert m.attention.top_down.smooth.conv.weight.grad.abs().sum() > 0
    assert m.backbone.model.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_checkpoint_round_trip_through_core(tmp_path):
    set_seed(0)
    m = create_model("msabn", "resnet20", 10, variant="efficient").eval()
    p = atomic_torch_save({"config": m.config, "state_dict": m.state_dict()}, tmp_path / "ckpt.pt")
    ck = torch.load(p)
    set_seed(1)
    m2 = create_model(**ck["config"]).eval()
    m2.load_state_dict(ck["state_dict"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(m(x), m2(x), strict=True): assert torch.equal(a, b)
    keys = set(ck["state_dict"])
    for k in [
        "backbone.model.conv1.weight",
        "backbone.model.layer3.0.downsample.0.weight",
        "attention.stage.layer3.0.conv1.weight",
        "attention.stage_bn.weight",
        "attention.top_down.smooth.conv.weight",
        "attention.class_conv.weight",
        "attention.class_bn.running_mean",
        "attention.logit_conv.weight",
        "attention.map_conv.weight",
        "attention.map_bn.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert k in keys, k


def test_same_seed_same_model_and_cifar_block_types():
    outs = []
    for _ in range(2):
        set_seed(0)
        with torch.no_grad(): outs.append(create_model("abn", "resnet110", 10).eval()(torch.ones(1, 3, 32, 32)).logits)
    assert torch.equal(*outs)
    assert CIFAR_RESNETS["resnet20"] == (20, "basic") and CIFAR_RESNETS["resnet110"] == (110, "bottleneck")
    assert create_model("base", "resnet110", 10).backbone.num_features == 256
    assert create_model("base", "resnet110", 10, block="basic").backbone.num_features == 64


def test_clear_errors():
    m = create_model("abn", "resnet20", 10, in_chans=1)
    with pytest.raises(ValueError, match="expected 1 input channels"): m(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet5'.*resnet50"): create_model("abn", "resnet5", 10)
    with pytest.raises(ValueError, match=r"unknown arch 'msabn2': use one of \['base', 'abn', 'msabn'\]"):
        create_model("msabn2", "resnet20", 10)
    with pytest.raises(ValueError, match="smaller than the backbone's total stride 32"):
        create_model("base", "efficientnet_b1", 10)(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="does not divide into a 2x2 grid"):
        mm = create_model("msabn", "resnet20", 10)
        puzzle_loss(mm, torch.zeros(2, 3, 31, 32), torch.tensor([0, 1]), None)


def test_batches_of_the_wrong_dtype_or_shape_are_named_at_the_door():
    ("float64/uint8 batches used to fail inside a conv with torch's 'expected scalar type'; now named at forward's "
     "entry.")
    x = torch.rand(2, 3, 32, 32)
    for arch in ("base", "abn", "msabn"):
        m = create_model(arch, "resnet20", 10)
        with pytest.raises(TypeError, match=r"resnet20: input batch of dtype torch.float64, but the model's weights "
                                            r"are torch.float32"):
            m(x.double())
        with pytest.raises(TypeError, match=r"dtype torch.uint8.*x.float\(\) / 255"): m((x * 255).to(torch.uint8))
        with pytest.raises(TypeError, match=r"dtype torch.float16"): m.class_maps(x.half())
        with pytest.raises(ValueError, match=r"expected an image batch B x 3 x H x W, got \(3, 32, 32\)"): m(x[0])
        with pytest.raises(ValueError, match=r"expected 3 input channels"): m(x[:, :1])
        assert m.double()(x.double()).logits.dtype == torch.float64, "a float64 model takes float64 batches"
    m = create_model("abn", "resnet20", 10).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert m(x.bfloat16()).logits.shape == (2, 10) and m(x).logits.shape == (2, 10)


def test_num_classes_below_two_is_refused_and_numpy_ints_are_taken():
    import numpy as np
    for k in (0, 1, -3, 2.0, True):
        with pytest.raises(ValueError, match=r"num_classes must be an int >= 2"): create_model("abn", "resnet20", k)
    m = create_model("msabn", "resnet20", np.int64(4))
    assert m.config["num_classes"] == 4 and type(m.config["num_classes"]) is int


def test_checkpoint_into_a_folder_that_is_not_writable_names_target_and_folder(tmp_path, monkeypatch):
    "atomic_write raised a bare PermissionError naming its temporary file; now the target and the folder are named."
    import errno
    import os
    import tempfile
    ro = tmp_path/"ro"; ro.mkdir(); ro.chmod(0o555)
    want = rf"ckpt.pt: cannot write it: the folder {ro} is not writable"
    if os.geteuid() != 0:  # root may write anywhere; the simulated refusal below stands in for it there
        with pytest.raises(PermissionError, match=want): atomic_torch_save({"w": torch.ones(1)}, ro/"ckpt.pt")
    def refuse(*a, **k): raise PermissionError(errno.EACCES, "Permission denied", str(ro/".ckpt.pt.abc.tmp"))
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError, match=want): atomic_torch_save({"w": torch.ones(1)}, ro/"ckpt.pt")
    assert list(ro.iterdir()) == []
