"""Batched, on-device augmentation for ACL pre-training and fine-tuning (spec §2.2-§2.4).

The authors augment each image with PIL on CPU data-loader workers. Here every op is
vectorised over the batch and runs on whatever device ``x`` lives on, so augmentation never
starves a GPU; each image still gets its own random draw. Randomness comes only from the
optional ``generator`` (a ``torch.Generator`` on ``x.device``), so a seeded generator makes
the output deterministic.

Images are NCHW; uint8 inputs are converted with ``to_float`` (/255), float inputs must be in
[0,1]. All outputs are float in [0,1].

Known, deliberate differences from the authors' PIL pipeline (documented in the report):
- bicubic resampling is PyTorch's (cubic coefficient a=-0.75, no antialias) instead of PIL's
  (a=-0.5, antialiased when shrinking); RandomResizedCrop mostly *enlarges* crops, where the
  only difference is the kernel coefficient;
- colour ops work on float pixels (no uint8 rounding between ops as PIL does).

No Ray here: core module (docs/architecture.md).
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor

# ITU-R 601-2 luma, as PIL's convert("L") (the authors' RandomGrayscale path). torchvision's
# tensor ops use 0.2989 for red; pass ``luma=TORCHVISION_LUMA`` to match them bit-for-bit.
LUMA_601: tuple[float, float, float] = (0.299, 0.587, 0.114)
TORCHVISION_LUMA: tuple[float, float, float] = (0.2989, 0.587, 0.114)

Size = Union[int, Sequence[int]]

__all__ = [
    "LUMA_601",
    "TORCHVISION_LUMA",
    "to_float",
    "rgb_to_grayscale",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "sample_resized_crop_boxes",
    "resized_crop",
    "color_jitter",
    "simclr_augment",
    "two_views",
    "finetune_augment",
    "dynaug_strength",
    "acl_weight",
]


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def to_float(x: Tensor) -> Tensor:
    """uint8 (B,C,H,W) in [0,255] -> float32 in [0,1]; float tensors pass through unchanged."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not torch.is_floating_point(x):
        raise TypeError(f"expected uint8 or floating images, got {x.dtype}")
    return x


