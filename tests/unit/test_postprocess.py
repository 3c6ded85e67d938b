"""DynACL-AIR++ post-processing (pipeline/finetune/postprocess.py, jobs.postprocess): k-means
golden cases derived by hand, pseudo-label agreement, the ++ encoder's format, config errors,
and the outputs' atomicity."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.finetune.postprocess import (
    PlusPlusConfig,
    PostprocessConfig,
    cluster_agreement,
    kmeans,
    postprocess_plusplus,
    pseudo_labels,
)
from pipeline.models import build_model, load_encoder, save_encoder

TINY = dict(arch="resnet18", width=4, bn_names=("normal", "pgd"))
FAST = PlusPlusConfig(lp_epochs=1, lp_batch_size=12, aff_epochs=1, aff_batch_size=12,
                      aff_milestones=(), attack=PlusPlusConfig().attack.__class__(steps=1))


def _encoder():
    torch.manual_seed(0)
    return build_model(**TINY, head="proj2").eval()


def _toy(n: int = 24, classes: int = 3, seed: int = 0):
    """uint8 (n, 16, 16, 3) images whose brightness is set by the class (easy to cluster)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = np.clip(40 + 80 * y[:, None, None, None] + rng.normal(0, 6, (n, 16, 16, 3)), 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


def _manifest(tmp_path, n: int = 24):
    from pipeline.data.shards import write_dataset

    x, y = _toy(n)
    dest = str(tmp_path / "ds")
    write_dataset([(x, y)], dest, dataset="toy", split="train", image_shape=(16, 16, 3), num_classes=3)
    return dest


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# k-means: golden values
# ---------------------------------------------------------------------------------------------


def test_kmeans_two_separated_clusters_and_a_local_minimum():
    # {(0,0),(0,2)} and {(10,0),(10,2)}: started one centroid in each, the centroids are (0,1) and
    # (10,1), every point at distance 1 (inertia 4)
    x = _t([[0, 0], [10, 0], [0, 2], [10, 2]])
    info: dict = {}
    labels, c = kmeans(x, 2, init=_t([[0, 0], [10, 2]]), info=info)
    assert labels.tolist() == [0, 1, 0, 1] and c.tolist() == [[0, 1], [10, 1]]
    assert info["converged"] and info["inertia"] == pytest.approx(4.0) and info["iterations"] == 2
    # started both in the left pair, Lloyd stops in the horizontal split: (5,0) and (5,2), every
    # point at distance 5 (inertia 100) - the local minimum a random start can reach
    labels, c = kmeans(x, 2, init=_t([[0, 0], [0, 2]]), info=info)
    assert labels.tolist() == [0, 0, 1, 1] and c.tolist() == [[5, 0], [5, 2]]
    assert info["inertia"] == pytest.approx(100.0)
    # seeded starts end in one of these two fixed points
    for init in ("random", "k-means++"):
        for seed in range(4):
            labels, c = kmeans(x, 2, seed=seed, init=init, info=info)
            assert info["converged"] and info["inertia"] in (pytest.approx(4.0), pytest.approx(100.0))


def test_kmeans_k1_is_the_mean():
    x = _t([[0, 0], [2, 0], [4, 3]])
    info: dict = {}
    labels, c = kmeans(x, 1, info=info)
    assert labels.tolist() == [0, 0, 0]
    assert torch.allclose(c, _t([[2, 1]]))
    assert info["inertia"] == pytest.approx(5 + 1 + 8)  # (4+1) + (0+1) + (4+4)


def test_kmeans_tie_goes_to_the_lowest_index():
    # point 1 is equidistant from 0 and 2: it joins cluster 0, whose centroid then moves to it
    x = _t([[0], [1], [2]])
    labels, c = kmeans(x, 2, init=_t([[0], [2]]))
    assert labels.tolist() == [0, 0, 1] and c.flatten().tolist() == [0.5, 2.0]
    labels, c = kmeans(x, 2, init=_t([[2], [0]]))
    assert labels.tolist() == [1, 0, 0] and c.flatten().tolist() == [1.5, 0.0]


def test_kmeans_empty_cluster_moves_to_the_farthest_point():
    # iteration 1: all points join centroid 0 -> mean 1.5; cluster 1 empty -> the point farthest
    # from its centroid (3, at squared distance 9) -> centroids 1.5, 3; then {0,1,2} -> 1, {3} -> 3;
    # then 2 is tied between 1 and 3 and stays in cluster 0: converged at (1, 3)
    x = _t([[0], [1], [2], [3]])
    info: dict = {}
    labels, c = kmeans(x, 2, init=_t([[0], [100]]), info=info)
    assert labels.tolist() == [0, 0, 0, 1] and c.flatten().tolist() == [1.0, 3.0]
    assert info["converged"]


def test_kmeans_fewer_distinct_points_than_k_does_not_crash():
    for init in ("random", "k-means++"):
        labels, c = kmeans(torch.zeros(3, 2), 2, init=init, max_iter=5)
        assert labels.tolist() == [0, 0, 0] and torch.equal(c, torch.zeros(2, 2))


def test_kmeans_deterministic_with_a_seed_and_rejects_bad_k():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 5, generator=g)
    for init in ("random", "k-means++"):
        a = kmeans(x, 4, seed=7, init=init)
        b = kmeans(x, 4, seed=7, init=init)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert a[1].dtype == x.dtype and a[0].dtype == torch.int64
    with pytest.raises(ValueError, match="k must be in 1..3"):
        kmeans(torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match="init must be"):
        kmeans(x, 2, init="kmeans")


