"""Pre-training step benchmark: our optimised ACL / AIR step vs the authors' plain step.

    OMP_NUM_THREADS=2 python -m jobs.benchmark step --threads 2   # CPU: ResNet-18 w64, batch 32
    python -m jobs.benchmark step --device cuda --amp bf16 --channels-last --batch 512
    python -m jobs.benchmark step --device cuda --amp bf16 --arch wrn --batch 256   # WRN-28-10
    # or without the dispatcher:
    python -c "import sys; from pipeline.benchmarks.step import main; main(sys.argv[1:])" --steps 2

Two implementations of one full training step (augment, 5-step PGD, training passes, loss,
backward, LARS step) run in the same process on copies of the same model, with the same images
and the same per-step generator seed:

- ``ours``: ``pipeline.train.steps.train_step`` -- ``PretrainForward(segmented=True)`` runs the
  natural / adversarial / original passes as one forward over the concatenated batch with
  per-segment dual-BN routing, and ``pgd_contrastive`` takes input gradients only.
- ``baseline`` (:func:`baseline_train_step`, written here): the straightforward way the released
  code does it (spec §3.2-3.3): PGD calls ``loss.backward()`` on an input that requires grad, so
  weight gradients accumulate during the attack (zeroed before the real backward), then three
  separate training forwards ``model(x_adv,'pgd')``, ``model(x,'normal')``, ``model(x_o,'normal')``.

Both use the same batched on-device augmentation (``two_views``), the same loss functions and the
same LARS optimiser, so only the step itself differs. Timed steps are interleaved (ours, baseline,
baseline, ours, ...) and the median per implementation is reported, which keeps the comparison fair
on a shared, noisy machine. Before timing, a parity check verifies that both implementations give
the same loss on the same batch / seed / weights.

Goals printed next to the result: ours/baseline >= 1.3x on CPU; >= 40% MFU on GPU, where
MFU = images/s * GFLOP per image / peak, with the reference FLOP counts of anchors §E
(ResNet-18 ACL 46.7, WRN-28-10 440.5 GFLOP/image; AIR +7%: 50.0 / 471.3). The reference count is
that of the authors' algorithm (PGD with weight gradients, 42 forward-equivalents per image);
``mfu_executed`` also reports the FLOPs each implementation actually performs.

Pure torch: no Ray import (runs on a bare GPU box).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.attacks.pgd import eval_mode
from pipeline.config import atomic_write_text
from pipeline.data.transforms import to_float, two_views
from pipeline.losses import acl_loss_parts, air_loss, nt_xent_loss
from pipeline.models import build_model
from pipeline.train.optim import LARS
from pipeline.train.steps import PretrainForward, StepSettings, pretrain_loss, train_step

MODES = ("acl", "air")
IMPLS = ("ours", "baseline")
GOAL_CPU_RATIO = 1.3
GOAL_GPU_MFU = 0.40

# anchors §E1: GFLOP per forward of one 32 px image; §E2: reference GFLOP per trained image.
GFLOP_FORWARD = {("resnet18", 64): 1.11, ("wrn", 28, 10): 10.49}
GFLOP_REFERENCE = {
    ("resnet18", 64): {"acl": 46.7, "air": 50.0},
    ("wrn", 28, 10): {"acl": 440.5, "air": 471.3},
}
AIR_EXTRA = 1.07  # AIR adds one forward+backward of the original image: 45F vs 42F (anchors §E2)
# anchors §E3: dense peaks in FLOP/s. H200 has the H100 SXM tensor cores (same dense peak).
PEAKS = {"bf16": {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12},
         "none": {"H100 PCIe": 378e12, "H100": 494.7e12, "H200": 494.7e12}}  # TF32


# ----------------------------------------------------------------------------------------------
# BASELINE: the straightforward step of the released code (spec §3.2-3.3), for comparison only.
# ----------------------------------------------------------------------------------------------


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Onto the eps-ball around x, then [0, 1] (same iterate as the authors' clip/clip)."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def baseline_pgd(
    model: nn.Module, x_i: Tensor, x_j: Tensor, s: StepSettings,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BASELINE PGD_contrastive: ``loss.backward()`` on the input, weight grads accumulate.

    Same start and iterate as ``pgd_contrastive`` (uniform start drawn from the same generator,
    projected), so the adversarial views are the same; the only difference is the wasted
    weight-gradient work of every attack step, as in the released code (spec §3.2).
    """
    n = x_i.shape[0]
    x = torch.cat([x_i, x_j]).detach()  # (2N, 3, H, W)
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = _project(x + (2.0 * noise - 1.0) * s.eps, x, s.eps)
    with eval_mode(model), torch.enable_grad():
        for _ in range(s.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            z = model(x_adv, "pgd")
            loss = nt_xent_loss(z[:n], z[n:], s.temperature)
            loss.backward()  # fills x_adv.grad AND every parameter's .grad (the authors' way)
            x_adv = _project(x_adv.detach() + s.alpha * x_adv.grad.sign(), x, s.eps)
    x_adv = x_adv.detach()
    return x_adv[:n], x_adv[n:]


def baseline_loss(
    model: nn.Module, images: Tensor, s: StepSettings, generator: torch.Generator | None = None
) -> Tensor:
    """BASELINE augment + attack + three separate train-mode forwards + loss (spec §3.3)."""
    model.train()
    device = images.device
    x_i, x_j = two_views(images, s.strength, generator=generator)  # same batched augmentation
    mf = torch.channels_last if s.channels_last else torch.contiguous_format
    n = images.shape[0]
    ctx = (torch.autocast(device_type=device.type, dtype=s.amp_dtype) if s.amp_dtype is not None
           else contextlib.nullcontext())
    with ctx:
        x_i_adv, x_j_adv = baseline_pgd(model, x_i, x_j, s, generator)
        x_adv = torch.cat([x_i_adv, x_j_adv]).contiguous(memory_format=mf)
        x_nat = torch.cat([x_i, x_j]).contiguous(memory_format=mf)
        z_adv = model(x_adv, "pgd").float()
        z = model(x_nat, "normal").float()
        z_o = (model(to_float(images).contiguous(memory_format=mf), "normal").float()
               if s.mode == "air" else None)
    if s.mode == "air":
        return air_loss(z[:n], z[n:], z_o, z_adv[:n], z_adv[n:], weight=s.weight,
                        lambda1=s.lambda1, lambda2=s.lambda2, temperature=s.temperature,
                        kl_form=s.kl_form).total
    # ACL / DynACL: omega = s.weight (0 for plain ACL, which has no DynAug schedule)
    return acl_loss_parts(z[:n], z[n:], z_adv[:n], z_adv[n:], weight=s.weight,
                          temperature=s.temperature, half=s.half).total


def baseline_train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, s: StepSettings,
    generator: torch.Generator | None = None,
) -> Tensor:
    """BASELINE full step: loss, zero the grads the attack accumulated, backward, LARS step."""
    loss = baseline_loss(model, images, s, generator)
    optimizer.zero_grad(set_to_none=True)  # drops the attack's weight gradients (spec §3.2)
    loss.backward()
    optimizer.step()
    return loss.detach()


