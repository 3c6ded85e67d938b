"""Coreset selection methods as plug-ins: ``rcs.method`` -> a :class:`SelectionMethod`.

Core module (no Ray at import): a method that scores with Ray tasks imports its worker code
inside ``select``. The trainer (``pipeline.train.segments``) builds one :class:`SelectionRequest`
per selection epoch and calls ``SELECTION_METHODS[cfg.rcs.method].select(request)``; it loads
the model from the last checkpoint only for methods that say ``needs_model``. Adding a method =
one ``SelectionMethod`` here (or in its own module, registered below) + tests; it must return
exactly ``exact_budget(len(train_indices), fraction)`` sorted, unique indices from
``train_indices`` (the trainer checks it).

- ``greedy``: RCS (spec §5): head-gradient sketches scored in parallel Ray tasks, greedy gradient
  matching against the RD loss of the validation set, with the theta' step.
- ``greedy_sample``: sample-level RCS (``sample_level.py``): the same, with single samples as the
  candidates (closed-form per-sample head gradients), ``rcs.sample_group`` picks per theta' step.
- ``random``: random-k, the control: a uniform subset of the same size on the same schedule.
Full-data training is ``rcs.enabled=false`` (no selection at all).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from torch import nn

from pipeline.coreset.plan import exact_budget


@dataclass(frozen=True)
class SelectionRequest:
    """Everything one selection may use (a method takes what it needs)."""

    train_indices: np.ndarray  # candidates (global row indices)
    val_indices: np.ndarray  # the held-out validation rows (RD loss)
    fraction: float
    round_seed: int  # selection_seed(train.seed, epoch)
    model: nn.Module | None  # the network of the last checkpoint (needs_model methods only)
    manifest_uri: str
    spec: Any  # pipeline.coreset.select.SelectionSpec of the epoch
    kind: str  # scorer kind: "acl" (contrastive, dual BN) or "sat" (classifier)
    num_tasks: int = 0
    use_gpu: bool = False
    s3_endpoint: str | None = None
    allow_overlap: bool = False  # validation rows may also be candidates (data.holdout=false)
    num_cpus: int = 1  # CPUs (= torch threads) per scoring task (rcs.cpus_per_task)
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per task


@dataclass(frozen=True)
class SelectionMethod:
    name: str
    needs_model: bool
    select: Callable[[SelectionRequest], np.ndarray]


def _greedy(r: SelectionRequest) -> np.ndarray:
    from pipeline.coreset.ray_tasks import select_coreset_ray  # worker layer (Ray tasks)

    res = select_coreset_ray(
        r.model, manifest_uri=r.manifest_uri, train_indices=r.train_indices, val_indices=r.val_indices,
        spec=r.spec, round_seed=r.round_seed, num_tasks=r.num_tasks, use_gpu=r.use_gpu, kind=r.kind,
        s3_endpoint=r.s3_endpoint, allow_overlap=r.allow_overlap, num_cpus=r.num_cpus,
        resources=r.resources,
    )
    return np.asarray(res.indices, dtype=np.int64)


def _greedy_sample(r: SelectionRequest) -> np.ndarray:
    return _greedy(dataclasses.replace(r, spec=dataclasses.replace(r.spec, granularity="sample")))


def _random(r: SelectionRequest) -> np.ndarray:
    from pipeline.coreset.random_k import random_coreset

    return random_coreset(r.train_indices, r.fraction, r.round_seed)


SELECTION_METHODS: dict[str, SelectionMethod] = {
    m.name: m for m in (
        SelectionMethod("greedy", needs_model=True, select=_greedy),
        SelectionMethod("greedy_sample", needs_model=True, select=_greedy_sample),
        SelectionMethod("random", needs_model=False, select=_random),
    )
}


def get_selection_method(name: str) -> SelectionMethod:
    try:
        return SELECTION_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown coreset selection method {name!r}: one of {', '.join(SELECTION_METHODS)}") from None


def checked_selection(method: SelectionMethod, r: SelectionRequest) -> np.ndarray:
    """``method.select(r)``, checked: sorted unique candidates, exactly round(k * N) of them."""
    idx = np.sort(np.asarray(method.select(r), dtype=np.int64).reshape(-1))
    want = exact_budget(len(r.train_indices), r.fraction)
    if len(idx) != want or len(np.unique(idx)) != len(idx) or not np.isin(idx, r.train_indices).all():
        raise RuntimeError(f"coreset method {method.name!r} returned {len(idx)} indices "
                           f"({len(np.unique(idx))} unique) for a budget of {want} candidates")
    return idx
