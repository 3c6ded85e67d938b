"""Robust fine-tuning (SLF / ALF / AFF, spec §6.1). Core: config + modes (no Ray); the Ray Train
wrapper is pipeline.finetune.loops and the driver pipeline.finetune.driver (import them directly)."""

from __future__ import annotations

from pipeline.finetune.config import (
    MODES,
    AFFConfig,
    ALFConfig,
    FinetuneConfig,
    SLFConfig,
    authors_changes,
    load_finetune_config,
    preset_dict,
)
from pipeline.finetune.modes import build_finetune_model, finalize_for_eval, finetune, run_epoch

__all__ = [
    "MODES", "AFFConfig", "ALFConfig", "FinetuneConfig", "SLFConfig", "authors_changes",
    "build_finetune_model", "finalize_for_eval", "finetune", "load_finetune_config",
    "preset_dict", "run_epoch",
]
