"""Clean / PGD-20 / AutoAttack flags on a tiny model trained in the test (no Ray)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.eval.autoattack_adapter import AA_PRESETS, AutoAttackSpec, get_spec, run_autoattack
from pipeline.eval.robust import (
    EvalConfig,
    accuracies,
    chunk_bounds,
    clean_flags,
    evaluate_flags,
    evaluate_model,
    pgd_flags,
    to_float,
    unit_starts,
    with_branch,
    worst_case,
)
from pipeline.config import AttackConfig

ROOT = Path(__file__).resolve().parents[2]


def make_data(n: int, seed: int, size: int = 16, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Class k = a fixed random pattern around mid-grey (+ small noise): separable, but the
    patterns are close (amplitude 0.2), so an 8/255 L-inf attack hurts a lot (measured:
    clean 1.00, PGD-20 0.23, AA-cheap 0.125 on the 128 test images)."""
    protos = np.random.default_rng(123).normal(0.0, 1.0, (classes, size, size, 3))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = 0.5 + 0.2 * protos[y] + rng.normal(0.0, 0.02, (n, size, size, 3))
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8), y.astype(np.int64)


class TinyNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(h, 4).flatten(1))


def train_tiny(steps: int = 60, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet()
    x, y = make_data(512, seed=1)
    xt, yt = to_float(x), torch.as_tensor(y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (64,), generator=g)
        loss = F.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> TinyNet:
    return train_tiny()


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    return make_data(128, seed=2)


def test_pgd20_below_clean_on_a_well_trained_model(trained, test_set):
    x, y = test_set
    cfg = EvalConfig(attacks=("clean", "pgd20"), batch_size=32)
    acc = accuracies(evaluate_flags(trained, x, y, cfg))
    assert acc["clean"] >= 0.9  # the generated task is easy
    assert acc["pgd20"] < acc["clean"]  # strictly: 8/255 hurts these close prototypes
    assert acc["pgd20"] <= 0.5 * acc["clean"]


def test_pgd_flags_do_not_depend_on_chunking(trained, test_set):
    x, y = test_set
    xt, yt = to_float(x), torch.as_tensor(y)
    whole = pgd_flags(trained, xt, yt, steps=5, batch_size=16, seed=3)
    for num_chunks in (2, 3, 8):
        parts = [pgd_flags(trained, xt[a:b], yt[a:b], steps=5, batch_size=16, seed=3, offset=a)
                 for a, b in chunk_bounds(len(xt), num_chunks, 16)]
        assert torch.equal(torch.cat(parts), whole)


def test_pgd_seed_changes_random_start(trained, test_set):
    # with 0 steps the "attack" is the random start: different seeds give different points
    from pipeline.attacks import pgd_ce
    from pipeline.eval.robust import unit_seed

    x = to_float(test_set[0][:16])
    y = torch.as_tensor(test_set[1][:16])
    a = pgd_ce(trained, x, y, steps=0, generator=torch.Generator().manual_seed(unit_seed(0, 0)))
    b = pgd_ce(trained, x, y, steps=0, generator=torch.Generator().manual_seed(unit_seed(0, 16)))
    assert not torch.equal(a, b)
    assert unit_seed(0, 16) != unit_seed(1, 0)


def test_chunk_bounds_are_whole_units_and_cover():
    b = chunk_bounds(100, 3, 16)  # 7 units -> 3, 2, 2
    assert b == [(0, 48), (48, 80), (80, 100)]
    assert chunk_bounds(10, 5, 16) == [(0, 10)]  # fewer units than chunks
    assert all(a % 16 == 0 for a, _ in chunk_bounds(1000, 7, 16))
    assert sum(e - s for s, e in chunk_bounds(1000, 7, 16)) == 1000
    with pytest.raises(ValueError, match="multiple of batch_size"):
        unit_starts(10, 16, offset=8)


def test_autoattack_cheap_not_weaker_than_pgd20(trained, test_set):
    """What is asserted: (1) AA flags imply clean flags element-wise (AA attacks only
    clean-correct points and we score its returned points); (2) the AA accuracy (cheap preset:
    APGD-CE + APGD-T with the standard version's settings) is <= the PGD-20 accuracy on the same
    model and examples (deterministic seeds, so this is not a flaky comparison)."""
    x, y = test_set
    cfg = EvalConfig(attacks=("clean", "pgd20", "autoattack"), aa_version="cheap", batch_size=64)
    flags = evaluate_flags(trained, x, y, cfg)
    assert not np.any(flags["autoattack"] & ~flags["clean"])
    acc = accuracies(flags)
    assert 0.05 < acc["pgd20"] < 0.9  # the comparison below is not trivially 0 <= 0
    assert acc["autoattack"] <= acc["pgd20"]
    assert acc["autoattack"] < acc["clean"]
    assert np.array_equal(worst_case(flags), flags["clean"] & flags["pgd20"] & flags["autoattack"])


def test_run_autoattack_returns_points_in_the_ball(trained, test_set):
    x = to_float(test_set[0][:32])
    y = torch.as_tensor(test_set[1][:32])
    x_adv, ok = run_autoattack(trained, x, y, spec="fast", batch_size=32, seed=0)
    assert x_adv.shape == x.shape and ok.dtype == torch.bool and ok.shape == (32,)
    assert (x_adv - x).abs().max().item() <= 8 / 255 + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    # the returned flags are a re-classification of the returned points
    assert torch.equal(ok, trained(x_adv).argmax(1).eq(y))
    # same seed -> same result
    _, ok2 = run_autoattack(trained, x, y, spec="fast", batch_size=32, seed=0)
    assert torch.equal(ok, ok2)


def test_autoattack_specs_and_labels():
    assert get_spec("standard").label() == "standard"
    assert AA_PRESETS["cheap"].attacks == ("apgd-ce", "apgd-t")
    assert get_spec("fast").label() == "custom[apgd-ce;n_iter=20;n_restarts=1]"
    assert get_spec("standard", eps=4 / 255).eps == pytest.approx(4 / 255)
    with pytest.raises(ValueError, match="version='custom'"):
        AutoAttackSpec(version="standard", attacks=("apgd-ce",))
    with pytest.raises(ValueError, match="unknown AutoAttack attack"):
        AutoAttackSpec(version="custom", attacks=("pgd",))
    with pytest.raises(ValueError, match="unknown AutoAttack preset"):
        get_spec("strong")


def test_adapter_is_the_only_pyautoattack_import_site():
    hits = []
    for f in list((ROOT / "pipeline").rglob("*.py")) + list((ROOT / "jobs").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            if any(m.split(".")[0] in ("pyautoattack", "autoattack") for m in mods):
                hits.append(f.relative_to(ROOT).as_posix())
    assert hits == ["pipeline/eval/autoattack_adapter.py"]


def test_with_branch_routes_dual_bn_models():
    class Dual(nn.Module):
        bn_names = ("normal", "pgd")

        def forward(self, x, bn_name=None):
            return torch.full((len(x), 2), 1.0 if bn_name == "pgd" else 0.0)

    m = with_branch(Dual(), "pgd")
    assert m(torch.zeros(3, 3, 4, 4)).sum().item() == 6.0
    single = TinyNet()
    assert with_branch(single, "pgd") is single


def test_to_float_layouts():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    t = to_float(x)
    assert t.shape == (2, 3, 4, 4) and t.dtype == torch.float32
    assert t[1, 2, 3, 1].item() == pytest.approx(x[1, 3, 1, 2] / 255)
    assert torch.equal(to_float(torch.as_tensor(x).permute(0, 3, 1, 2)), t)


def test_evaluate_model_results_dict(trained, test_set):
    x, y = test_set
    cfg = EvalConfig(attacks=("clean", "pgd20"), batch_size=32,
                     pgd=AttackConfig(eps=8 / 255, alpha=2 / 255, steps=20), n_examples=64)
    lines: list[str] = []
    res = evaluate_model(trained, x, y, cfg, mode="SLF", progress=lines.append)
    assert res["n_examples"] == 64 and res["aa_acc"] is None and res["aa_version"] is None
    flags = evaluate_flags(trained, x[:64], y[:64], cfg)
    assert res["clean_acc"] == pytest.approx(flags["clean"].mean())
    assert res["pgd20_acc"] == pytest.approx(flags["pgd20"].mean())
    assert res["worst_case_acc"] == pytest.approx((flags["clean"] & flags["pgd20"]).mean())
    assert res["warnings"] == [] and res["corruptions"] is None
    assert [ln.split()[0] for ln in lines] == ["clean", "pgd20"]
    # a clean-only evaluation is exactly clean_flags
    xt = to_float(x)
    assert np.array_equal(evaluate_flags(trained, x, y, EvalConfig(attacks=("clean",)))["clean"],
                          clean_flags(trained, xt, torch.as_tensor(y)).numpy())


def test_autoattack_on_a_subset_runs_everything_else_on_all_examples():
    """eval.aa_examples: AA attacks only the first n; clean/PGD-20 keep every example; the
    PGD-20-vs-AA order check and the worst case use the subset; results say how many."""
    import numpy as np

    from pipeline.eval.robust import EvalConfig, evaluate_model

    seen: list[tuple[tuple[str, ...], int]] = []

    def flags_fn(model, images, labels, cfg):
        seen.append((cfg.attacks, len(labels)))
        n = len(labels)
        out = {}
        if "clean" in cfg.attacks:
            out["clean"] = np.ones(n, bool)
        if "pgd20" in cfg.attacks:
            out["pgd20"] = np.arange(n) % 2 == 0  # 50 % on all 8, 2/4 on the first 4
        if "autoattack" in cfg.attacks:
            out["autoattack"] = np.array([True, False, False, False])[:n]  # 1/4
        return out

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    images = np.zeros((8, 4, 4, 3), np.uint8)
    labels = np.zeros(8, np.int64)
    cfg = EvalConfig(attacks=("clean", "pgd20", "autoattack"), aa_examples=4, sanity_checks=False)
    res = evaluate_model(net, images, labels, cfg, flags_fn=flags_fn)
    assert seen == [(("clean", "pgd20"), 8), (("autoattack",), 4)]
    assert (res["clean_acc"], res["pgd20_acc"], res["aa_acc"]) == (1.0, 0.5, 0.25)
    assert (res["n_examples"], res["aa_n_examples"]) == (8, 4)
    assert res["worst_case_acc"] == 0.25  # AND over the 4 AA examples: only example 0 survives
    assert not res["warnings"]  # AA 25 % <= PGD-20 on the same 4 (50 %): no order warning
    # aa_examples = 0 (all) or >= n: one pass with every attack on all (4) examples
    for n_aa in (0, 8, 50):
        seen.clear()
        res = evaluate_model(net, images[:4], labels[:4], EvalConfig(aa_examples=n_aa, sanity_checks=False),
                             flags_fn=flags_fn)
        assert seen == [(("clean", "pgd20", "autoattack"), 4)] and res["aa_n_examples"] == 4
