"""pipeline.train.sat: the supervised adversarial training step (Madry PGD-AT) and its config.

Tiny models (ResNet-18 width 4, WRN-10-1), 16 px, batch 8. Checks: finite loss and sane counts,
PGD-10 examples inside the eps-ball ∩ [0,1] and actually adversarial, the attack touches
neither weight gradients nor BN statistics (only the one train-mode pass does), determinism
under a seeded generator, a few SGD steps fit a separable toy batch, and the config defaults
are the spec §5.6 / §9 recipe.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ConfigError, load_config
from pipeline.train.optim import lr_at
from pipeline.train.sat import (
    SATConfig,
    SATModelConfig,
    SATStepSettings,
    build_sat_model,
    build_sat_optimizer,
    clean_correct,
    sat_loss,
    sat_step,
)

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
ARCHS = {
    "resnet": SATModelConfig(arch="resnet18", width=4),
    "wrn": SATModelConfig(arch="wrn", depth=10, widen=1),
}
N, SIDE, C = 8, 16, 3
EPS, ALPHA = 8 / 255, 2 / 255


def _model(arch: str = "resnet", num_classes: int = C) -> nn.Module:
    torch.manual_seed(0)
    return build_sat_model(SATConfig(model=ARCHS[arch]), num_classes)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (N, 3, SIDE, SIDE), generator=g, dtype=torch.uint8)
    y = torch.randint(0, C, (N,), generator=g)
    return x, y


def _separable(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes far apart in brightness (0.2 vs 0.8 + small noise): separable by more than
    2 * eps in every pixel, so even adversarial examples stay separable."""
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 2
    base = 0.2 + 0.6 * y.float().view(-1, 1, 1, 1)
    x = (base + 0.05 * torch.rand(n, 3, SIDE, SIDE, generator=g)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("arch", list(ARCHS))
def test_loss_finite_counts_and_eps_ball(arch):
    net = _model(arch)
    x, y = _batch()
    s = SATStepSettings(steps=10)  # the paper's PGD-10, 8/255, 2/255
    res = sat_loss(net, net, x, y, s, generator=torch.Generator().manual_seed(3))
    assert res.loss.dim() == 0 and torch.isfinite(res.loss) and res.loss.requires_grad
    assert res.n == N and 0 <= res.adv_correct.item() <= N and 0 <= res.clean_correct.item() <= N
    assert res.x.shape == res.x_adv.shape == (N, 3, SIDE, SIDE)
    assert (res.x_adv - res.x).abs().max().item() <= EPS + 1e-6
    assert res.x_adv.min().item() >= 0.0 and res.x_adv.max().item() <= 1.0
    assert (res.x_adv != res.x).any()  # it moved
    assert not res.x_adv.requires_grad
    # adversarial: CE at x_adv >= CE at x (eval mode, the attack's own objective)
    net.eval()
    with torch.no_grad():
        ce_adv = F.cross_entropy(net(res.x_adv), y).item()
        ce_nat = F.cross_entropy(net(res.x), y).item()
    assert ce_adv >= ce_nat


def test_augmentation_is_crop_flip_of_the_batch():
    x, y = _batch()
    net = _model()
    res = sat_loss(net, net, x, y, SATStepSettings(steps=1, augment=False))
    assert torch.equal(res.x, x.float() / 255)
    res = sat_loss(net, net, x, y, SATStepSettings(steps=1, padding=4),
                   generator=torch.Generator().manual_seed(0))
    assert not torch.equal(res.x, x.float() / 255)  # shifted / flipped copies
    assert res.x.shape == (N, 3, SIDE, SIDE)


def test_attack_leaves_weight_grads_and_bn_stats_alone():
    net = _model()
    x, y = _batch()
    sentinel = {n: torch.full_like(p, 0.5) for n, p in net.named_parameters()}
    for n, p in net.named_parameters():
        p.grad = sentinel[n].clone()
    bn = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.num_batches_tracked.item()) for m in bn]
    res = sat_loss(net, net, x, y, SATStepSettings(steps=10), generator=torch.Generator().manual_seed(0))
    for n, p in net.named_parameters():  # PGD used autograd.grad w.r.t. the input only
        assert torch.equal(p.grad, sentinel[n]), n
    assert net.training  # the step leaves the model in train mode
    # exactly one train-mode pass moved the BN statistics (the clean pass and PGD are eval mode)
    for m, (rm, nbt) in zip(bn, before):
        assert m.num_batches_tracked.item() == nbt + 1
    res.loss.backward()
    assert all(p.grad is not None and not torch.equal(p.grad, sentinel[n]) for n, p in net.named_parameters())


def test_seeded_generator_is_deterministic_and_clean_tracking_optional():
    x, y = _batch()
    out = []
    for _ in range(2):
        net = _model()
        res = sat_loss(net, net, x, y, SATStepSettings(steps=3), generator=torch.Generator().manual_seed(7))
        out.append((res.x_adv, res.loss.item()))
    assert torch.equal(out[0][0], out[1][0]) and out[0][1] == out[1][1]
    net = _model()
    res = sat_loss(net, net, x, y, SATStepSettings(steps=1, track_clean=False))
    assert torch.isnan(res.clean_correct)


