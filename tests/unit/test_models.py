"""pipeline.models: shapes, gradients, dual-BN routing, exact parameter/key counts, single-BN
conversion, the authors' checkpoint layouts and our export format. Tiny models (width 4,
WRN-10-1); full-size counts are taken on the meta device (no memory, no init cost)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.models import (
    CheckpointError,
    MultiBatchNorm1d,
    MultiBatchNorm2d,
    ProjectionHead,
    build_from_config,
    build_model,
    count_parameters,
    iter_multi_bn,
    load_authors_checkpoint,
    load_encoder,
    make_classifier,
    replace_head,
    save_encoder,
    supports_segments,
    to_single_bn,
)

pytestmark = pytest.mark.timeout(120)

TINY_RESNET = {"arch": "resnet18", "width": 4}
TINY_WRN = {"arch": "wrn", "depth": 10, "widen": 1}

# (build kwargs, input side)
VARIANTS = [
    *[({**TINY_RESNET, "head": h}, 32) for h in ("proj3", "proj2", "linear", "none")],
    ({**TINY_RESNET, "head": "proj3", "stem": "imagenet"}, 96),
    ({**TINY_RESNET, "head": "linear", "bn_names": ("pgd",)}, 32),
    *[({**TINY_WRN, "head": h}, 32) for h in ("proj3", "proj2", "linear", "none")],
    ({**TINY_WRN, "head": "proj2", "bn_names": ("pgd",), "normalize": True}, 32),
]
IDS = [
    "-".join(str(v) for v in kw.values()) for kw, _ in VARIANTS
]


def _randomize_bn(model: nn.Module, seed: int = 1) -> None:
    """Give every BN non-default affine params and running stats (so branches differ)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))


def _to_authors_layout(
    model: nn.Module, *, order: tuple[str, ...], head_attr: str, prefix: str = "module."
) -> dict[str, torch.Tensor]:
    """Our state dict rewritten in the authors' dual-BN key layout (bn_list.k in `order`)."""
    out = {}
    names = model.bn_names
    for k, v in model.state_dict().items():
        parts = k.split(".")
        if "bn_list" in parts:
            i = parts.index("bn_list")
            parts[i + 1] = str(order.index(names[int(parts[i + 1])]))
        if parts[0] == "head":
            parts[0] = head_attr
        out[prefix + ".".join(parts)] = v.clone()
    return out


# ---------------------------------------------------------------------------------------------
# Forward / backward on every variant


@pytest.mark.parametrize(("kw", "side"), VARIANTS, ids=IDS)
def test_forward_backward_every_parameter_gets_gradient(kw: dict, side: int) -> None:
    model = build_model(**kw)
    model.train()
    x = torch.rand(2, 3, side, side)
    feats = model.features(x, model.bn_names[0])
    assert feats.shape == (2, model.feat_dim)
    expected_out = {"proj3": model.feat_dim, "proj2": model.feat_dim, "linear": 10,
                    "none": model.feat_dim}[kw["head"]]
    loss = torch.zeros(())
    for name in model.bn_names:  # every branch, so every branch's BN gets a gradient
        out = model(torch.rand(2, 3, side, side), name)
        assert out.shape == (2, expected_out)
        assert torch.isfinite(out).all()
        # A fixed random projection: plain sums of train-mode BN outputs are constant
        # (sum of normalised values = N * beta), which would zero most gradients.
        w = torch.randn_like(out)
        loss = loss + (out * w).sum()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("kw", [TINY_RESNET, TINY_WRN], ids=["resnet18", "wrn"])
