"""The jobs' error contract (issue 10): user errors exit 2 with one line naming the flag / file /
cause, tracebacks only with --debug, unknown flags rejected by every job, numbers like 1e-3 parse,
invalid values are refused before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, PretrainConfig, load_config
from pipeline.data.storage import DataError
from pipeline.finetune.config import load_finetune_config

ROOT = Path(__file__).resolve().parents[2]


def _job(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "RAY_JOB_CONFIG_JSON_ENV_VAR"}
    e.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=e, capture_output=True, text=True,
                          timeout=120)


def _one_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    return lines[0]


@pytest.fixture
def job(capsys, monkeypatch):
    """``job("jobs.x", *argv)`` -> the one stderr line of an in-process run that must exit 2."""
    import importlib

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)

    def call(name: str, *argv: str) -> str:
        rc = importlib.import_module(name).main(list(argv))
        err = capsys.readouterr().err
        return _one_line(subprocess.CompletedProcess(argv, rc, "", err))

    return call


# -- numbers, tuples, validation ---------------------------------------------------------------

def test_scientific_notation_is_a_number_in_flags_and_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 1e-3\n  final_lr: 1e-30\nattack:\n  eps: 3e-2\n")
    c = load_config(PretrainConfig, p, ["--optim.weight_decay=1e30", "--optim.eta=-1e-3"])
    assert (c.optim.lr, c.optim.final_lr, c.attack.eps) == (1e-3, 1e-30, 3e-2)
    assert c.optim.weight_decay == 1e30 and c.optim.eta == -1e-3
    assert load_config(PretrainConfig, None, ["--optim.lr=1e-3"]).optim.lr == 1e-3


def test_int_tuple_flag_gives_integers():
    c = load_finetune_config(None, ["--slf.milestones=15,20", "--aff.milestones=3"])
    assert c.slf.milestones == (15, 20) and all(type(m) is int for m in c.slf.milestones)
    assert c.aff.milestones == (3,)
    # string tuples stay strings, even when they look like numbers
    assert load_config(PretrainConfig, None, ["--model.bn_names=1,2"]).model.bn_names == ("1", "2")


@pytest.mark.parametrize("flag, named", [
    ("--train.checkpoint_every=0", "train.checkpoint_every must be >= 1"),
    ("--optim.lr=0", "optim.lr must be > 0"),
    ("--optim.lr=-0.1", "optim.lr must be > 0"),
    ("--scaling.max_failures=-2", "scaling.max_failures must be >= -1"),
    ("--scaling.num_workers=-1", "scaling.num_workers must be >= 0"),
    ("--run.storage_path=gs://bucket/runs", "unsupported storage scheme 'gs://'"),
    ("--run.storage_path=s3:/bucket/runs", None),  # a typo: a local relative path, allowed
    ("--run.storage_path=s4://bucket/runs", "unsupported storage scheme 's4://'"),
    ("--data.manifest=http://host/x", "unsupported storage scheme 'http://'"),
    ("--run.storage_path=s3:///runs", "names no bucket"),
])
def test_invalid_values_are_refused_naming_the_flag(flag, named):
    if named is None:
        load_config(PretrainConfig, None, [flag])
        return
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, None, [flag])
    assert named in str(e.value) and str(e.value).startswith(flag + ":"), str(e.value)


def test_valid_edge_values_pass():
    c = load_config(PretrainConfig, None, ["--scaling.max_failures=-1", "--scaling.num_workers=0",
                                           "--run.storage_path=s3://b/runs"])
    assert (c.scaling.max_failures, c.scaling.num_workers) == (-1, 0)


def test_finetune_lr_and_scheme_checked():
    with pytest.raises(ConfigError, match=r"^--alf\.lr=0: alf\.lr must be > 0"):
        load_finetune_config(None, ["--preset=DynACL-AIR", "--alf.lr=0"])
    with pytest.raises(ConfigError, match="unsupported storage scheme 'gs://'"):
        load_finetune_config(None, ["--data.train_manifest=gs://b/x"])


# -- the CLI: one line, exit 2, the flag named; --debug -----------------------------------------

def test_bad_flag_value_names_the_flag_not_the_yaml():
    line = _one_line(_job("jobs.pretrain", "--config", "jobs/configs/demo.yaml", "--optim.lr=abc"))
    assert line.startswith("error: --optim.lr=abc:") and "demo.yaml" not in line, line


def test_debug_flag_adds_the_traceback():
    r = _job("jobs.pretrain", "--config", "jobs/configs/demo.yaml", "--optim.lr=abc", "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr and "ConfigError" in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: --optim.lr=abc:")


JOBS_WITH_ARGS = {
    "jobs.pretrain": ["--config", "jobs/configs/demo.yaml"],
    "jobs.sat": ["--config", "jobs/configs/sat_demo.yaml"],
    "jobs.evaluate": ["--checkpoint", "x.pt", "--dataset", "/nonexistent", "--out", "/tmp/x"],
    "jobs.finetune": ["--checkpoint", "x.pt", "--dataset", "/nonexistent", "--out", "/tmp/x"],
    "jobs.report": ["/nonexistent"],
    "jobs.sweep": ["--config", "jobs/configs/sweep_demo.yaml", "--data.manifest=/nonexistent"],
    "jobs.demo": [],
    "jobs.prepare_data": ["generated", "/nonexistent-src", "/nonexistent-dest"],
    "jobs.benchmark": ["step"],
    "jobs.postprocess": ["--checkpoint", "x.pt", "--dataset", "/nonexistent", "--out", "/tmp/x"],
}


@pytest.mark.parametrize("name", sorted(JOBS_WITH_ARGS))
def test_every_job_rejects_unknown_flags(job, name):
    line = job(name, *JOBS_WITH_ARGS[name], "--bogus.key=1")
    assert "--bogus.key" in line, line


def test_evaluate_rejects_a_typo_instead_of_evaluating_at_the_default_eps(job):
    line = job("jobs.evaluate", *JOBS_WITH_ARGS["jobs.evaluate"], "--pgd.eps=0.1")
    assert "--pgd.eps=0.1" in line and "--eval.key=value" in line, line
    line = job("jobs.evaluate", *JOBS_WITH_ARGS["jobs.evaluate"], "--eval.pgd.eps=abc")
    assert line.startswith("error: --eval.pgd.eps=abc:"), line


def test_data_error_is_one_line_naming_the_file(job):
    line = job("jobs.evaluate", *JOBS_WITH_ARGS["jobs.evaluate"])
    assert "/nonexistent/manifest.json" in line, line


def test_relative_storage_under_ray_job_submit_is_refused(job, monkeypatch):
    # what Ray's job supervisor sets for the entrypoint (ray job submit)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {}}')
    line = job("jobs.pretrain", "--config", "jobs/configs/smoke.yaml", "--data.manifest=/nonexistent",
               "--run.storage_path=runs")
    assert "--run.storage_path=runs" in line and "ray job submit" in line and "absolute" in line, line
    line = job("jobs.evaluate", "--checkpoint", "x.pt", "--dataset", "/nonexistent", "--out", "eval-out")
    assert "--out=eval-out" in line, line


# -- causes wrapped by Ray ----------------------------------------------------------------------

def _ray_wrapped(cause: BaseException) -> BaseException:
    """What a Ray Train driver receives when a worker's Ray Data read task raised ``cause``."""
    from ray.exceptions import RayTaskError
    from ray.train.v2.api.exceptions import WorkerGroupError

    try:
        raise cause
    except BaseException as e:  # noqa: BLE001
        task_err = RayTaskError("ReadParquet->MapBatches(decode_batch)", "Traceback ...\n" + str(e), e)
    wrapped = task_err.as_instanceof_cause()
    return WorkerGroupError("[Rank 0 Error Snippet]:\nTraceback (most recent call last):\n ...", {0: wrapped})


