"""Cost model of pipeline.report.cost: FLOP counts, prices.yaml validation, projections.

Golden numbers come from docs anchors.md §E (hand-derived there; re-derived in the comments).
"""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from pipeline.report.cost import (
    DEFAULT_PRICES_PATH,
    RCSSchedule,
    arch_name,
    forward_gflop,
    gflop_per_image,
    load_prices,
    parse_prices,
    passes_per_image,
    project_full_run,
    resnet18_forward_mac,
    resolve_gpu_type,
    run_cost,
    wrn_forward_mac,
)

PRICES = {"currency": "USD", "as_of": "2026-11-26", "gpu_hour": {"H100": 2.0, "A100": 1.5},
          "cpu_core_hour": 0.05}


# ---------------------------------------------------------------- FLOP model (anchors §E1/E2)


def test_resnet18_mac_layer_by_layer():
    # stem 32*32*64*27 = 1,769,472; stage 1: 4 x 1024*64*64*9 = 150,994,944;
    # stages 2-4 each 2^27 = 134,217,728 (conv s2 18,874,368 + 3 x 37,748,736 + 1x1 2,097,152);
    # linear 512*10 = 5,120. Sum = 555,422,720 MAC = 0.5554 GMAC.
    assert resnet18_forward_mac() == 555_422_720
    assert forward_gflop("resnet18") == pytest.approx(1.11, abs=0.005)
    # Quarter width: every conv but the stem scales with width^2.
    assert resnet18_forward_mac(width=16) < resnet18_forward_mac() / 15


def test_wrn28_10_mac_layer_by_layer():
    # stem 442,368; stage 1 = 23,592,960 + 7 x 235,929,600 + 2,621,440 = 1,677,721,600;
    # stages 2/3 = 117,964,800 + 7 x 235,929,600 + 13,107,200 = 1,782,579,200 each; fc 6,400.
    assert wrn_forward_mac(28, 10) == 442_368 + 1_677_721_600 + 2 * 1_782_579_200 + 6_400
    assert forward_gflop("wrn28-10") == pytest.approx(10.49, abs=0.005)
    with pytest.raises(ValueError, match="6n\\+4"):
        wrn_forward_mac(27, 10)


@pytest.mark.parametrize(
    "mode,steps,wgf,expected",
    [
        ("acl", 5, False, 42),  # 2 x (5 x 3F + 6F)
        ("dynacl", 5, False, 42),
        ("acl", 5, True, 32),  # 2 x (5 x 2F + 6F)
        ("air", 5, False, 45),  # + one fwd/bwd of the original image
        ("air", 5, True, 35),
        ("acl", 10, False, 72),  # 2 x (10 + 2) x 3F
        ("simclr", 5, False, 6),  # 2 views x 3F: ACL(T=5) is 7x SimCLR
    ],
)
def test_passes_per_image(mode, steps, wgf, expected):
    assert passes_per_image(mode, steps, weight_grad_free=wgf) == expected


def test_gflop_per_image_anchor_values():
    assert gflop_per_image("wrn28-10", "acl") == pytest.approx(440.5, abs=0.2)  # 42 x 10.49
    assert gflop_per_image("resnet18", "acl") == pytest.approx(46.7, abs=0.1)  # 42 x 1.11
    assert gflop_per_image("wrn28-10", "acl", weight_grad_free=True) == pytest.approx(335.6, abs=0.2)
    with pytest.raises(ValueError, match="unknown pre-training method 'byol'"):
        passes_per_image("byol")
    with pytest.raises(ValueError, match="unknown arch"):
        forward_gflop("vit-b")


def test_arch_name_from_model_config():
    assert arch_name({"arch": "wrn", "depth": 28, "widen": 10}) == "wrn28-10"
    assert arch_name({"arch": "resnet18", "width": 64}) == "resnet18"
    assert arch_name({"arch": "resnet18", "width": 16}) == "resnet18-w16"
    assert forward_gflop("resnet18-w16") == pytest.approx(2 * resnet18_forward_mac(width=16) / 1e9)


