"""Shared command line of the training jobs: ``--config FILE`` + dotted overrides + scaling flags."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.config import ConfigError, dump_yaml, load_config


def parse_training_job(cls: type, argv: list[str], *, prog: str, description: str, config_help: str,
                       value_flags: tuple[tuple[str, str, str], ...] = ()) -> Any:
    """Parse ``argv`` into a validated ``cls`` config.

    ``value_flags``: (flag, dotted key, help) shortcuts such as ``("--test-manifest",
    "test.manifest", ...)``. ``--num-workers`` / ``--use-gpu`` map to ``scaling.*``;
    ``--print-config`` prints the resolved config and exits. Anything else must look like
    ``--section.key=value`` (a ConfigError names what does not).
    """
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", help=config_help)
    for flag, _, help_text in value_flags:
        p.add_argument(flag, help=help_text)
    p.add_argument("--num-workers", type=int, help="Ray Train workers (0 = in-process local mode)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args, overrides = p.parse_known_args(argv)
    for flag, key, _ in value_flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value:
            overrides.append(f"--{key}={value}")
    if args.num_workers is not None:
        overrides.append(f"--scaling.num_workers={args.num_workers}")
    if args.use_gpu:
        overrides.append("--scaling.use_gpu=true")
    bad = [o for o in overrides if not o.startswith("--") or "=" not in o]
    if bad:
        raise ConfigError(f"unrecognised argument(s) {bad}: overrides look like --section.key=value")
    cfg = load_config(cls, args.config, overrides)
    if args.print_config:
        print(dump_yaml(cfg))
        sys.exit(0)
    return cfg
