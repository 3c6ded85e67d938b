"""Shared fixtures for Ray tests: a local Ray instance and a loopback S3 server (moto).

- ``ray_local`` (module scope): ``ray.init(num_cpus=4)`` with no dashboard and worker logs off.
  4 logical CPUs on a 2-core box on purpose: Ray Train + Ray Data deadlock when the workers
  take every CPU (stack-feasibility G1). Reuses an already running Ray and then leaves it up.
- ``s3_server`` (session scope): a moto S3 server on 127.0.0.1 (free port), one bucket, dummy
  credentials in the environment for the session only. Yields ``S3Server(endpoint_url,
  bucket)`` (a NamedTuple: ``endpoint, bucket = s3_server`` works too). No network.
- ``s3_auth_enforced``: within a test, moto checks credentials (unknown keys are refused).
"""

from __future__ import annotations

import logging
import socket
import uuid
from typing import Iterator, NamedTuple

import pytest


class S3Server(NamedTuple):
    endpoint_url: str  # e.g. http://127.0.0.1:40123
    bucket: str

    def uri(self, prefix: str = "") -> str:
        """``s3://bucket/<prefix>-<random>``: a fresh prefix per call, so tests never collide."""
        return f"s3://{self.bucket}/{prefix or 'data'}-{uuid.uuid4().hex[:8]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # G5: no progress bars in logs
    except Exception:  # pragma: no cover - Ray Data not installed
        pass
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per request

    mp = pytest.MonkeyPatch()
    # Dummy credentials for this test session only (moto accepts any by default).
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        mp.setenv(k, v)
    mp.delenv("AWS_SESSION_TOKEN", raising=False)
    mp.delenv("AWS_PROFILE", raising=False)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = "test-bucket"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket)
    try:
        yield S3Server(endpoint, bucket)
    finally:
        server.stop()
        mp.undo()


@pytest.fixture
def s3_auth_enforced(s3_server: S3Server) -> Iterator[S3Server]:
    """Make moto verify credentials for one test (its IAM has no keys, so every key is bad)."""
    import urllib.request

    def set_count(value: str) -> None:
        req = urllib.request.Request(f"{s3_server.endpoint_url}/moto-api/reset-auth",
                                     data=value.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=5).read()

    set_count("0")
    try:
        yield s3_server
    finally:
        set_count("inf")