def test_sgd_steps_fit_a_separable_batch():
    net = _model("resnet", num_classes=2)
    cfg = SATConfig(model=ARCHS["resnet"])
    opt = build_sat_optimizer(cfg, net.parameters())
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    assert opt.defaults["weight_decay"] == 5e-4
    x, y = _separable()
    s = SATStepSettings(steps=10, augment=False)
    for g in opt.param_groups:
        g["lr"] = 0.05
    g = torch.Generator().manual_seed(0)
    losses, accs = [], []
    for _ in range(8):
        res = sat_step(net, net, opt, x, y, s, generator=g)
        losses.append(res.loss.item())
        accs.append(res.adv_correct.item() / res.n)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] * 0.5, losses
    assert accs[-1] == 1.0, accs


def test_clean_correct_matches_argmax():
    net = _model()
    x, y = _batch()
    net.eval()
    with torch.no_grad():
        want = int((net(x.float() / 255).argmax(1) == y).sum())
    net.train()
    assert clean_correct(net, x, y, batch_size=3) == want
    assert net.training  # restored


def test_config_defaults_are_the_spec_recipe():
    cfg = SATConfig()
    assert cfg.model.arch == "wrn" and (cfg.model.depth, cfg.model.widen) == (28, 10)
    assert tuple(cfg.model.bn_names) == ("normal",)
    assert cfg.attack.eps == pytest.approx(8 / 255) and cfg.attack.alpha == pytest.approx(2 / 255)
    assert cfg.attack.steps == 10
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.warmup_epochs) == ("sgd", 0.1, 0.9, 5e-4, 0.0)
    assert cfg.sat.nesterov and cfg.sat.padding == 4
    assert (cfg.train.epochs, cfg.train.global_batch_size) == (100, 256)
    r = cfg.rcs
    assert (r.fraction, r.interval, r.chunk_batches, r.pgd_steps, r.train_pgd_steps, r.rd_loss) == (
        0.1, 10, 100, 1, 1, "softmax_kl")
    # warmup_epochs=1 == the authors' --warmup 0 with 0-based epochs: selections at 2, 12, ...
    from pipeline.train.driver import selection_epochs

    assert selection_epochs(100, r.warmup_epochs, r.interval) == list(range(2, 93, 10))
    # per-step cosine from 0.1 without warm-up
    assert lr_at(o, 1 / 5000, epochs=100, global_batch=256) == pytest.approx(0.1, rel=1e-6)
    assert lr_at(o, 50.0, epochs=100, global_batch=256) == pytest.approx(0.05, rel=1e-4)
    assert lr_at(o, 100.0, epochs=100, global_batch=256) == pytest.approx(1e-6)


def test_partial_sections_keep_the_sat_defaults():
    # one key of a section set -> the rest of the section is still the SAT recipe
    cfg = load_config(SATConfig, None, ["--attack.eps=0.01", "--rcs.enabled=true", "--optim.lr=0.2",
                                        "--train.seed=3", "--model.width=8", "--data.manifest=/d"])
    assert cfg.attack.steps == 10 and cfg.attack.alpha == pytest.approx(2 / 255)
    assert cfg.rcs.fraction == 0.1 and cfg.rcs.warmup_epochs == 1 and cfg.rcs.rd_loss == "softmax_kl"
    assert cfg.optim.name == "sgd" and cfg.optim.weight_decay == 5e-4 and cfg.optim.warmup_epochs == 0
    assert cfg.train.epochs == 100 and cfg.model.arch == "wrn" and tuple(cfg.model.bn_names) == ("normal",)
    assert cfg.data.val_fraction == 0.005


def test_config_rejects_bad_combinations():
    with pytest.raises(ConfigError, match="bn_names"):
        load_config(SATConfig, None, ["--model.bn_names=normal,pgd"])
    with pytest.raises(ConfigError, match="optim.name"):
        load_config(SATConfig, None, ["--optim.name=lars"])
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config(SATConfig, None, ["--rcs.enabled=true", "--data.val_fraction=0"])
    with pytest.raises(ConfigError, match="rcs.warmup_epochs"):
        load_config(SATConfig, None, ["--rcs.enabled=true", "--train.epochs=1"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(SATConfig, None, ["--sat.nesterof=false"])


@pytest.mark.parametrize("name", ["sat_demo.yaml", "sat_imagenet32_wrn.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(SATConfig, ROOT / "jobs" / "configs" / name)
    assert cfg.rcs.enabled and tuple(cfg.model.bn_names) == ("normal",)
    if name == "sat_imagenet32_wrn.yaml":
        assert cfg.train.epochs == 100 and cfg.attack.steps == 10 and cfg.rcs.fraction == 0.1
        assert cfg.attack.eps == pytest.approx(8 / 255) and cfg.attack.alpha == pytest.approx(2 / 255)


def test_job_cli_maps_flags():
    from jobs.sat import parse

    cfg = parse(["--config", str(ROOT / "jobs/configs/sat_demo.yaml"), "--data.manifest=/d",
                 "--test-manifest", "/t", "--num-workers", "0", "--rcs.fraction=0.5"])
    assert (cfg.data.manifest, cfg.test.manifest, cfg.scaling.num_workers, cfg.rcs.fraction) == (
        "/d", "/t", 0, 0.5)
    with pytest.raises(ConfigError):
        parse(["--config", str(ROOT / "jobs/configs/sat_demo.yaml"), "stray"])
