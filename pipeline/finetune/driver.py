"""Fine-tuning / evaluation drivers: data split, one TorchTrainer per mode, evaluation, outputs.

    run_finetune(cfg, out_dir)   SLF / ALF / AFF (or ALL) from one pre-trained checkpoint
    run_evaluate(...)            evaluate one checkpoint (no training)

Modes run one after the other, each from the same pre-trained checkpoint and with its own
config section (no state shared between them); with Ray, ``--mode ALL`` and at most one worker per
mode (``train.concurrent_modes``), they run side by side as Ray tasks
(``pipeline.finetune.ray_tasks``), with the same numbers as ``use_ray=False``. ``use_ray=False`` runs the same per-epoch
function in this process (``pipeline.finetune.modes.finetune``), e.g. on a GPU box without Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from pipeline.config import ModelConfig, atomic_write_text, to_dict
from pipeline.data.storage import OutputDir
from pipeline.eval.outputs import checkpoint_id, summary_lines, write_all
from pipeline.eval.robust import EvalConfig, evaluate_model
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.loops import finetune_loop_per_worker
from pipeline.finetune.modes import finetune
from pipeline.models import save_encoder
from pipeline.train.segments import ensure_ray  # one way to find / start Ray for every job

Log = Callable[[str], None]


def load_pretrained(path: str, model_cfg: ModelConfig) -> torch.nn.Module:
    """Our export format (load_encoder) or the authors' file (load_authors_checkpoint), detected.

    Authors' files carry no architecture: ``model_cfg`` describes it. Their projection head is
    ignored (fine-tuning discards it, spec §1.4).
    """
    from pipeline.data.storage import local_copy
    from pipeline.models import CheckpointError, build_from_config, load_authors_checkpoint, load_encoder

    local = local_copy(path)  # s3://.../encoder.pt is fetched once per call, and removed after
    try:
        try:
            model, _ = load_encoder(local)
            return model.eval()
        except CheckpointError:
            model = build_from_config(model_cfg, head="none")
            load_authors_checkpoint(local, model, skip_head=True)
            return model.eval()
    finally:
        if local != path:
            Path(local).unlink(missing_ok=True)


def split_data(cfg: FinetuneConfig, log: Log = print) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, int]:
    """(train indices or None = all, test images, test labels, num_classes).

    Without a test manifest the train manifest is split deterministically by index
    (split_by_index, cfg.data.test_fraction, cfg.data.split_seed) and a line says so.
    """
    from pipeline.data.shards import load_arrays, read_manifest, split_by_index
    from pipeline.data.storage import DataError

    ep = cfg.data.s3_endpoint or None
    if cfg.data.test_manifest:
        train_idx = None
        xt, yt, _ = load_arrays(cfg.data.test_manifest, s3_endpoint=ep)
    else:
        train_idx, test_idx = split_by_index(cfg.data.train_manifest, cfg.data.test_fraction,
                                             seed=cfg.data.split_seed)
        log(f"no test manifest: split {cfg.data.train_manifest} by index into {len(train_idx)} train / "
            f"{len(test_idx)} test (test_fraction {cfg.data.test_fraction}, seed {cfg.data.split_seed})")
        xt, yt, _ = load_arrays(cfg.data.train_manifest, indices=test_idx, s3_endpoint=ep)
    # num_classes: the manifest holds it (no whole-training-set load just to learn it)
    n_cls = cfg.data.num_classes or read_manifest(cfg.data.train_manifest, s3_endpoint=ep).num_classes
    if n_cls < 1 or (len(yt) and int(yt.max()) >= n_cls):
        raise DataError(f"{cfg.data.train_manifest}: num_classes {n_cls} does not cover the labels "
                        f"(test labels up to {int(yt.max()) if len(yt) else -1}); set data.num_classes")
    return train_idx, xt, yt, n_cls


def _fit_mode(cfg: FinetuneConfig, mode: str, train_idx: np.ndarray | None, num_classes: int,
              storage: str) -> torch.nn.Module:
    from pipeline.models import load_encoder

    w = cfg.scaling.num_workers
    scaling = ray.train.ScalingConfig(
        num_workers=w, use_gpu=cfg.scaling.use_gpu,
        resources_per_worker=None if w == 0 else cfg.scaling.worker_resources())
    trainer = TorchTrainer(
        finetune_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "mode": mode, "num_classes": num_classes,
                           "local_mode": w == 0,
                           "train_indices": None if train_idx is None else train_idx.tolist()},
        scaling_config=scaling,
        run_config=ray.train.RunConfig(
            name=f"{cfg.run_name()}-{mode.lower()}-{int(time.time() * 1000)}", storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{mode}: the training run returned no checkpoint ({result.error})")
    with result.checkpoint.as_directory() as d:
        model, _ = load_encoder(Path(d) / "classifier.pt")
    if w == 0 and "finetune-ckpt-" in result.checkpoint.path:
        shutil.rmtree(result.checkpoint.path, ignore_errors=True)  # local mode left it in /tmp
    return model.eval()


def _eval_hooks(ecfg: EvalConfig, use_ray: bool) -> dict[str, Any]:
    if not use_ray or ecfg.num_tasks <= 0:
        return {}
    from pipeline.eval.ray_tasks import corruptions_distributed, evaluate_distributed

    return {"flags_fn": evaluate_distributed, "corruption_fn": corruptions_distributed}


def _config_section(cfg: Any) -> dict:
    return to_dict(cfg)


def run_finetune(cfg: FinetuneConfig, out_dir: str | Path, *, use_ray: bool = True,
                 log: Log = print) -> list[dict[str, Any]]:
    """Fine-tune every mode of cfg.mode, evaluate each, write results.json / log.txt / results.md.

    ``out_dir`` is a local folder or an ``s3://`` prefix (written through a local staging folder,
    uploaded after every mode and at the end). Returns the list of per-mode results dicts
    (pipeline.eval.outputs format).
    """
    with OutputDir(str(out_dir), s3_endpoint=cfg.data.s3_endpoint or None) as od:
        return _run_finetune(cfg, od, use_ray=use_ray, log=log)


def _run_finetune(cfg: FinetuneConfig, od: OutputDir, *, use_ray: bool, log: Log) -> list[dict[str, Any]]:
    out = od.path
    atomic_write_text(out / "params.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        log(line)
        atomic_write_text(out / "progress.log", "\n".join(lines) + "\n")

    device = "cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    train_idx, xt, yt, n_cls = split_data(cfg, say)
    ck = checkpoint_id(cfg.checkpoint)
    say(f"Finetuning checkpoint: {cfg.checkpoint} (sha256 {ck['sha256']})")
    if use_ray:
        ensure_ray(cfg.run.ray_address)
    results: list[dict[str, Any]] = []
    if use_ray and len(cfg.modes()) > 1 and cfg.train.concurrent_modes and cfg.scaling.num_workers <= 1:
        _run_concurrent(cfg, od, train_idx, xt, yt, n_cls, ck, say, results)
        return results
    encoder = None if use_ray else load_pretrained(cfg.checkpoint, cfg.model)
    for mode in cfg.modes():
        mcfg = cfg.mode_config(mode)
        say(f"{mode}: {json.dumps(to_dict(mcfg))}")
        t0 = time.perf_counter()
        if use_ray:
            storage = cfg.run.storage_path if "://" in cfg.run.storage_path else os.path.abspath(
                cfg.run.storage_path)
            model = _fit_mode(cfg, mode, train_idx, n_cls, storage)
        else:
            from pipeline.finetune.loops import load_train_arrays

            x, y = load_train_arrays(cfg, None if train_idx is None else train_idx.tolist())
            model, _ = finetune(encoder, x, y, mode, mcfg, num_classes=n_cls, seed=cfg.train.seed,
                                device=device, padding=cfg.train.padding, log_every=cfg.train.log_every,
                                max_steps=cfg.train.max_steps_per_epoch, log=say)
        train_s = time.perf_counter() - t0
        # keep the fine-tuned classifier: `jobs.evaluate --checkpoint <out>/<MODE>.pt` scores it later
        save_encoder(out / f"{mode}.pt", model, {"mode": mode, "pretrained": cfg.checkpoint,
                                                  "num_classes": n_cls})
        say(f"{mode}: classifier saved to {od.show(f'{mode}.pt')}")
        res = evaluate_model(model, xt, yt, cfg.eval, mode=mode, device=device, progress=say,
                             **_eval_hooks(cfg.eval, use_ray))
        res.update(checkpoint=ck, config={"mode": _config_section(mcfg), "eval": _config_section(cfg.eval)},
                   mode_train_seconds=train_s)
        res["times"]["train"] = train_s
        results.append(res)
        for ln in summary_lines(mode, res):
            say(ln)
        write_all(out, cfg.checkpoint, results)  # after every mode: partial results survive
        od.sync()
    return results


def _run_concurrent(cfg: FinetuneConfig, od: OutputDir, train_idx: np.ndarray | None, xt: np.ndarray, yt: np.ndarray,
                    n_cls: int, ck: dict[str, Any], say: Log, results: list[dict[str, Any]]) -> None:
    """Every mode as a concurrent Ray task; outputs written in mode order as the sequential path does."""
    from pipeline.finetune.loops import load_train_arrays
    from pipeline.finetune.ray_tasks import run_modes_concurrently

    out, modes = od.path, cfg.modes()
    for mode in modes:
        say(f"{mode}: {json.dumps(to_dict(cfg.mode_config(mode)))}")
    x, y = load_train_arrays(cfg, None if train_idx is None else train_idx.tolist())
    say(f"running {', '.join(modes)} as {len(modes)} concurrent Ray tasks "
        f"({cfg.scaling.cpus_per_worker} CPU{', 1 GPU' if cfg.scaling.use_gpu else ''} each)")
    t0 = time.perf_counter()
    outs = run_modes_concurrently(cfg, modes, x, y, xt, yt, n_cls)
    say(f"all modes done in {time.perf_counter() - t0:.1f} s (wall)")
    for o in outs:
        mode, model, res = o["mode"], o["model"], o["results"]
        for ln in o["lines"]:
            say(ln)
        save_encoder(out / f"{mode}.pt", model, {"mode": mode, "pretrained": cfg.checkpoint, "num_classes": n_cls})
        say(f"{mode}: classifier saved to {od.show(f'{mode}.pt')}")
        res.update(checkpoint=ck, config={"mode": _config_section(cfg.mode_config(mode)),
                                          "eval": _config_section(cfg.eval)}, mode_train_seconds=o["train_s"])
        res["times"]["train"] = o["train_s"]
        results.append(res)
        for ln in summary_lines(mode, res):
            say(ln)
    write_all(out, cfg.checkpoint, results)


def run_evaluate(checkpoint: str, images: np.ndarray, labels: np.ndarray, ecfg: EvalConfig,
                 out_dir: str | Path, *, model_cfg: ModelConfig | None = None, bn_name: str = "pgd",
                 use_ray: bool = True, log: Log = print) -> dict[str, Any]:
    """Evaluate one checkpoint (a fine-tuned classifier in our export format, or any
    classifier checkpoint load_pretrained understands) and write the outputs (to a local folder
    or an ``s3://`` prefix)."""
    from pipeline.eval.robust import with_branch

    model = load_pretrained(checkpoint, model_cfg or ModelConfig())
    model = with_branch(model, bn_name)
    device = "cuda" if ecfg.use_gpu and torch.cuda.is_available() else "cpu"
    if use_ray and ecfg.num_tasks > 0:
        ensure_ray()
    res = evaluate_model(model, images, labels, ecfg, mode="EVAL", device=device, progress=log,
                         **_eval_hooks(ecfg, use_ray))
    res.update(checkpoint=checkpoint_id(checkpoint), config={"eval": to_dict(ecfg)})
    for ln in summary_lines("EVAL", res):
        log(ln)
    with OutputDir(str(out_dir)) as od:
        write_all(od.path, checkpoint, [res], header="Evaluated")
    return res