def test_train_forward_updates_only_its_branch(kw: dict) -> None:
    model = build_model(**kw, head="proj3")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.rand(4, 3, 32, 32), "normal")
    after = model.state_dict()
    n_sites = 0
    for site, mbn in iter_multi_bn(model):
        n_sites += 1
        i_nat, i_adv = mbn.bn_names.index("normal"), mbn.bn_names.index("pgd")
        for leaf in ("running_mean", "running_var", "num_batches_tracked"):
            k_nat = f"{site}.bn_list.{i_nat}.{leaf}"
            k_adv = f"{site}.bn_list.{i_adv}.{leaf}"
            assert not torch.equal(before[k_nat], after[k_nat]), k_nat
            assert torch.equal(before[k_adv], after[k_adv]), k_adv
        assert int(after[f"{site}.bn_list.{i_nat}.num_batches_tracked"]) == 1
    assert n_sites > 0
    # Eval mode uses running stats and changes nothing.
    model.eval()
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.rand(2, 3, 32, 32), "pgd")
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_multi_bn_routing_closed_form() -> None:
    bn = MultiBatchNorm2d(3, ("normal", "pgd")).eval()
    with torch.no_grad():
        bn.bn_list[1].weight.fill_(2.0)
        bn.bn_list[1].bias.fill_(1.0)
        bn.bn_list[1].running_mean.fill_(0.5)
    x = torch.rand(2, 3, 4, 4)
    s = math.sqrt(1.0 + 1e-5)  # running_var 1, default eps 1e-5
    torch.testing.assert_close(bn(x, "normal"), x / s)
    torch.testing.assert_close(bn(x, "pgd"), 2.0 * (x - 0.5) / s + 1.0)
    # Defaults: momentum 0.1, eps 1e-5 (spec §1.1).
    assert all(b.momentum == 0.1 and b.eps == 1e-5 for b in bn.bn_list)


def test_multi_bn_errors_and_single_branch() -> None:
    bn = MultiBatchNorm1d(4, ("normal", "pgd"))
    z = torch.rand(3, 4)
    with pytest.raises(ValueError, match="unknown bn_name 'adv'"):
        bn(z, "adv")
    with pytest.raises(ValueError, match="bn_name is required"):
        bn(z)
    single = MultiBatchNorm1d(4, ("pgd",)).eval()
    assert torch.equal(single(z), single(z, "anything"))
    with pytest.raises(ValueError):
        MultiBatchNorm1d(4, ("a", "a"))
    model = build_model(**TINY_RESNET)
    with pytest.raises(ValueError, match="unknown bn_name"):
        model(torch.rand(2, 3, 32, 32), "adv")
    with pytest.raises(ValueError, match="bn_name is required"):
        model.features(torch.rand(2, 3, 32, 32))


def test_residual_wiring_closed_form() -> None:
    """With the residual convs zeroed a block returns its shortcut, which exposes the wiring."""
    from pipeline.models.resnet import BasicBlock
    from pipeline.models.wrn import WideBasicBlock

    s = math.sqrt(1.0 + 1e-5)  # fresh BN in eval: y = x / sqrt(1 + eps)
    x = torch.randn(2, 4, 6, 6)
    # WRN, equal channels: identity on the RAW input (negatives survive).
    blk = WideBasicBlock(4, 4, 1, ("normal", "pgd")).eval()
    nn.init.zeros_(blk.conv2.weight)
    torch.testing.assert_close(blk(x, "pgd"), x)
    # WRN, channels change: the 1x1 shortcut reads the PRE-ACTIVATED input relu(bn1(x)).
    blk = WideBasicBlock(4, 8, 1, ("normal", "pgd")).eval()
    nn.init.zeros_(blk.conv2.weight)
    with torch.no_grad():
        blk.convShortcut.weight.zero_()
        blk.convShortcut.weight[:4, :, 0, 0] = torch.eye(4)
    out = blk(x, "normal")
    torch.testing.assert_close(out[:, :4], torch.relu(x / s))
    assert torch.equal(out[:, 4:], torch.zeros_like(out[:, 4:]))
    # ResNet post-activation block: relu(bn2(0) + x) = relu(x); downsample = bn(conv1x1(x)).
    rb = BasicBlock(4, 4, 1, ("normal", "pgd")).eval()
    nn.init.zeros_(rb.conv2.weight)
    torch.testing.assert_close(rb(x, "pgd"), torch.relu(x))
    rb = BasicBlock(4, 8, 2, ("normal", "pgd")).eval()
    assert rb.downsample is not None and rb.downsample.conv.stride == (2, 2)
    nn.init.zeros_(rb.conv2.weight)
    with torch.no_grad():
        rb.downsample.conv.weight.zero_()
        rb.downsample.conv.weight[:4, :, 0, 0] = torch.eye(4)
    torch.testing.assert_close(rb(x, "pgd")[:, :4], torch.relu(x[:, :, ::2, ::2] / s))


