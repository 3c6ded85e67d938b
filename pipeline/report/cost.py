"""Prices, the FLOP model and cost projections (docs: anchors.md §E).

Three things live here:

* ``load_prices(path)`` reads ``cluster/prices.yaml`` (user-editable hourly prices and hardware
  peaks) and validates it; every error names the file and the dotted key.
* The FLOP model: forward FLOPs of the project's encoders counted layer by layer (32 px input,
  a multiply-accumulate = 2 FLOPs), and the passes per image of each pre-training mode
  (``passes_per_image``), so ACL on WRN-28-10 = 42 x 10.49 = 440.5 GFLOP/image.
* ``run_cost`` (what a finished run cost) and ``project_full_run`` (what a full ImageNet-32 run
  would cost, from a measured throughput or from the FLOP model at an assumed MFU).

Core module: no Ray, no torch.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from pipeline.config import ConfigError

# Repo root / cluster / prices.yaml: the default table the report uses.
DEFAULT_PRICES_PATH = Path(__file__).resolve().parents[2] / "cluster" / "prices.yaml"

IMAGENET32_TRAIN_IMAGES = 1_281_167  # downsampled ImageNet-1k train split (anchors §E4)
DEFAULT_MFU = 0.40  # a realistic fraction of dense bf16 peak for 32 px convs (anchors §E4/E5)

# Dense tensor-core peaks in TFLOP/s (anchors §E3). Used when no prices file is given; the
# prices file's ``peaks`` section overrides / extends them.
BUILTIN_PEAKS: dict[str, dict[str, float]] = {
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},  # H100 SXM5
    "H100-PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "A5000": {"fp16": 111.0, "tf32": 55.6, "fp32": 27.8},  # [unverified] datasheet / 2
}

PRECISIONS = ("bf16", "fp16", "tf32", "fp32")
_TOP_KEYS = {"currency", "as_of", "note", "gpu_hour", "cpu_core_hour", "instances", "peaks"}
_INSTANCE_KEYS = {"price_per_hour", "gpus", "gpu_type", "vcpus"}


# ----------------------------------------------------------------------------------------------
# Price table
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """One cloud instance type: hourly price and what it holds."""

    price_per_hour: float
    gpus: int = 0
    gpu_type: Optional[str] = None
    vcpus: int = 0


@dataclass(frozen=True)
class PriceTable:
    """Validated contents of ``prices.yaml`` (prices are per hour, in ``currency``)."""

    currency: str = "USD"
    as_of: str = ""
    gpu_hour: dict[str, float] = field(default_factory=dict)
    cpu_core_hour: float = 0.0
    instances: dict[str, Instance] = field(default_factory=dict)
    peaks: dict[str, dict[str, float]] = field(default_factory=lambda: dict(BUILTIN_PEAKS))
    source: str = "<builtin>"

    def gpu_price(self, gpu_type: Optional[str]) -> Optional[float]:
        """Hourly price of one GPU of ``gpu_type`` (name matched loosely), or None if unknown."""
        key = resolve_gpu_type(gpu_type, self.gpu_hour)
        return None if key is None else self.gpu_hour[key]

    def peak_tflops(self, gpu_type: Optional[str], precision: str = "bf16") -> Optional[float]:
        """Dense peak of ``gpu_type`` at ``precision`` in TFLOP/s, or None if unknown."""
        key = resolve_gpu_type(gpu_type, self.peaks)
        if key is None:
            return None
        return self.peaks[key].get(precision)


def _tokens(name: str) -> list[str]:
    return name.upper().replace("-", " ").replace("_", " ").split()


def resolve_gpu_type(name: Optional[str], keys: Mapping[str, Any]) -> Optional[str]:
    """Map a device name to a table key: ``"NVIDIA H100 80GB HBM3"`` -> ``"H100"``.

    Exact (case-insensitive) match first; otherwise the key whose tokens all appear in the name,
    preferring the most specific key (so ``"NVIDIA H100 PCIe"`` -> ``"H100-PCIe"``, not ``"H100"``).
    Ray reports short names (``"H100"``), torch long ones; both should find the same price.
    """
    if not name:
        return None
    want = _tokens(name)
    best: Optional[str] = None
    best_len = 0
    for key in keys:
        kt = _tokens(key)
        if kt == want:
            return key
        if kt and all(t in want for t in kt) and len(kt) > best_len:
            best, best_len = key, len(kt)
    return best


def _positive(value: Any, where: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def parse_prices(data: Any, source: str = "<dict>") -> PriceTable:
    """Validate a prices mapping (the parsed YAML); errors name ``source`` and the dotted key."""
    top = _mapping(data, f"{source}: top level")
    unknown = sorted(set(top) - _TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known keys: {', '.join(sorted(_TOP_KEYS))}"
        )
    for req in ("gpu_hour", "cpu_core_hour"):
        if req not in top:
            raise ConfigError(f"{source}: missing required key '{req}'")
    currency = top.get("currency", "USD")
    if not isinstance(currency, str) or not currency:
        raise ConfigError(f"{source}: currency: expected a non-empty string, got {currency!r}")
    as_of = top.get("as_of", "")
    if isinstance(as_of, (_dt.date, _dt.datetime)):  # YAML parses 2026-11-26 as a date
        as_of = as_of.isoformat()
    if not isinstance(as_of, str):
        raise ConfigError(f"{source}: as_of: expected a date string, got {as_of!r}")

    gpu_hour = {
        str(k): _positive(v, f"{source}: gpu_hour.{k}")
        for k, v in _mapping(top["gpu_hour"], f"{source}: gpu_hour").items()
    }
    cpu = _positive(top["cpu_core_hour"], f"{source}: cpu_core_hour")

    instances: dict[str, Instance] = {}
    for name, spec in _mapping(top.get("instances") or {}, f"{source}: instances").items():
        where = f"{source}: instances.{name}"
        spec = _mapping(spec, where)
        bad = sorted(set(spec) - _INSTANCE_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, bad))}")
        if "price_per_hour" not in spec:
            raise ConfigError(f"{where}: missing required key 'price_per_hour'")
        gpus = spec.get("gpus", 0)
        vcpus = spec.get("vcpus", 0)
        for k, v in (("gpus", gpus), ("vcpus", vcpus)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{where}.{k}: expected an integer >= 0, got {v!r}")
        gtype = spec.get("gpu_type")
        if gtype is not None and not isinstance(gtype, str):
            raise ConfigError(f"{where}.gpu_type: expected a string, got {gtype!r}")
        instances[str(name)] = Instance(
            price_per_hour=_positive(spec["price_per_hour"], f"{where}.price_per_hour"),
            gpus=gpus,
            gpu_type=gtype,
            vcpus=vcpus,
        )

    peaks = {k: dict(v) for k, v in BUILTIN_PEAKS.items()}
    for gname, table in _mapping(top.get("peaks") or {}, f"{source}: peaks").items():
        where = f"{source}: peaks.{gname}"
        entry: dict[str, float] = {}
        for prec, tflops in _mapping(table, where).items():
            if prec not in PRECISIONS:
                raise ConfigError(f"{where}.{prec}: unknown precision; use one of {PRECISIONS}")
            entry[prec] = _positive(tflops, f"{where}.{prec}")
        peaks[str(gname)] = entry
    return PriceTable(
        currency=currency,
        as_of=as_of,
        gpu_hour=gpu_hour,
        cpu_core_hour=cpu,
        instances=instances,
        peaks=peaks,
        source=source,
    )


def load_prices(path: str | os.PathLike | None = None) -> PriceTable:
    """Read and validate a prices YAML (default: ``cluster/prices.yaml`` in the repo)."""
    p = Path(path) if path is not None else DEFAULT_PRICES_PATH
    if not p.is_file():
        raise ConfigError(f"prices file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    return parse_prices(data, str(p))


# ----------------------------------------------------------------------------------------------
# FLOP model (anchors §E1, §E2)
# ----------------------------------------------------------------------------------------------


def _conv_mac(hw: int, c_in: int, c_out: int, k: int) -> int:
    """MACs of a k x k conv producing an hw x hw map (stride folded into hw)."""
    return hw * hw * c_out * c_in * k * k


def resnet18_forward_mac(width: int = 64, image_size: int = 32, num_classes: int = 10) -> int:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool): MACs of one forward of one image.

    width=64, 32 px: 0.5554 GMAC (stem 1.77M, stage 1 151.0M, stages 2-4 134.2M each).
    """
    s = image_size
    mac = _conv_mac(s, 3, width, 3)  # stem
    c_in = width
    for stage in range(4):
        c = width * 2**stage
        hw = s // 2**stage
        for block in range(2):
            src = c_in if block == 0 else c
            mac += _conv_mac(hw, src, c, 3) + _conv_mac(hw, c, c, 3)
            if src != c:  # 1x1 projection shortcut on the first block of stages 2-4
                mac += _conv_mac(hw, src, c, 1)
        c_in = c
    return mac + c_in * num_classes  # final linear


