"""Short-budget recipe search on the generated shapes data (docs/short_budget_search.md).

    python -m benchmarks.short_budget_search --mode acl --epochs 10 -o optim.name=adam -o optim.lr=1e-3

Pre-trains in-process (pipeline.train.local, no Ray), then probes with SLF (standardised linear
probe, finetune_demo settings) and reports clean and PGD-20 accuracy at 8/255 on a held-out
generated test set, plus the same numbers for the randomly initialised encoder (``--random``).
One JSON line per run goes to stdout (and to --log if given), so a search is a shell loop.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from pipeline.config import PretrainConfig, load_config
from pipeline.data.generate import generate_images
from pipeline.eval.robust import clean_flags, pgd_flags
from pipeline.finetune.config import SLFConfig
from pipeline.finetune.modes import finetune
from pipeline.train.local import pretrain_in_process
from pipeline.train.steps import build_pretrain_model


def make_data(per_class: int, test_per_class: int, seed: int = 0, size: int = 32):
    rng = np.random.default_rng(seed)
    xtr, ytr = generate_images(10, per_class, rng, size)
    xte, yte = generate_images(10, test_per_class, rng, size)
    nchw = lambda a: torch.as_tensor(a).permute(0, 3, 1, 2).contiguous()
    return nchw(xtr), torch.as_tensor(ytr), nchw(xte), torch.as_tensor(yte)


def probe(net, xtr, ytr, xte, yte, *, epochs: int = 10, eps=(8 / 255,), seed: int = 1,
          n_attack: int = 200) -> dict[str, float]:
    """SLF-probe ``net`` and return clean / PGD-20 accuracies (%) on the test arrays."""
    cfg = SLFConfig(epochs=epochs, batch_size=64, lr=0.1, milestones=(int(epochs * 0.7),))
    clf, hist = finetune(net, xtr, ytr, "SLF", cfg, num_classes=10, seed=seed)
    xf = xte.float() / 255
    out = {"slf_loss": hist[-1]["loss"], "clean": 100 * clean_flags(clf, xf, yte).float().mean().item()}
    for e in eps:
        f = pgd_flags(clf, xf[:n_attack], yte[:n_attack], eps=e, alpha=e / 4, steps=20, seed=seed)
        out[f"pgd20@{round(e * 255)}"] = 100 * f.float().mean().item()
    return out


def _schedule(cfg, x, train_idx, val_idx):
    """subset(epoch, net) for the RCS schedule of cfg.rcs (greedy or random), else all of train_idx."""
    from pipeline.coreset import SelectionSpec, is_selection_epoch, random_coreset, select_coreset, selection_seed

    spent = [0.0]
    state = {"idx": train_idx}
    if not cfg.rcs.enabled:
        return (lambda epoch, net: train_idx), spent

    def subset(epoch, net):
        e0 = epoch - 1  # 0-based, as is_selection_epoch
        if e0 < cfg.rcs.warmup_epochs:
            return train_idx
        if is_selection_epoch(e0, cfg.rcs.warmup_epochs, cfg.rcs.interval):
            t0 = time.perf_counter()
            seed = selection_seed(cfg.train.seed, epoch)
            if cfg.rcs.method == "random":
                state["idx"] = random_coreset(train_idx, cfg.rcs.fraction, seed)
            else:
                s = cfg.loss.aug_strength
                spec = SelectionSpec.from_config(cfg.rcs, cfg.attack, cfg.loss, strength=s)
                res = select_coreset(net, fetch_images=lambda i: x[torch.as_tensor(i)], train_indices=train_idx,
                                     val_images=x[torch.as_tensor(val_idx)], spec=spec, round_seed=seed)
                state["idx"] = np.asarray(res.indices)
            spent[0] += time.perf_counter() - t0
        return state["idx"]

    return subset, spent


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=None)
    p.add_argument("-o", "--override", action="append", default=[])
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=30)
    p.add_argument("--size", type=int, default=32, help="image size (px)")
    p.add_argument("--probe-epochs", type=int, default=10)
    p.add_argument("--random", action="store_true", help="also probe the random encoder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log", default="")
    p.add_argument("--tag", default="")
    p.add_argument("--save", default="", help="write the pre-trained state dict here")
    p.add_argument("--holdout", type=float, default=0.0,
                   help="hold out this fraction of the training images (RCS validation) in every run")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = load_config(PretrainConfig, a.config, list(a.override))
    xtr, ytr, xte, yte = make_data(a.per_class, a.test_per_class, size=a.size)
    rows = []
    if a.random:
        torch.manual_seed(cfg.train.seed)
        rows.append({"run": "random", **probe(build_pretrain_model(cfg).eval(), xtr, ytr, xte, yte, epochs=a.probe_epochs)})
    t0 = time.perf_counter()
    pool = np.arange(len(xtr))
    n_val = int(round(a.holdout * len(xtr))) if (a.holdout or cfg.rcs.enabled) else 0
    if cfg.rcs.enabled and n_val == 0:
        n_val = max(1, int(round(cfg.data.val_fraction * len(xtr))))
    train_idx, val_idx = pool[n_val:], pool[:n_val]  # generated order is already shuffled
    subset, sel_s = _schedule(cfg, xtr, train_idx, val_idx)
    net, hist = pretrain_in_process(cfg, xtr, subset=subset, log=lambda s: print(s, flush=True))
    t_pre = time.perf_counter() - t0
    if a.save:
        torch.save(net.state_dict(), a.save)
    rows.append({"run": a.tag or cfg.loss.mode, "overrides": a.override, "pretrain_s": round(t_pre, 1),
                 "selection_s": round(sel_s[0], 1), "train_images_seen": int(sum(h["images"] for h in hist)),
                 "loss_first": round(hist[0]["loss"], 3), "loss_last": round(hist[-1]["loss"], 3),
                 **probe(net, xtr, ytr, xte, yte, epochs=a.probe_epochs)})
    for r in rows:
        line = json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()})
        print(line, flush=True)
        if a.log:
            with open(a.log, "a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
