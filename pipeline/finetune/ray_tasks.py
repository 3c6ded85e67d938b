"""Concurrent fine-tuning modes: one Ray task per mode (worker layer: imports ray).

``--mode ALL`` fine-tunes SLF, ALF and AFF from the same pre-trained encoder with nothing shared
between them, so they can run side by side: each task loads the encoder, runs the in-process
per-epoch code (``pipeline.finetune.modes.finetune``, the ``use_ray=False`` path) on the train
arrays the driver put in the object store once, evaluates the classifier, and returns it with
its results and log lines. Same seeds and same code as the sequential path, so the same
numbers (on CPU with the same number of intra-op threads; on GPUs up to cuDNN's nondeterminism).

Resources per task: ``scaling.cpus_per_worker`` CPUs, with ``scaling.use_gpu`` one GPU, and the custom
resources of ``scaling.resources_per_worker``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
import torch

from pipeline.config import from_dict


def _mode_job(cfg_dict: dict[str, Any], mode: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray,
              yt: np.ndarray, num_classes: int, threads: int) -> dict[str, Any]:
    from pipeline.eval.robust import evaluate_model
    from pipeline.finetune.config import FinetuneConfig
    from pipeline.finetune.driver import load_pretrained
    from pipeline.finetune.modes import finetune

    cfg: FinetuneConfig = from_dict(FinetuneConfig, cfg_dict)
    torch.set_num_threads(max(1, threads))
    device = "cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    lines: list[str] = []
    encoder = load_pretrained(cfg.checkpoint, cfg.model)
    t0 = time.perf_counter()
    model, _ = finetune(encoder, x, y, mode, cfg.mode_config(mode), num_classes=num_classes, seed=cfg.train.seed,
                        device=device, padding=cfg.train.padding, log_every=cfg.train.log_every,
                        max_steps=cfg.train.max_steps_per_epoch, log=lines.append)
    train_s = time.perf_counter() - t0
    res = evaluate_model(model, xt, yt, cfg.eval, mode=mode, device=device, progress=lines.append)
    return {"mode": mode, "model": model.cpu(), "results": res, "train_s": train_s, "lines": lines}


def run_modes_concurrently(cfg: Any, modes: tuple[str, ...], x: np.ndarray, y: np.ndarray, xt: np.ndarray,
                           yt: np.ndarray, num_classes: int) -> list[dict[str, Any]]:
    """One task per mode, all submitted at once; outputs in ``modes`` order."""
    from pipeline.config import to_dict

    cpus = float(cfg.scaling.cpus_per_worker)
    gpus = 1.0 if cfg.scaling.use_gpu else 0.0
    task = ray.remote(_mode_job).options(num_cpus=cpus, num_gpus=gpus, resources=dict(cfg.scaling.resources_per_worker),
                                         max_retries=cfg.scaling.max_failures)
    # [1] the arrays go to the object store once; the three tasks read the same copy
    refs = [ray.put(a) for a in (x, y, xt, yt)]
    cfg_dict = to_dict(cfg)
    # [2] every mode at once: Ray runs them side by side as far as the CPUs / GPUs allow
    futures = [task.remote(cfg_dict, m, *refs, num_classes, max(1, int(cpus))) for m in modes]
    return ray.get(futures)  # [3] in mode order
