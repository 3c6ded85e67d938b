"""Typed config: YAML + dotted overrides, strict keys and types, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pipeline.config import (
    ConfigError,
    PretrainConfig,
    apply_overrides,
    config_hash,
    from_dict,
    load_config,
    ScalingConfig,
    replace,
    to_dict,
)


def test_defaults_match_authors_cifar_recipe():
    c = PretrainConfig()
    # spec §3.5: batch 512, 1000 epochs, LARS 5.0, 10 warm-up epochs, t=0.5, PGD 8/255, 2/255, 5
    assert (c.train.global_batch_size, c.train.epochs, c.optim.name, c.optim.lr) == (512, 1000, "lars", 5.0)
    assert c.optim.warmup_epochs == 10.0 and c.loss.temperature == 0.5
    assert c.attack.eps == pytest.approx(8 / 255) and c.attack.alpha == pytest.approx(2 / 255)
    assert c.attack.steps == 5 and c.model.bn_names == ("normal", "pgd")


def test_yaml_and_overrides(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("rcs:\n  enabled: true\n  fraction: 0.2\n  warmup_epochs: 3\ntrain:\n  epochs: 17\n")
    c = load_config(PretrainConfig, p, ["--rcs.fraction=0.05", "train.global_batch_size=64", "--model.bn_names=pgd,normal"])
    assert c.rcs.enabled is True
    assert c.rcs.fraction == 0.05  # override wins over the file
    assert c.train.epochs == 17 and c.train.global_batch_size == 64
    assert c.model.bn_names == ("pgd", "normal")
    assert isinstance(c.rcs.fraction, float)


def test_int_is_accepted_for_float_but_not_the_reverse():
    c = load_config(PretrainConfig, None, ["--optim.lr=5"])
    assert c.optim.lr == 5.0 and isinstance(c.optim.lr, float)
    with pytest.raises(ConfigError, match=r"train.epochs: expected an integer, got 2.5"):
        load_config(PretrainConfig, None, ["--train.epochs=2.5"])


def test_unknown_key_in_file_is_named(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("rcs:\n  fracton: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, p)
    assert "rcs.fracton" in str(e.value) and str(p) in str(e.value)


def test_unknown_section_and_override_are_named():
    with pytest.raises(ConfigError, match="unknown key 'rcss'"):
        load_config(PretrainConfig, None, ["--rcss.fraction=0.1"])
    with pytest.raises(ConfigError, match="'trian'"):
        from_dict(PretrainConfig, {"trian": {}})


def test_wrong_types_and_values_are_named():
    with pytest.raises(ConfigError, match=r"rcs.fraction: expected a number, got 'abc'"):
        load_config(PretrainConfig, None, ["--rcs.fraction=abc"])
    with pytest.raises(ConfigError, match=r"loss.mode: 'acll' is not a pre-training method; one of \['simclr', 'acl', 'dynacl', 'air'\]"):
        load_config(PretrainConfig, None, ["--loss.mode=acll"])
    with pytest.raises(ConfigError, match=r"rcs.fraction must be in \(0, 1\]"):
        load_config(PretrainConfig, None, ["--rcs.fraction=1.5"])
    with pytest.raises(ConfigError, match="expected true/false"):
        load_config(PretrainConfig, None, ["--rcs.enabled=yes please"])
    with pytest.raises(ConfigError, match="must look like"):
        load_config(PretrainConfig, None, ["--rcs.enabled"])


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    p = tmp_path / "x.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(PretrainConfig, p)


def test_round_trip_and_frozen():
    c = load_config(PretrainConfig, None, ["--rcs.fraction=0.05", "--loss.mode=dynacl"])
    d = to_dict(c)
    assert from_dict(PretrainConfig, d) == c
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.rcs.fraction = 0.5  # type: ignore[misc]


def test_hash_is_stable_and_sensitive():
    a = PretrainConfig()
    assert config_hash(a) == config_hash(PretrainConfig())
    b = replace(a, **{"rcs.fraction": 0.1})
    assert b.rcs.fraction == 0.1 and config_hash(b) != config_hash(a)


def test_string_override_keeps_digits_as_string():
    c = load_config(PretrainConfig, None, ["--run.name=123"])
    assert c.run.name == "123"


def test_apply_overrides_does_not_mutate_input():
    d = {"rcs": {"fraction": 0.2}}
    out = apply_overrides(d, ["--rcs.fraction=0.1"])
    assert d["rcs"]["fraction"] == 0.2 and out["rcs"]["fraction"] == 0.1


def test_cross_section_checks():
    with pytest.raises(ConfigError, match=r"optim.warmup_epochs \(10.0\) must be < train.epochs \(5\)"):
        load_config(PretrainConfig, None, ["--train.epochs=5"])
    with pytest.raises(ConfigError, match=r"rcs.warmup_epochs \(100\) must be < train.epochs"):
        load_config(PretrainConfig, None, ["--train.epochs=50", "--rcs.enabled=true"])


@dataclasses.dataclass(frozen=True)
class _Job:
    scaling: ScalingConfig = dataclasses.field(default_factory=lambda: ScalingConfig(num_workers=0))


def test_partial_section_keeps_the_fields_own_default():
    Job = _Job
    # overriding one key must not reset num_workers to ScalingConfig's class default (1)
    job = load_config(Job, None, ["--scaling.use_gpu=true"])
    assert job.scaling.num_workers == 0 and job.scaling.use_gpu is True
    assert load_config(Job, None, []).scaling.num_workers == 0


def test_scalar_for_a_tuple_field():
    c = load_config(PretrainConfig, None, ["--model.bn_names=pgd"])
    assert c.model.bn_names == ("pgd",)


CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml")
                                        if not p.name.startswith(("finetune_", "sat_", "plusplus_"))), ids=lambda p: p.name)
def test_every_pretrain_recipe_loads_and_builds(path: Path):
    from pipeline.train.steps import build_pretrain_model

    cfg = load_config(PretrainConfig, path)
    with torch.device("meta"):  # shapes only: WRN-28-10 without allocating it
        net = build_pretrain_model(cfg)
    assert net.bn_names == (("normal",) if cfg.loss.mode == "simclr" else tuple(cfg.model.bn_names))
    # the reproduced recipes keep the authors' head widths (spec §1.2)
    assert net.feat_dim == {"resnet18": 8 * cfg.model.width, "wrn": 64 * cfg.model.widen}[cfg.model.arch]


def test_recipe_values_match_the_spec():
    air = load_config(PretrainConfig, CONFIGS / "cifar10_r18_dynacl_air.yaml")
    assert (air.loss.mode, air.optim.lr, air.train.epochs, air.loss.temperature) == ("air", 5.0, 1000, 0.5)
    in32 = load_config(PretrainConfig, CONFIGS / "imagenet32_wrn_acl_rcs.yaml")
    assert (in32.model.arch, in32.model.head, in32.model.bn_names) == ("wrn", "proj2", ("pgd", "normal"))
    assert (in32.optim.lr, in32.train.epochs, in32.loss.temperature) == (0.6, 200, 0.1)
    assert (in32.rcs.fraction, in32.rcs.warmup_epochs, in32.rcs.interval, in32.rcs.chunk_batches) == (0.05, 20, 10, 100)


def test_pretrain_job_cli_errors_name_the_key(capsys):
    import jobs.pretrain

    assert jobs.pretrain.main(["--config", str(CONFIGS / "demo.yaml"), "--rcs.fracton=0.1"]) == 2
    assert "rcs.fracton" in capsys.readouterr().err
    assert jobs.pretrain.main(["--config", str(CONFIGS / "demo.yaml"), "stray"]) == 2
    assert "unrecognised argument(s) ['stray']" in capsys.readouterr().err
    cfg = jobs.pretrain.parse(["--config", str(CONFIGS / "demo.yaml"), "--num-workers", "4", "--use-gpu"])
    assert cfg.scaling.num_workers == 4 and cfg.scaling.use_gpu is True


# --- issue 13: one batch semantics (global), per-worker derived, effective lr stated ---------------

def test_global_batch_is_split_equally_over_the_workers():
    c = load_config(PretrainConfig, None, ["--train.global_batch_size=512", "--scaling.num_workers=8"])
    assert c.train.per_worker_batch(8) == 64
    assert c.train.per_worker_batch(0) == 512  # local mode = one process
    assert c.train.per_worker_batch(1) == 512


def test_global_batch_that_does_not_divide_names_the_field_and_a_fix():
    with pytest.raises(ConfigError, match=r"train.global_batch_size \(100\) must be divisible by the number "
                                          r"of workers \(8\).*--train.global_batch_size=96"):
        load_config(PretrainConfig, None, ["--train.global_batch_size=100", "--scaling.num_workers=8"])


def test_old_per_worker_key_is_refused_with_the_new_name(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"'train.batch_size' was renamed: use train.global_batch_size"):
        load_config(PretrainConfig, None, ["--train.batch_size=64"])
    y = tmp_path / "old.yaml"
    y.write_text("train:\n  batch_size: 64\n")
    with pytest.raises(ConfigError, match=r"'train.batch_size' was renamed.*multiply it by the number of workers"):
        load_config(PretrainConfig, y)


def test_batch_and_lr_line_states_global_per_worker_and_effective_lr():
    from pipeline.config import batch_and_lr_line

    c = load_config(PretrainConfig, None, ["--train.global_batch_size=4096", "--scaling.num_workers=8",
                                           "--optim.lr=5.0", "--optim.lr_scaling=linear", "--optim.batch_ref=512"])
    # linear: 5.0 x 4096 / 512 = 40
    assert batch_and_lr_line(c) == ("batch: global 4096 = 8 worker(s) x 512; peak lr 40 = 5 x linear(4096/512) "
                                    "(optim.lr_scaling=linear)")
    c = load_config(PretrainConfig, None, ["--train.global_batch_size=512", "--scaling.num_workers=0",
                                           "--optim.lr=0.6"])
    assert batch_and_lr_line(c) == "batch: global 512 = 1 worker(s) x 512; peak lr 0.6 (optim.lr_scaling=none)"


def test_recipes_state_a_global_batch_that_their_worker_counts_divide():
    import re

    for y in sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs").glob("*.yaml")):
        text = y.read_text()
        if "train:" not in text or text.lstrip().startswith("mode:") or "finetune" in y.name or "sweep" in y.name:
            continue
        m = re.search(r"--num-workers (\d+)", text)
        if not m:
            continue
        from pipeline.train.sat import SATConfig

        cls = SATConfig if y.name.startswith("sat_") else PretrainConfig
        c = load_config(cls, y, [f"--scaling.num_workers={m.group(1)}"])  # raises if it does not divide
        assert c.train.per_worker_batch(int(m.group(1))) * int(m.group(1)) == c.train.global_batch_size


def test_custom_ray_resources_per_worker_and_per_selection_task(tmp_path: Path):
    """scaling.resources_per_worker / rcs.task_resources: typed, validated, and what Ray is asked for."""
    c = load_config(PretrainConfig, None, ["--scaling.resources_per_worker={trainer: 1}",
                                           "--scaling.cpus_per_worker=0.5", "--rcs.task_resources={selector: 0.5}"])
    assert c.scaling.resources_per_worker == {"trainer": 1.0} and c.rcs.task_resources == {"selector": 0.5}
    assert c.scaling.worker_resources() == {"CPU": 0.5, "trainer": 1.0}
    assert load_config(PretrainConfig, None, ["--scaling.use_gpu=true"]).scaling.worker_resources() == \
        {"CPU": 1.0, "GPU": 1.0}
    assert PretrainConfig().scaling.resources_per_worker == {} and PretrainConfig().rcs.task_resources == {}
    y = tmp_path / "r.yaml"
    y.write_text("scaling:\n  resources_per_worker:\n    trainer: 2\n")
    assert load_config(PretrainConfig, y).scaling.resources_per_worker == {"trainer": 2.0}
    assert from_dict(PretrainConfig, to_dict(c)) == c  # round trip (Ray workers rebuild the config)
    assert config_hash(c) != config_hash(PretrainConfig())
    for bad, msg in (("--scaling.resources_per_worker={trainer: 0}", r"resources_per_worker.trainer must be a positive"),
                     ("--scaling.resources_per_worker={trainer: x}", r"resources_per_worker.trainer: expected a number"),
                     ("--scaling.resources_per_worker={CPU: 2}", r"'CPU' is set by its own key"),
                     ("--rcs.task_resources={GPU: 1}", r"rcs.task_resources: 'GPU' is set by its own key"),
                     ("--rcs.task_resources=3", r"rcs.task_resources: expected a mapping")):
        with pytest.raises(ConfigError, match=msg):
            load_config(PretrainConfig, None, [bad])


def test_tune_trial_bundles_carry_the_selection_task_resources():
    from pipeline.tune.spaces import trial_bundles

    c = load_config(PretrainConfig, None, ["--rcs.enabled=true", "--rcs.warmup_epochs=1", "--train.epochs=3",
                                           "--optim.warmup_epochs=1", "--rcs.num_tasks=2",
                                           "--rcs.task_resources={selector: 1}"])
    assert trial_bundles(c) == [{"CPU": 1.0}, {"CPU": 1.0, "selector": 1.0}, {"CPU": 1.0, "selector": 1.0}]
