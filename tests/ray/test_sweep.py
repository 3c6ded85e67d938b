"""Sweeps (pipeline.tune): grid/name/concurrency logic (fast, no Ray) and a tiny Tune smoke run.

The smoke run (slow, ~5-8 min on 2 busy cores): a 2x1 grid (rcs.fraction 0.3, 0.5 x
rcs.warmup_epochs 1) + the full-data baseline on ~200 generated 16x16 images, 2 epochs of 2
steps, width-4 ResNet, 1 Train worker at 0.5 CPU, SLF fine-tuning + PGD-20 on 32 test images.
Then the same sweep again: every trial is reused (deterministic names), nothing retrains.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import ConfigError, PretrainConfig, load_config
from pipeline.tune.spaces import (
    BASELINE_NAME,
    max_concurrent_trials,
    parse_grid_args,
    resources_per_trial,
    trial_bundles,
    trial_config,
    trial_name,
    trial_specs,
    validate_grid,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "jobs" / "configs" / "sweep_demo.yaml"


def _base(*overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, DEMO, ["--data.manifest=/tmp/none", *overrides])


# ----------------------------------------------------------------------------------------------
# Fast: no Ray
# ----------------------------------------------------------------------------------------------


def test_grid_args_and_names_are_deterministic():
    grid = parse_grid_args(["rcs.fraction=0.2,0.4", "--rcs.warmup_epochs=1,2", "optim.lr=1e-3"])
    assert grid == {"rcs.fraction": [0.2, 0.4], "rcs.warmup_epochs": [1, 2], "optim.lr": [0.001]}
    specs = trial_specs(grid)
    assert [s.name for s in specs] == [BASELINE_NAME, "k0.2-w1-lr0.001", "k0.2-w2-lr0.001",
                                       "k0.4-w1-lr0.001", "k0.4-w2-lr0.001"]
    assert specs[0].is_baseline and specs[0].params == {"rcs.enabled": False}
    assert [s.name for s in trial_specs(grid)] == [s.name for s in specs]  # same input, same names
    assert trial_name({"rcs.fraction": 0.25, "train.epochs": 100.0, "rcs.enabled": True}) == "k0.25-e100-rcstrue"
    # two keys that share a short name fall back to spelled-out keys
    clash = trial_specs({"optim.lr": [0.1], "rcs.lr": [0.01, 0.02]}, baseline=False)
    assert [s.name for s in clash] == ["optim_lr_0.1-rcs_lr_0.01", "optim_lr_0.1-rcs_lr_0.02"]


def test_trial_config_places_run_under_sweep(tmp_path):
    base = _base()
    spec = trial_specs({"rcs.fraction": [0.5]}, baseline=True)
    cfg = trial_config(base, spec[1], sweep_name="sw", storage_path=str(tmp_path))
    assert cfg.rcs.fraction == 0.5 and cfg.rcs.enabled
    assert cfg.run_name() == "sw/k0.5" and cfg.run.storage_path == str(tmp_path)
    b = trial_config(base, spec[0], sweep_name="sw", storage_path=str(tmp_path))
    assert not b.rcs.enabled and b.run_name() == "sw/baseline"
    assert b.train == base.train and b.model == base.model  # same config otherwise


def test_validate_grid_rejects_bad_keys_and_values():
    base = _base()
    with pytest.raises(ConfigError, match="rcs.fractio"):
        validate_grid(base, {"rcs.fractio": [0.1]})
    with pytest.raises(ConfigError, match="rcs.fraction"):
        validate_grid(base, {"rcs.fraction": [1.5]})
    with pytest.raises(ConfigError, match="rcs.enabled"):
        validate_grid(_base("--rcs.enabled=false"), {"rcs.fraction": [0.1]})
    with pytest.raises(ConfigError, match="run"):
        validate_grid(base, {"run.name": ["x"]})


def test_grid_over_selection_methods(tmp_path):
    """``--grid rcs.method=greedy,greedy_sample,random``: one trial per coreset method (the README's
    comparison at scale), each a valid config; an unknown method is named before anything runs."""
    base = _base()
    grid = parse_grid_args(["rcs.method=greedy,greedy_sample,random"])
    validate_grid(base, grid)
    specs = trial_specs(grid)
    assert [s.name for s in specs] == [BASELINE_NAME, "greedy", "greedy_sample", "random"]
    cfgs = [trial_config(base, s, sweep_name="m", storage_path=str(tmp_path)) for s in specs[1:]]
    assert [c.rcs.method for c in cfgs] == ["greedy", "greedy_sample", "random"]
    assert len({c.run_name() for c in cfgs}) == 3 and all(c.rcs.enabled for c in cfgs)
    with pytest.raises(ConfigError, match="rcs.method: 'kcenter'"):
        validate_grid(base, parse_grid_args(["rcs.method=greedy,kcenter"]))


def test_max_concurrent_trials_from_cluster_resources():
    # rcs.use_gpu follows scaling.use_gpu unless set (issue 12): the RCS slot then holds a GPU too
    assert resources_per_trial(_base("--scaling.use_gpu=true", "--scaling.num_workers=4"))["GPU"] == 5
    gpu = _base("--scaling.use_gpu=true", "--scaling.num_workers=4", "--rcs.use_gpu=false")
    assert resources_per_trial(gpu)["GPU"] == 4
    assert max_concurrent_trials({"CPU": 64, "GPU": 8}, gpu) == 2  # 8 GPUs // 4 per trial
    assert max_concurrent_trials({"CPU": 64, "GPU": 2}, gpu) == 1  # at least 1
    cpu = _base("--scaling.num_workers=2", "--scaling.cpus_per_worker=1")
    # per trial: 1 (driver) + 1 (RCS scoring slot) + 2 x 1 (workers) + 1 (Ray Data) = 5 CPUs
    assert trial_bundles(cpu) == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert max_concurrent_trials({"CPU": 16}, cpu) == 3
    no_rcs = _base("--scaling.num_workers=0", "--rcs.enabled=false")
    assert trial_bundles(no_rcs, trial_cpus=0.5) == [{"CPU": 0.5}]
    assert max_concurrent_trials({"CPU": 4}, no_rcs) == 2  # 1 (driver, trains in-process) + 1
    assert trial_bundles(_base("--rcs.num_tasks=3", "--rcs.use_gpu=true"))[1:] == [{"CPU": 1.0, "GPU": 1.0}] * 3
    assert max_concurrent_trials({}, cpu) == 1


def test_job_dry_run_and_config_errors(capsys):
    from jobs.sweep import main

    assert main(["--config", str(DEMO), "--data.manifest=/tmp/x", "--grid", "rcs.fraction=0.3,0.5",
                 "--grid", "rcs.warmup_epochs=1", "--name", "t", "--dry-run", "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "k0.3-w1" in out and "k0.5-w1" in out
    assert main(["--config", str(DEMO), "--data.manifest=/tmp/x", "--grid", "rcs.nope=1", "--dry-run"]) == 2
    assert main(["--config", str(DEMO), "--grid", "rcs.fraction=0.3", "--dry-run"]) == 2  # no manifest


# ----------------------------------------------------------------------------------------------
# Slow: a real Tune sweep on a local Ray
# ----------------------------------------------------------------------------------------------


def _tiny_dataset(root: Path) -> str:
    from jobs.prepare_data import convert
    from pipeline.data.generate import class_names, generate_imagenet32_format

    generate_imagenet32_format(root / "raw", num_classes=4, train_per_class=50, val_per_class=5, seed=0,
                               image_size=16, num_train_batches=2)
    convert("imagenet32", str(root / "raw"), str(root / "train"), split="train", name="gen-tiny",
            num_classes=4, class_names=class_names(4))
    return str(root / "train")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tune_sweep_grid_plus_baseline(ray_local, tmp_path):
    from pipeline.report.collect import collect
    from pipeline.tune.sweep import EvalSettings, SweepOptions, format_table, run_sweep

    manifest = _tiny_dataset(tmp_path)
    base = load_config(PretrainConfig, DEMO, [
        f"--data.manifest={manifest}", "--data.val_fraction=0.1", "--model.width=4", "--attack.steps=1",
        "--train.epochs=2", "--train.global_batch_size=32", "--train.max_steps_per_epoch=2",
        "--rcs.interval=1", "--rcs.batch_size=32", "--rcs.chunk_batches=2", "--rcs.pgd_steps=1",
        "--rcs.train_pgd_steps=1", "--scaling.num_workers=1", "--scaling.cpus_per_worker=0.5",
        "--scaling.max_failures=0", f"--run.storage_path={tmp_path / 'runs'}",
    ])
    options = SweepOptions(
        name="smoke", grid={"rcs.fraction": [0.3, 0.5], "rcs.warmup_epochs": [1]},
        # auto: 4 logical CPUs // (1 driver + 1 RCS slot + 0.5 worker + 1 Ray Data) = 1 at a time
        eval=EvalSettings(config=str(ROOT / "jobs" / "configs" / "finetune_smoke.yaml"), overrides=(
            "--model.width=4", "--train.max_steps_per_epoch=2", "--eval.n_examples=32",
            "--eval.batch_size=32")),
    )
    res = run_sweep(base, options)
    print(format_table(res))

    sweep_dir = tmp_path / "runs" / "smoke"
    assert Path(res.sweep_json) == sweep_dir / "sweep.json"
    data = json.loads((sweep_dir / "sweep.json").read_text())
    assert data["sweep_name"] == "smoke"
    assert data["grid"] == {"rcs.fraction": [0.3, 0.5], "rcs.warmup_epochs": [1]}
    assert [t["trial_name"] for t in data["trials"]] == ["k0.3-w1", "k0.5-w1"]
    assert [t["params"] for t in data["trials"]] == [{"rcs.fraction": 0.3, "rcs.warmup_epochs": 1},
                                                      {"rcs.fraction": 0.5, "rcs.warmup_epochs": 1}]
    for t in data["trials"]:
        assert t["status"] == "finished", t
        run = sweep_dir / t["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["rcs"]["enabled"]
        assert summary["rcs"]["fraction"] == t["params"]["rcs.fraction"]
        assert len(summary["rcs"]["selections"]) == 1  # warm-up epoch 1, selection before epoch 2
        ev = json.loads((run / "eval" / "SLF" / "results.json").read_text())
        assert 0.0 <= ev["clean_acc"] <= 1.0 and 0.0 <= ev["pgd20_acc"] <= 1.0
        assert t["metrics"]["slf_pgd20_acc"] == pytest.approx(ev["pgd20_acc"])
    assert data["baseline_run_dir"] == "baseline"
    base_summary = json.loads((sweep_dir / "baseline" / "summary.json").read_text())
    assert base_summary["status"] == "finished" and not base_summary["rcs"]["enabled"]
    assert (sweep_dir / "tune-k0.3-w1").is_dir()  # Tune's own trial folder, named from the params

    c = collect(sweep_dir)
    assert c.kind == "sweep"
    names = [r.name for r in c.rows]
    assert names[0].endswith("(baseline)") and names[1:] == ["k0.3-w1", "k0.5-w1"]
    assert all(r.status == "finished" and r.run is not None for r in c.rows[1:])
    assert all(r.measured is not None for r in c.rows[1:])  # speed-up vs the baseline
    assert all("SLF" in r.evals for r in c.rows)

    # the same sweep again: deterministic run names -> every trial is found finished and reused
    again = run_sweep(base, options)
    assert [o.status for o in again.trials] == ["finished", "finished"]
    assert again.baseline is not None and again.baseline.status == "finished"
    assert all(o.metrics.get("reused") for o in [again.baseline, *again.trials])


# ----------------------------------------------------------------------------------------------
# Early stopping (ASHA)
# ----------------------------------------------------------------------------------------------


def test_scheduler_block_of_the_grid_file(tmp_path):
    from pipeline.tune.spaces import SchedulerSettings, load_grid_file, load_scheduler

    demo = ROOT / "jobs" / "configs" / "grids" / "sweep_demo_asha.yaml"
    assert load_grid_file(demo) == {"rcs.fraction": [0.2, 0.4], "rcs.warmup_epochs": [1, 2]}
    assert load_scheduler(demo) == SchedulerSettings("asha", "loss", "min", 1, 2)
    bad = tmp_path / "g.yaml"
    bad.write_text("rcs.fraction: [0.2]\nscheduler: {kind: asha, grace: 1}\n")
    with pytest.raises(ConfigError, match="scheduler.grace: unknown key"):
        load_scheduler(bad)
    with pytest.raises(ConfigError, match="grace_period"):
        SchedulerSettings("asha", grace_period=4).validate(epochs=4)
    assert load_scheduler(ROOT / "jobs" / "configs" / "sweep_demo.yaml").kind == "none"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_asha_stops_the_worse_trial(ray_local, tmp_path):
    """Two trials one after the other, per-epoch results read from the run's TensorBoard events
    by the trial itself (no TuneReportCallback): ASHA on the per-epoch learning rate (deterministic: the lr=2 trial is worse at epoch 1 than lr=0.5 was)
    stops the second at its first rung; sweep.json, the table and the report say so."""
    from pipeline.report.collect import collect
    from pipeline.tune.spaces import SchedulerSettings
    from pipeline.tune.sweep import EvalSettings, SweepOptions, format_table, run_sweep

    manifest = _tiny_dataset(tmp_path)
    base = load_config(PretrainConfig, DEMO, [
        f"--data.manifest={manifest}", "--model.width=4", "--attack.steps=1", "--rcs.enabled=false",
        "--train.epochs=3", "--train.global_batch_size=32", "--train.max_steps_per_epoch=2",
        "--scaling.num_workers=1", "--scaling.cpus_per_worker=0.5", "--scaling.max_failures=0",
        f"--run.storage_path={tmp_path / 'runs'}",
    ])
    res = run_sweep(base, SweepOptions(
        name="asha", grid={"optim.lr": [0.5, 2.0]}, baseline=False, max_concurrent=1,
        eval=EvalSettings(enabled=False),
        scheduler=SchedulerSettings("asha", metric="lr", mode="min", grace_period=1, reduction_factor=2)))
    table = format_table(res)
    print(table)
    data = json.loads((tmp_path / "runs" / "asha" / "sweep.json").read_text())
    by = {t["trial_name"]: t for t in data["trials"]}
    assert by["lr0.5"]["status"] == "finished" and by["lr0.5"]["metrics"]["epochs"] == 3
    assert by["lr2"]["status"] == "stopped" and by["lr2"]["metrics"]["stopped_at_epoch"] == 1
    assert data["stopped"] == ["lr2"] and data["scheduler"]["kind"] == "asha"
    assert data["trial_time_s"] > 0 and all(t["metrics"]["time_total_s"] > 0 for t in data["trials"])
    assert "stopped@1" in table
    assert not (tmp_path / "runs" / "asha" / "lr2" / "summary.json").exists()  # never finished
    c = collect(tmp_path / "runs" / "asha")
    assert [(r.name, r.status) for r in c.rows] == [("lr0.5", "finished"), ("lr2", "stopped")]


def test_asha_replay_on_a_finished_grid(tmp_path):
    """Ray's ASHA bracket replayed on per-epoch Tune results: who stops where, compute saved."""
    from pipeline.tune.asha_replay import replay

    sw = tmp_path / "grid"
    losses = {"a": [3.0, 2.0, 1.0], "b": [4.0, 3.5, 3.0], "c": [2.5, 2.5, 2.0]}
    pgd = {"a": 0.30, "b": 0.40, "c": 0.20}
    for name, ls in losses.items():
        (sw / f"tune-{name}").mkdir(parents=True)
        rows = [{"epoch": e, "loss": v, "time_total_s": 10.0 * e} for e, v in enumerate(ls, start=1)]
        rows.append({"final": True, "epoch": 3, "loss": ls[-1], "time_total_s": 40.0})
        (sw / f"tune-{name}" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (sw / "sweep.json").write_text(json.dumps({"sweep_name": "grid", "base_config": {"train": {"epochs": 3}},
        "trials": [{"trial_name": n, "metrics": {"slf_pgd20_acc": pgd[n]}} for n in losses]}))
    r = replay(sw, metric="loss", mode="min", grace_period=1, reduction_factor=2)
    assert [t["stopped_at_epoch"] for t in r["trials"]] == [None, 1, 2]  # b at rung 1, c at rung 2
    assert r["grid_trial_s"] == 120.0 and r["asha_trial_s"] == 40.0 + 10.0 + 20.0
    assert r["saved_fraction"] == pytest.approx(1 - 70 / 120, abs=1e-3)
    assert r["best_grid"] == "b" and r["best_asha"] == "a" and not r["same_best"]