def _check_images(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (B,3,H,W), got {tuple(x.shape)}")


def _per_image(factor: Union[float, Tensor], x: Tensor) -> Tensor:
    """A scalar or (B,) factor -> (B,1,1,1) in x's dtype/device, for broadcasting."""
    f = torch.as_tensor(factor, dtype=x.dtype, device=x.device)
    if f.dim() == 0:
        f = f.expand(x.shape[0])
    if f.shape != (x.shape[0],):
        raise ValueError(f"factor must be a scalar or shape ({x.shape[0]},), got {tuple(f.shape)}")
    return f.view(-1, 1, 1, 1)


def _rand(n: Sequence[int], generator: Optional[torch.Generator], device: torch.device,
          dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.rand(*n, generator=generator, device=device, dtype=dtype)


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    # torchvision's float blend: factor*a + (1-factor)*b, clamped to the valid range.
    return (factor * a + (1.0 - factor) * b).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Colour ops, batched with one factor per image (same formulas as torchvision's tensor ops)
# ----------------------------------------------------------------------------------------------


def rgb_to_grayscale(x: Tensor, *, luma: Sequence[float] = LUMA_601) -> Tensor:
    """(B,3,H,W) float -> (B,1,H,W) luma L = wr*R + wg*G + wb*B (ITU-R 601-2 by default)."""
    r, g, b = x.unbind(dim=-3)
    return (luma[0] * r + luma[1] * g + luma[2] * b).unsqueeze(-3)


def adjust_brightness(x: Tensor, factor: Union[float, Tensor]) -> Tensor:
    """Scale pixels by a per-image factor (B,) (blend with black), clamped to [0,1]."""
    return _blend(x, torch.zeros_like(x), _per_image(factor, x))


def adjust_contrast(x: Tensor, factor: Union[float, Tensor], *,
                    luma: Sequence[float] = LUMA_601) -> Tensor:
    """Blend each image with the mean of its own grayscale image (B,) factors; clamp [0,1]."""
    mean = rgb_to_grayscale(x, luma=luma).mean(dim=(-3, -2, -1), keepdim=True)  # (B,1,1,1)
    return _blend(x, mean, _per_image(factor, x))


def adjust_saturation(x: Tensor, factor: Union[float, Tensor], *,
                      luma: Sequence[float] = LUMA_601) -> Tensor:
    """Blend each image with its grayscale version (factor 0 = gray, 1 = identity)."""
    return _blend(x, rgb_to_grayscale(x, luma=luma), _per_image(factor, x))


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(B,3,H,W) RGB in [0,1] -> HSV with every channel in [0,1] (hexcone model)."""
    r, g, b = x.unbind(dim=-3)
    maxc = x.amax(dim=-3)
    minc = x.amin(dim=-3)
    delta = maxc - minc
    gray = delta == 0
    # Avoid 0/0 on gray pixels; their hue and saturation are defined as 0.
    safe_delta = torch.where(gray, torch.ones_like(delta), delta)
    safe_max = torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    s = delta / safe_max
    # Hue sector by which channel is the max (ties resolved r, then g, then b).
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    h_r = (g - b) / safe_delta
    h_g = 2.0 + (b - r) / safe_delta
    h_b = 4.0 + (r - g) / safe_delta
    h = torch.where(is_r, h_r, torch.where(is_g, h_g, h_b))
    h = torch.where(gray, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of ``rgb_to_hsv``: (B,3,H,W) HSV in [0,1] -> RGB in [0,1]."""
    h, s, v = hsv.unbind(dim=-3)
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.long() % 6  # h == 1.0 wraps to sector 0
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # (R,G,B) per sector 0..5: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    choices = torch.stack((v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q), dim=-3)
    choices = choices.view(*v.shape[:-2], 3, 6, *v.shape[-2:])  # (B,3 channels,6 sectors,H,W)
    idx = sector.unsqueeze(-3).unsqueeze(-3).expand(*v.shape[:-2], 3, 1, *v.shape[-2:])
    return choices.gather(-3, idx).squeeze(-3)


def adjust_hue(x: Tensor, factor: Union[float, Tensor]) -> Tensor:
    """Rotate hue by a per-image shift in [-0.5, 0.5] (fraction of the colour wheel)."""
    if not isinstance(factor, Tensor) and abs(factor) > 0.5:  # tensors: no host sync
        raise ValueError(f"hue factor must be in [-0.5, 0.5], got {factor}")
    f = _per_image(factor, x).view(-1, 1, 1)
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + f, 1.0)
    return hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1)).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Geometry: RandomResizedCrop as a batched separable resampling
# ----------------------------------------------------------------------------------------------


def _size2(size: Optional[Size], x: Tensor) -> tuple[int, int]:
    if size is None:
        return int(x.shape[-2]), int(x.shape[-1])
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"size must be an int or (h, w), got {size!r}")
    return int(size[0]), int(size[1])


def sample_resized_crop_boxes(
    batch: int,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
    device: Union[str, torch.device] = "cpu",
    tries: int = 10,
) -> Tensor:
    """torchvision's RandomResizedCrop.get_params, vectorised: returns (B,4) int64 (i, j, h, w).

    Per image: ``tries`` candidates (area fraction ~ U(scale), log aspect ~ U(log ratio));
    the first one that fits the image is used, else the central-crop fallback. Candidates are
    drawn all at once (B, tries) and the first valid is found with argmax, which returns the
    first maximal index. Float64 keeps the rounding of w, h the same as torchvision's Python
    floats (torch.round is round-half-to-even like Python's round).
    """
    device = torch.device(device)
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    u = _rand((batch, tries, 4), generator, device, torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (B, tries)
    first = valid.to(torch.int8).argmax(dim=1, keepdim=True)  # (B,1) first valid try
    ok = valid.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # Offsets i ~ randint(0, H-h+1): floor of a uniform on [0, H-h+1).
    ui = u.gather(1, first.unsqueeze(-1).expand(-1, 1, 4)).squeeze(1)
    i = torch.floor(ui[:, 2] * (height - h + 1)).clamp_max(height - h)
    j = torch.floor(ui[:, 3] * (width - w + 1)).clamp_max(width - w)

    # Central-crop fallback (torchvision): clip the aspect ratio of the whole image to `ratio`.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    fi, fj = (height - fh) // 2, (width - fw) // 2
    fb = torch.tensor([fi, fj, fh, fw], dtype=torch.float64, device=device)
    boxes = torch.stack((i, j, h, w), dim=1)
    boxes = torch.where(ok.unsqueeze(1), boxes, fb.expand_as(boxes))
    return boxes.to(torch.int64)


def _cubic_weights(t: Tensor, a: float) -> Tensor:
    """Keys cubic convolution weights for taps at offsets -1,0,1,2 given frac t: (..., 4)."""

    def near(d: Tensor) -> Tensor:  # |d| <= 1
        return ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0

    def far(d: Tensor) -> Tensor:  # 1 < |d| < 2
        return ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a

    return torch.stack((far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)), dim=-1)


