"""Coreset selection methods as plug-ins (pipeline/coreset/methods.py): the registry, the budget
check every method's answer goes through, and the config check."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ConfigError, PretrainConfig, load_config
from pipeline.coreset.methods import (
    SELECTION_METHODS,
    SelectionMethod,
    SelectionRequest,
    get_selection_method,
    checked_selection,
)


def _req(n: int = 50, fraction: float = 0.2) -> SelectionRequest:
    return SelectionRequest(train_indices=np.arange(100, 100 + n), val_indices=np.arange(10), fraction=fraction,
                            round_seed=7, model=None, manifest_uri="", spec=None, kind="acl")


def test_registry_and_which_methods_need_the_model():
    assert {m: SELECTION_METHODS[m].needs_model for m in SELECTION_METHODS} == {"greedy": True, "greedy_sample": True, "random": False}
    with pytest.raises(ValueError, match="unknown coreset selection method 'craig': one of greedy, greedy_sample, random"):
        get_selection_method("craig")


def test_random_k_through_the_registry_is_exact_and_seeded():
    m = get_selection_method("random")
    a, b = checked_selection(m, _req()), checked_selection(m, _req())
    assert len(a) == 10 and np.array_equal(a, b)  # round(0.2 * 50), same seed -> same subset
    assert np.all(np.diff(a) > 0) and a.min() >= 100 and a.max() < 150
    assert len(checked_selection(m, _req(n=7, fraction=0.5))) == 4  # round half up: 3.5 -> 4


@pytest.mark.parametrize("answer, why", [
    (lambda r: r.train_indices[:9], "returned 9 indices"),  # one short of round(0.2 * 50)
    (lambda r: np.r_[r.train_indices[:9], r.train_indices[0]], r"\(9 unique\)"),  # a duplicate
    (lambda r: np.r_[r.train_indices[:9], 3], "returned 10 indices"),  # a validation row
])
def test_a_method_answer_off_budget_or_off_candidates_is_refused(answer, why):
    bad = SelectionMethod("bad", needs_model=False, select=answer)
    with pytest.raises(RuntimeError, match=why):
        checked_selection(bad, _req())


def test_unknown_rcs_method_in_config_is_named():
    with pytest.raises(ConfigError, match=r"rcs.method: 'craig' is not a coreset selection method; one of \['greedy', 'greedy_sample', 'random'\]"):
        load_config(PretrainConfig, None, ["--rcs.method=craig"])
