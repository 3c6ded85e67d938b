"""rcs.method=random: the uniform random-k control (pipeline/coreset/random_k.py)."""

import numpy as np

from pipeline.config import PretrainConfig, load_config
from pipeline.coreset import exact_budget, random_coreset


def test_random_coreset_has_the_exact_budget_and_is_seeded():
    train = np.arange(3, 1003, 2)  # 500 global indices, not 0..N-1
    a = random_coreset(train, 0.2, round_seed=7)
    assert len(a) == exact_budget(500, 0.2) == 100
    assert np.all(np.diff(a) > 0) and np.isin(a, train).all()  # sorted, unique, from the pool
    assert np.array_equal(a, random_coreset(train, 0.2, round_seed=7))
    assert not np.array_equal(a, random_coreset(train, 0.2, round_seed=8))  # a new draw per round
    assert len(random_coreset(train, 0.123, round_seed=0)) == exact_budget(500, 0.123)


def test_rcs_method_is_a_config_choice():
    assert load_config(PretrainConfig, None, []).rcs.method == "greedy"
    assert load_config(PretrainConfig, None, ["--rcs.method=random"]).rcs.method == "random"
