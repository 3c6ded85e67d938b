"""Sample-level vs minibatch RCS at equal k: selection time and selection quality (issue 14).

    python -m jobs.benchmark rcs-granularity                      # demo recipe, seed 1 (~10 min, 2 CPUs)
    python -m jobs.benchmark rcs-granularity --seeds 1 2 3 --threads 2   # measured 29 min
    python -m jobs.benchmark rcs-granularity --smoke-test         # seconds: the plumbing only

In this process, on the CPU, without Ray (``pipeline.train.local`` has no device option, so a
GPU box runs it on its CPUs too). The demo's pre-training recipe
(``jobs/configs/demo.yaml``: ResNet-18 w8, ACL, PGD-2, 20 epochs, RCS warm-up 8 / every 4 /
k = 0.2) runs in-process (``pipeline.train.local``: the Ray worker's step and schedule) on the
generated shapes, once per method, with the same seed, data, hold-out and schedule:

- ``full``: no coreset (the reference);
- ``random``: random-k (``rcs.method: random``);
- ``minibatch``: RCS as released (``rcs.method: greedy``): the greedy over candidate minibatches;
- ``sample``: sample-level RCS (``rcs.method: greedy_sample``): the greedy over single samples
  with closed-form per-sample head gradients, ``--sample-group`` picks per theta' step.

Each selection is one serial round of ``pipeline.coreset.select.select_coreset``, the code the
Ray scoring tasks run. Reported per method: selection wall / CPU seconds over all rounds and q_U
evaluations; pre-training seconds (training + selection); the RD loss (the quantity q_U is the
gradient of: ``ACLScorer.val_loss``, fixed PGD seed) on the held-out validation set at the end
of the warm-up (identical for every method -- checked, it is the parity of this benchmark), after
the first coreset segment, and at the end; SLF clean and PGD-20 (8/255) accuracy on the test
images. The warm-up is recomputed per method (same seed, deterministic) rather than shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import PretrainConfig, atomic_write_text, load_config
from pipeline.coreset.random_k import random_coreset
from pipeline.coreset.select import (
    ACLScorer,
    ArrayFetcher,
    SelectionSpec,
    as_model_input,
    select_coreset,
    selection_epochs,
    selection_seed,
)
from pipeline.data.generate import generate_images
from pipeline.eval.robust import clean_flags, pgd_flags
from pipeline.finetune.config import SLFConfig
from pipeline.finetune.modes import finetune
from pipeline.train.local import pretrain_in_process
from pipeline.train.steps import schedule_values

METHODS = ("full", "random", "minibatch", "sample")
RECIPE = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "demo.yaml"
RD_SEED = 1234  # the PGD start of every RD-loss measurement


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rcs-granularity", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(RECIPE), help="pre-training recipe (YAML)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="recipe overrides, e.g. rcs.fraction=0.1 train.epochs=30")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--per-class", type=int, default=100, help="generated training images per class (10 classes)")
    p.add_argument("--test-per-class", type=int, default=30)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--sample-group", type=int, default=0, help="rcs.sample_group (0 = rcs.batch_size)")
    p.add_argument("--slf-epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--out", default="benchmarks/rcs_granularity.json")
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes: checks the plumbing, learns nothing")
    a = p.parse_args(argv)
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in a.methods if m not in METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    if a.smoke_test:
        a.per_class, a.test_per_class, a.image_size, a.slf_epochs = 12, 4, 16, 1
        a.set = [*a.set, "train.epochs=4", "rcs.warmup_epochs=1", "rcs.interval=1", "rcs.batch_size=8",
                 "rcs.chunk_batches=3", "train.global_batch_size=16", "model.width=4"]
    return a


def _config(a: argparse.Namespace, seed: int) -> PretrainConfig:
    return load_config(PretrainConfig, a.config, [*(f"--{kv}" for kv in a.set), f"--train.seed={seed}",
                                                  f"--rcs.sample_group={a.sample_group}", "--rcs.enabled=true"])


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def run_method(method: str, cfg: PretrainConfig, data: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """Pre-train with ``method``'s coreset schedule, then SLF + PGD-20 -> one result row."""
    rc = cfg.rcs
    sel_epochs = selection_epochs(cfg.train.epochs, rc.warmup_epochs, rc.interval)
    n = len(data["train_labels"])
    fetch = ArrayFetcher(data["train_images"], data["train_labels"], np.arange(n))
    scorer_spec = SelectionSpec.from_config(rc, cfg.attack, cfg.loss)
    row: dict[str, Any] = {"method": method, "seed": cfg.train.seed, "selection_s": 0.0, "selection_cpu_s": 0.0,
                           "q_evals": 0, "n_selections": 0, "rd_warmup": None, "rd_segment1": None}
    current: list[np.ndarray | None] = [None]

    def rd(net: torch.nn.Module) -> float:
        x_val = as_model_input(data["val"], net)
        return ACLScorer(scorer_spec).val_loss(net, x_val, torch.Generator(device=x_val.device).manual_seed(RD_SEED))

    def subset(epoch: int, net: torch.nn.Module) -> np.ndarray | None:
        if epoch not in sel_epochs:
            return current[0]
        if epoch == sel_epochs[0]:
            row["rd_warmup"] = rd(net)
        elif epoch == sel_epochs[1]:
            row["rd_segment1"] = rd(net)
        if method == "full":
            return None
        seed = selection_seed(cfg.train.seed, epoch)
        t0, c0 = time.perf_counter(), time.process_time()
        if method == "random":
            current[0] = random_coreset(np.arange(n), rc.fraction, seed)
        else:
            s, _ = schedule_values(cfg, epoch)
            spec = SelectionSpec.from_config(rc, cfg.attack, cfg.loss, strength=s)
            if method == "sample":
                spec = dataclasses.replace(spec, granularity="sample")
            res = select_coreset(net, fetch_images=fetch, train_indices=np.arange(n), val_images=data["val"],
                                 spec=spec, round_seed=seed)
            row["q_evals"] += res.summary()["n_q_evals"]
            current[0] = res.indices
        row["selection_s"] += time.perf_counter() - t0
        row["selection_cpu_s"] += time.process_time() - c0
        row["n_selections"] += 1
        return current[0]

    t0 = time.perf_counter()
    net, hist = pretrain_in_process(cfg, data["train_nchw"], subset=subset)
    row["pretrain_s"] = time.perf_counter() - t0
    row["train_images"] = int(sum(h["images"] for h in hist))
    row["final_loss"] = float(hist[-1]["loss"])
    row["rd_final"] = rd(net)
    slf = SLFConfig(epochs=a.slf_epochs, batch_size=50, lr=0.1, milestones=(max(1, a.slf_epochs * 3 // 4),))
    clf, _ = finetune(net, data["train_images"], data["train_labels"], "SLF", slf, num_classes=10,
                      seed=cfg.train.seed)
    xt = data["test"].float() / 255
    yt = data["test_labels"]
    row["clean_acc"] = 100 * clean_flags(clf, xt, yt).float().mean().item()
    row["pgd20_acc"] = 100 * pgd_flags(clf, xt, yt, eps=8 / 255, alpha=2 / 255, steps=20,
                                       seed=cfg.train.seed).float().mean().item()
    return row


def _data(a: argparse.Namespace, val_fraction: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    x, y = generate_images(10, a.per_class, rng, a.image_size)
    xt, yt = generate_images(10, a.test_per_class, rng, a.image_size)
    perm = np.random.default_rng([seed, 7]).permutation(len(y))
    n_val = max(1, round(val_fraction * len(y)))
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return {"train_images": x[train], "train_labels": y[train], "train_nchw": _nchw(x[train]),
            "val": _nchw(x[val]), "test": _nchw(xt), "test_labels": torch.from_numpy(yt)}


COLUMNS = [("method", "{}"), ("seed", "{}"), ("selection_s", "{:.1f}"), ("selection_cpu_s", "{:.1f}"),
           ("q_evals", "{}"), ("pretrain_s", "{:.0f}"), ("rd_warmup", "{:.4f}"), ("rd_segment1", "{:.4f}"),
           ("rd_final", "{:.4f}"), ("clean_acc", "{:.1f}"), ("pgd20_acc", "{:.1f}")]


def table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r.get(c) is None else f.format(r[c]) for c, f in COLUMNS) + " |")
    return "\n".join(lines)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per method (``seed`` = number of seeds)."""
    out = []
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == m]
        agg: dict[str, Any] = {"method": m, "seed": f"{len(rs)} seeds"}
        for c, _ in COLUMNS[2:]:
            vals = [r[c] for r in rs if r.get(c) is not None]
            agg[c] = float(np.mean(vals)) if vals else None
        agg["q_evals"] = int(round(agg["q_evals"])) if agg["q_evals"] is not None else None
        out.append(agg)
    return out


def main(argv: list[str] | None = None) -> dict:
    a = _parse(list(sys.argv[1:] if argv is None else argv))
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg0 = _config(a, a.seeds[0])
    rec: dict[str, Any] = {"benchmark": "rcs-granularity", "settings": {k: v for k, v in vars(a).items()},
                           "recipe": {"rcs": dataclasses.asdict(cfg0.rcs), "epochs": cfg0.train.epochs,
                                      "batch": cfg0.train.global_batch_size},
                           "torch": torch.__version__, "cpu_count": os.cpu_count(), "rows": []}
    for seed in a.seeds:
        cfg = _config(a, seed)
        data = _data(a, cfg.data.val_fraction, seed)
        rec["data"] = {"n_train": len(data["train_labels"]), "n_val": len(data["val"]), "n_test": len(data["test"])}
        for m in a.methods:
            print(f"[rcs-granularity] seed {seed}: {m} ...", flush=True)
            row = run_method(m, cfg, data, a)
            rec["rows"].append(row)
            print(table([row]).splitlines()[-1], flush=True)
    rec["summary"] = summarize(rec["rows"])
    # Parity: the warm-up is the same run for every method, so its RD loss must agree exactly.
    warm = {}
    for r in rec["rows"]:
        warm.setdefault(r["seed"], []).append(r["rd_warmup"])
    spread = max(((max(v) - min(v)) for v in warm.values() if None not in v), default=0.0)
    rec["parity"] = {"ok": bool(spread <= 1e-6), "warmup_rd_spread": spread}
    print(table(rec["rows"]))
    if len(a.seeds) > 1:
        print(table(rec["summary"]))
    print(f"warm-up RD loss identical across methods: {rec['parity']['ok']} (spread {spread:.2e})")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(a.out, json.dumps(rec, indent=2, default=str))
        print(f"wrote {a.out}")
    return rec


if __name__ == "__main__":
    main()
