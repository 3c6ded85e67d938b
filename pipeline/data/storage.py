"""Filesystem resolution for local paths and ``s3://`` URIs, plus atomic writes.

Everything in the data plane goes through a ``pyarrow.fs.FileSystem`` so the same code reads
and writes a local folder, AWS S3 or a local S3-protocol server (moto, MinIO).

S3 endpoint, in order of precedence: the ``s3_endpoint`` argument (``DataConfig.s3_endpoint``),
``storage_options["endpoint_url"]``, ``$AWS_ENDPOINT_URL_S3``, ``$AWS_ENDPOINT_URL``; none means
AWS itself. Credentials come from ``storage_options`` (``key``/``secret``/``token``) or the usual
AWS variables / config files. They are never printed, logged or written anywhere by this module;
error messages are scrubbed of them (:func:`scrub`).

No Ray imports here: this module is core.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline.errors import UserError


class DataError(UserError, ValueError):
    """Bad or missing data: the message names the file/object and what is wrong."""


# Small timeouts so an unreachable endpoint fails in seconds instead of the SDK's minutes of
# retries. The request timeout is per socket read, not per object, so big shards are fine.
S3_CONNECT_TIMEOUT_S = 3.0
S3_REQUEST_TIMEOUT_S = 30.0
S3_MAX_ATTEMPTS = 2


def is_s3(uri: str) -> bool:
    """True for ``s3://bucket/key`` URIs."""
    return str(uri).startswith("s3://")


def join_uri(base: str, *parts: str) -> str:
    """Join URI/path components with ``/`` (S3) or the OS separator (local)."""
    if is_s3(base):
        return posixpath.join(base, *parts)
    return str(Path(base, *parts))


def _secrets() -> list[str]:
    vals = [os.environ.get(k, "") for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    return [v for v in vals if len(v) >= 4]


def scrub(text: str, extra: Optional[list[str]] = None) -> str:
    """Remove credential values from a message (SDK errors sometimes echo request details)."""
    for s in _secrets() + [e for e in (extra or []) if e and len(e) >= 4]:
        text = text.replace(s, "***")
    return text


def resolve_endpoint(s3_endpoint: Optional[str] = None,
                     storage_options: Optional[dict[str, Any]] = None) -> Optional[str]:
    """The S3 endpoint URL to use, or None for AWS (see the module docstring for the order)."""
    opts = storage_options or {}
    for cand in (s3_endpoint, opts.get("endpoint_url"),
                 os.environ.get("AWS_ENDPOINT_URL_S3"), os.environ.get("AWS_ENDPOINT_URL")):
        if cand:
            return str(cand)
    return None


@dataclass(frozen=True)
class Location:
    """A resolved location: a pyarrow filesystem plus the path inside it (no scheme)."""

    fs: pafs.FileSystem
    path: str  # "bucket/prefix" for S3, an absolute local path otherwise
    uri: str  # what the user gave, for messages

    def child(self, name: str) -> "Location":
        sep = "/" if isinstance(self.fs, pafs.S3FileSystem) else os.sep
        return Location(self.fs, self.path.rstrip(sep) + sep + name, join_uri(self.uri, name))


def s3_filesystem(s3_endpoint: Optional[str] = None,
                  storage_options: Optional[dict[str, Any]] = None) -> pafs.S3FileSystem:
    """A ``pyarrow.fs.S3FileSystem`` with fail-fast timeouts and the resolved endpoint."""
    opts = dict(storage_options or {})
    kwargs: dict[str, Any] = dict(
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        request_timeout=S3_REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS),
    )
    endpoint = resolve_endpoint(s3_endpoint, opts)
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else "http://" + endpoint)
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "http"
        # A custom endpoint has no region discovery; without one the SDK may wait on IMDS.
        kwargs["region"] = (opts.get("region") or os.environ.get("AWS_REGION")
                            or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    elif opts.get("region"):
        kwargs["region"] = opts["region"]
    # Explicit credentials travel with the (pickled) filesystem to Ray workers, so workers do
    # not depend on their own environment; otherwise pyarrow uses the default AWS chain.
    key = opts.get("key") or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = opts.get("secret") or os.environ.get("AWS_SECRET_ACCESS_KEY")
    token = opts.get("token") or os.environ.get("AWS_SESSION_TOKEN")
    if key and secret:
        kwargs["access_key"] = key
        kwargs["secret_key"] = secret
        if token:
            kwargs["session_token"] = token
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, *, s3_endpoint: Optional[str] = None,
            storage_options: Optional[dict[str, Any]] = None) -> Location:
    """Resolve a local path or ``s3://bucket/prefix`` to a :class:`Location`."""
    uri = str(uri)
    if is_s3(uri):
        path = uri[len("s3://"):].rstrip("/")
        if not path or "/" in path.split("/")[0] or len(path.split("/")[0]) < 3:
            raise DataError(f"{uri}: not a valid s3://bucket/prefix URI")
        return Location(s3_filesystem(s3_endpoint, storage_options), path, uri)
    if "://" in uri and not uri.startswith("file://"):
        raise DataError(f"{uri}: unsupported URI scheme (use a local path or s3://)")
    local = uri[len("file://"):] if uri.startswith("file://") else uri
    return Location(pafs.LocalFileSystem(), str(Path(local).expanduser().resolve()), uri)


