"""Checkpoint I/O: the authors' released checkpoints (strict mapping) and our export format.

Authors' layouts handled by `load_authors_checkpoint` (spec §1, §3.7, §6.1, Q4, §10):
- dual-BN pre-training: `<site>.bn_list.<k>.<leaf>`, k indexing the run's bn_names, which are
  ['normal', 'pgd'] on CIFAR/STL (ResNet) but ['pgd', 'normal'] on ImageNet-32 (WRN);
- single-BN: `<site>.<leaf>` (fine-tuning models, SAT WRN) or `<site>.bn_list.<leaf>`
  (their batch_norm_multiple built with bn_names=None);
- shortcuts `downsample.{conv,bn}` (dual) or `downsample.{0,1}` (single-BN fine-tuning);
- head attribute `fc` (ResNet) or `linear` (WRN) -> our `head`; `module.` (DataParallel)
  and `_orig_mod.` (torch.compile) prefixes are stripped;
- wrappers {'state_dict': ...} / {'model': ...} / {'net': ...} and our own export file.
Unlike the authors' strict=False loader, which silently drops 203 of 224 tensors (spec Q4),
every model tensor must be filled and every checkpoint tensor used, or CheckpointError.
The only ignorable tensors are the head's, and only with skip_head=True.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.models.base import Encoder
from pipeline.errors import UserError
from pipeline.models.factory import arch_kwargs_of, build_model
from pipeline.models.multi_bn import BN_LEAVES, iter_multi_bn

ENCODER_FORMAT = "robust-pretrain-encoder/v1"

# Checkpoint BN order per arch when bn_order is not given (spec §1.1 / §1.3).
DEFAULT_BN_ORDER: dict[str, tuple[str, ...]] = {
    "resnet18": ("normal", "pgd"),
    "wrn": ("pgd", "normal"),
}
_HEAD_PREFIXES = ("fc.", "linear.", "head.")
_WRAPPER_KEYS = ("state_dict", "model", "net")
_STRIP_PREFIXES = ("module.", "_orig_mod.")
_RE_MULTI = re.compile(r"^(.*)\.bn_list\.(\d+)\.([a-z_]+)$")
_RE_SINGLE_LIST = re.compile(r"^(.*)\.bn_list\.([a-z_]+)$")
_RE_LEAF = re.compile(r"^(.*)\.([a-z_]+)$")


class CheckpointError(UserError, ValueError):
    """Checkpoint does not match the model; lists keys (`missing`, `unexpected`, `mismatched`)."""

    def __init__(
        self,
        message: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[str] = (),
    ) -> None:
        self.missing, self.unexpected, self.mismatched = (
            list(missing), list(unexpected), list(mismatched))
        parts = [message]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch", self.mismatched)):
            if keys:
                more = f", ... (+{len(keys) - 25} more)" if len(keys) > 25 else ""
                shown = ", ".join(keys[:25]) + more
                parts.append(f"{len(keys)} {label}: {shown}")
        super().__init__("; ".join(parts))


def _torch_load(path: str | Path, *, trusted: bool) -> Any:
    """torch.load on CPU, weights_only unless the caller trusts the file (pickled objects)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trusted:
            raise CheckpointError(
                f"{path}: cannot be read with weights_only=True ({e}); "
                "pass trusted=True only for a file you trust"
            ) from e
        return torch.load(path, map_location="cpu", weights_only=False)


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint object (unwraps state_dict/model/net/ours)."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if obj.get("format") == ENCODER_FORMAT:
            return dict(obj["state_dict"])
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                return extract_state_dict(obj[key])
        raise CheckpointError(
            f"no state dict found (top-level keys: {sorted(map(str, obj))[:10]}); expected "
            f"tensors or a wrapper key in {_WRAPPER_KEYS}"
        )
    raise CheckpointError(f"expected a dict checkpoint, got {type(obj).__name__}")


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _STRIP_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _rename_plain(key: str, head_prefix: str | None) -> str:
    """Head attribute -> `head`, single-BN fine-tuning shortcut names -> ours."""
    if head_prefix is not None and key.startswith(head_prefix):
        key = "head." + key[len(head_prefix):]
    return key.replace(".downsample.0.", ".downsample.conv.").replace(
        ".downsample.1.", ".downsample.bn.")