# ----------------------------------------------------------------------------------------------
# Harness
# ----------------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="step-benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=("resnet18", "wrn"), default="resnet18")
    p.add_argument("--width", type=int, default=64, help="ResNet-18 base width")
    p.add_argument("--depth", type=int, default=28, help="WRN depth")
    p.add_argument("--widen", type=int, default=10, help="WRN widen factor")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32, help="images per step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per implementation and mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per impl and mode")
    p.add_argument("--modes", default="acl,air", help="comma list of acl, air")
    p.add_argument("--pgd-steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.5, help="LARS lr (any value: speed only)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", choices=("none", "bf16"), default="none")
    p.add_argument("--layout", choices=("nhwc", "nchw"), default="nhwc",
                   help="memory format of OUR step (default NHWC, the trainer's default)")
    p.add_argument("--baseline-layout", choices=("nchw", "nhwc"), default="nchw",
                   help="memory format of the baseline (default NCHW, as the authors' code)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (both impls)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="override the device peak")
    p.add_argument("--gflop-per-image", type=float, default=0.0,
                   help="override the reference ACL GFLOP/image (AIR = x1.07) for other shapes")
    p.add_argument("--parity-tol", type=float, default=1e-3, help="max |loss diff| / max(1,|loss|)")
    p.add_argument("--no-parity", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/step.json")
    a = p.parse_args(argv)
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in a.modes if m not in MODES]
    if bad or not a.modes:
        p.error(f"--modes must be a comma list of {MODES}, got {bad or a.modes}")
    if a.steps < 1 or a.warmup < 0 or a.batch < 2:
        p.error("need --steps >= 1, --warmup >= 0, --batch >= 2")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    return a


def _shape_key(a: argparse.Namespace) -> tuple:
    return ("resnet18", a.width) if a.arch == "resnet18" else ("wrn", a.depth, a.widen)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device.type,
        "device_name": name,
    }


def _peak(a: argparse.Namespace, device_name: str) -> tuple[float | None, str]:
    if a.peak_tflops > 0:
        return a.peak_tflops * 1e12, f"--peak-tflops {a.peak_tflops}"
    table = PEAKS[a.amp]
    for key in ("H100 PCIe", "H100", "H200"):  # PCIe first: its name also contains "H100"
        if key in device_name:
            return table[key], f"{key} dense {'BF16' if a.amp == 'bf16' else 'TF32'} (anchors §E3)"
    return None, "unknown device (pass --peak-tflops)"


def _gflop(a: argparse.Namespace, mode: str, impl: str) -> tuple[float | None, float | None]:
    """(reference GFLOP/image of the authors' algorithm, GFLOP/image this impl executes)."""
    key = _shape_key(a)
    if a.gflop_per_image > 0:
        ref = a.gflop_per_image * (AIR_EXTRA if mode == "air" else 1.0)
        fwd = a.gflop_per_image / 42.0
    elif key in GFLOP_REFERENCE:
        ref, fwd = GFLOP_REFERENCE[key][mode], GFLOP_FORWARD[key]
    else:
        return None, None
    # forward = F, forward+backward = 3F, input-only backward = 1F (anchors §E2).
    t = a.pgd_steps
    per_view_pgd = 2 * t if impl == "ours" else 3 * t
    forwards = 2 * (per_view_pgd + 6) + (3 if mode == "air" else 0)
    return ref, forwards * fwd


def _nhwc(a: argparse.Namespace, impl: str) -> bool:
    return (a.layout if impl == "ours" else a.baseline_layout) == "nhwc"


def _settings(a: argparse.Namespace, mode: str, impl: str) -> StepSettings:
    return StepSettings(
        mode=mode, strength=1.0, weight=0.0, steps=a.pgd_steps,
        amp_dtype=torch.bfloat16 if a.amp == "bf16" else None, channels_last=_nhwc(a, impl),
    )


class _Runner:
    """One implementation on its own copy of the model, with its own LARS state."""

    def __init__(self, impl: str, base: nn.Module, a: argparse.Namespace, s: StepSettings) -> None:
        self.impl, self.s = impl, s
        self.net = copy.deepcopy(base)
        if _nhwc(a, impl):
            self.net = self.net.to(memory_format=torch.channels_last)
        self.opt = LARS(self.net.parameters(), lr=a.lr)
        run_net = torch.compile(self.net) if a.compile else self.net
        self.run_net = run_net
        if impl == "ours":
            fwd = PretrainForward(self.net)  # the trainer's default: segmented on CUDA only
            self.segmented = a.device == "cuda"  # PretrainForward's default: segments on CUDA only
            self.fwd = torch.compile(fwd) if a.compile else fwd
        self.times: list[float] = []
        self.last_loss = float("nan")

    def loss_only(self, images: Tensor, seed: int) -> float:
        g = torch.Generator(device=images.device).manual_seed(seed)
        self.net.train()
        if self.impl == "ours":
            loss = pretrain_loss(self.fwd, self.run_net, images, self.s, generator=g).loss
        else:
            loss = baseline_loss(self.run_net, images, self.s, g)
        self.net.zero_grad(set_to_none=True)
        return float(loss.detach())

    def step(self, images: Tensor, seed: int, timed: bool) -> None:
        g = torch.Generator(device=images.device).manual_seed(seed)
        _sync(images.device)
        t0 = time.perf_counter()
        if self.impl == "ours":
            loss = train_step(self.fwd, self.run_net, self.opt, images, self.s, generator=g).loss
        else:
            loss = baseline_train_step(self.run_net, self.opt, images, self.s, g)
        _sync(images.device)
        dt = time.perf_counter() - t0
        self.last_loss = float(loss.detach())
        if timed:
            self.times.append(dt)


def _parity(base: nn.Module, a: argparse.Namespace, mode: str, images: Tensor) -> dict[str, Any]:
    # Same memory format for both: PGD takes the sign of the gradient, so the last-bit differences
    # between NHWC and NCHW convolutions flip a few signs and change the loss slightly. Parity
    # checks the algorithm; the layout is a separate, timed choice.
    a = argparse.Namespace(**{**vars(a), "layout": a.baseline_layout})
    ours = _Runner("ours", base, a, _settings(a, mode, "ours")).loss_only(images, a.seed)
    ref = _Runner("baseline", base, a, _settings(a, mode, "baseline")).loss_only(images, a.seed)
    diff = abs(ours - ref)
    ok = diff <= a.parity_tol * max(1.0, abs(ref))
    return {"mode": mode, "layout": a.baseline_layout, "loss_ours": ours, "loss_baseline": ref, "abs_diff": diff,
            "tol": a.parity_tol, "ok": bool(ok)}


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'mode':<5} {'impl':<9} {'images/s':>9} {'s/step':>8} {'ours/base':>9}  goal"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else ""
        goal = r.get("goal_text", "")
        lines.append(f"{r['mode']:<5} {r['impl']:<9} {r['images_per_s']:>9.2f} "
                     f"{r['s_per_step']:>8.3f} {ratio:>9}  {goal}")
    return "\n".join(lines)