def test_stems() -> None:
    cifar = build_model(**TINY_RESNET)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    stl = build_model(**TINY_RESNET, stem="imagenet")
    assert stl.conv1.kernel_size == (7, 7) and stl.conv1.stride == (2, 2)
    assert isinstance(stl.maxpool, nn.MaxPool2d)
    with pytest.raises(ValueError):
        build_model(**TINY_RESNET, stem="tiny")


@pytest.mark.parametrize("kw", [TINY_RESNET, TINY_WRN], ids=["resnet18", "wrn"])
def test_segment_routing_equals_separate_passes(kw: dict) -> None:
    import copy

    # float64: train-mode BN over 2-3 rows amplifies float32 summation-order noise.
    a = build_model(**kw, head="proj3").double().train()
    _randomize_bn(a, seed=4)
    b = copy.deepcopy(a)
    assert supports_segments(a)
    xs = [torch.rand(n, 3, 32, 32, dtype=torch.float64) for n in (3, 2, 3)]
    names = ["normal", "pgd", "normal"]  # AIR: nat, adv, orig (orig updates 'normal' again)
    separate = torch.cat([a(x, n) for x, n in zip(xs, names)])
    segmented = b(torch.cat(xs), tuple((n, x.shape[0]) for x, n in zip(xs, names)))
    torch.testing.assert_close(segmented, separate)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(vb, va, msg=k)
    with pytest.raises(ValueError, match="do not sum"):
        b(torch.cat(xs), (("normal", 3), ("pgd", 3)))
    assert not supports_segments(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    assert not supports_segments(nn.Linear(2, 2))


def test_projection_head_structure() -> None:
    h3 = ProjectionHead(8, 6, 3, ("normal", "pgd"))
    h2 = ProjectionHead(8, 6, 2, ("normal", "pgd"))
    assert [l.weight.shape for l in h3.linear_layers()] == [(6, 8), (6, 6), (6, 6)]
    assert [l.bias is not None for l in h3.linear_layers()] == [True, False, False]
    assert h2.linear_layers() == [h2.fc1, h2.fc2] and not hasattr(h2, "fc3")
    # Parameter count: fc1 8*6+6, fc2 36, fc3 36, 3 BN sites x 2 branches x (6+6).
    assert count_parameters(h3) == 54 + 36 + 36 + 3 * 2 * 12
    # No final ReLU: eval output can be negative.
    assert (h3.eval()(torch.randn(64, 8), "pgd") < 0).any()
    with pytest.raises(ValueError):
        ProjectionHead(8, 6, 4)


def test_input_normalisation_buffers() -> None:
    model = build_model(**TINY_RESNET)
    sd = model.state_dict()
    torch.testing.assert_close(sd["normalize.mean"], torch.tensor([0.485, 0.456, 0.406]))
    torch.testing.assert_close(sd["normalize.std"], torch.tensor([0.229, 0.224, 0.225]))
    assert not any(k.startswith("normalize.") for k in build_model(**TINY_WRN).state_dict())
    x = torch.full((1, 3, 2, 2), 0.485)
    assert model.normalize(x)[0, 0].abs().max() < 1e-6


# ---------------------------------------------------------------------------------------------
# Exact sizes


def test_full_size_parameter_counts() -> None:
    """Hand-derived counts (meta device: nothing allocated).

    ResNet-18, CIFAR stem, single BN, Linear(512, 10):
      convs: stem 3*64*9 = 1,728; layer1 4 x 64*64*9 = 147,456;
             layer2 64*128*9 + 3 x 128*128*9 + 1x1 64*128 = 73,728 + 442,368 + 8,192 = 524,288;
             layer3 128*256*9 + 3 x 256*256*9 + 128*256
                    = 294,912 + 1,769,472 + 32,768 = 2,097,152;
             layer4 256*512*9 + 3 x 512*512*9 + 256*512
                    = 1,179,648 + 7,077,888 + 131,072 = 8,388,608;
             total 11,159,232.
      BN channels: 64 + 4*64 + (4*128+128) + (4*256+256) + (4*512+512) = 4,800 -> 9,600 params.
      fc: 512*10 + 10 = 5,130.       Sum = 11,173,962 (torchvision 7x7 stem: +7,680).
    Dual BN adds one more 9,600 -> 11,183,562.
    Head proj3 (512): fc1 262,656 + fc2 262,144 + fc3 262,144 + 3 x 2 x 1,024 BN = 793,088.
    WRN-28-10, single BN, Linear(640, 10) (n = 4 blocks/group, channels 16/160/320/640):
      conv1 3*16*9 = 432;
      block1: 16*160*9 + 160*160*9 + 1x1 16*160 + 3 x 2 x 160*160*9
              = 23,040 + 230,400 + 2,560 + 1,382,400 = 1,638,400;
      block2: 160*320*9 + 320*320*9 + 160*320 + 6 x 320*320*9 = 6,963,200;
      block3: 320*640*9 + 640*640*9 + 320*640 + 6 x 640*640*9 = 27,852,800;
      BN channels: block1 (16+160) + 3*(160+160) = 1,136; block2 (160+320) + 3*640 = 2,400;
      block3 (320+640) + 3*1,280 = 4,800; final 640 -> 8,976 channels -> 17,952 params;
      linear 640*10 + 10 = 6,410.   Sum = 36,479,194 (the usual WRN-28-10 figure).
    """
    wrn_28_10 = 432 + 1_638_400 + 6_963_200 + 27_852_800 + 17_952 + 6_410
    assert wrn_28_10 == 36_479_194
    with torch.device("meta"):
        r_single = build_model("resnet18", bn_names=("pgd",), head="linear")
        r_dual = build_model("resnet18", head="linear")
        r_proj = build_model("resnet18", head="proj3")
        w_single = build_model("wrn", bn_names=("pgd",), head="linear")
        w_dual = build_model("wrn", head="proj2")
    assert count_parameters(r_single) == 11_173_962
    assert count_parameters(r_dual) == 11_173_962 + 9_600
    assert count_parameters(r_proj) == 11_183_562 - 5_130 + 793_088
    assert r_single.feat_dim == 512
    assert w_single.feat_dim == 640
    assert count_parameters(w_single) == wrn_28_10
    # 2-layer 640 head (ImageNet-32): fc1 640*640+640, fc2 640*640, 2 sites x 2 x 1,280 BN.
    assert count_parameters(w_dual) == (wrn_28_10 - 6_410 + 17_952
                                        + 410_240 + 409_600 + 5_120)



def test_state_dict_key_counts() -> None:
    # Spec §6.1: 20 convs + 20 BN sites x 2 branches x 5 tensors + normalize 2 + fc 2 = 224;
    # single BN: 20 + 20 x 5 + 2 + 2 = 124. Key counts do not depend on width.
    dual = build_model(**TINY_RESNET, head="linear")
    assert len(dual.state_dict()) == 224
    assert len(to_single_bn(dual).state_dict()) == 124
    assert sum(1 for _ in iter_multi_bn(dual)) == 20
    # WRN-10-1 (channels 16/16/32/64): conv1 + 3 groups x 2 convs + 2 shortcuts = 9 convs
    # (group 1 keeps 16 channels -> identity shortcut, spec §1.3); 3 x 2 + 1 = 7 BN sites.
    wrn = build_model(**TINY_WRN, head="linear")
    assert len(wrn.state_dict()) == 9 + 7 * 2 * 5 + 2
    assert wrn.block1.layer[0].convShortcut is None
    assert build_model("wrn", depth=10, widen=2).block1.layer[0].convShortcut is not None


# ---------------------------------------------------------------------------------------------
# Single-BN conversion, heads


@pytest.mark.parametrize("kw", [TINY_RESNET, TINY_WRN], ids=["resnet18", "wrn"])
@pytest.mark.parametrize("branch", ["pgd", "normal"])
def test_to_single_bn_matches_dual_branch(kw: dict, branch: str) -> None:
    dual = build_model(**kw, head="proj3")
    _randomize_bn(dual)
    dual.eval()
    single = to_single_bn(dual, branch)
    assert single.bn_names == (branch,) and dual.bn_names == ("normal", "pgd")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(single(x), dual(x, branch))
        assert torch.equal(single.features(x, "whatever"), dual.features(x, branch))
    # State copied exactly, including the counters; the original is untouched.
    i = dual.bn_names.index(branch)
    d_sd, s_sd = dual.state_dict(), single.state_dict()
    for site, _ in iter_multi_bn(dual):
        for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(s_sd[f"{site}.bn_list.0.{leaf}"], d_sd[f"{site}.bn_list.{i}.{leaf}"])
    assert len(dual.bn1.bn_list) == 2
    with pytest.raises(ValueError):
        to_single_bn(dual, "adv")


def test_make_classifier_and_replace_head() -> None:
    dual = build_model(**TINY_RESNET, head="proj3")
    clf = make_classifier(dual, 7)  # zero init, 'pgd' branch (spec §1.4)
    assert isinstance(clf.head, nn.Linear) and clf.head.weight.shape == (7, dual.feat_dim)
    assert clf.bn_names == ("pgd",)
    assert torch.equal(clf.eval()(torch.rand(2, 3, 32, 32)), torch.zeros(2, 7))
    rnd = make_classifier(dual, 7, init="random")
    assert rnd.head.weight.abs().sum() > 0
    assert isinstance(dual.head, ProjectionHead)  # original untouched
    ident = replace_head(clf, nn.Identity())
    assert ident is clf and clf(torch.rand(2, 3, 32, 32)).shape == (2, dual.feat_dim)
    with pytest.raises(ValueError):
        make_classifier(dual, 7, init="xavier")


def test_build_from_config_and_bad_args() -> None:
    m = build_from_config(ModelConfig(arch="wrn", depth=10, widen=1, head="proj2"))
    assert m.feat_dim == 64 and isinstance(m.head, ProjectionHead) and m.head.layers == 2
    assert isinstance(m.normalize, nn.Identity)  # wrn: no normalisation despite cfg default
    r = build_from_config(ModelConfig(width=4, head_dim=16), head="linear", num_classes=5)
    assert r.feat_dim == 32 and r.head.out_features == 5 and r.bn_names == ("normal", "pgd")
    assert build_model(**TINY_RESNET, head_dim=16).head.fc3.out_features == 16
    with pytest.raises(ValueError):
        build_model("vit")
    with pytest.raises(ValueError):
        build_model(**TINY_RESNET, head="mlp")
    with pytest.raises(ValueError):
        build_model("wrn", depth=12)


# ---------------------------------------------------------------------------------------------
# Authors' checkpoints


@pytest.mark.parametrize(
    ("kw", "order", "head_attr", "bn_order_arg"),
    [
        (TINY_RESNET, ("normal", "pgd"), "fc", None),  # CIFAR/STL order (default for resnet)
        (TINY_RESNET, ("pgd", "normal"), "fc", ("pgd", "normal")),  # reversed, given explicitly
        (TINY_WRN, ("pgd", "normal"), "linear", None),  # ImageNet-32 order (default for wrn)
    ],
    ids=["resnet-normal-pgd", "resnet-pgd-normal", "wrn-pgd-normal"],
)
def test_authors_dual_bn_round_trip(kw, order, head_attr, bn_order_arg) -> None:
    torch.manual_seed(1)
    src = build_model(**kw, head="proj2" if kw["arch"] == "wrn" else "proj3")
    _randomize_bn(src, seed=3)
    ckpt = _to_authors_layout(src, order=order, head_attr=head_attr)
    assert len(ckpt) == len(src.state_dict())
    torch.manual_seed(2)
    dst = build_model(**kw, head="proj2" if kw["arch"] == "wrn" else "proj3")
    report = load_authors_checkpoint(ckpt, dst, bn_order=bn_order_arg)
    assert report["loaded"] == len(dst.state_dict()) and report["ignored"] == []
    assert report["bn_order"] == order and report["layout"] == "multi-bn"
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    src.eval(), dst.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for name in ("normal", "pgd"):
            assert torch.equal(dst(x, name), src(x, name))


def test_authors_reversed_order_goes_to_the_named_branch() -> None:
    # ImageNet layout: bn_list.0 is 'pgd'. Our ('normal','pgd') model must put it at index 1.
    model = build_model(**TINY_WRN, head="none")
    ckpt = _to_authors_layout(model, order=("pgd", "normal"), head_attr="linear")
    marker = torch.full_like(ckpt["module.bn1.bn_list.0.running_mean"], 7.0)
    ckpt["module.bn1.bn_list.0.running_mean"] = marker
    fresh = build_model(**TINY_WRN, head="none")
    load_authors_checkpoint(ckpt, fresh)  # default order for wrn = ('pgd', 'normal')
    assert torch.equal(fresh.bn1.branch("pgd").running_mean, marker)
    assert not torch.equal(fresh.bn1.branch("normal").running_mean, marker)
    # The same file read with the wrong order lands the marker in the other branch.
    wrong = build_model(**TINY_WRN, head="none")
    load_authors_checkpoint(ckpt, wrong, bn_order=("normal", "pgd"))
    assert torch.equal(wrong.bn1.branch("normal").running_mean, marker)


def test_authors_single_bn_finetune_layout(tmp_path) -> None:
    # Authors' single-BN fine-tuning layout (spec §1.4): plain bn1.weight, downsample.0/1, fc.*
    src = make_classifier(build_model(**TINY_RESNET, head="proj3"), 10, init="random")
    _randomize_bn(src, seed=5)
    ckpt = {}
    for k, v in src.state_dict().items():
        k = k.replace(".bn_list.0", "").replace("downsample.conv", "downsample.0")
        k = k.replace("downsample.bn", "downsample.1").replace("head.", "fc.")
        ckpt[k] = v.clone()
    assert "layer2.0.downsample.1.running_var" in ckpt and "bn1.weight" in ckpt
    assert len(ckpt) == 124
    path = tmp_path / "finetuned.pt"
    torch.save({"epoch": 25, "state_dict": ckpt, "optim": {}}, path)
    dst = make_classifier(build_model(**TINY_RESNET), 10, init="zeros")
    report = load_authors_checkpoint(path, dst)
    assert report["layout"] == "single-bn" and report["loaded"] == 124
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dst.eval()(x), src.eval()(x))
    # A single-BN file into a dual-BN model is refused unless asked to broadcast.
    dual = build_model(**TINY_RESNET, head="linear")
    with pytest.raises(CheckpointError, match="unexpected"):
        load_authors_checkpoint(ckpt, dual)
    load_authors_checkpoint(ckpt, dual, single_bn_to_all=True)
    assert torch.equal(dual.bn1.bn_list[0].weight, dual.bn1.bn_list[1].weight)


