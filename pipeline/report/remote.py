"""Reports of runs and sweeps on object storage: read the report's inputs from ``s3://``, write the
report back next to the run.

``mirror(uri, dest)`` copies only what ``pipeline.report.collect`` reads (``summary.json``,
``config.yaml``, ``metrics.jsonl``, ``sweep.json``, ``eval/<MODE>/results.json``) from a run or
sweep prefix into a local folder with the same layout: checkpoints, encoders, coresets, Tune and
TensorBoard files are listed but never downloaded. ``upload_dir`` writes a local report folder
to a prefix (each file an atomic put). Both go through ``pipeline.data.storage`` (pyarrow.fs),
so the endpoint comes from ``--s3-endpoint`` / ``AWS_ENDPOINT_URL`` and credentials from the
usual AWS chain.

Core module: no Ray.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pyarrow.fs as pafs

from pipeline.data.storage import join_uri, read_bytes, resolve, write_bytes_atomic
from pipeline.report.collect import EVAL_MODES, ReportError

INPUT_FILES = frozenset({"summary.json", "config.yaml", "metrics.jsonl", "sweep.json"})
SKIP_DIRS = ("epoch_", "tune-", "tb", "report", "coresets", "checkpoint_", "_ray")


def wanted(rel: str) -> bool:
    """Whether a file (path relative to the run/sweep prefix, '/'-separated) feeds the report."""
    parts = rel.split("/")
    if any(p.startswith(SKIP_DIRS) for p in parts[:-1]):
        return False
    if parts[-1] in INPUT_FILES:
        return True
    return len(parts) >= 3 and parts[-3] == "eval" and parts[-2] in EVAL_MODES and parts[-1] == "results.json"


def mirror(uri: str, dest: str | os.PathLike, *, s3_endpoint: Optional[str] = None) -> Path:
    """Copy the report inputs under ``uri`` into ``dest``; returns ``dest``. Raises ReportError
    when the prefix holds neither sweep.json nor summary.json."""
    loc = resolve(uri, s3_endpoint=s3_endpoint)
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    except OSError as e:
        raise ReportError(f"{uri}: cannot list: {e}") from None
    root = loc.path.rstrip("/") + "/"
    rels = sorted(i.path[len(root):] for i in infos if i.type == pafs.FileType.File and i.path.startswith(root))
    rels = [r for r in rels if wanted(r)]
    if "sweep.json" not in rels and "summary.json" not in rels:
        raise ReportError(f"{uri}: neither sweep.json nor summary.json found (not a run or sweep prefix)")
    out = Path(dest)
    for rel in rels:
        target = out.joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(resolve(join_uri(uri, rel), s3_endpoint=s3_endpoint)))
    return out


def upload_dir(local: str | os.PathLike, uri: str, *, s3_endpoint: Optional[str] = None) -> list[str]:
    """Every file of ``local`` (not recursive: a report folder is flat) to ``uri/<name>``."""
    done = []
    for p in sorted(Path(local).iterdir()):
        if p.is_file():
            dst = join_uri(uri, p.name)
            write_bytes_atomic(resolve(dst, s3_endpoint=s3_endpoint), p.read_bytes())
            done.append(dst)
    return done