def _run_with(monkeypatch, capsys, exc: BaseException) -> tuple[int, str]:
    import jobs.pretrain
    import pipeline.train.driver as driver

    def boom(cfg, **kw):
        raise exc

    monkeypatch.setattr(driver, "run_pretrain", boom)
    rc = jobs.pretrain.main(["--config", "jobs/configs/demo.yaml", "--data.manifest=/x"])
    return rc, capsys.readouterr().err


def test_worker_data_error_is_unwrapped_to_one_line(monkeypatch, capsys):
    from pipeline.train.segments import TrainingFailed

    wge = _ray_wrapped(DataError("/d/part-00001.parquet: checksum mismatch (sha256 ab..., manifest says cd...)"))
    try:
        raise TrainingFailed(f"training failed in epochs 1..2: {wge}") from wge  # the old message shape
    except TrainingFailed as e:
        exc = e
    rc, err = _run_with(monkeypatch, capsys, exc)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: training failed in epochs 1..2") and "part-00001.parquet: checksum" in lines[0]


def test_s3_outage_says_endpoint_unreachable(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    os_err = OSError("When reading information for key 'runs/x/epoch_00001/state.pt' in bucket 'b': AWS "
                     "Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Couldn't connect to server")
    rc, err = _run_with(monkeypatch, capsys, _ray_wrapped(os_err))  # raw Ray Train error, as fit() raises it
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: S3 endpoint http://127.0.0.1:9 unreachable"), lines[0]
    assert "worker errors" not in lines[0]


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    with pytest.raises(ZeroDivisionError):
        _run_with(monkeypatch, capsys, ZeroDivisionError("a bug"))