def main(argv: list[str]) -> dict[str, Any]:
    """Run the benchmark; print a table, write JSON to --out (atomically) and return it."""
    a = _parse(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(a.seed)
    base = build_model(a.arch, width=a.width, depth=a.depth, widen=a.widen).to(device)
    g = torch.Generator(device="cpu").manual_seed(a.seed)
    images = torch.randint(0, 256, (a.batch, 3, a.image_size, a.image_size), generator=g,
                           dtype=torch.uint8).to(device)
    machine = _machine(device)
    print(f"step benchmark: {a.arch} {_shape_key(a)[1:]} batch {a.batch} {a.image_size}px "
          f"PGD-{a.pgd_steps}, {a.steps} timed + {a.warmup} warm-up steps per impl, "
          f"{machine['device_name']} ({machine['torch_threads']} threads), amp {a.amp}, "
          f"layout ours {a.layout} / baseline {a.baseline_layout}, compile {a.compile}", flush=True)

    parity: dict[str, Any] | None = None
    if not a.no_parity:
        # AIR exercises all three passes (nat / adv / orig); parity is checked once.
        parity = _parity(base, a, "air" if "air" in a.modes else a.modes[0], images)
        word = "ok" if parity["ok"] else "FAIL"
        print(f"parity: {word} (|diff|={parity['abs_diff']:.3g}, mode {parity['mode']}, "
              f"loss {parity['loss_ours']:.6f} vs {parity['loss_baseline']:.6f})", flush=True)

    peak, peak_src = _peak(a, machine["device_name"]) if device.type == "cuda" else (None, "cpu")
    rows: list[dict[str, Any]] = []
    for mode in a.modes:
        runners = {impl: _Runner(impl, base, a, _settings(a, mode, impl)) for impl in IMPLS}
        for k in range(a.warmup):
            for impl in IMPLS:
                runners[impl].step(images, a.seed + 1000 + k, timed=False)
        for k in range(a.steps):
            # Alternate which goes first so slow drifts of a shared machine hit both equally.
            order = IMPLS if k % 2 == 0 else IMPLS[::-1]
            for impl in order:
                runners[impl].step(images, a.seed + k, timed=True)
        for impl in IMPLS:
            r = runners[impl]
            med = statistics.median(r.times)
            ref_gf, exe_gf = _gflop(a, mode, impl)
            row: dict[str, Any] = {
                "mode": mode, "impl": impl, "images_per_s": a.batch / med, "s_per_step": med,
                "step_times": r.times, "last_loss": r.last_loss,
                "gflop_per_image_reference": ref_gf, "gflop_per_image_executed": exe_gf,
            }
            if impl == "ours":
                row["segmented"] = r.segmented
            if peak is not None and ref_gf is not None:
                row["mfu"] = row["images_per_s"] * ref_gf * 1e9 / peak
                row["mfu_executed"] = row["images_per_s"] * exe_gf * 1e9 / peak
            rows.append(row)
        ours, ref = rows[-2], rows[-1]
        ours["ratio"] = ours["images_per_s"] / ref["images_per_s"]
        if device.type == "cpu":
            ok = ours["ratio"] >= GOAL_CPU_RATIO
            ours["goal_text"] = f"goal >= {GOAL_CPU_RATIO}x: {'met' if ok else 'NOT met'}"
            ours["goal_met"] = ok
        elif "mfu" in ours:
            ok = ours["mfu"] >= GOAL_GPU_MFU
            ours["goal_text"] = (f"MFU {100 * ours['mfu']:.1f}% (executed "
                                 f"{100 * ours['mfu_executed']:.1f}%), goal >= "
                                 f"{100 * GOAL_GPU_MFU:.0f}%: {'met' if ok else 'NOT met'}")
            ours["goal_met"] = ok
            ref["goal_text"] = f"MFU {100 * ref['mfu']:.1f}%"
        else:
            ours["goal_text"] = "MFU n/a (unknown peak or FLOP count)"
        print(f"[{mode}] ours {ours['s_per_step']:.3f} s/step, baseline {ref['s_per_step']:.3f} "
              f"s/step", flush=True)
        # partial JSON after every mode: a run cut short on a shared machine still leaves data
        _write(a.out, _result(a, machine, parity, rows, peak, peak_src, complete=False))

    result = _result(a, machine, parity, rows, peak, peak_src, complete=True)
    print(result["table"])
    _write(a.out, result)
    return result


def _result(a: argparse.Namespace, machine: dict[str, Any], parity: dict[str, Any] | None,
            rows: list[dict[str, Any]], peak: float | None, peak_src: str,
            complete: bool) -> dict[str, Any]:
    return {
        "benchmark": "step",
        "complete": complete,  # False: written after some modes only (a run cut short)
        "machine": machine,
        "settings": dict(vars(a)),
        "parity": parity,
        "results": rows,
        "ratios": {r["mode"]: r["ratio"] for r in rows if r["impl"] == "ours"},
        "goals": {"cpu_ratio": GOAL_CPU_RATIO, "gpu_mfu": GOAL_GPU_MFU, "peak_flops": peak,
                  "peak_source": peak_src},
        "notes": [
            "median of interleaved timed steps; same images, seeds and initial weights per impl",
            "both impls use the same batched on-device augmentation (two_views), losses and LARS;"
            " only the step differs",
            "baseline: PGD with loss.backward() (weight grads accumulate), 3 separate forwards",
            "mfu uses the reference FLOPs of the authors' algorithm (anchors §E);"
            " mfu_executed the FLOPs the impl performs",
        ],
        "table": _table(rows),
    }


def _write(out: str, result: dict[str, Any]) -> None:
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")
        if result["complete"]:
            print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
