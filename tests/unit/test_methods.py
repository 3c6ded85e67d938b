"""The method registry (pipeline/methods): every entry keeps the contract, the step reads nothing
but the registry (a method registered at run time trains with no other change), ACL-AIR is a
configuration, and the cost model follows each method's inputs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from pipeline.config import PretrainConfig, load_config
from pipeline.methods import METHODS, PARTS, Method, Views
from pipeline.report.cost import passes_per_image
from pipeline.train.steps import PretrainForward, StepSettings, pretrain_loss, schedule_values

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def test_registry_holds_the_papers_methods_in_order():
    assert list(METHODS) == ["simclr", "acl", "dynacl", "air"]
    assert {m: (METHODS[m].adversarial, METHODS[m].originals, METHODS[m].dynaug) for m in METHODS} == {
        "simclr": (False, False, False), "acl": (True, False, False),
        "dynacl": (True, False, True), "air": (True, True, True)}
    assert [METHODS[m].views for m in METHODS] == [2, 4, 4, 5]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_returns_a_total_and_known_parts(name: str):
    m = METHODS[name]
    g = torch.Generator().manual_seed(0)
    z = lambda: torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)  # noqa: E731
    v = Views(z(), z(), *((z(), z()) if m.adversarial else (None, None)), z() if m.originals else None)
    out = m.loss(v, StepSettings(mode=name, weight=0.25))
    assert out["total"].dim() == 0 and torch.isfinite(out["total"])
    assert set(out) - {"total"} <= set(PARTS) and "cl_nat" in out


def test_a_method_registered_at_run_time_trains_through_the_unchanged_step(monkeypatch):
    """Adding a method is one record: here 'advonly' (the adversarial term alone, a made-up
    method) is trained by pretrain_loss with no other edit; its log shape stays PARTS."""
    from pipeline.losses import nt_xent_loss

    def advonly(v: Views, s) -> dict:
        cl_adv = nt_xent_loss(v.adv_i, v.adv_j, temperature=s.temperature)
        return {"total": cl_adv, "cl_nat": cl_adv.detach() * 0, "cl_adv": cl_adv.detach()}

    monkeypatch.setitem(METHODS, "advonly", Method(name="advonly", adversarial=True,
                                                   originals=False, dynaug=False, loss=advonly))
    cfg = load_config(PretrainConfig, None, ["--loss.mode=advonly", "--model.width=4", "--attack.steps=1"])
    from pipeline.train.steps import build_pretrain_model

    torch.manual_seed(0)
    net = build_pretrain_model(cfg)
    assert net.bn_names == ("normal", "pgd")  # adversarial: dual BN, from the record
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    s = StepSettings(mode="advonly", steps=1)
    res = pretrain_loss(PretrainForward(copy.deepcopy(net)).train(), net, x, s,
                        generator=torch.Generator().manual_seed(1))
    assert set(res.parts) == set(PARTS) and res.parts["sir"] == 0 and res.parts["cl_nat"] == 0
    assert res.loss.item() == pytest.approx(res.parts["cl_adv"].item()) and res.loss.item() > 0
    res.loss.backward()
    assert passes_per_image("advonly", 5) == passes_per_image("acl", 5)  # cost model reads it too


def test_unknown_method_is_refused_with_the_known_ones():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=r"loss.mode: 'byol' is not a pre-training method; one of \['simclr'"):
        load_config(PretrainConfig, None, ["--loss.mode=byol"])


def test_acl_air_is_a_configuration():
    """ACL-AIR = AIR's loss without DynAug: constant strength, omega 0, every epoch; the
    DynACL-AIR recipe differs from it in loss.dynaug only."""
    acl_air = load_config(PretrainConfig, CONFIGS / "cifar10_r18_acl_air.yaml")
    dyn_air = load_config(PretrainConfig, CONFIGS / "cifar10_r18_dynacl_air.yaml")
    assert (acl_air.loss.mode, acl_air.loss.dynaug, dyn_air.loss.dynaug) == ("air", False, None)
    assert [schedule_values(acl_air, e) for e in (1, 500, 1000)] == [(1.0, 0.0)] * 3
    s, w = schedule_values(dyn_air, 1000)  # last stair of the authors' 1000 epochs, K = 50
    assert s == pytest.approx(1 - 950 / 1000) and w == pytest.approx(2 / 3 * 950 / 1000)
    from dataclasses import replace

    assert replace(acl_air, loss=replace(acl_air.loss, dynaug=None)) == dyn_air