def _resize_matrix(start: Tensor, length: Tensor, n_in: int, n_out: int,
                   mode: str, dtype: torch.dtype) -> Tensor:
    """(B, n_out, n_in) matrix resampling the 1-D window [start, start+length) to n_out samples.

    Matches ``F.interpolate(crop, mode, align_corners=False, antialias=False)``: source
    coordinate (d + 0.5) * length / n_out - 0.5, taps clamped to the *crop* edges (so pixels
    outside the crop never leak in, unlike grid_sample on the full image).
    """
    B = start.shape[0]
    dev = start.device
    length_f = length.to(torch.float64).unsqueeze(1)  # (B,1)
    d = torch.arange(n_out, device=dev, dtype=torch.float64).unsqueeze(0)  # (1,n_out)
    src = (d + 0.5) * (length_f / n_out) - 0.5  # (B,n_out)
    if mode == "bicubic":
        base = torch.floor(src)
        wts = _cubic_weights(src - base, -0.75)  # (B,n_out,4)
        offs = torch.arange(-1, 3, device=dev, dtype=torch.float64)
        taps = base.unsqueeze(-1) + offs  # (B,n_out,4)
    elif mode == "bilinear":
        src = src.clamp_min(0.0)  # PyTorch clamps negative linear source coords to 0
        base = torch.floor(src)
        lam = src - base
        wts = torch.stack((1.0 - lam, lam), dim=-1)
        taps = torch.stack((base, base + 1.0), dim=-1)
    else:
        raise ValueError(f"mode must be 'bicubic' or 'bilinear', got {mode!r}")
    hi = (length_f - 1.0).unsqueeze(-1)
    taps = torch.minimum(taps.clamp_min(0.0), hi) + start.to(torch.float64).view(B, 1, 1)
    m = torch.zeros(B, n_out, n_in, device=dev, dtype=torch.float64)
    m.scatter_add_(2, taps.long(), wts)  # repeated (clamped) taps add up, as in interpolate
    return m.to(dtype)


def resized_crop(x: Tensor, boxes: Tensor, size: Optional[Size] = None, *,
                 mode: Literal["bicubic", "bilinear"] = "bicubic", clamp: bool = True,
                 check: bool = True) -> Tensor:
    """Crop box (i, j, h, w) of each image and resize it to ``size``, batched.

    Args:
        x: (B,C,H,W) float images.
        boxes: (B,4) int (top, left, height, width), inside the image.
        size: output (h', w') or int; default (H, W).
        mode: 'bicubic' (authors' interpolation=3) or 'bilinear'; no antialias.
        clamp: clamp to [0,1] (bicubic overshoots).
        check: validate the boxes (one host sync; skipped for boxes we sampled ourselves).
    Returns:
        (B,C,h',w'). Implemented as out = Ry @ x @ Rx^T with per-image separable
        interpolation matrices, i.e. two batched matmuls (fast on GPU, exact crop semantics).
    """
    oh, ow = _size2(size, x)
    H, W = x.shape[-2:]
    boxes = boxes.to(device=x.device)
    i, j, h, w = boxes.unbind(dim=1)
    if check and bool(((i < 0) | (j < 0) | (h < 1) | (w < 1) | (i + h > H) | (j + w > W)).any()):
        raise ValueError("crop boxes must lie inside the image")
    ry = _resize_matrix(i, h, H, oh, mode, x.dtype)  # (B,oh,H)
    rx = _resize_matrix(j, w, W, ow, mode, x.dtype)  # (B,ow,W)
    out = torch.einsum("bph,bchw,bqw->bcpq", ry, x, rx)  # (B,C,oh,ow)
    return out.clamp_(0.0, 1.0) if clamp else out


# ----------------------------------------------------------------------------------------------
# The SimCLR / ACL pre-training augmentation (spec §2.2)
# ----------------------------------------------------------------------------------------------


