"""Chunked Ray evaluation == single-process evaluation, example by example."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 4).flatten(1))


def _data(n: int = 90, seed: int = 0):
    protos = np.random.default_rng(7).normal(0, 1, (4, 16, 16, 3))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = np.clip(0.5 + 0.15 * protos[y] + rng.normal(0, 0.03, (n, 16, 16, 3)), 0, 1)
    return (x * 255).round().astype(np.uint8), y.astype(np.int64)


def _model() -> Tiny:
    from pipeline.eval.robust import to_float

    torch.manual_seed(0)
    m = Tiny()
    x, y = _data(256, seed=1)
    xt, yt = to_float(x), torch.as_tensor(y)
    opt = torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9)
    for i in range(40):
        idx = slice((i * 64) % 256, (i * 64) % 256 + 64)
        loss = F.cross_entropy(m(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.fixture(scope="module")
def pickled_by_value():
    # Tiny lives in this test module, which Ray workers cannot import: ship it by value.
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_chunked_ray_flags_equal_single_process(ray_local, pickled_by_value):
    from pipeline.eval.ray_tasks import evaluate_distributed
    from pipeline.eval.robust import EvalConfig, accuracies, evaluate_flags

    m = _model()
    x, y = _data()
    cfg = EvalConfig(attacks=("clean", "pgd20", "autoattack"), aa_version="fast", batch_size=16, seed=5)
    single = evaluate_flags(m, x, y, cfg)
    acc = accuracies(single)
    assert acc["clean"] > 0.8 and acc["pgd20"] < acc["clean"]  # a non-trivial case
    lines: list[str] = []
    for n_tasks in (1, 3):
        dist = evaluate_distributed(m, x, y, cfg, num_tasks=n_tasks, progress=lines.append)
        for k in cfg.attacks:
            assert dist[k].shape == (90,) and dist[k].dtype == bool
            assert np.array_equal(dist[k], single[k]), (n_tasks, k)
    assert sum(ln.startswith("chunk [") for ln in lines) == 4


def test_evaluate_model_with_ray_hooks_matches_local(ray_local, pickled_by_value):
    from pipeline.eval.ray_tasks import corruptions_distributed, evaluate_distributed
    from pipeline.eval.robust import EvalConfig, evaluate_model

    m = _model()
    x, y = _data(40)
    x32 = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)  # 32 px: no resize inside corruptions
    cfg = EvalConfig(attacks=("clean", "pgd20"), batch_size=16, corruptions="generated",
                     corruption_names=("gaussian_noise", "contrast"), severities=(1, 5),
                     sanity_checks=False)

    class Up(nn.Module):  # the 16 px model on 32 px inputs (average-pool back down)
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.inner(F.avg_pool2d(t, 2))

    local = evaluate_model(Up(m), x32, y, cfg)
    ray_res = evaluate_model(Up(m), x32, y, cfg,
                             flags_fn=lambda *a: evaluate_distributed(*a, num_tasks=2),
                             corruption_fn=corruptions_distributed)
    for k in ("clean_acc", "pgd20_acc", "worst_case_acc"):
        assert ray_res[k] == local[k]
    assert ray_res["corruptions"] == local["corruptions"]
    assert ray_res["corruptions_source"] == "generated"
