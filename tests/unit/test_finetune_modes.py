"""SLF / ALF / AFF train exactly the parameters they should; presets; no leak across modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import AttackConfig, ConfigError
from pipeline.finetune.config import (
    AFFConfig,
    ALFConfig,
    FinetuneConfig,
    SLFConfig,
    authors_changes,
    load_finetune_config,
    preset_dict,
)
from pipeline.finetune.modes import (
    build_finetune_model,
    finalize_for_eval,
    finetune,
    make_optimizer,
)
from pipeline.models import build_model

FAST = AttackConfig(eps=8 / 255, alpha=2 / 255, steps=2)


def _encoder():
    torch.manual_seed(0)
    enc = build_model("resnet18", width=4, head="proj2", bn_names=("normal", "pgd"))
    # give the BN running stats distinct, non-default values so "unchanged" is meaningful
    enc.train()
    with torch.no_grad():
        for _ in range(2):
            enc(torch.rand(8, 3, 16, 16), "normal")
            enc(torch.rand(8, 3, 16, 16), "pgd")
    return enc.eval()


def _data(n: int = 24):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, n)


def _snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("mode,cfg", [
    ("SLF", SLFConfig(epochs=1, batch_size=8, lr=0.1)),
    ("ALF", ALFConfig(epochs=1, batch_size=8, lr=0.1, attack=FAST)),
])
def test_linear_modes_train_only_the_classifier(mode, cfg):
    enc = _encoder()
    enc_before = _snapshot(enc)
    x, y = _data()
    model = build_finetune_model(enc, mode, cfg, num_classes=3)
    assert model.bn_names == ("pgd",)
    assert torch.count_nonzero(model.head.weight) == 0  # zeros init (Q11)
    before = _snapshot(model)
    out, hist = finetune(enc, x, y, mode, cfg, num_classes=3, seed=0)
    after = out.state_dict()
    # the exported head is a plain Linear (the standardisation is folded into it)
    assert set(after) <= set(before) and not any(k.startswith("head.") and k not in ("head.weight", "head.bias") for k in after)
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}  # BN running stats included in "unchanged"
    assert hist[0]["steps"] == 3 and np.isfinite(hist[0]["loss"])
    # the pre-trained encoder object is untouched
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in enc_before.items())


def test_slf_classifier_sees_pgd_branch_bn():
    enc = _encoder()
    m = build_finetune_model(enc, "SLF", SLFConfig(), num_classes=3)
    # the single-BN copy carries the encoder's 'pgd' branch statistics (Q12)
    name = next(k for k in m.state_dict() if k.endswith("running_mean"))
    src = [v for k, v in enc.state_dict().items() if k.endswith("running_mean")]
    assert any(torch.equal(m.state_dict()[name], v) for v in src)


def test_aff_dual_bn_trains_everything_and_converts_to_pgd_branch():
    enc = _encoder()
    x, y = _data()
    cfg = AFFConfig(epochs=1, batch_size=8, lr=0.05, attack=FAST)
    model = build_finetune_model(enc, "AFF", cfg, num_classes=3)
    assert model.bn_names == ("normal", "pgd")
    assert all(p.requires_grad for p in model.parameters())
    out, hist = finetune(enc, x, y, "AFF", cfg, num_classes=3, seed=0)
    assert out.bn_names == ("pgd",) and not out.training
    enc_sd = enc.state_dict()
    conv = next(k for k in out.state_dict() if k.endswith("conv1.weight"))
    assert not torch.equal(out.state_dict()[conv], enc_sd[conv])  # encoder weights moved
    rm = [k for k in out.state_dict() if k.endswith("running_mean")]
    assert rm and any(not torch.equal(out.state_dict()[k], v) for k in rm
                      for kk, v in enc_sd.items() if kk.endswith("running_mean"))
    assert np.isfinite(hist[0]["loss"])


def test_aff_single_bn_option():
    enc = _encoder()
    m = build_finetune_model(enc, "AFF", AFFConfig(dual_bn=False), num_classes=3)
    assert m.bn_names == ("pgd",) and all(p.requires_grad for p in m.parameters())


def test_optimizer_and_schedule():
    enc = _encoder()
    cfg = SLFConfig(lr=0.5, milestones=(1, 2))
    m = build_finetune_model(enc, "SLF", cfg, num_classes=3)
    opt, sched = make_optimizer(m, cfg)
    assert len(opt.param_groups[0]["params"]) == 2  # head weight + bias only
    g = opt.param_groups[0]
    assert (g["momentum"], g["weight_decay"], g["nesterov"]) == (0.9, 2e-4, False)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 0.05, 0.005])


def test_random_init_option():
    enc = _encoder()
    m = build_finetune_model(enc, "SLF", SLFConfig(classifier_init="random"), num_classes=3)
    assert torch.count_nonzero(m.head.weight) > 0


def test_finalize_returns_frozen_copy():
    enc = _encoder()
    m = build_finetune_model(enc, "SLF", SLFConfig(), num_classes=3)
    out = finalize_for_eval(m, SLFConfig())
    assert out is not m and not any(p.requires_grad for p in out.parameters())


# -- presets (spec §6.1 table) -----------------------------------------------------------------


def test_authors_table_entries():
    assert authors_changes("DynACL-AIR", "SLF", "cifar10") == {
        "batch_size": 512, "lr": 0.01, "milestones": [10, 20], "epochs": 5}
    assert authors_changes("ACL-AIR", "SLF", "cifar10")["lr"] == 0.005
    assert authors_changes("ACL", "AFF", "cifar100") == {
        "batch_size": 128, "lr": 0.1, "milestones": [40, 60], "epochs": 100}
    assert authors_changes("DynACL", "AFF", "stl10", 96)["milestones"] == [10, 20]
    assert authors_changes("DynACL-AIR", "ALF", "stl10", 96)["batch_size"] == 128
    assert authors_changes("DynACL-AIR++", "SLF", "stl10", 32) == {}  # not in their table
    assert authors_changes("ACL_RCS", "SLF", "cifar100")["lr"] == 0.05
    with pytest.raises(ConfigError, match="unknown pre-training method"):
        authors_changes("MoCo", "SLF", "cifar10")


def test_preset_without_cascade_does_not_leak():
    p = preset_dict("DynACL-AIR", "cifar10")
    assert [p[m]["epochs"] for m in ("slf", "alf", "aff")] == [5, 25, 25]
    p2 = preset_dict("DynACL-AIR++", "cifar10")
    assert [p2[m]["epochs"] for m in ("slf", "alf", "aff")] == [25, 4, 25]


def test_preset_cascade_reproduces_the_authors_leak():
    p = preset_dict("DynACL-AIR", "cifar10", cascade=True)
    assert [p[m]["epochs"] for m in ("slf", "alf", "aff")] == [5, 5, 5]
    p2 = preset_dict("DynACL-AIR++", "cifar10", cascade=True)
    assert [p2[m]["epochs"] for m in ("slf", "alf", "aff")] == [25, 4, 4]
    # unlisted dataset: the previous mode's batch/lr persist in the shared args
    p3 = preset_dict("DynACL-AIR++", "stl10", 32, cascade=True)
    assert p3["slf"]["batch_size"] == 128 and p3["aff"]["lr"] == 0.1


def test_mode_all_configs_do_not_leak(tmp_path):
    y = tmp_path / "ft.yaml"
    y.write_text("mode: ALL\nslf:\n  epochs: 3\n  lr: 0.5\nalf:\n  batch_size: 64\n")
    cfg = load_finetune_config(y, ["--aff.beta=3.0"])
    assert cfg.modes() == ("SLF", "ALF", "AFF")
    assert (cfg.slf.epochs, cfg.slf.lr) == (3, 0.5)
    assert (cfg.alf.epochs, cfg.alf.lr, cfg.alf.batch_size) == (25, 0.1, 64)
    assert (cfg.aff.epochs, cfg.aff.lr, cfg.aff.batch_size, cfg.aff.beta) == (25, 0.1, 128, 3.0)
    assert cfg.mode_config("ALF") is cfg.alf
    with pytest.raises(ConfigError, match="slf.epoch"):
        load_finetune_config(None, ["--slf.epoch=3"])


def test_preset_under_yaml_and_overrides(tmp_path):
    y = tmp_path / "ft.yaml"
    y.write_text("preset: DynACL-AIR\ndata:\n  dataset: cifar10\nalf:\n  lr: 0.02\n")
    cfg = load_finetune_config(y, ["--aff.epochs=7"])
    assert (cfg.slf.epochs, cfg.slf.batch_size, cfg.slf.lr, cfg.slf.milestones) == (5, 512, 0.01, (10, 20))
    assert (cfg.alf.lr, cfg.alf.epochs) == (0.02, 25)  # YAML beats preset
    assert (cfg.aff.epochs, cfg.aff.milestones) == (7, (15, 20))  # CLI beats preset
    casc = load_finetune_config(y, ["--preset_cascade=true"])
    assert (casc.alf.epochs, casc.aff.epochs) == (5, 5)
    assert isinstance(FinetuneConfig().eval.pgd, AttackConfig)


@pytest.mark.parametrize("mode,cfg", [
    ("SLF", SLFConfig(epochs=1, batch_size=8, lr=0.1)),
    ("AFF", AFFConfig(epochs=1, batch_size=8, lr=0.05, attack=FAST)),
])
def test_streamed_epoch_equals_in_memory_epoch_on_the_same_batches(mode, cfg):
    """run_epoch_stream is run_epoch with batches from outside: same batches -> same weights."""
    from pipeline.finetune.modes import epoch_order, run_epoch, run_epoch_stream, training_module

    x, y = _data(20)  # 8 + 8 + 4: a partial last batch too
    outs = []
    for streamed in (False, True):
        torch.manual_seed(3)
        model = build_finetune_model(_encoder(), mode, cfg, num_classes=3)
        module = training_module(model, mode, cfg)
        opt, _ = make_optimizer(model, cfg)
        if streamed:
            order = epoch_order(len(x), 1, 5)
            batches = [(x[order[i:i + 8]], y[order[i:i + 8]]) for i in range(0, len(x), 8)]
            r = run_epoch_stream(module, iter(batches), mode=mode, cfg=cfg, optimizer=opt,
                                 epoch=1, device="cpu", steps=3, seed=5)
        else:
            xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
            r = run_epoch(module, xt, torch.from_numpy(y), mode=mode, cfg=cfg, optimizer=opt,
                          epoch=1, seed=5)
        outs.append((r, _snapshot(model)))
    (ra, sa), (rb, sb) = outs
    assert rb["steps"] == ra["steps"] == 3 and rb["seen"] == ra["seen"] == 20
    assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-6)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=1e-6)


def test_standardized_probe_folds_exactly_and_keeps_a_random_encoder_stable():
    """A random ResNet's raw features are large; the standardised probe at lr 0.1 stays finite
    and its folded nn.Linear computes the same logits as the standardised one."""
    from pipeline.finetune.modes import StandardizedLinear, fit_feature_norm

    enc = _encoder()
    x, y = _data()
    cfg = SLFConfig(epochs=2, batch_size=8, lr=0.1, milestones=(5,))
    model = build_finetune_model(enc, "SLF", cfg, num_classes=3)
    assert isinstance(model.head, StandardizedLinear)
    xt = torch.as_tensor(x).permute(0, 3, 1, 2).contiguous() if x.shape[-1] == 3 else torch.as_tensor(x)
    fit_feature_norm(model, xt)
    torch.nn.init.normal_(model.head.weight)
    model.eval()
    with torch.no_grad():
        f = model.features(xt.float() / 255)
        ref = model.head(f)
        folded = model.head.fold()(f)
    assert isinstance(model.head.fold(), torch.nn.Linear)
    assert torch.allclose(ref, folded, atol=1e-4, rtol=1e-4)
    _, hist = finetune(enc, x, y, "SLF", cfg, num_classes=3, seed=0)
    assert all(np.isfinite(h["loss"]) and h["loss"] < 5.0 for h in hist)
