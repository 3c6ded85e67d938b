"""Training-state checkpoints (no Ray): one ``state.pt`` file in a directory.

A checkpoint holds everything needed to continue a run exactly where it stopped:
model (unwrapped), optimizer (incl. LARS momentum buffers), epoch completed, global step,
RNG states, the resolved config, the current RCS coreset indices, and the metric history.
Ray Train moves the directory to its storage (local or s3://); this module only packs and
unpacks it.

The file holds tensors and plain Python types only (dict, list, tuple, str, int, float, bool,
None) and is read with ``torch.load(weights_only=True)``: whoever can write to a run's storage
cannot make a resuming job run code. The numpy RNG state and the coreset are stored as tensors
and turned back into numpy on load; a file that needs anything else is refused
(``CheckpointError``).
"""

from __future__ import annotations

import os
import pickle
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.models.checkpoint import CheckpointError  # one CheckpointError for every checkpoint kind

__all__ = ["CheckpointError", "STATE_FILE", "TrainState", "UnreadableCheckpoint", "capture_rng", "load_state",
           "restore_rng", "save_state"]

STATE_FILE = "state.pt"
FORMAT = "robust-pretrain-state/v2"  # v2: weights_only-safe payload (v1 pickled numpy objects)


class UnreadableCheckpoint(CheckpointError):
    """``state.pt`` is missing, truncated or corrupt (e.g. a copy cut short): an older one may be used."""


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
    """RNG states as tensors / plain types (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss_next": None if gauss is None else float(gauss)},
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if not state:
        return
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays -> Python numbers / tensors, recursively (history rows, extras)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    return obj


def save_state(directory: str | os.PathLike, state: TrainState) -> Path:
    """Write ``state`` into ``directory/state.pt`` atomically (temp file + rename)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **state.__dict__}
    payload["config"] = _plain(state.config)
    payload["history"] = _plain(state.history)
    payload["extra"] = _plain(state.extra)
    if state.coreset is not None:
        payload["coreset"] = torch.from_numpy(np.asarray(state.coreset, dtype=np.int64))
    tmp = d / f".{STATE_FILE}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, d / STATE_FILE)
    return d / STATE_FILE


def load_state(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> TrainState:
    """Read ``directory/state.pt`` with ``weights_only=True``; CheckpointError if refused or unreadable."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise UnreadableCheckpoint(f"checkpoint {directory} has no {STATE_FILE}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        what = re.search(r"Unsupported (global|operand)[^.\n]*", str(e))
        raise CheckpointError(
            f"{path}: refused to load: it holds Python objects other than tensors and plain types "
            f"({what.group(0) if what else 'not weights_only-safe'}): a planted or foreign pickle, or a "
            f"checkpoint older than {FORMAT}") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UnreadableCheckpoint(f"{path}: unreadable checkpoint (truncated or corrupt): {str(e)[:160]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        fmt = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (format={fmt!r})")
    payload.pop("format")
    if payload.get("coreset") is not None:
        payload["coreset"] = payload["coreset"].cpu().numpy().astype(np.int64)
    return TrainState(**payload)