def wrn_forward_mac(depth: int = 28, widen: int = 10, image_size: int = 32, num_classes: int = 10) -> int:
    """Wide-ResNet-depth-widen (pre-activation, 16 stem channels): MACs of one forward.

    WRN-28-10, 32 px: 5.244 GMAC (stem 0.44M, stages 1677.7M / 1782.6M / 1782.6M).
    """
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    s = image_size
    mac = _conv_mac(s, 3, 16, 3)
    c_in = 16
    for stage in range(3):
        c = 16 * widen * 2**stage
        hw = s // 2**stage
        for block in range(n):
            src = c_in if block == 0 else c
            mac += _conv_mac(hw, src, c, 3) + _conv_mac(hw, c, c, 3)
            if src != c:
                mac += _conv_mac(hw, src, c, 1)
        c_in = c
    return mac + c_in * num_classes


def parse_arch(arch: str) -> tuple[str, dict[str, int]]:
    """``"resnet18"`` / ``"resnet18-w16"`` / ``"wrn28-10"`` -> (family, kwargs of the MAC counter)."""
    a = arch.lower().replace("_", "-")
    if a in ("resnet18", "resnet-18"):
        return "resnet18", {}
    if a.startswith("resnet18-w") and a[10:].isdigit():  # reduced width, e.g. resnet18-w16
        return "resnet18", {"width": int(a[10:])}
    if a.startswith("wrn"):
        rest = a[3:].lstrip("-")
        if not rest:
            return "wrn", {}
        try:
            d, w = rest.split("-")
            return "wrn", {"depth": int(d), "widen": int(w)}
        except ValueError:
            pass
    raise ValueError(
        f"unknown arch {arch!r}; use 'resnet18', 'resnet18-wWIDTH' or 'wrnDEPTH-WIDEN' (e.g. wrn28-10)"
    )


