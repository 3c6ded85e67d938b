"""DynACL-AIR++ post-processing (spec §3.8, Q13) as plain torch functions (core: no Ray).

After pre-training, the authors turn the encoder into a *new* pre-trained encoder in three steps:

1. **Pseudo labels** (:func:`pseudo_labels`): encoder features of the un-augmented training set
   through the ``'normal'`` BN (eval mode), k-means (Euclidean, tol 1e-5) with k = the number of
   classes of the pre-training set (:func:`kmeans`).
2. **Linear probing** on the pseudo labels: a zero-initialised ``Linear(feat_dim, k)`` on the
   frozen encoder in eval mode through the ``'pgd'`` BN, 10 epochs, SGD lr 0.01 constant,
   momentum 0.9, wd 1e-4, batch 512, CE, RandomCrop(pad 4) + flip.
3. **Pseudo adversarial full fine-tuning**: TRADES (beta 6, PGD 10 x 2/255, eps 8/255), both the
   natural and the adversarial forward through ``'pgd'``, 25 epochs, SGD lr 0.1, momentum 0.9,
   wd 1e-4, MultiStepLR [10, 20] (gamma 0.1, per epoch).

:func:`postprocess_plusplus` runs them and returns the dual-BN encoder with its k-way head, the
format ``save_encoder`` writes, so ``jobs.finetune`` / ``jobs.evaluate`` read it like any
pre-trained encoder (the fine-tuning replaces the head). :func:`run_postprocess` adds the
data loading and the outputs of ``python -m jobs.postprocess``.

k-means: Lloyd iterations in float64 on the features' device; init ``"random"`` = k distinct data points drawn with
the seed (what the authors' ``kmeans_pytorch`` package does, as far as we know) or
``"k-means++"`` (D² sampling, seeded). Ties go to the lowest cluster index. An empty cluster is
re-seeded at the point farthest from its centroid (deterministic). Convergence: total squared
centroid movement of one iteration < tol.

Differences from the released LP-AFF.py (documented in the README): it cannot run as is (Q13);
batches here keep the last partial batch (drop_last=False, as our fine-tuning), and the AFF step
uses batch 512 (the script's single --batch_size; --batch_size_AT 128 is unused there).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.config import AttackConfig, ConfigError, ModelConfig, atomic_write_text, check_uri, to_dict
from pipeline.finetune.config import AFFConfig, SLFConfig
from pipeline.finetune.modes import as_device_arrays, make_optimizer, run_epoch, training_module
from pipeline.models import make_classifier

Log = Callable[[str], None]
KMEANS_INITS: tuple[str, ...] = ("random", "k-means++")


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlusPlusConfig:
    """The three ++ steps; defaults = the authors' LP-AFF.py (spec §3.8)."""

    k: int = 0  # clusters; 0 = num_classes of the pre-training manifest (10 / 100)
    feature_bn: str = "normal"  # BN branch of the k-means features
    feature_batch_size: int = 500  # eval mode: the batch does not change the features (authors 5000)
    kmeans_init: Literal["random", "k-means++"] = "random"
    kmeans_tol: float = 1e-5
    kmeans_max_iter: int = 300
    kmeans_seed: int = 0
    lp_epochs: int = 10  # --epochs_head
    lp_lr: float = 0.01  # --lr_head, constant
    lp_momentum: float = 0.9
    lp_weight_decay: float = 1e-4
    lp_batch_size: int = 512
    lp_bn: str = "pgd"  # BN branch of the frozen encoder during probing
    aff_epochs: int = 25  # --epochs
    aff_lr: float = 0.1
    aff_momentum: float = 0.9
    aff_weight_decay: float = 1e-4
    aff_batch_size: int = 512
    aff_milestones: tuple[int, ...] = (10, 20)
    beta: float = 6.0  # TRADES weight
    attack: AttackConfig = field(default_factory=lambda: AttackConfig(steps=10))  # start 0.001 N(0,1)
    nat_bn: str = "pgd"  # TRADES natural forward (the ++ script: 'pgd', unlike AFF's 'normal')
    adv_bn: str = "pgd"
    seed: int = 1  # batch order / augmentation / attack starts (LP uses seed, AFF seed + 1)
    padding: int = 4  # RandomCrop padding
    max_steps_per_epoch: int = 0  # >0 truncates epochs (smoke tests)

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"plusplus.{name} {what}, got {getattr(self, name)!r}")

        need(self.k >= 0, "k", "must be >= 0 (0 = num_classes of the pre-training set)")
        need(self.feature_batch_size >= 1, "feature_batch_size", "must be >= 1")
        need(self.kmeans_init in KMEANS_INITS, "kmeans_init", f"must be one of {list(KMEANS_INITS)}")
        need(self.kmeans_tol > 0, "kmeans_tol", "must be > 0")
        need(self.kmeans_max_iter >= 1, "kmeans_max_iter", "must be >= 1")
        for name in ("lp_epochs", "aff_epochs", "max_steps_per_epoch", "padding"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("lp_lr", "aff_lr"):
            need(getattr(self, name) > 0, name, "must be > 0")
        for name in ("lp_batch_size", "aff_batch_size"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("lp_momentum", "aff_momentum"):
            need(0 <= getattr(self, name) < 1, name, "must be in [0, 1)")
        for name in ("lp_weight_decay", "aff_weight_decay", "beta"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(all(m >= 1 for m in self.aff_milestones), "aff_milestones", "must be epochs >= 1")
        for name in ("feature_bn", "lp_bn", "nat_bn", "adv_bn"):
            need(bool(getattr(self, name)), name, "must name a BN branch")

    def lp_config(self) -> SLFConfig:
        """Step 2 as an SLF section (frozen encoder, eval mode, constant lr, raw features)."""
        return SLFConfig(epochs=max(self.lp_epochs, 1), batch_size=self.lp_batch_size, lr=self.lp_lr,
                         milestones=(), momentum=self.lp_momentum, weight_decay=self.lp_weight_decay,
                         classifier_init="zeros", eval_branch=self.lp_bn, standardize=False)

    def aff_config(self) -> AFFConfig:
        """Step 3 as an AFF section (dual-BN TRADES with the ++ branches)."""
        return AFFConfig(epochs=max(self.aff_epochs, 1), batch_size=self.aff_batch_size, lr=self.aff_lr,
                         milestones=tuple(self.aff_milestones), momentum=self.aff_momentum,
                         weight_decay=self.aff_weight_decay, attack=self.attack, beta=self.beta,
                         dual_bn=True, nat_bn=self.nat_bn, adv_bn=self.adv_bn, eval_branch=self.adv_bn)


@dataclass(frozen=True)
class PostprocessDataConfig:
    train_manifest: str = ""  # the pre-training set (its num_classes is the default k)
    max_train: int = 0  # >0: first n examples only (smoke runs)
    s3_endpoint: str = ""

    def __post_init__(self) -> None:
        check_uri("data.train_manifest", self.train_manifest)
        if self.max_train < 0:
            raise ConfigError(f"data.max_train must be >= 0, got {self.max_train}")


@dataclass(frozen=True)
class PostprocessConfig:
    """``python -m jobs.postprocess``: checkpoint + data + the ++ section."""

    checkpoint: str = ""  # our export (load_encoder) or the authors' file, auto-detected
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture for authors' files
    data: PostprocessDataConfig = field(default_factory=PostprocessDataConfig)
    plusplus: PlusPlusConfig = field(default_factory=PlusPlusConfig)
    use_gpu: bool = False


# ----------------------------------------------------------------------------------------------
# Step 1: k-means pseudo labels
# ----------------------------------------------------------------------------------------------


def _sq_dist(x: Tensor, c: Tensor) -> Tensor:
    """(N, d), (k, d) -> (N, k) squared Euclidean distances |x|^2 - 2 x.c + |c|^2 (one matmul;
    float64 inputs keep it exact for small integer / binary-fraction data, so ties stay ties)."""
    d2 = (x * x).sum(1, keepdim=True) - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return d2.clamp_(min=0.0)


def _init_centroids(x: Tensor, k: int, init: str | Tensor, g: torch.Generator) -> Tensor:
    n = len(x)
    if isinstance(init, Tensor):
        if tuple(init.shape) != (k, x.shape[1]):
            raise ValueError(f"initial centroids must be ({k}, {x.shape[1]}), got {tuple(init.shape)}")
        return init.detach().to(x).clone()
    if init == "random":
        return x[torch.randperm(n, generator=g)[:k]].clone()
    if init != "k-means++":
        raise ValueError(f"init must be one of {KMEANS_INITS}, got {init!r}")
    chosen = [int(torch.randint(n, (1,), generator=g))]
    d2 = _sq_dist(x, x[chosen[0]][None])[:, 0]
    for _ in range(1, k):
        if float(d2.sum()) > 0:
            i = int(torch.multinomial(d2.cpu(), 1, generator=g))
        else:  # fewer distinct points than k: the lowest index not chosen yet
            i = next(j for j in range(n) if j not in set(chosen))
        chosen.append(i)
        d2 = torch.minimum(d2, _sq_dist(x, x[i][None])[:, 0])
    return x[chosen].clone()


def kmeans(features: Tensor, k: int, *, tol: float = 1e-5, max_iter: int = 300, seed: int = 0,
           init: str | Tensor = "random", info: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd k-means (Euclidean) -> (labels (N,) int64, centroids (k, d) in features' dtype).

    Deterministic for a seed (float64 on the features' device; labels and centroids come back
    on that device). init: "random" (k distinct data points), "k-means++", or a (k, d) tensor
    of starting centroids. Ties go to the lowest cluster index; an empty cluster is moved to
    the point farthest from its centroid. Stops when the total squared centroid movement < tol
    or after max_iter iterations; the labels are the final centroids' nearest clusters. ``info``
    (a dict) receives iterations, converged, inertia (sum of squared distances).
    """
    if features.dim() != 2 or len(features) == 0:
        raise ValueError(f"features must be a non-empty (N, d) matrix, got shape {tuple(features.shape)}")
    n = len(features)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the number of points), got {k}")
    x = features.detach().to(torch.float64)  # on the features' device (a GPU when there is one)
    g = torch.Generator().manual_seed(int(seed))
    c = _init_centroids(x, k, init, g)
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        d2 = _sq_dist(x, c)
        labels = d2.argmin(1)  # first minimum: ties -> lowest index
        counts = torch.bincount(labels, minlength=k)
        new = torch.zeros_like(c).index_add_(0, labels, x) / counts.clamp(min=1)[:, None].to(x)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            far = d2.gather(1, labels[:, None])[:, 0].clone()
            for j in empty:  # farthest points first, one per empty cluster
                p = int(far.argmax())
                new[j] = x[p]
                far[p] = -1.0
        shift = float(((new - c) ** 2).sum())
        c = new
        if shift < tol and not empty:
            converged = True
            break
    d2 = _sq_dist(x, c)
    labels = d2.argmin(1)
    if info is not None:
        info.update(iterations=it, converged=converged,
                    init=init if isinstance(init, str) else "given",
                    inertia=float(d2.gather(1, labels[:, None]).sum()))
    return labels, c.to(features.dtype)


@torch.no_grad()
def encoder_features(encoder: nn.Module, images: Tensor, *, bn: str | None = "normal",
                     batch_size: int = 500) -> Tensor:
    """(N, feat_dim) float32 features of uint8 (N, 3, H, W) images, un-augmented, eval mode.

    ``bn`` is ignored by a single-BN encoder (one branch accepts any name)."""
    was = encoder.training
    encoder.eval()
    try:
        out = [encoder.features(images[i:i + batch_size].float() / 255.0, bn).float()
               for i in range(0, len(images), batch_size)]
    finally:
        encoder.train(was)
    return torch.cat(out)


def pseudo_labels(encoder: nn.Module, images: np.ndarray | Tensor, k: int, *, bn: str = "normal",
                  batch_size: int = 500, tol: float = 1e-5, max_iter: int = 300, seed: int = 0,
                  init: str = "random", device: str | torch.device = "cpu",
                  info: dict[str, Any] | None = None) -> Tensor:
    """Step 1: k-means cluster ids (N,) int64 (CPU) of the encoder's features of ``images``.

    images: uint8 (N, H, W, 3) or (N, 3, H, W), un-augmented."""
    x, _ = as_device_arrays(images, np.zeros(len(images), np.int64), device)
    enc = encoder.to(device)
    feats = encoder_features(enc, x, bn=bn, batch_size=batch_size)
    labels, _ = kmeans(feats, k, tol=tol, max_iter=max_iter, seed=seed, init=init, info=info)
    return labels.cpu()


def cluster_agreement(pred: np.ndarray | Tensor, true: np.ndarray | Tensor) -> dict[str, Any]:
    """How well cluster ids match true labels.

    best_map_acc: accuracy under the best one-to-one cluster -> class map (Hungarian via scipy
    when installed, else greedy on the contingency table: largest count first); purity: each
    cluster mapped to its majority class (many-to-one, >= best_map_acc)."""
    p = np.asarray(pred, dtype=np.int64)
    t = np.asarray(true, dtype=np.int64)
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"pred and true must be equal non-empty shapes, got {p.shape} and {t.shape}")
    table = np.zeros((int(p.max()) + 1, int(t.max()) + 1), np.int64)
    np.add.at(table, (p, t), 1)
    try:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(-table)
        matched, method = int(table[rows, cols].sum()), "hungarian"
    except ImportError:
        work = table.astype(np.float64)
        matched = 0
        for _ in range(min(work.shape)):
            r, c = np.unravel_index(int(work.argmax()), work.shape)
            matched += int(table[r, c])
            work[r, :], work[:, c] = -1, -1
        method = "greedy"
    return {"best_map_acc": matched / p.size, "purity": int(table.max(1).sum()) / p.size,
            "method": method, "n": int(p.size)}


# ----------------------------------------------------------------------------------------------
# Steps 2-3
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, bn: str | None, batch_size: int = 500) -> float:
    model.eval()
    hits = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].float() / 255.0
        out = model(xb) if bn is None else model(xb, bn)
        hits += int((out.argmax(1) == y[i:i + batch_size]).sum())
    return hits / max(len(x), 1)


def postprocess_plusplus(
    encoder: nn.Module,
    images: np.ndarray | Tensor,
    k: int,
    cfg: PlusPlusConfig,
    *,
    labels: np.ndarray | Tensor | None = None,
    pseudo: np.ndarray | Tensor | None = None,
    device: str | torch.device = "cpu",
    log: Log | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Steps 1-3 -> (new dual-BN encoder with a k-way Linear head, on CPU in eval mode; info).

    ``encoder`` is not modified. ``pseudo``: precomputed cluster ids (skips step 1). ``labels``:
    true labels, only to measure the pseudo labels' agreement (never used for training).
    info: k, cluster_sizes, kmeans, agreement (with labels), lp (per-epoch losses, accuracy on
    the pseudo labels), aff (per-epoch losses), seconds.
    """
    say = log or (lambda _line: None)
    t0 = time.perf_counter()
    x, _ = as_device_arrays(images, np.zeros(len(images), np.int64), device)
    base = copy.deepcopy(encoder).to(device).eval()
    info: dict[str, Any] = {"k": int(k), "n": len(x)}
    if pseudo is None:
        kinfo: dict[str, Any] = {}
        feats = encoder_features(base, x, bn=cfg.feature_bn, batch_size=cfg.feature_batch_size)
        y_ps, _ = kmeans(feats, k, tol=cfg.kmeans_tol, max_iter=cfg.kmeans_max_iter,
                         seed=cfg.kmeans_seed, init=cfg.kmeans_init, info=kinfo)
        y_ps = y_ps.cpu()
        info["kmeans"] = kinfo
        say(f"k-means: k {k}, {kinfo['iterations']} iterations, converged {kinfo['converged']}, "
            f"inertia {kinfo['inertia']:.4g}")
    else:
        y_ps = torch.as_tensor(np.asarray(pseudo), dtype=torch.int64)
        if len(y_ps) != len(x) or (len(y_ps) and not 0 <= int(y_ps.min()) <= int(y_ps.max()) < k):
            raise ValueError(f"pseudo must be {len(x)} cluster ids in 0..{k - 1}")
        info["kmeans"] = None
    info["cluster_sizes"] = torch.bincount(y_ps, minlength=k).tolist()
    if labels is not None:
        info["agreement"] = cluster_agreement(y_ps.numpy(), labels)
        say(f"pseudo labels vs true labels: best one-to-one map {100 * info['agreement']['best_map_acc']:.2f}%, "
            f"purity {100 * info['agreement']['purity']:.2f}%")
    info["seconds_kmeans"] = time.perf_counter() - t0
    y_dev = y_ps.to(device)

    # Step 2: linear probe on the frozen encoder (eval mode, cfg.lp_bn branch, zero init)
    t1 = time.perf_counter()
    lp_cfg = cfg.lp_config()
    probe = make_classifier(base, k, branch=cfg.lp_bn, init="zeros")
    for p in probe.parameters():
        p.requires_grad_(False)
    for p in probe.head.parameters():
        p.requires_grad_(True)
    opt, _ = make_optimizer(probe, lp_cfg)  # constant lr (no milestones)
    lp_hist = []
    for epoch in range(1, cfg.lp_epochs + 1):
        m = run_epoch(probe, x, y_dev, mode="SLF", cfg=lp_cfg, optimizer=opt, epoch=epoch,
                      seed=cfg.seed, padding=cfg.padding, max_steps=cfg.max_steps_per_epoch)
        lp_hist.append({"epoch": epoch, "loss": m["loss"], "lr": opt.param_groups[0]["lr"],
                        "seconds": m["seconds"]})
        say(f"++ LP epoch {epoch}/{cfg.lp_epochs} loss {m['loss']:.4f}")
    lp_acc = _accuracy(probe, x, y_dev, None)
    info["lp"] = {"history": lp_hist, "acc_pseudo": lp_acc, "seconds": time.perf_counter() - t1}
    say(f"++ LP accuracy on the pseudo labels (clean, training images): {100 * lp_acc:.2f}%")

    # Step 3: pseudo TRADES full fine-tuning of the dual-BN model, head from step 2
    t2 = time.perf_counter()
    aff_cfg = cfg.aff_config()
    model = base  # our own deep copy
    model.head = copy.deepcopy(probe.head)
    for p in model.parameters():
        p.requires_grad_(True)
    module = training_module(model, "AFF", aff_cfg)
    opt, sched = make_optimizer(model, aff_cfg)
    aff_hist = []
    for epoch in range(1, cfg.aff_epochs + 1):
        m = run_epoch(module, x, y_dev, mode="AFF", cfg=aff_cfg, optimizer=opt, epoch=epoch,
                      seed=cfg.seed + 1, padding=cfg.padding, max_steps=cfg.max_steps_per_epoch)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        if not math.isfinite(m["loss"]):
            raise FloatingPointError(f"++ AFF epoch {epoch}: loss is {m['loss']} (lr {lr})")
        aff_hist.append({"epoch": epoch, "loss": m["loss"], "lr": lr, "seconds": m["seconds"]})
        say(f"++ AFF epoch {epoch}/{cfg.aff_epochs} loss {m['loss']:.4f} lr {lr:.4g}")
    bn = cfg.adv_bn if len(getattr(model, "bn_names", ())) > 1 else None
    info["aff"] = {"history": aff_hist, "acc_pseudo_clean": _accuracy(model, x, y_dev, bn),
                   "seconds": time.perf_counter() - t2}
    info["seconds"] = time.perf_counter() - t0
    model = model.cpu().eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, info


# ----------------------------------------------------------------------------------------------
# The job's run: data, outputs
# ----------------------------------------------------------------------------------------------

OUTPUT_FILES = ("encoder.pt", "postprocess.json", "summary.json")


def run_postprocess(cfg: PostprocessConfig, encoder: nn.Module, out_dir: str | Path, *,
                    log: Log = print) -> dict[str, Any]:
    """Load the training set, run :func:`postprocess_plusplus`, write ``out_dir``.

    Outputs: ``postprocess.json`` (info + config), ``encoder.pt`` (save_encoder: temp file +
    rename), then ``summary.json`` last (a run dir for ``jobs.report``; without it the run is
    not complete). A finished dir is refused; an ``encoder.pt`` left without ``summary.json``
    is removed before starting, so a failed run never leaves an ``encoder.pt`` that looks done.
    """
    from pipeline.data.shards import load_arrays, read_manifest
    from pipeline.eval.outputs import checkpoint_id
    from pipeline.models import save_encoder

    out = Path(out_dir)
    if (out / "summary.json").is_file():
        raise ConfigError(f"{out}/summary.json exists: this ++ run is finished; pass another --out "
                          "or delete the folder")
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("encoder.pt", "postprocess.json"):
        if (out / stale).exists():
            (out / stale).unlink()
            log(f"removed {out / stale} left by an unfinished run")
    ep = cfg.data.s3_endpoint or None
    pp = cfg.plusplus
    k = pp.k or read_manifest(cfg.data.train_manifest, s3_endpoint=ep).num_classes
    if k < 1:
        raise ConfigError(f"{cfg.data.train_manifest}: num_classes is {k}; set plusplus.k")
    x, y, _ = load_arrays(cfg.data.train_manifest, s3_endpoint=ep)
    if cfg.data.max_train > 0:
        x, y = x[: cfg.data.max_train], y[: cfg.data.max_train]
    if k > len(x):
        raise ConfigError(f"plusplus.k = {k} is more than the {len(x)} training images")
    labelled = len(y) > 0 and int(np.min(y)) >= 0  # -1 = unlabelled
    device = "cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"
    log(f"++ post-processing {cfg.checkpoint}: {len(x)} images of {cfg.data.train_manifest}, k {k}, "
        f"device {device}")
    t0 = time.perf_counter()
    model, info = postprocess_plusplus(encoder, x, k, pp, labels=y if labelled else None,
                                       device=device, log=log)
    ck = checkpoint_id(cfg.checkpoint) if cfg.checkpoint else {"path": "", "sha256": ""}
    info.update(source=ck, train_manifest=cfg.data.train_manifest, config=to_dict(cfg))
    atomic_write_text(out / "postprocess.json", json.dumps(info, indent=2) + "\n")
    save_encoder(out / "encoder.pt", model, {"plusplus": True, "k": int(k), "source": ck,
                                             "agreement": (info.get("agreement") or {}).get("best_map_acc")})
    summary = {"status": "finished", "run_name": f"{out.name}", "plusplus": True,
               "mode": "plusplus", "epochs": pp.lp_epochs + pp.aff_epochs,
               "wall_time_s": time.perf_counter() - t0, "encoder": "encoder.pt", "source": ck,
               "use_gpu": device == "cuda"}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    log(f"wrote {out / 'encoder.pt'} (dual-BN, {k}-way head) and {out / 'postprocess.json'}")
    return info
