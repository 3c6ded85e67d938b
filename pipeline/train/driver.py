"""Pre-training driver: a segmented run (``pipeline.train.segments``) of the pre-training loop.

    warm-up epochs on the full training set ........ one TorchTrainer.fit()
    for every selection epoch e (W+1, W+1+I, ...):
        RCS selection at the current weights ........ parallel Ray tasks, merged here
        epochs e .. e+I-1 on the coreset ............ one TorchTrainer.fit() (same run name)
    export encoder.pt, summary.json

See ``segments.py`` for resume, fault tolerance and the on-disk layout.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import PretrainConfig
from pipeline.train.loops import build_pretrain_model, pretrain_loop_per_worker, schedule_values
from pipeline.train.segments import (
    RunFinishedError,
    RunResult,
    RunSpec,
    SegmentedRun,
    TrainingFailed,
    ensure_ray,
    selection_epochs,
)

PretrainResult = RunResult

__all__ = ["PretrainResult", "RunFinishedError", "TrainingFailed", "ensure_ray", "run_pretrain",
           "selection_epochs", "pretrain_spec"]


def pretrain_spec(cfg: PretrainConfig) -> RunSpec:
    def selection_spec(epoch: int) -> Any:
        from pipeline.coreset import SelectionSpec

        s, _ = schedule_values(cfg, epoch)  # candidates use the epoch's DynAug strength
        return SelectionSpec.from_config(cfg.rcs, cfg.attack, cfg.loss, strength=s)

    return RunSpec(
        tag="pretrain", mode=cfg.loss.mode, loop=pretrain_loop_per_worker,
        build_model=lambda manifest: build_pretrain_model(cfg),
        selection_kind="acl", selection_spec=selection_spec,
    )


def run_pretrain(cfg: PretrainConfig, *, stop_after: int | None = None,
                 callbacks: list[Any] | None = None) -> PretrainResult | None:
    """Train (or continue) the run described by ``cfg``; returns where the artefacts are.

    ``stop_after=k`` returns None once epoch k is checkpointed (the run can be continued by calling
    again with the same config): used to test resumption, and handy to train in slices.
    ``callbacks`` go to every fit's ``ray.train.RunConfig`` (a Tune sweep passes
    ``TuneReportCallback()`` so per-epoch metrics reach Tune).
    """
    return SegmentedRun(cfg, pretrain_spec(cfg)).run(stop_after=stop_after, callbacks=callbacks)