def test_authors_checkpoint_errors() -> None:
    src = build_model(**TINY_RESNET, head="proj3")
    good = _to_authors_layout(src, order=("normal", "pgd"), head_attr="fc")
    # Missing tensor -> named.
    bad = dict(good)
    del bad["module.layer3.1.bn2.bn_list.1.running_var"]
    with pytest.raises(CheckpointError, match=r"layer3\.1\.bn2\.bn_list\.1\.running_var") as ei:
        load_authors_checkpoint(bad, build_model(**TINY_RESNET, head="proj3"))
    assert ei.value.missing == ["layer3.1.bn2.bn_list.1.running_var"]
    # Unexpected tensor -> named (checkpoint spelling).
    bad = dict(good, **{"module.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError) as ei:
        load_authors_checkpoint(bad, build_model(**TINY_RESNET, head="proj3"))
    assert ei.value.unexpected == ["module.extra.weight"]
    # Shape mismatch -> key and both shapes.
    bad = dict(good)
    bad["module.conv1.weight"] = torch.zeros(5, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r"conv1\.weight.*\(5, 3, 3, 3\).*\(4, 3, 3, 3\)"):
        load_authors_checkpoint(bad, build_model(**TINY_RESNET, head="proj3"))
    # Head mismatch: a proj head into a linear-head model fails, unless skip_head.
    lin = build_model(**TINY_RESNET, head="linear")
    with pytest.raises(CheckpointError, match="missing"):
        load_authors_checkpoint(good, lin)
    head_before = lin.head.weight.clone()
    report = load_authors_checkpoint(good, lin, skip_head=True)
    assert torch.equal(lin.head.weight, head_before)
    assert len(report["ignored"]) == sum(1 for k in good if k.startswith("module.fc."))
    # Dual file into a single-branch model: the unused branch is reported, not dropped.
    with pytest.raises(CheckpointError) as ei:
        load_authors_checkpoint(good, to_single_bn(build_model(**TINY_RESNET, head="proj3")))
    assert len(ei.value.unexpected) == (20 + 3) * 5 and not ei.value.missing
    # Nothing was half-loaded by a failed call.
    fresh = build_model(**TINY_RESNET, head="proj3")
    snap = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_authors_checkpoint({k: v for k, v in good.items() if "fc1" not in k}, fresh)
    assert all(torch.equal(snap[k], v) for k, v in fresh.state_dict().items())


# ---------------------------------------------------------------------------------------------
# Our export format


@pytest.mark.parametrize("kw", [
    {**TINY_RESNET, "head": "proj3"}, {**TINY_WRN, "head": "proj2", "bn_names": ("pgd", "normal")},
], ids=["resnet-proj3", "wrn-proj2"])
def test_save_load_encoder_round_trip(tmp_path, kw: dict) -> None:
    model = build_model(**kw)
    _randomize_bn(model, seed=9)
    meta = {"epoch": 3, "method": "air", "cfg": {"lr": 5.0}}
    path = save_encoder(tmp_path / "sub" / "enc.pt", model, meta)
    assert sorted(p.name for p in path.parent.iterdir()) == ["enc.pt"]  # no temp file left
    loaded, meta2 = load_encoder(path)
    assert meta2 == meta and loaded.bn_names == model.bn_names
    assert type(loaded) is type(model) and loaded.feat_dim == model.feat_dim
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for name in model.bn_names:
            assert torch.equal(loaded.eval()(x, name), model.eval()(x, name))
    # Single-BN classifier exports too.
    clf = make_classifier(model, 4, init="random")
    loaded_clf, _ = load_encoder(save_encoder(tmp_path / "clf.pt", clf, {}))
    assert loaded_clf.bn_names == ("pgd",)
    with torch.no_grad():
        assert torch.equal(loaded_clf.eval()(x), clf.eval()(x))


def test_pickled_checkpoint_needs_trusted(tmp_path) -> None:
    import argparse

    model = build_model(**TINY_RESNET, head="none")
    path = tmp_path / "with_args.pt"
    sd = _to_authors_layout(model, order=("normal", "pgd"), head_attr="fc")
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=5.0)}, path)
    with pytest.raises(CheckpointError, match="trusted=True"):
        load_authors_checkpoint(path, build_model(**TINY_RESNET, head="none"))
    assert load_authors_checkpoint(
        path, build_model(**TINY_RESNET, head="none"), trusted=True)["loaded"] == len(sd)


def test_load_encoder_rejects_authors_file(tmp_path) -> None:
    model = build_model(**TINY_RESNET)
    path = tmp_path / "model.pt"
    torch.save({"epoch": 1, "state_dict": _to_authors_layout(
        model, order=("normal", "pgd"), head_attr="fc"), "optim": {}}, path)
    with pytest.raises(CheckpointError, match="load_authors_checkpoint"):
        load_encoder(path)
    # Our file is accepted by load_authors_checkpoint as well (its own key names).
    ours = save_encoder(tmp_path / "ours.pt", model, {})
    fresh = build_model(**TINY_RESNET)
    assert load_authors_checkpoint(ours, fresh)["loaded"] == len(model.state_dict())
    with pytest.raises(ValueError):
        save_encoder(tmp_path / "x.pt", replace_head(build_model(**TINY_RESNET), nn.Tanh()), {})
