"""Cost / speed-up / robustness report for a run dir or a sweep dir.

Locally, or straight from object storage:

    python -m jobs.report runs/my-sweep --prices cluster/prices.yaml --gpu-type H100
    python -m jobs.report runs/rcs-run --baseline runs/full-run --out /tmp/report
    python -m jobs.report s3://bucket/runs/my-sweep            # report -> s3://bucket/runs/my-sweep/report/
    python -m jobs.report s3://bucket/runs/rcs-run --out /tmp/report --s3-endpoint http://minio:9000

For ``s3://`` paths only the small files the report reads are downloaded (summary.json,
config.yaml, metrics.jsonl, sweep.json, eval/*/results.json; never checkpoints), into a temp
folder; the report is written back to ``<path>/report/`` (or ``--out``, local or s3://).

On a cluster (the report reads the head node's storage folder):

    ray job submit --working-dir . -- python -m jobs.report runs/my-sweep

Writes ``report.md``, ``report.html`` (self-contained) and PNGs into ``<dir>/report/`` (or
``--out``), prints their paths and the summary table. Exit code 2 on bad inputs, with the file
named in the message. No Ray is needed (or imported).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from jobs._cli import run_job
from pipeline.data.storage import is_s3, join_uri
from pipeline.report.collect import collect
from pipeline.report.cost import DEFAULT_MFU, DEFAULT_PRICES_PATH, load_prices
from pipeline.report.remote import mirror, upload_dir
from pipeline.report.render import near_random_warnings, render_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="a run dir (summary.json) or a sweep dir (sweep.json), local or s3://")
    p.add_argument("--baseline", default=None, help="full-data run dir (overrides sweep.json's)")
    p.add_argument("--prices", default=str(DEFAULT_PRICES_PATH), help="prices YAML (default: %(default)s)")
    p.add_argument("--no-prices", action="store_true", help="skip costs (cost columns read n/a)")
    p.add_argument("--gpu-type", default="H100", help="GPU type of the full-run projection")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "tf32", "fp32"])
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="assumed MFU of the FLOP model")
    p.add_argument("--random", default=None,
                   help="random-encoder dir (jobs.random_encoder); default: a random-init dir in or next to <path>")
    p.add_argument("--out", default=None, help="output dir, local or s3:// (default: <path>/report)")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL or AWS)")
    p.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return p


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        prices = None if args.no_prices else load_prices(args.prices)
        path, baseline, out, rnd = args.path, args.baseline, args.out, args.random
        remote_out = None
        if is_s3(path):  # read the inputs from object storage, write the report back there
            path = str(mirror(path, Path(tmp) / "in", s3_endpoint=args.s3_endpoint))
            remote_out = out if out is not None else join_uri(args.path, "report")
        if baseline is not None and is_s3(baseline):
            baseline = str(mirror(baseline, Path(tmp) / "baseline", s3_endpoint=args.s3_endpoint))
        if rnd is not None and is_s3(rnd):
            rnd = str(mirror(rnd, Path(tmp) / "random", s3_endpoint=args.s3_endpoint))
        if out is not None and is_s3(out):
            remote_out = out
        if remote_out is not None:
            out = str(Path(tmp) / "out") if out is None or is_s3(out) else out
        c = collect(path, baseline=baseline, prices=prices, random=rnd)
        paths = render_report(c, out, prices=prices, gpu_type=args.gpu_type,
                              precision=args.precision, mfu=args.mfu)
        shown = {}
        if remote_out is not None and is_s3(remote_out):
            uploaded = upload_dir(paths.dir, remote_out, s3_endpoint=args.s3_endpoint)
            shown = {Path(u).name: u for u in uploaded}
    print(f"markdown: {shown.get(paths.markdown.name, paths.markdown)}")
    print(f"html:     {shown.get(paths.html.name, paths.html)}")
    for name, p in sorted(paths.figures.items()):
        print(f"figure:   {shown.get(p.name, p)}")
    print()
    print(paths.summary_markdown)
    for line in near_random_warnings(c.rows, c.random_row):
        print(line, file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_job(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
