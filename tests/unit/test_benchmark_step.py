"""pipeline.benchmarks.step and the jobs.benchmark dispatcher, on tiny settings (no timing asserts).

The baseline step is checked to be what it claims (the authors' PGD fills weight gradients, ours
does not, both reach the same adversarial views) and the benchmark's JSON to carry the machine,
settings, parity record and one row per mode x implementation.
"""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pytest
import torch

from jobs import benchmark as dispatcher
from pipeline.attacks import pgd_contrastive
from pipeline.benchmarks import step as bench
from pipeline.models import build_model
from pipeline.train.steps import PretrainForward, StepSettings, pretrain_loss

pytestmark = pytest.mark.timeout(300)

TINY = ["--width", "4", "--batch", "4", "--steps", "1", "--warmup", "0"]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", width=4)


def _views(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g, dtype=dtype)
    return x[:4], x[4:]


def test_step_module_does_not_import_ray():
    src = Path(bench.__file__).read_text()
    names = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert "ray" not in names and "torch" in names


def test_baseline_pgd_accumulates_weight_grads_and_matches_ours_float64():
    net = _net().double()
    x_i, x_j = _views(torch.float64)
    s = StepSettings(mode="acl", steps=3)
    ours = pgd_contrastive(copy.deepcopy(net), x_i, x_j, eps=s.eps, alpha=s.alpha, steps=3,
                           temperature=s.temperature, generator=torch.Generator().manual_seed(4))
    base_net = copy.deepcopy(net)
    base = bench.baseline_pgd(base_net, x_i, x_j, s, torch.Generator().manual_seed(4))
    for a, b in zip(ours, base):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    delta = torch.cat(base) - torch.cat([x_i, x_j])
    assert delta.abs().max() <= s.eps + 1e-12 and delta.abs().max() > 0
    # the authors' way leaves gradients in the 'pgd' path's weights (the wasted work) ...
    grads = {n: p.grad for n, p in base_net.named_parameters()}
    convs = [n for n, p in base_net.named_parameters() if p.dim() == 4]
    assert convs and all(grads[n] is not None and grads[n].abs().sum() > 0 for n in convs)
    pgd_bn = [n for n in grads if ".bn_list.1." in n]
    nat_bn = [n for n in grads if ".bn_list.0." in n]
    assert pgd_bn and all(grads[n] is not None for n in pgd_bn)
    assert nat_bn and all(grads[n] is None for n in nat_bn)  # 'normal' branch unused by PGD
    assert base_net.training  # eval mode only during the attack


@pytest.mark.parametrize("mode", ["acl", "air"])
def test_baseline_loss_equals_ours_float64(mode: str):
    net = _net().double()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, 3, 16, 16), generator=g, dtype=torch.uint8).double() / 255
    s = StepSettings(mode=mode, steps=2, weight=0.3)
    n1, n2 = copy.deepcopy(net), copy.deepcopy(net)
    ours = pretrain_loss(PretrainForward(n1).train(), n1, images, s,
                         generator=torch.Generator().manual_seed(2)).loss
    base = bench.baseline_loss(n2, images, s, torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours.double(), base.double(), rtol=1e-6, atol=1e-7)
    # same BN running statistics after the step's forwards (order of segments = order of passes)
    for (k, a), b in zip(n1.named_buffers(), n2.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=k)


def test_flop_and_peak_tables():
    a = bench._parse([])
    ref, exe = bench._gflop(a, "acl", "ours")
    assert ref == 46.7 and exe == pytest.approx(32 * 1.11)  # 2 x (5 x 2F + 6F) (anchors §E2)
    assert bench._gflop(a, "acl", "baseline")[1] == pytest.approx(42 * 1.11)
    assert bench._gflop(a, "air", "ours") == (50.0, pytest.approx(35 * 1.11))
    w = bench._parse(["--arch", "wrn"])
    assert bench._gflop(w, "acl", "baseline") == (440.5, pytest.approx(42 * 10.49))
    assert bench._gflop(w, "air", "ours")[0] == 471.3
    assert bench._gflop(bench._parse(["--width", "4"]), "acl", "ours") == (None, None)
    b = bench._parse(["--amp", "bf16"])
    assert bench._peak(b, "NVIDIA H100 80GB HBM3")[0] == 989.4e12
    assert bench._peak(b, "NVIDIA H100 PCIe")[0] == 756e12
    assert bench._peak(b, "NVIDIA A10G")[0] is None
    assert bench._peak(bench._parse(["--peak-tflops", "100"]), "x")[0] == 100e12


def test_parse_errors():
    with pytest.raises(SystemExit):
        bench._parse(["--modes", "acl,byol"])
    with pytest.raises(SystemExit):
        bench._parse(["--steps", "0"])


def test_main_tiny_writes_json(tmp_path: Path, capsys):
    out = tmp_path / "sub" / "step.json"
    res = bench.main(TINY + ["--pgd-steps", "2", "--threads", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert "parity: ok (|diff|=" in text and "images/s" in text
    data = json.loads(out.read_text())
    assert data["benchmark"] == "step" and data["complete"] is True
    assert res["ratios"].keys() == data["ratios"].keys()
    assert set(data) >= {"machine", "settings", "parity", "results", "ratios", "goals", "table"}
    assert set(data["machine"]) >= {"cpu_count", "torch_version", "device", "device_name",
                                    "torch_threads"}
    assert data["machine"]["torch_version"] == torch.__version__
    assert data["machine"]["device"] == "cpu" and data["machine"]["torch_threads"] == 1
    assert data["settings"]["width"] == 4 and data["settings"]["modes"] == ["acl", "air"]
    par = data["parity"]
    assert par["ok"] is True and par["mode"] == "air" and par["abs_diff"] <= 1e-5
    assert par["loss_ours"] == pytest.approx(par["loss_baseline"], abs=1e-5)
    rows = {(r["mode"], r["impl"]): r for r in data["results"]}
    assert set(rows) == {(m, i) for m in ("acl", "air") for i in ("ours", "baseline")}
    for r in rows.values():
        assert r["images_per_s"] > 0 and len(r["step_times"]) == 1
        assert r["images_per_s"] == pytest.approx(4 / r["s_per_step"])
        assert torch.isfinite(torch.tensor(r["last_loss"]))
        assert "mfu" not in r  # CPU: no MFU
    assert rows[("acl", "ours")]["segmented"] is False  # segments only on CUDA (PretrainForward default)
    assert data["ratios"]["acl"] == pytest.approx(
        rows[("acl", "ours")]["images_per_s"] / rows[("acl", "baseline")]["images_per_s"])
    assert "goal_met" in rows[("air", "ours")]


def test_dispatcher_runs_step_and_reports_errors(tmp_path: Path, capsys):
    out = tmp_path / "s.json"
    rc = dispatcher.main(["step"] + TINY + ["--modes", "acl", "--pgd-steps", "1", "--no-parity",
                                            "--out", str(out)])
    assert rc == 0 and json.loads(out.read_text())["parity"] is None
    assert dispatcher.main(["nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert dispatcher.main([]) == 2
    assert dispatcher.load("step") is bench
    with pytest.raises(LookupError, match="module pipeline.no_such_pkg.step not found"):
        dispatcher.load("step", package="pipeline.no_such_pkg")
    with pytest.raises(LookupError, match="not available"):
        dispatcher.load("step", package="pipeline.models")  # package exists, module does not
