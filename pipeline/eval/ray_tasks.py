"""Distributed evaluation: test-set chunks and corruption sets as Ray tasks (worker code).

The model (CPU copy) and the test arrays are put in the object store once; each task gets the
references plus its chunk bounds, evaluates with the same core function as a single process
(:func:`pipeline.eval.robust.evaluate_flags`), and returns per-example flags. Chunks are whole
seeding units (:func:`pipeline.eval.robust.chunk_bounds`), so the merged flags equal a
single-process run exactly.

Plain functions (``evaluate_chunk``, ``corruption_chunk``) do the work; ``*_task`` are their
``ray.remote`` wrappers, so the plain functions stay testable without Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import ray
import torch
from torch import nn

from pipeline.config import from_dict
from pipeline.eval.robust import EvalConfig, chunk_bounds, evaluate_flags, to_float


def _device(use_gpu: bool) -> str:
    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


def _cfg_dict(cfg: EvalConfig) -> dict:
    d = asdict(cfg)
    d["pgd"] = dict(d["pgd"])
    return d


def evaluate_chunk(model: nn.Module, images: np.ndarray, labels: np.ndarray, start: int, end: int,
                   cfg: dict, use_gpu: bool = False) -> dict[str, np.ndarray]:
    """Flags for examples [start, end) (start is a multiple of cfg['batch_size'])."""
    torch.set_num_threads(1)  # tasks share the CPUs (stack-feasibility G14)
    c = from_dict(EvalConfig, cfg)
    return evaluate_flags(model, images[start:end], labels[start:end], c, offset=start,
                          device=_device(use_gpu))


def corruption_chunk(model: nn.Module, images: np.ndarray | None, labels: np.ndarray | None,
                     corruption: str, severity: int, cfg: dict, use_gpu: bool = False) -> float:
    """Clean accuracy on one (corruption, severity) set, generated here or read from files."""
    from pipeline.eval.corruptions import corruption_sets
    from pipeline.eval.robust import clean_flags

    torch.set_num_threads(1)
    c = from_dict(EvalConfig, cfg)
    dev = _device(use_gpu)
    model = model.to(dev).eval()
    ((_, _, xc, yc),) = list(corruption_sets(
        c.corruptions, images=images, labels=labels, corruptions=(corruption,),
        severities=(severity,), n_examples=c.corruption_examples, seed=c.seed))
    ok = clean_flags(model, to_float(xc, dev), torch.as_tensor(yc, device=dev), batch_size=c.batch_size)
    return float(ok.float().mean().item())


# [1] Ray task wrappers: the plain functions above, scheduled with one GPU each when asked.
evaluate_chunk_task = ray.remote(evaluate_chunk)
corruption_chunk_task = ray.remote(corruption_chunk)


def _opts(use_gpu: bool) -> dict:
    return {"num_gpus": 1, "num_cpus": 1} if use_gpu else {"num_cpus": 1}


def evaluate_distributed(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    cfg: EvalConfig,
    *,
    num_tasks: int | None = None,
    use_gpu: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """Per-example flags of every attack, computed by ``num_tasks`` Ray tasks and merged.

    Same signature as the ``flags_fn`` hook of :func:`pipeline.eval.robust.evaluate_model`.
    """
    n_tasks = num_tasks if num_tasks is not None else max(1, cfg.num_tasks)
    gpu = cfg.use_gpu if use_gpu is None else use_gpu
    bounds = chunk_bounds(len(labels), n_tasks, cfg.batch_size)
    # [2] one object-store copy of the weights and the data, shared by every task
    model_ref = ray.put(model.cpu().eval())
    x_ref, y_ref = ray.put(np.ascontiguousarray(images)), ray.put(np.asarray(labels))
    cfg_d = _cfg_dict(cfg)
    refs = [evaluate_chunk_task.options(**_opts(gpu)).remote(model_ref, x_ref, y_ref, a, b, cfg_d, gpu)
            for a, b in bounds]
    # [3] gather in chunk order (ray.get keeps the order of refs) and concatenate
    parts = []
    for (a, b), ref in zip(bounds, refs):
        parts.append(ray.get(ref))
        if progress is not None:
            progress(f"chunk [{a}, {b}) done: " + ", ".join(
                f"{k} {100 * v.mean():.2f}%" for k, v in parts[-1].items()))
    return {k: np.concatenate([p[k] for p in parts]) for k in cfg.attacks}


def corruptions_distributed(
    model: nn.Module,
    cfg: EvalConfig,
    images: np.ndarray | None,
    labels: np.ndarray | None,
    *,
    device: object = None,  # unused: tasks pick their device (signature of corruption_fn)
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[int, float]]:
    """{corruption: {severity: acc}}: one Ray task per (corruption, severity) set."""
    from pipeline.eval.corruptions import CORRUPTIONS, source_kind

    tag = " [generated]" if source_kind(cfg.corruptions) == "generated" else ""
    model_ref = ray.put(model.cpu().eval())
    x_ref = ray.put(images) if cfg.corruptions == "generated" else None
    y_ref = ray.put(labels) if cfg.corruptions == "generated" else None
    cfg_d = _cfg_dict(cfg)
    jobs = [(c, s) for c in (cfg.corruption_names or CORRUPTIONS) for s in cfg.severities]
    refs = [corruption_chunk_task.options(**_opts(cfg.use_gpu)).remote(
        model_ref, x_ref, y_ref, c, s, cfg_d, cfg.use_gpu) for c, s in jobs]
    out: dict[str, dict[int, float]] = {}
    for (c, s), ref in zip(jobs, refs):
        out.setdefault(c, {})[s] = ray.get(ref)
        if progress is not None:
            progress(f"{c}-{s}, Acc: {out[c][s]:.4f}{tag}")
    return out