# ---------------------------------------------------------------- projections (anchors §E4)


def test_projection_100pct_mfu_is_0158_gpu_h_per_epoch():
    p = project_full_run(mfu=1.0)
    # 440.4e9 FLOP x 1,281,167 images = 5.64e17 FLOP; / 9.894e14 FLOP/s = 570 s = 0.158 h
    assert p.flop_per_epoch == pytest.approx(5.64e17, rel=2e-3)
    assert p.gpu_hours_per_epoch == pytest.approx(0.158, abs=5e-4)
    assert p.basis == "flop-model" and p.epochs == 200 and p.epoch_equivalents == 200


def test_projection_40pct_mfu_is_79_h100_hours():
    p = project_full_run()  # defaults: IN-32, 200 epochs, WRN-28-10, ACL, H100 bf16, 40% MFU
    assert p.gpu_hours == pytest.approx(79.2, abs=0.1)  # 0.396 h/epoch x 200
    assert p.images_per_s_per_gpu == pytest.approx(899, abs=2)  # §E5: ~900 img/s per GPU
    assert p.cost is None  # no prices given


def test_projection_other_anchor_rows():
    # TF32 dense at 100%: 0.317 GPU-h/epoch; weight-grad-free PGD (32F): 0.121.
    assert project_full_run(mfu=1.0, precision="tf32").gpu_hours_per_epoch == pytest.approx(0.317, abs=1e-3)
    assert project_full_run(mfu=1.0, weight_grad_free=True).gpu_hours_per_epoch == pytest.approx(0.121, abs=1e-3)
    # ResNet-18: 5.98e16 FLOP/epoch = 60 s ideal on one H100.
    r18 = project_full_run(arch="resnet18", mfu=1.0)
    assert r18.flop_per_epoch == pytest.approx(5.98e16, rel=2e-3)
    assert r18.gpu_hours_per_epoch * 3600 == pytest.approx(60.4, abs=0.3)


def test_projection_with_rcs_is_13_6_gpu_hours():
    # 34.4 epoch equivalents (§D, k=0.05) x 0.396 GPU-h = 13.6 GPU-h (§E4)
    p = project_full_run(rcs=RCSSchedule(fraction=0.05, warmup_epochs=20, interval=10, sel_share=0.30))
    assert p.epoch_equivalents == pytest.approx(34.4)
    assert p.gpu_hours == pytest.approx(13.6, abs=0.05)


def test_projection_cost_and_measured_throughput():
    prices = parse_prices(PRICES)
    p = project_full_run(prices=prices)
    assert p.price_per_hour == 2.0
    assert p.cost == pytest.approx(p.gpu_hours * 2.0) and p.cost == pytest.approx(158.4, abs=0.2)
    assert p.cost_per_epoch == pytest.approx(0.792, abs=1e-3)
    m = project_full_run(measured_images_per_s=1000.0, prices=prices)
    # 1,281,167 / 1000 img/s = 1281.167 s = 0.35588 h per epoch; x 200 = 71.18 h
    assert m.basis == "measured"
    assert m.gpu_hours_per_epoch == pytest.approx(0.355880, abs=1e-6)
    assert m.gpu_hours == pytest.approx(71.176, abs=1e-3)
    # implied MFU = 1000 x 440.44e9 / 989.4e12 = 0.4452
    assert m.mfu == pytest.approx(0.4452, abs=1e-4)
    with pytest.raises(ValueError, match="measured_images_per_s"):
        project_full_run(measured_images_per_s=0.0)
    with pytest.raises(ValueError, match="peak"):
        project_full_run(gpu_type="TPU-v9")


# ---------------------------------------------------------------- run cost