def test_kmeans_plusplus_recovers_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    y = torch.arange(90) % 3
    x = centres[y] + torch.randn(90, 2, generator=g)
    labels, c = kmeans(x, 3, init="k-means++", seed=0)
    assert cluster_agreement(labels, y)["best_map_acc"] == 1.0
    # each centroid is its blob's mean
    for j in range(3):
        assert torch.allclose(c[j], x[labels == j].mean(0), atol=1e-6)


def test_cluster_agreement_golden(monkeypatch):
    # clusters {0,1} -> class 1, {2,3} -> class 0, {4} -> class 0 (only 2 classes: one left over)
    pred, true = np.array([0, 0, 1, 1, 2]), np.array([1, 1, 0, 0, 0])
    a = cluster_agreement(pred, true)
    assert a["best_map_acc"] == pytest.approx(0.8) and a["purity"] == 1.0 and a["n"] == 5
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # no scipy: the greedy fallback
    b = cluster_agreement(pred, true)
    assert b["method"] == "greedy" and b["best_map_acc"] == pytest.approx(0.8)
    # a permutation of the labels is perfect agreement
    assert cluster_agreement(np.array([2, 0, 1, 2]), np.array([0, 1, 2, 0]))["best_map_acc"] == 1.0


# ---------------------------------------------------------------------------------------------
# pseudo labels, the ++ encoder
# ---------------------------------------------------------------------------------------------


def test_pseudo_labels_agree_with_true_labels_on_an_easy_case():
    x, y = _toy(48)
    info: dict = {}
    ps = pseudo_labels(_encoder(), x, 3, seed=0, info=info)
    assert ps.shape == (48,) and ps.dtype == torch.int64
    assert cluster_agreement(ps, y)["best_map_acc"] >= 0.9, info


def test_plusplus_encoder_round_trips_and_fine_tunes(tmp_path):
    from pipeline.finetune.config import SLFConfig
    from pipeline.finetune.modes import finetune

    enc = _encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    x, y = _toy(24)
    new, info = postprocess_plusplus(enc, x, 3, FAST, labels=y)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())  # input untouched
    assert info["k"] == 3 and sum(info["cluster_sizes"]) == 24 and len(info["cluster_sizes"]) == 3
    assert 0 <= info["agreement"]["best_map_acc"] <= 1 and 0 <= info["lp"]["acc_pseudo"] <= 1
    assert len(info["lp"]["history"]) == 1 and len(info["aff"]["history"]) == 1
    assert np.isfinite(info["aff"]["history"][0]["loss"])
    # dual-BN encoder, k-way zero-initialised-then-trained head; TRADES went through 'pgd' only
    assert new.bn_names == ("normal", "pgd") and isinstance(new.head, torch.nn.Linear)
    assert new.head.out_features == 3 and not torch.equal(new.head.weight, torch.zeros_like(new.head.weight))
    sd = new.state_dict()
    assert not torch.equal(sd["conv1.weight"], before["conv1.weight"])
    assert torch.equal(sd["bn1.bn_list.0.running_mean"], before["bn1.bn_list.0.running_mean"])  # 'normal'
    assert not torch.equal(sd["bn1.bn_list.1.running_mean"], before["bn1.bn_list.1.running_mean"])  # 'pgd'
    # round trip through our export format
    save_encoder(tmp_path / "pp.pt", new, {"plusplus": True})
    back, meta = load_encoder(tmp_path / "pp.pt")
    back.eval()  # load_encoder builds in train mode (load_pretrained sets eval)
    xt = torch.rand(2, 3, 16, 16)
    assert meta["plusplus"] and torch.equal(back(xt, "pgd"), new(xt, "pgd"))
    # and through the fine-tuning entry, on the true labels
    clf, hist = finetune(back, x, y, "SLF", SLFConfig(epochs=1, batch_size=12), num_classes=3)
    assert clf(xt).shape == (2, 3) and len(hist) == 1


def test_precomputed_pseudo_labels_are_checked():
    x, _ = _toy(24)
    with pytest.raises(ValueError, match="cluster ids in 0..2"):
        postprocess_plusplus(_encoder(), x, 3, FAST, pseudo=np.full(24, 3))