def convert_authors_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: Encoder,
    *,
    bn_order: Sequence[str] | None = None,
    single_bn_to_all: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str], dict[str, Any]]:
    """Rename the authors' keys to `model`'s keys (no loading, no completeness check).

    Returns (converted, origin: our key -> checkpoint key, unmapped checkpoint keys, info).
    """
    sd = {_strip(k): v for k, v in state_dict.items()}
    original = {_strip(k): k for k in state_dict}  # errors name keys as the file spells them
    if len(sd) != len(state_dict):
        raise CheckpointError("keys collide after stripping 'module.'/'_orig_mod.' prefixes")
    present = [p for p in _HEAD_PREFIXES if any(k.startswith(p) for k in sd)]
    if len(present) > 1:
        raise CheckpointError(
            f"checkpoint has several head prefixes {present}; cannot map to 'head'")
    head_prefix = present[0] if present else None
    sites = dict(iter_multi_bn(model))
    order = tuple(bn_order) if bn_order is not None else DEFAULT_BN_ORDER.get(
        model.arch, ("normal", "pgd"))

    # Classify each key: ("multi", site, k, leaf) / ("single", site, leaf) / ("plain", key).
    parsed: list[tuple[str, tuple]] = []
    n_branches = 0
    for ck in sd:
        key = _rename_plain(ck, head_prefix)
        m = _RE_MULTI.match(key)
        if m and m.group(1) in sites and m.group(3) in BN_LEAVES:
            parsed.append((ck, ("multi", m.group(1), int(m.group(2)), m.group(3))))
            n_branches = max(n_branches, int(m.group(2)) + 1)
            continue
        m = _RE_SINGLE_LIST.match(key) or _RE_LEAF.match(key)
        if m and m.group(1) in sites and m.group(2) in BN_LEAVES:
            parsed.append((ck, ("single", m.group(1), m.group(2))))
            continue
        parsed.append((ck, ("plain", key)))
    if n_branches > len(order):
        raise CheckpointError(
            f"checkpoint has {n_branches} BN branches but bn_order={order} names {len(order)}")

    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unmapped: list[str] = []

    def put(our: str, ck: str) -> None:
        if our in out:
            raise CheckpointError(
                f"checkpoint keys {origin[our]!r} and {original[ck]!r} both map to {our!r}")
        out[our], origin[our] = sd[ck], original[ck]

    has_single = False
    for ck, p in parsed:
        if p[0] == "plain":
            put(p[1], ck)
        elif p[0] == "multi":
            _, site, k, leaf = p
            names = sites[site].bn_names
            if n_branches == 1 and len(names) == 1:
                put(f"{site}.bn_list.0.{leaf}", ck)  # one branch each side: names irrelevant
            elif order[k] in names:
                put(f"{site}.bn_list.{names.index(order[k])}.{leaf}", ck)
            else:
                unmapped.append(original[ck])  # branch the model does not have
        else:
            _, site, leaf = p
            has_single = True
            names = sites[site].bn_names
            if len(names) == 1:
                put(f"{site}.bn_list.0.{leaf}", ck)
            elif single_bn_to_all:
                for i in range(len(names)):
                    put(f"{site}.bn_list.{i}.{leaf}", ck)
            else:
                unmapped.append(original[ck])
    layout = "mixed" if has_single and n_branches else ("single-bn" if has_single else "multi-bn")
    info = {"bn_order": order if n_branches > 1 else order[:n_branches], "layout": layout,
            "head_prefix": head_prefix, "checkpoint_branches": n_branches}
    return out, origin, unmapped, info


