"""Random-k: the control for RCS. A uniform random subset of exactly ``exact_budget(N, k)``
training indices, drawn with the round's seed, on the same schedule as the greedy selection
(``rcs.method: random``). Core module: no Ray, no model: it costs nothing to select.
"""

from __future__ import annotations

import numpy as np

from pipeline.coreset.plan import exact_budget


def random_coreset(train_indices: np.ndarray, fraction: float, round_seed: int) -> np.ndarray:
    """Sorted, unique subset of ``train_indices`` of size round(fraction * N) (half-up)."""
    train_indices = np.asarray(train_indices, dtype=np.int64).reshape(-1)
    k = exact_budget(len(train_indices), fraction)
    rng = np.random.default_rng([int(round_seed), 0x52414E44])  # "RAND": its own stream
    return np.sort(rng.choice(train_indices, size=k, replace=False))