def color_jitter(
    x: Tensor,
    brightness: Tensor,
    contrast: Tensor,
    saturation: Tensor,
    hue: Tensor,
    order: Tensor,
    apply: Tensor,
    *,
    luma: Sequence[float] = LUMA_601,
) -> Tensor:
    """ColorJitter with given per-image factors and op order, on the images where ``apply``.

    Args:
        x: (B,3,H,W) float in [0,1].
        brightness, contrast, saturation, hue: (B,) factors.
        order: (B,4) int64, a permutation of 0..3 per image (0 brightness, 1 contrast,
            2 saturation, 3 hue), the order in which that image's ops run (torchvision draws
            ``torch.randperm(4)`` per call).
        apply: (B,) bool, which images are jittered (RandomApply).
    Returns:
        (B,3,H,W). Implemented as 4 positions x 4 ops with masks (torch.where): every image
        sees exactly its own order, with no host sync (no boolean indexing).
    """
    ops = (
        lambda y: adjust_brightness(y, brightness),
        lambda y: adjust_contrast(y, contrast, luma=luma),
        lambda y: adjust_saturation(y, saturation, luma=luma),
        lambda y: adjust_hue(y, hue),
    )
    for pos in range(4):
        for k, op in enumerate(ops):
            sel = ((order[:, pos] == k) & apply).view(-1, 1, 1, 1)
            x = torch.where(sel, op(x), x)
    return x