def load_authors_checkpoint(
    src: str | Path | Mapping[str, Any],
    model: Encoder,
    *,
    bn_order: Sequence[str] | None = None,
    skip_head: bool = False,
    single_bn_to_all: bool = False,
    trusted: bool = False,
) -> dict[str, Any]:
    """Load an authors'-format checkpoint into `model` in place, strictly.

    Args:
        src: file path or an already loaded object (state dict or wrapper dict).
        model: built with build_model; its bn_names decide which branch gets which tensors.
        bn_order: the checkpoint's branch order (bn_list.0, bn_list.1, ...); default
            ('normal', 'pgd') for resnet18, ('pgd', 'normal') for wrn. Branches are matched by
            name, so a model with ('normal', 'pgd') loads an ImageNet ('pgd', 'normal') file
            correctly. When both sides have one branch, names are not compared.
        skip_head: ignore the checkpoint's head tensors and leave the model's head as built
            (e.g. load a pre-training file into a model with another head).
        single_bn_to_all: copy a single-BN checkpoint's BN into every branch of the model
            (otherwise single-BN tensors into a multi-branch site are an error).
        trusted: allow a full unpickle when weights_only loading fails.
    Returns:
        report {'loaded', 'ignored', 'bn_order', 'layout', 'head_prefix', 'checkpoint_branches'}.
    Raises:
        CheckpointError listing missing / unexpected / shape-mismatched keys.
    """
    obj = _torch_load(src, trusted=trusted) if isinstance(src, (str, Path)) else src
    state = extract_state_dict(obj)
    converted, origin, unmapped, info = convert_authors_state_dict(
        state, model, bn_order=bn_order, single_bn_to_all=single_bn_to_all)
    target = model.state_dict()
    ignored: list[str] = []
    if skip_head:
        for k in [k for k in converted if k.startswith("head.")]:
            ignored.append(origin[k])
            del converted[k]
        unmapped_head = [
            k for k in unmapped
            if _rename_plain(_strip(k), info["head_prefix"]).startswith("head.")]
        ignored += unmapped_head
        unmapped = [k for k in unmapped if k not in unmapped_head]
    missing = [
        k for k in target
        if k not in converted and not (skip_head and k.startswith("head."))]
    unexpected = unmapped + [origin[k] for k in converted if k not in target]
    mismatched = [
        f"{origin[k]} -> {k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in converted.items() if k in target and v.shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"checkpoint does not match {type(model).__name__} (bn_names={model.bn_names}, "
            f"checkpoint bn_order={info['bn_order']}, layout={info['layout']})",
            missing=missing, unexpected=unexpected, mismatched=mismatched)
    result = model.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys and all(
        k.startswith("head.") for k in result.missing_keys), result  # guaranteed by the checks
    return {"loaded": len(converted), "ignored": ignored, **info}


def save_encoder(path: str | Path, model: Encoder, meta: Mapping[str, Any] | None = None) -> Path:
    """Write {'format', 'arch_kwargs', 'state_dict', 'meta'} atomically (temp file + os.replace).

    meta must hold plain Python values (str/int/float/bool/None, lists, dicts) so the file
    reads back with torch.load(weights_only=True). Tensors are saved on CPU.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Accept DDP / torch.compile wrappers: save the plain module's keys.
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, torch.nn.Module):
            model = inner
    payload = {
        "format": ENCODER_FORMAT,
        "arch_kwargs": arch_kwargs_of(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # readers never see a half-written file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_encoder(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[Encoder, dict[str, Any]]:
    """Rebuild a model written by save_encoder and load it strictly -> (model, meta).

    No auto-detection of other formats: an authors' checkpoint raises CheckpointError that
    points to load_authors_checkpoint (which needs the architecture, not stored in their files).
    """
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping) or obj.get("format") != ENCODER_FORMAT:
        keys = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{path} is not a {ENCODER_FORMAT} file (found {keys}); for the authors' "
            "checkpoints build the model with build_model(...) and call "
            "pipeline.models.load_authors_checkpoint(path, model)")
    model = build_model(**obj["arch_kwargs"])
    model.load_state_dict(obj["state_dict"], strict=True)
    return model.to(map_location), dict(obj["meta"])
