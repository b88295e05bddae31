"""`mdm tune`: a Ray Tune sweep over the trainer (see `mdm.platform.sweep.sweep.run_sweep`).

    mdm tune --config base.yaml [--config overlay.yaml] --sweep sweep.yaml [--set tune.scheduler=asha ...]
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from mdm.platform.config_args import add_config_args, config_or_dump
from mdm.platform.fields import ConfigError
from mdm.platform.tuner.space import SweepError
from mdm.platform.sweep.sweep import run_sweep


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`mdm tune`: 0 when at least one trial finished; 2 on a config/sweep mistake; 1 when all trials failed."""
    parser = argparse.ArgumentParser(prog="mdm tune", description="Run a Ray Tune sweep over the trainer.")
    add_config_args(parser)
    parser.add_argument("--sweep", required=True, metavar="YAML", help="search space in dotted keys")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = config_or_dump(args)
        if cfg is None:
            return 0
        res = run_sweep(cfg, args.sweep)
    except (SweepError, ConfigError, ValueError, FileNotFoundError) as e:
        print(f"mdm tune: error: {e}", file=sys.stderr)
        return 2
    return 0 if any(r["status"] == "FINISHED" for r in res.rows) else 1