def _jitter_factors(b: int, s: float, generator: Optional[torch.Generator],
                    device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-image ColorJitter(0.4s, 0.4s, 0.4s, 0.1s) factors, as torchvision's get_params."""
    u = _rand((b, 4), generator, device)
    amp = 0.4 * s
    lo, hi = max(0.0, 1.0 - amp), 1.0 + amp
    bri = lo + (hi - lo) * u[:, 0]
    con = lo + (hi - lo) * u[:, 1]
    sat = lo + (hi - lo) * u[:, 2]
    hue = 0.1 * s * (2.0 * u[:, 3] - 1.0)  # U[-0.1s, 0.1s]
    return bri, con, sat, hue


def simclr_augment(
    x: Tensor,
    strength: float = 1.0,
    *,
    generator: Optional[torch.Generator] = None,
    out_size: Optional[Size] = None,
    jitter_order: Literal["random", "fixed"] = "random",
    interpolation: Literal["bicubic", "bilinear"] = "bicubic",
    luma: Sequence[float] = LUMA_601,
) -> Tensor:
    """One ACL/DynACL view per image at augmentation strength s (spec §2.2), on x's device.

    In order, each with its own per-image draw: RandomResizedCrop(out_size, scale=(1-0.9s, 1),
    ratio=(3/4, 4/3), bicubic) -> RandomHorizontalFlip(0.5) -> RandomApply(ColorJitter(0.4s,
    0.4s, 0.4s, 0.1s), p=0.8s) -> RandomGrayscale(0.2s).

    Args:
        x: (B,3,H,W) uint8 or float in [0,1].
        strength: s in [0,1] (DynAug, spec §2.3); s=1 is the SimCLR CIFAR recipe.
        generator: torch.Generator on x.device for reproducible draws.
        out_size: output size (int or (h,w)); default (H, W).
        jitter_order: 'random' (torchvision: a random permutation of the four colour ops per
            image) or 'fixed' (brightness, contrast, saturation, hue; 4x fewer op evaluations).
        interpolation: 'bicubic' (authors) or 'bilinear'.
        luma: grayscale weights (ITU-R 601-2 as PIL by default).
    Returns:
        (B,3,h',w') float in [0,1]; float32 for uint8 input, else x's float dtype.
    """
    _check_images(x)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    x = to_float(x)
    B, _, H, W = x.shape
    dev = x.device

    # 1. RandomResizedCrop. At s=0 the scale range is (1,1), so only full-area crops exist.
    boxes = sample_resized_crop_boxes(
        B, H, W, scale=(1.0 - 0.9 * strength, 1.0), generator=generator, device=dev
    )
    x = resized_crop(x, boxes, out_size if out_size is not None else (H, W), mode=interpolation,
                     check=False)

    # 2. RandomHorizontalFlip(p=0.5): not scaled by s (spec §2.2).
    u = _rand((B, 3), generator, dev)
    flip = (u[:, 0] < 0.5).view(-1, 1, 1, 1)
    x = torch.where(flip, x.flip(-1), x)

    # 3. RandomApply(ColorJitter, p=0.8s). Factors and orders are drawn for every image (fixed
    #    number of draws keeps the generator stream independent of the outcomes).
    apply = u[:, 1] < 0.8 * strength
    bri, con, sat, hue = _jitter_factors(B, strength, generator, dev)
    if jitter_order == "random":
        order = torch.rand(B, 4, generator=generator, device=dev).argsort(dim=1)  # randperm/row
    elif jitter_order == "fixed":
        order = torch.arange(4, device=dev).expand(B, 4)
    else:
        raise ValueError(f"jitter_order must be 'random' or 'fixed', got {jitter_order!r}")
    if bool(apply.any()):  # skip 16 full-batch ops when nothing is jittered (e.g. s=0)
        if jitter_order == "fixed":
            m = apply.view(-1, 1, 1, 1)
            y = adjust_brightness(x, bri)
            y = adjust_contrast(y, con, luma=luma)
            y = adjust_saturation(y, sat, luma=luma)
            y = adjust_hue(y, hue)
            x = torch.where(m, y, x)
        else:
            x = color_jitter(x, bri, con, sat, hue, order, apply, luma=luma)

    # 4. RandomGrayscale(p=0.2s): luma replicated to 3 channels.
    gray = (u[:, 2] < 0.2 * strength).view(-1, 1, 1, 1)
    x = torch.where(gray, rgb_to_grayscale(x, luma=luma).expand_as(x), x)
    return x


def two_views(
    x: Tensor,
    strength: float = 1.0,
    *,
    generator: Optional[torch.Generator] = None,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Two independent views (x_i, x_j) of each image: (B,3,H,W) each (one call on cat([x,x]))."""
    v = simclr_augment(torch.cat([x, x], dim=0), strength, generator=generator, **kwargs)
    return v[: x.shape[0]], v[x.shape[0]:]


# ----------------------------------------------------------------------------------------------
# Fine-tuning augmentation (spec §2.4)
# ----------------------------------------------------------------------------------------------


def finetune_augment(
    x: Tensor,
    *,
    padding: int = 4,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """RandomCrop(H, padding, zero fill) + RandomHorizontalFlip(0.5), batched.

    Args:
        x: (B,3,H,W) uint8 or float in [0,1].
    Returns:
        (B,3,H,W) float: each image shifted by (dy, dx) in [-padding, padding] (zeros enter
        from the border), then flipped with probability 1/2.
    """
    _check_images(x)
    x = to_float(x)
    B, C, H, W = x.shape
    dev = x.device
    xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))  # (B,C,H+2p,W+2p)
    u = _rand((B, 3), generator, dev)
    # Offsets ~ randint(0, 2p+1) like torchvision's RandomCrop.get_params.
    top = torch.floor(u[:, 0] * (2 * padding + 1)).long().clamp_max(2 * padding)
    left = torch.floor(u[:, 1] * (2 * padding + 1)).long().clamp_max(2 * padding)
    rows = top.unsqueeze(1) + torch.arange(H, device=dev)  # (B,H)
    cols = left.unsqueeze(1) + torch.arange(W, device=dev)  # (B,W)
    bidx = torch.arange(B, device=dev).view(B, 1, 1)
    out = xp.permute(0, 2, 3, 1)[bidx, rows.unsqueeze(2), cols.unsqueeze(1)]  # (B,H,W,C)
    out = out.permute(0, 3, 1, 2).contiguous()
    flip = (u[:, 2] < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)


# ----------------------------------------------------------------------------------------------
# DynAug schedules (spec §2.3)
# ----------------------------------------------------------------------------------------------


def _check_epoch(epoch: int, epochs: int, period: int) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    if not 1 <= epoch <= epochs:
        raise ValueError(f"epoch is 1-based and must be in [1, {epochs}], got {epoch}")


def dynaug_strength(epoch: int, epochs: int, period: int = 50) -> float:
    """Augmentation strength s(e) = 1 - floor((e-1)/K) * K/E, epochs counted from 1 (spec §2.3)."""
    _check_epoch(epoch, epochs, period)
    return 1.0 - ((epoch - 1) // period) * period / epochs


def acl_weight(epoch: int, epochs: int, period: int = 50, lam: float = 2 / 3) -> float:
    """DynACL loss weight omega(e) = lam * (1 - s(e)) (lam = 2/3 hard-coded by the authors)."""
    return lam * (1.0 - dynaug_strength(epoch, epochs, period))