def test_run_cost_gpu_and_cpu():
    prices = parse_prices(PRICES)
    gpu = run_cost({"use_gpu": True, "gpu_type": "NVIDIA A100-SXM4-80GB", "gpu_hours": 3.0}, prices)
    assert (gpu.unit, gpu.price_per_hour, gpu.cost) == ("GPU-h", 1.5, 4.5)  # 3 h x 1.5
    cpu = run_cost({"use_gpu": False, "worker_hours": 2.0, "cpus_per_worker": 4}, prices)
    assert cpu.cost == pytest.approx(0.40)  # 2 worker-h x 4 cores x 0.05
    unknown = run_cost({"use_gpu": True, "gpu_type": "MI300X", "gpu_hours": 1.0}, prices)
    assert unknown.cost is None and "MI300X" in unknown.note
    assert run_cost({"use_gpu": False, "worker_hours": 1.0}, None).cost is None


def test_resolve_gpu_type_prefers_most_specific_key():
    keys = {"H100": 1, "H100-PCIe": 1, "A100": 1}
    assert resolve_gpu_type("NVIDIA H100 80GB HBM3", keys) == "H100"
    assert resolve_gpu_type("NVIDIA H100 PCIe", keys) == "H100-PCIe"
    assert resolve_gpu_type("h100", keys) == "H100"
    assert resolve_gpu_type("Tesla T4", keys) is None
    assert resolve_gpu_type(None, keys) is None


# ---------------------------------------------------------------- prices.yaml validation


def test_repo_prices_file_loads():
    p = load_prices(DEFAULT_PRICES_PATH)
    assert p.as_of and p.currency == "USD"
    assert p.gpu_price("H100") > 0 and p.cpu_core_hour > 0
    assert p.peak_tflops("H100", "bf16") == 989.4
    assert p.instances["p5.48xlarge"].gpus == 8


def _write(tmp_path, text: str):
    f = tmp_path / "prices.yaml"
    f.write_text(text)
    return f


@pytest.mark.parametrize(
    "text,match",
    [
        ("gpu_hour: {H100: -1}\ncpu_core_hour: 0.05\n", r"gpu_hour\.H100: must be > 0"),
        ("gpu_hour: {H100: cheap}\ncpu_core_hour: 0.05\n", r"gpu_hour\.H100: expected a number"),
        ("gpu_hours: {H100: 2}\ngpu_hour: {}\ncpu_core_hour: 0.05\n", r"unknown key\(s\) 'gpu_hours'"),
        ("gpu_hour: {H100: 2}\n", r"missing required key 'cpu_core_hour'"),
        ("gpu_hour: [1, 2]\ncpu_core_hour: 0.05\n", r"gpu_hour: expected a mapping"),
        ("gpu_hour: {}\ncpu_core_hour: 0.05\ninstances: {g5.xlarge: {gpus: 1}}\n",
         r"instances\.g5\.xlarge: missing required key 'price_per_hour'"),
        ("gpu_hour: {}\ncpu_core_hour: 0.05\ninstances: {g5.xlarge: {price_per_hour: 1, gpus: 1.5}}\n",
         r"instances\.g5\.xlarge\.gpus: expected an integer"),
        ("gpu_hour: {}\ncpu_core_hour: 0.05\npeaks: {H100: {int8: 1979}}\n", r"peaks\.H100\.int8: unknown precision"),
        ("- a list\n", r"top level: expected a mapping"),
        ("gpu_hour: {H100: 2\n", r"not valid YAML"),
    ],
)
def test_prices_validation_names_file_and_key(tmp_path, text, match):
    f = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as e:
        load_prices(f)
    assert str(f) in str(e.value)


def test_prices_missing_file_and_date_parsing(tmp_path):
    with pytest.raises(ConfigError, match="prices file not found"):
        load_prices(tmp_path / "nope.yaml")
    # An unquoted YAML date becomes a date object; it is kept as ISO text.
    f = _write(tmp_path, "as_of: 2026-11-26\ngpu_hour: {L4: 0.8}\ncpu_core_hour: 0.05\npeaks: {L4: {bf16: 121}}\n")
    p = load_prices(f)
    assert p.as_of == "2026-11-26"
    assert p.peak_tflops("NVIDIA L4", "bf16") == 121.0
    assert p.peak_tflops("H100", "bf16") == 989.4  # built-in peaks stay available