def arch_name(model_cfg: Mapping[str, Any]) -> str:
    """Arch string of a ``model`` config section: resnet18 (width 64), resnet18-w16, wrn28-10."""
    arch = model_cfg.get("arch", "resnet18")
    if arch == "wrn":
        return f"wrn{model_cfg.get('depth', 28)}-{model_cfg.get('widen', 10)}"
    width = model_cfg.get("width", 64)
    return "resnet18" if width == 64 else f"resnet18-w{width}"


def forward_gflop(arch: str = "wrn28-10", *, image_size: int = 32, **kw: int) -> float:
    """GFLOP of one forward of one image (MAC x 2). ResNet-18: 1.11, WRN-28-10: 10.49."""
    family, parsed = parse_arch(arch)
    parsed.update(kw)
    if family == "resnet18":
        mac = resnet18_forward_mac(image_size=image_size, **parsed)
    else:
        mac = wrn_forward_mac(image_size=image_size, **parsed)
    return 2 * mac / 1e9


def passes_per_image(mode: str = "acl", pgd_steps: int = 5, *, weight_grad_free: bool = False) -> int:
    """Cost of one training image in units of F (one forward); backward = 2F.

    ACL/DynACL: 2 views x (T PGD steps x 3F + 2 training forwards+backward = 6F) = 2(T+2)*3F,
    so 42F at T = 5. With PGD that skips weight gradients a step costs 2F: 2(2T + 6) = 32F.
    AIR adds one forward+backward of the original image (+3F). SimCLR: 2 views x 3F = 6F.
    """
    from pipeline.methods import get_method

    m = get_method(mode.lower())  # ValueError naming the registered methods
    if not m.adversarial:
        return 6
    step = 2 if weight_grad_free else 3
    f = 2 * (pgd_steps * step + 6)
    return f + 3 if m.originals else f


def gflop_per_image(
    arch: str = "wrn28-10",
    mode: str = "acl",
    pgd_steps: int = 5,
    *,
    weight_grad_free: bool = False,
    **arch_kw: int,
) -> float:
    """Training GFLOP per image: ACL on WRN-28-10 = 42 x 10.49 = 440.5; ResNet-18 = 46.7."""
    return passes_per_image(mode, pgd_steps, weight_grad_free=weight_grad_free) * forward_gflop(
        arch, **arch_kw
    )


# ----------------------------------------------------------------------------------------------
# Cost of a run and projection of a full run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunCost:
    """What one run cost: ``hours`` of ``unit`` at ``price_per_hour`` (None when unknown)."""

    unit: str  # "GPU-h" or "worker-h"
    hours: float
    price_per_hour: Optional[float]
    cost: Optional[float]
    note: str = ""


def run_cost(summary: Mapping[str, Any], prices: Optional[PriceTable]) -> RunCost:
    """Cost of a run from its ``summary.json``.

    GPU runs: ``gpu_hours x price(gpu_type)``. CPU runs: ``worker_hours x cpus_per_worker x
    cpu_core_hour`` (a worker holds ``cpus_per_worker`` cores for its whole life).
    """
    use_gpu = bool(summary.get("use_gpu"))
    if use_gpu:
        hours = float(summary.get("gpu_hours") or 0.0)
        gtype = summary.get("gpu_type")
        price = prices.gpu_price(gtype) if prices else None
        note = "" if price is not None else f"no price for GPU type {gtype!r}"
        return RunCost("GPU-h", hours, price, None if price is None else hours * price, note)
    hours = float(summary.get("worker_hours") or 0.0)
    cpus = float(summary.get("cpus_per_worker") or 1.0)
    price = prices.cpu_core_hour * cpus if prices else None
    return RunCost("worker-h", hours, price, None if price is None else hours * price,
                   "" if prices else "no prices file")


