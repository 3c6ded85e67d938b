"""Training-state checkpoints (no Ray): one ``state.pt`` file in a directory.

A checkpoint holds everything needed to continue a run exactly where it stopped:
model (unwrapped), optimizer (incl. LARS momentum buffers), epoch completed, global step,
RNG states, the resolved config, the current RCS coreset indices, and the metric history.
Ray Train moves the directory to its storage (local or s3://); this module only packs and
unpacks it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
FORMAT = "robust-pretrain-state/v1"


@dataclass
class TrainState:
    epoch: int  # epochs completed (0 = nothing trained yet)
    global_step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    config: dict[str, Any]
    coreset: np.ndarray | None = None  # global indices trained on since the last selection
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics dict per epoch
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if not state:
        return
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(directory: str | os.PathLike, state: TrainState) -> Path:
    """Write ``state`` into ``directory/state.pt`` atomically (temp file + rename)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **state.__dict__}
    if state.coreset is not None:
        payload["coreset"] = np.asarray(state.coreset, dtype=np.int64)
    tmp = d / f".{STATE_FILE}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, d / STATE_FILE)
    return d / STATE_FILE


def load_state(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> TrainState:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {STATE_FILE}")
    # weights_only=False: the payload holds numpy RNG state and python objects we wrote ourselves
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint (format={payload.get('format')!r})")
    payload.pop("format")
    return TrainState(**payload)
