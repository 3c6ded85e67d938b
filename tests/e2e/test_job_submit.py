"""End to end as a user runs it: `ray start --head`, `ray job submit --working-dir . -- python -m
jobs.demo --small`, wait, check the job succeeded and the report has every section with numbers in
range, then stop that head only (its process group; never `ray stop`). This is also the test that
proves `import pipeline` works on Ray
workers under --working-dir."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    if not Path(RAY).exists():
        pytest.skip("ray CLI not found next to the interpreter")
    # the job's `python` must be this environment's interpreter (as in an activated venv)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    dash, gcs, client, agent = _free_port(), _free_port(), _free_port(), _free_port()
    # Its own temp dir (short: unix sockets) and ports, so it sits next to any other Ray and a plain
    # ray.init() elsewhere does not attach to it; `--block` in a new session makes the head one
    # process group that teardown stops alone (never `ray stop`, which kills every Ray here).
    temp = Path(tempfile.mkdtemp(prefix="raye2e-", dir="/tmp"))
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--temp-dir", str(temp), "--num-cpus", "4", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
         "--dashboard-agent-listen-port", str(agent), "--min-worker-port", "30000", "--max-worker-port", "30999",
         "--include-dashboard", "true", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (temp / "ray_current_cluster").exists():
            assert head.poll() is None, "ray start exited"
            assert time.monotonic() < deadline, "the head did not come up in 180 s"
            time.sleep(1)
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        _stop_head(head, temp)


def _stop_head(head: subprocess.Popen, temp: Path) -> None:
    """SIGTERM the head's process group, then SIGKILL it and any process still naming ``temp``."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            break
        try:
            head.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(temp) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    shutil.rmtree(temp, ignore_errors=True)


def test_demo_through_ray_job_submit(ray_head, tmp_path):
    env, address = ray_head
    out = tmp_path / "demo"
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", ".",
           "--runtime-env", "cluster/runtime_env.yaml", "--",
           "python", "-m", "jobs.demo", "--small", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, timeout=1500, capture_output=True, text=True)
    log = r.stdout[-4000:] + r.stderr[-4000:]
    assert r.returncode == 0, log
    assert re.search(r"Job '[^']+' succeeded", r.stdout), log

    report = out / "runs" / "demo" / "report" / "report.md"
    html = report.with_name("report.html")
    assert report.is_file() and html.is_file(), log
    md = report.read_text()
    for heading in ("Summary", "Speed-up", "Loss curves", "Selection overhead", "Cost projection", "Provenance"):
        assert heading.lower() in md.lower(), f"missing section {heading!r}"
    assert "data:image/png;base64," in html.read_text()
    # the Summary table lists both runs, finished, with every accuracy in [0, 100] and a wall time
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    table = [ln for ln in summary.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]
    assert [r[0] for r in rows] == ["random encoder (untrained)", "demo-acl (baseline)", "demo-cl", "demo-air",
                                    "demo-acl-rcs", "demo-acl-randk"], summary
    acc_cols = [i for i, h in enumerate(header) if h.startswith("SLF ")]
    assert [header[i] for i in acc_cols] == ["SLF SA", "SLF PGD-20", "SLF PGD-20@16", "SLF AA"], header
    for row in rows:
        assert row[header.index("Status")] == "finished"
        accs = [float(row[i]) for i in acc_cols]
        assert all(0.0 <= a <= 100.0 for a in accs), row
        assert re.match(r"[0-9.]+ (s|min|h)", row[header.index("Wall")]), row
    shutil.rmtree(out, ignore_errors=True)
