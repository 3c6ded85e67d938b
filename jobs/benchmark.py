"""Run one benchmark: ``python -m jobs.benchmark {step,data,rcs,rcs-granularity,scale,attack-scope,workers} [args]``.

Dispatches to ``pipeline.benchmarks.<name>.main(argv)`` (imported only when asked for, so the
step benchmark runs on a GPU box without Ray). Each benchmark prints a table and writes JSON
(default ``benchmarks/<name>.json``); ``--help`` after the name lists its flags.

    # pre-training step, ours vs the authors' plain step (CPU, ResNet-18 w64, batch 32)
    OMP_NUM_THREADS=2 python -m jobs.benchmark step --threads 2
    python -m jobs.benchmark step --width 4 --batch 4 --steps 1 --warmup 0     # seconds
    # on a GPU (MFU against anchors §E; H100/H200 peak detected from the device name)
    python -m jobs.benchmark step --device cuda --amp bf16 --channels-last --batch 512
    python -m jobs.benchmark step --device cuda --amp bf16 --arch wrn --batch 256   # WRN-28-10
    # input pipeline and RCS selection (need Ray)
    python -m jobs.benchmark data --help
    python -m jobs.benchmark rcs --smoke-test
    # sample-level vs minibatch RCS (and random-k, full data) at equal k: time and quality (no Ray)
    python -m jobs.benchmark rcs-granularity --seeds 1 2
    # PGD on each worker's local loss vs on the global batch (what loss.gather leaves local)
    python -m jobs.benchmark attack-scope --batch 128 --workers 1,2,4,8
    # same global batch on 1 and 2 Ray Train workers (loss.gather): loss curves side by side
    python -m jobs.benchmark workers --workers 1,2 --global-batch 128 --epochs 6
    # data-plane cost at ImageNet-32 size (RCS tasks, coreset epoch, fine-tuning loader)
    python -m jobs.benchmark scale --images 20000 --shard-size 154 --chunk-batches 8
    python -m jobs.benchmark scale        # 1,281,167 images, cached under ~/.cache/robust-pretrain/scale (or $SCALE_CACHE / --cache)

Exit status: 0 on success, 2 for an unknown or unavailable benchmark, 1 when the benchmark
reports a failed parity check (``result["parity"]["ok"] is False``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

BENCHMARKS: tuple[str, ...] = ("step", "data", "rcs", "rcs-granularity", "scale", "attack-scope", "workers")
PACKAGE = "pipeline.benchmarks"


def _usage() -> str:
    return f"usage: python -m jobs.benchmark {{{','.join(BENCHMARKS)}}} [args]  (args: --help)"


def load(name: str, package: str = PACKAGE) -> Any:
    """The benchmark module ``<package>.<name>``; LookupError with a clear message if absent."""
    if name not in BENCHMARKS:
        raise LookupError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    modname = f"{package}.{name.replace('-', '_')}"
    try:
        spec = importlib.util.find_spec(modname)
    except ModuleNotFoundError:  # the package itself is missing
        spec = None
    if spec is None:
        raise LookupError(f"benchmark {name!r} is not available: module {modname} not found "
                          f"(expected a file defining main(argv) -> dict)")
    # Import errors *inside* the module (e.g. ray missing for rcs/data) propagate unchanged.
    module = importlib.import_module(modname)
    if not callable(getattr(module, "main", None)):
        raise LookupError(f"benchmark module {modname} has no main(argv) function")
    return module


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    try:
        module = load(name)
    except LookupError as e:
        print(f"error: {e}\n{_usage()}", file=sys.stderr)
        return 2
    result = module.main(rest)
    parity = result.get("parity") if isinstance(result, dict) else None
    if isinstance(parity, dict) and parity.get("ok") is False:
        print("error: parity check failed (see the JSON output)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from jobs._cli import run_job

    return run_job(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