@dataclass(frozen=True)
class RCSSchedule:
    """The RCS knobs that set the compute of a run (see ``pipeline.report.speedup``)."""

    fraction: float
    warmup_epochs: int
    interval: int
    sel_share: float  # one selection's cost in full-data epochs (0.30 on ImageNet-32)


@dataclass(frozen=True)
class Projection:
    """GPU-hours and cost of a full run; ``basis`` says where the throughput came from."""

    basis: str  # "measured" or "flop-model"
    gpu_type: str
    images: int
    epochs: int
    epoch_equivalents: float  # == epochs without RCS
    images_per_s_per_gpu: float
    mfu: Optional[float]  # assumed (flop-model) or implied (measured, when the peak is known)
    flop_per_epoch: Optional[float]
    gpu_hours_per_epoch: float  # one full-data epoch
    gpu_hours: float  # the whole run
    price_per_hour: Optional[float]
    cost_per_epoch: Optional[float]
    cost: Optional[float]


def project_full_run(
    images: int = IMAGENET32_TRAIN_IMAGES,
    epochs: int = 200,
    arch: str = "wrn28-10",
    mode: str = "acl",
    gpu_type: str = "H100",
    mfu: Optional[float] = None,
    measured_images_per_s: Optional[float] = None,
    rcs: Optional[RCSSchedule] = None,
    *,
    pgd_steps: int = 5,
    weight_grad_free: bool = False,
    precision: str = "bf16",
    prices: Optional[PriceTable] = None,
    price_per_hour: Optional[float] = None,
) -> Projection:
    """GPU-hours and cost of pre-training on ``images`` for ``epochs`` epochs on ``gpu_type``.

    Throughput per GPU comes from ``measured_images_per_s`` (per GPU, from a real run) when
    given, else from the FLOP model: ``peak x mfu / gflop_per_image`` (``mfu`` default 0.40).
    With ``rcs`` the run costs ``epoch_equivalents`` full-data epochs instead of ``epochs``
    (``speedup.ideal_schedule``). ``price_per_hour`` overrides the price looked up in
    ``prices`` (used for CPU-worker projections). Anchors §E4 (WRN-28-10, ACL, H100 bf16):
    0.158 GPU-h/epoch at 100% MFU; 79 GPU-h for 200 epochs at 40%.
    """
    table = prices or PriceTable()
    flop_img = None
    try:
        flop_img = gflop_per_image(arch, mode, pgd_steps, weight_grad_free=weight_grad_free) * 1e9
    except ValueError:
        if measured_images_per_s is None:
            raise
    peak = table.peak_tflops(gpu_type, precision)
    if measured_images_per_s is not None:
        if measured_images_per_s <= 0:
            raise ValueError(f"measured_images_per_s must be > 0, got {measured_images_per_s}")
        ips = float(measured_images_per_s)
        basis = "measured"
        # Implied MFU: what fraction of the peak the measured run achieved.
        used_mfu = ips * flop_img / (peak * 1e12) if (peak and flop_img) else None
    else:
        used_mfu = DEFAULT_MFU if mfu is None else float(mfu)
        if not 0 < used_mfu <= 1:
            raise ValueError(f"mfu must be in (0, 1], got {used_mfu}")
        if peak is None:
            raise ValueError(f"no {precision} peak known for GPU type {gpu_type!r}; add it to prices.yaml peaks")
        ips = peak * 1e12 * used_mfu / flop_img
        basis = "flop-model"
    h_epoch = images / ips / 3600.0
    if rcs is not None:
        from pipeline.report.speedup import ideal_schedule  # local: speedup imports nothing here

        eq = ideal_schedule(epochs, rcs.warmup_epochs, rcs.interval, rcs.fraction, rcs.sel_share).total
    else:
        eq = float(epochs)
    price = price_per_hour if price_per_hour is not None else table.gpu_price(gpu_type)
    return Projection(
        basis=basis,
        gpu_type=gpu_type,
        images=images,
        epochs=epochs,
        epoch_equivalents=eq,
        images_per_s_per_gpu=ips,
        mfu=used_mfu,
        flop_per_epoch=None if flop_img is None else flop_img * images,
        gpu_hours_per_epoch=h_epoch,
        gpu_hours=h_epoch * eq,
        price_per_hour=price,
        cost_per_epoch=None if price is None else h_epoch * price,
        cost=None if price is None else h_epoch * eq * price,
    )
