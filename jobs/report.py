"""Cost / speed-up / robustness report for a run dir or a sweep dir.

Locally (the dirs must be on a local disk; for s3:// storage, `aws s3 sync` them first):

    python -m jobs.report runs/my-sweep --prices cluster/prices.yaml --gpu-type H100
    python -m jobs.report runs/rcs-run --baseline runs/full-run --out /tmp/report

On a cluster (the report reads the head node's storage folder):

    ray job submit --working-dir . -- python -m jobs.report runs/my-sweep

Writes ``report.md``, ``report.html`` (self-contained) and PNGs into ``<dir>/report/`` (or
``--out``), prints their paths and the summary table. Exit code 2 on bad inputs, with the file
named in the message. No Ray is needed (or imported).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from jobs._cli import run_job
from pipeline.report.collect import collect
from pipeline.report.cost import DEFAULT_MFU, DEFAULT_PRICES_PATH, load_prices
from pipeline.report.render import near_random_warnings, render_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="a run dir (summary.json) or a sweep dir (sweep.json)")
    p.add_argument("--baseline", default=None, help="full-data run dir (overrides sweep.json's)")
    p.add_argument("--prices", default=str(DEFAULT_PRICES_PATH), help="prices YAML (default: %(default)s)")
    p.add_argument("--no-prices", action="store_true", help="skip costs (cost columns read n/a)")
    p.add_argument("--gpu-type", default="H100", help="GPU type of the full-run projection")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "tf32", "fp32"])
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="assumed MFU of the FLOP model")
    p.add_argument("--random", default=None,
                   help="random-encoder dir (jobs.random_encoder); default: a random-init dir in or next to <path>")
    p.add_argument("--out", default=None, help="output dir (default: <path>/report)")
    p.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return p


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    prices = None if args.no_prices else load_prices(args.prices)
    c = collect(args.path, baseline=args.baseline, prices=prices, random=args.random)
    paths = render_report(c, args.out, prices=prices, gpu_type=args.gpu_type,
                          precision=args.precision, mfu=args.mfu)
    print(f"markdown: {paths.markdown}")
    print(f"html:     {paths.html}")
    for name, p in sorted(paths.figures.items()):
        print(f"figure:   {p}")
    print()
    print(paths.summary_markdown)
    for line in near_random_warnings(c.rows, c.random_row):
        print(line, file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_job(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