# ---------------------------------------------------------------------------------------------
# config and job
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [("lp_lr", 0.0), ("aff_batch_size", 0), ("kmeans_tol", 0.0),
                                         ("k", -1), ("aff_momentum", 1.0), ("aff_milestones", (0,)),
                                         ("kmeans_init", "kmeans")])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"plusplus\.{field}"):
        PlusPlusConfig(**{field: value})


def test_defaults_are_the_authors_and_yaml_overrides(tmp_path):
    d = PlusPlusConfig()
    assert (d.lp_epochs, d.lp_lr, d.lp_weight_decay, d.lp_batch_size, d.lp_bn) == (10, 0.01, 1e-4, 512, "pgd")
    assert (d.aff_epochs, d.aff_lr, d.aff_milestones, d.beta, d.nat_bn, d.adv_bn) == (25, 0.1, (10, 20), 6.0, "pgd", "pgd")
    assert (d.attack.steps, d.attack.eps, d.attack.alpha, d.kmeans_tol, d.feature_bn) == (10, 8 / 255, 2 / 255, 1e-5, "normal")
    cfg = load_config(PostprocessConfig, "jobs/configs/plusplus_demo.yaml", ["--plusplus.k=5"])
    assert cfg.plusplus.k == 5 and cfg.plusplus.attack.steps == 2 and cfg.data.max_train == 512
    with pytest.raises(ConfigError, match="plusplus.kmeans_init"):
        load_config(PostprocessConfig, None, ["--plusplus.kmeans_init=kmeans"])


def test_job_writes_a_run_dir_that_finetune_and_report_read(tmp_path, capsys):
    import jobs.postprocess
    from pipeline.finetune.config import load_finetune_config
    from pipeline.finetune.driver import run_finetune
    from pipeline.report.collect import load_run

    save_encoder(tmp_path / "enc.pt", _encoder())
    ds = _manifest(tmp_path)
    out = tmp_path / "pp"
    args = ["--checkpoint", str(tmp_path / "enc.pt"), "--dataset", ds, "--out", str(out),
            "--plusplus.lp_epochs=1", "--plusplus.aff_epochs=1", "--plusplus.attack.steps=1",
            "--plusplus.lp_batch_size=12", "--plusplus.aff_batch_size=12"]
    assert jobs.postprocess.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["encoder.pt", "postprocess.json", "summary.json"]
    info = json.loads((out / "postprocess.json").read_text())
    assert info["k"] == 3 and sum(info["cluster_sizes"]) == 24 and "best_map_acc" in info["agreement"]
    assert info["config"]["plusplus"]["aff_epochs"] == 1 and len(info["source"]["sha256"]) == 12
    model, meta = load_encoder(out / "encoder.pt")
    assert meta["plusplus"] and meta["k"] == 3 and model.head.out_features == 3
    # a finished dir is refused (nothing overwritten)
    assert jobs.postprocess.main(args) == 2 and "is finished" in capsys.readouterr().err
    # the usual fine-tuning reads the ++ encoder; the report reads the dir as a run
    cfg = load_finetune_config("jobs/configs/finetune_smoke.yaml", [
        f"--checkpoint={out / 'encoder.pt'}", f"--data.train_manifest={ds}", "--mode=SLF",
        "--slf.batch_size=8", "--train.max_steps_per_epoch=1", "--eval.batch_size=16"])
    res = run_finetune(cfg, out / "eval" / "SLF", use_ray=False, log=lambda _l: None)
    run = load_run(out)
    assert run.summary["plusplus"] and run.evals["SLF"]["clean_acc"] == pytest.approx(100 * res[0]["clean_acc"])


def test_job_rejects_a_misspelled_key(tmp_path, capsys):
    import jobs.postprocess

    rc = jobs.postprocess.main(["--checkpoint", "x.pt", "--dataset", str(tmp_path), "--out",
                                str(tmp_path / "o"), "--plusplus.aff_epoch=3"])
    assert rc == 2 and "plusplus.aff_epoch" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_failed_run_leaves_no_encoder(tmp_path, monkeypatch):
    import pipeline.finetune.postprocess as pp

    ds = _manifest(tmp_path)
    out = tmp_path / "pp"
    out.mkdir()
    (out / "encoder.pt").write_bytes(b"left by an earlier crash")  # looks like an encoder
    real = pp.run_epoch

    def failing(module, *a, mode, **kw):
        if mode == "AFF":
            raise RuntimeError("simulated failure in step 3")
        return real(module, *a, mode=mode, **kw)

    monkeypatch.setattr(pp, "run_epoch", failing)
    cfg = load_config(PostprocessConfig, None, [f"--data.train_manifest={ds}", "--plusplus.lp_epochs=1",
                                                "--plusplus.lp_batch_size=12"])
    with pytest.raises(RuntimeError, match="simulated"):
        pp.run_postprocess(cfg, _encoder(), out, log=lambda _l: None)
    assert sorted(p.name for p in out.iterdir()) == []  # no encoder.pt, no summary.json, no temp file