def wrap_os_error(exc: BaseException, uri: str, action: str) -> DataError:
    """Turn a pyarrow/OS error into a DataError naming the object and a likely cause."""
    msg = scrub(str(exc))
    low = msg.lower()
    hint = ""
    if any(w in low for w in ("invalidaccesskeyid", "signaturedoesnotmatch", "access denied",
                              "access_denied", "accessdenied", "forbidden", "403")):
        hint = " (bad or missing S3 credentials: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
    elif "curl" in low or "connect" in low or "resolve" in low or "timed out" in low \
            or "timeout" in low:
        hint = " (S3 endpoint unreachable: check --s3-endpoint / AWS_ENDPOINT_URL)"
    elif "nosuchbucket" in low or "bucket does not exist" in low:
        hint = " (the bucket does not exist)"
    return DataError(f"{uri}: cannot {action}: {msg}{hint}")


@dataclass
class ReadStats:
    """Process-wide count of what :func:`read_bytes` returned (benchmarks reset and read it)."""

    bytes: int = 0
    files: int = 0

    def reset(self) -> None:
        self.bytes = self.files = 0


READ_STATS = ReadStats()


def read_bytes(loc: Location) -> bytes:
    """Read a whole file/object; DataError naming it when missing or unreadable."""
    data = _read_bytes(loc)
    READ_STATS.bytes += len(data)
    READ_STATS.files += 1
    return data


def _read_bytes(loc: Location) -> bytes:
    try:
        info = loc.fs.get_file_info(loc.path)
        if info.type == pafs.FileType.NotFound:
            if isinstance(loc.fs, pafs.S3FileSystem):
                bucket = loc.path.split("/", 1)[0]
                if loc.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    raise DataError(f"{loc.uri}: bucket '{bucket}' does not exist (or is not "
                                    "visible with these credentials)")
            raise DataError(f"{loc.uri}: not found")
        if info.type == pafs.FileType.Directory:
            raise DataError(f"{loc.uri}: is a directory, expected a file")
        with loc.fs.open_input_stream(loc.path) as f:
            return f.read()
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise wrap_os_error(e, loc.uri, "read") from None


def exists(loc: Location) -> bool:
    """True if the file/object exists."""
    try:
        return loc.fs.get_file_info(loc.path).type == pafs.FileType.File
    except (OSError, ValueError) as e:
        raise wrap_os_error(e, loc.uri, "check") from None


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Write ``data`` so readers never see a partial file.

    Local: a temp file in the same folder, fsync, then ``os.replace`` (atomic on POSIX).
    S3: a single PUT/multipart upload only becomes visible when it completes, so writing the
    final key directly is already atomic; a crash leaves no object (or the old one).
    """
    try:
        if isinstance(loc.fs, pafs.LocalFileSystem):
            final = Path(loc.path)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    tmp.unlink()
        else:
            with loc.fs.open_output_stream(loc.path) as f:
                f.write(data)
    except (OSError, ValueError) as e:
        raise wrap_os_error(e, loc.uri, "write") from None


def delete(loc: Location) -> None:
    """Delete a file/object if it exists."""
    try:
        if loc.fs.get_file_info(loc.path).type == pafs.FileType.File:
            loc.fs.delete_file(loc.path)
    except (OSError, ValueError) as e:
        raise wrap_os_error(e, loc.uri, "delete") from None


def local_copy(uri: str, *, s3_endpoint: Optional[str] = None,
               storage_options: Optional[dict[str, Any]] = None) -> str:
    """A local path holding the file at ``uri``: ``uri`` itself when local, else a fresh copy of
    the object (e.g. an ``s3://.../encoder.pt``) under the temp folder, written atomically."""
    if not is_s3(uri):
        return uri
    import hashlib
    import tempfile

    data = read_bytes(resolve(uri, s3_endpoint=s3_endpoint, storage_options=storage_options))
    folder = Path(tempfile.gettempdir(), "pipeline-fetch")
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(uri.encode()).hexdigest()[:16] + "-" + posixpath.basename(uri)
    dest = folder / name
    write_bytes_atomic(resolve(str(dest)), data)
    return str(dest)


class OutputDir:
    """A job's output folder, local or ``s3://``: the job writes plain files under ``path``.

    Local: ``path`` is the folder itself. ``s3://``: ``path`` is a fresh local staging folder;
    ``sync()`` uploads every file written or changed since the last sync to the same relative key
    under the URI, and leaving the ``with`` block syncs once more (also after an error, so
    partial results survive) and deletes the staging folder. ``show(name)`` is where a file ends
    up, for messages.
    """

    def __init__(self, uri: str, *, s3_endpoint: Optional[str] = None) -> None:
        import tempfile

        self.uri, self.endpoint = str(uri), s3_endpoint
        self.remote = is_s3(self.uri)
        self.path = Path(tempfile.mkdtemp(prefix="job-out-")) if self.remote else Path(self.uri)
        self.path.mkdir(parents=True, exist_ok=True)
        self._sent: dict[str, tuple[int, int]] = {}

    def show(self, name: str) -> str:
        return join_uri(self.uri, name) if self.remote else str(self.path / name)

    def sync(self) -> list[str]:
        """Upload new / changed files (s3:// only); returns their URIs."""
        if not self.remote:
            return []
        done = []
        for p in sorted(self.path.rglob("*")):
            if not p.is_file() or p.name.startswith("."):  # atomic-write temp files
                continue
            rel = p.relative_to(self.path).as_posix()
            st = p.stat()
            if self._sent.get(rel) == (st.st_size, st.st_mtime_ns):
                continue
            dst = join_uri(self.uri, rel)
            write_bytes_atomic(resolve(dst, s3_endpoint=self.endpoint), p.read_bytes())
            self._sent[rel] = (st.st_size, st.st_mtime_ns)
            done.append(dst)
        return done

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.remote:
            return
        import shutil

        try:
            self.sync()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)
