"""cluster/: every YAML parses with the expected keys, scripts pass `bash -n` and behave
(with a fake `ray` on PATH), pins match pyproject.toml, the dashboard never binds 0.0.0.0,
and the report package never imports Ray."""

from __future__ import annotations

import ast
import os
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from pipeline.report.cost import load_prices

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"


def _load(name: str) -> dict:
    data = yaml.safe_load((CLUSTER / name).read_text())
    assert isinstance(data, dict), name
    return data


def test_every_cluster_yaml_parses():
    names = sorted(p.name for p in CLUSTER.glob("*.yaml"))
    assert names == ["cluster.yaml", "kuberay-rayjob.yaml", "prices.yaml", "runtime_env.yaml"]
    for n in names:
        _load(n)


def test_cluster_launcher_yaml():
    c = _load("cluster.yaml")
    assert c["provider"]["type"] == "aws"
    head = c["available_node_types"][c["head_node_type"]]
    assert head["node_config"]["InstanceType"] == "m6i.2xlarge"
    assert head["resources"]["GPU"] == 0 and head["resources"]["driver"] == 1
    workers = [v for k, v in c["available_node_types"].items() if k != c["head_node_type"]]
    assert workers and all(w["max_workers"] >= 1 for w in workers)
    start = " ".join(c["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "--disable-usage-stats" in start
    assert "RAY_AUTH_MODE=token" in start and "RAY_AUTH_MODE=token" in " ".join(c["worker_start_ray_commands"])
    assert "~/.ray/auth_token" in c["file_mounts"]


def test_setup_pins_match_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {d.split("==")[0]: d for d in deps if "==" in d}
    setup = " ".join(_load("cluster.yaml")["setup_commands"])
    for pkg in ("torch", "torchvision", "ray[default,train,tune,data]"):
        assert pins[pkg] in setup, pkg


def test_kuberay_rayjob():
    j = _load("kuberay-rayjob.yaml")
    assert j["kind"] == "RayJob" and j["apiVersion"] == "ray.io/v1"
    assert j["spec"]["entrypoint"].startswith("python -m jobs.pretrain --config jobs/configs/")
    rc = j["spec"]["rayClusterSpec"]
    assert rc["rayVersion"] == "2.60.0" and rc["authOptions"]["mode"] == "token"
    assert rc["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    gpu = rc["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"
    # SidecarMode reaches the dashboard over localhost, which is why 127.0.0.1 works here.
    assert j["spec"]["submissionMode"] == "SidecarMode"


def test_runtime_env():
    r = _load("runtime_env.yaml")
    env = r["env_vars"]
    assert env["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1" and "OMP_NUM_THREADS" in env
    assert all(isinstance(v, str) for v in env.values())  # Ray rejects non-string env values
    assert ".venv/" in r["excludes"] and "working_dir" not in r and "pip" not in r


def test_prices_yaml_loads_and_is_dated():
    p = load_prices(CLUSTER / "prices.yaml")
    assert len(p.as_of) == 10 and p.as_of.startswith("20")
    assert "PLACEHOLDER" in (CLUSTER / "prices.yaml").read_text()


def test_dashboard_never_on_all_interfaces():
    for f in CLUSTER.iterdir():
        if f.is_file():
            assert "0.0.0.0" not in f.read_text(), f.name


@pytest.mark.parametrize("script", ["local_up.sh", "local_down.sh", "submit.sh"])
def test_scripts_are_valid_bash(script):
    path = CLUSTER / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert os.access(path, os.X_OK)


@pytest.fixture()
def fake_ray(tmp_path: Path) -> tuple[dict, Path]:
    """A `ray` on PATH that records its arguments and RAY_AUTH_MODE instead of running Ray."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ray.log"
    (bin_dir / "ray").write_text(f'#!/usr/bin/env bash\necho "$RAY_AUTH_MODE $*" >> {log}\n')
    (bin_dir / "ray").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env, log


def test_submit_sh_builds_the_job_command(fake_ray):
    env, log = fake_ray
    out = subprocess.run(["bash", str(CLUSTER / "submit.sh"), "pretrain", "--config", "jobs/configs/smoke.yaml"],
                         env={**env, "SUBMISSION_ID": "pretrain-1"}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    call = log.read_text().strip()
    assert call.startswith("token job submit --no-wait --submission-id pretrain-1 --working-dir . "
                           "--runtime-env cluster/runtime_env.yaml")
    assert call.endswith("-- python -m jobs.pretrain --config jobs/configs/smoke.yaml")
    assert "job id: pretrain-1" in out.stdout and "ray job logs -f pretrain-1" in out.stdout
    usage = subprocess.run(["bash", str(CLUSTER / "submit.sh")], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


def _stub_ray_start(bin_dir: Path, log: Path) -> None:
    """`ray start --block` stand-in: records its args, writes ray_current_cluster, then blocks."""
    (bin_dir / "ray").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$RAY_AUTH_MODE $*" >> {log}\n'
        'if [ "$1" = start ]; then\n'
        '  while [ $# -gt 0 ]; do [ "$1" = --temp-dir ] && td="$2"; shift; done\n'
        '  echo 127.0.0.1:6390 > "$td/ray_current_cluster"\n'
        '  exec sleep 300\n'
        'fi\n')


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_local_up_and_down_stop_only_their_head(fake_ray, tmp_path):
    env, log = fake_ray
    _stub_ray_start(Path(env["PATH"].split(":")[0]), log)
    temp = tmp_path / "rh"
    other = subprocess.Popen(["sleep", "300"])  # stands for a user's own Ray on the machine
    try:
        ports = {"RAY_TEMP_DIR": str(temp), "GCS_PORT": "6390", "DASHBOARD_PORT": "8290", "CLIENT_PORT": "10190",
                 "DASHBOARD_AGENT_PORT": "52390", "MIN_WORKER_PORT": "20000", "MAX_WORKER_PORT": "20999",
                 "NODE_MANAGER_PORT": "7001", "NUM_CPUS": "2"}
        out = subprocess.run(["bash", str(CLUSTER / "local_up.sh")], env={**env, **ports},
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        call = log.read_text().strip()
        # 2 CPUs are raised to 4 (G1); every port and the temp dir from the environment; token auth
        assert call == (f"token start --head --block --temp-dir {temp} --num-cpus 4 --port 6390 "
                        "--dashboard-host 127.0.0.1 --dashboard-port 8290 --ray-client-server-port 10190 "
                        "--dashboard-agent-listen-port 52390 --min-worker-port 20000 --max-worker-port 20999 "
                        "--disable-usage-stats --node-manager-port 7001")
        assert "RAY_ADDRESS=http://127.0.0.1:8290" in out.stdout
        head = int((temp / "local_up.pid").read_text())
        os.kill(head, 0)  # running
        log.unlink()
        down = subprocess.run(["bash", str(CLUSTER / "local_down.sh")], env={**env, "RAY_TEMP_DIR": str(temp)},
                              capture_output=True, text=True, timeout=60)
        assert down.returncode == 0, down.stderr
        assert not log.exists()  # no `ray stop` (it kills every Ray on the machine)
        assert not _alive(head)  # gone, or a zombie nobody has reaped yet
        assert other.poll() is None  # the other "Ray" is untouched
    finally:
        other.kill()


def test_follow_exits_nonzero_when_the_job_fails(fake_ray):
    env, log = fake_ray
    bin_dir = Path(env["PATH"].split(":")[0])
    (bin_dir / "ray").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {log}\n'
        'if [ "$2" = status ]; then echo "Job \'$3\' failed"; echo "Status message: exit code 2"; fi\n')
    r = subprocess.run(["bash", str(CLUSTER / "submit.sh"), "pretrain"], capture_output=True, text=True,
                       env={**env, "FOLLOW": "1", "SUBMISSION_ID": "p-1"}, timeout=30)
    assert r.returncode == 1 and "p-1 did not succeed" in r.stderr, (r.returncode, r.stderr)
    assert "job logs -f p-1" in log.read_text()
    (bin_dir / "ray").write_text('#!/usr/bin/env bash\nif [ "$2" = status ]; then echo "Job \'$3\' succeeded"; fi\n')
    r = subprocess.run(["bash", str(CLUSTER / "submit.sh"), "pretrain"], capture_output=True, text=True,
                       env={**env, "FOLLOW": "1", "SUBMISSION_ID": "p-2"}, timeout=30)
    assert r.returncode == 0, r.stderr


def test_documented_smoke_config_exists_and_loads():
    from pipeline.config import PretrainConfig, load_config

    docs = [CLUSTER / "README.md", CLUSTER / "submit.sh", CLUSTER / "local_up.sh", ROOT / "README.md"]
    assert any("jobs/configs/smoke.yaml" in p.read_text() for p in docs)
    cfg = load_config(PretrainConfig, ROOT / "jobs" / "configs" / "smoke.yaml", ["--data.manifest=/tmp/x"])
    assert cfg.train.epochs <= 5 and cfg.run.name == "smoke"


def test_report_code_never_imports_ray():
    files = list((ROOT / "pipeline" / "report").glob("*.py")) + [ROOT / "jobs" / "report.py"]
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == "ray" or n.startswith("ray.") for n in names), f.name
