"""Write a randomly initialised encoder as a finished "run", for the report's random-encoder row.

    python -m jobs.random_encoder --config jobs/configs/demo.yaml --out runs/my-sweep/random-init
    python -m jobs.finetune --checkpoint runs/my-sweep/random-init/encoder.pt --mode SLF ... \\
        --out runs/my-sweep/random-init/eval/SLF

Same architecture and seed as the pre-training config (its untrained weights), exported in the
encoder format the fine-tuning jobs read, with a ``summary.json`` (``random_init: true``) and the
resolved ``config.yaml``. ``jobs.report`` finds a ``random-init`` dir inside or next to the sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pipeline.config import PretrainConfig, atomic_write_text, dump_yaml, load_config


def write_random_encoder(cfg: PretrainConfig, out: str | Path) -> Path:
    """Build the pre-training network of ``cfg`` with seed cfg.train.seed, save it untrained."""
    from pipeline.models import save_encoder
    from pipeline.train.steps import build_pretrain_model

    out = Path(out)
    torch.manual_seed(cfg.train.seed)
    net = build_pretrain_model(cfg).eval()
    save_encoder(out / "encoder.pt", net, {"random_init": True, "seed": cfg.train.seed})
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    summary = {"status": "finished", "run_name": "random-init", "random_init": True,
               "mode": cfg.loss.mode, "epochs": 0, "wall_time_s": 0.0, "encoder": "encoder.pt"}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.random_encoder", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="the pre-training config of the runs it is compared with")
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*", help="--section.key=value")
    args, extra = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(PretrainConfig, args.config, [*args.overrides, *extra])
    print(f"wrote {write_random_encoder(cfg, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
