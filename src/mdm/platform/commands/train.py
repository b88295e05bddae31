"""`mdm train` / `python -m mdm.train`: train on Ray with the seed's flags (see `mdm.platform.train.driver`).

    mdm train --config base.yaml --config overlay.yaml --set train.lr=1e-5 [--dump_config]
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Optional, Sequence

from mdm.platform.config_args import add_config_args, config_or_dump
from mdm.platform.train.driver import train_driver

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mdm train", description="Train on Ray (embedded or cluster).")
    add_config_args(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg = config_or_dump(args)
    if cfg is None:
        return 0
    return run(cfg)


def run(cfg: RunConfig) -> int:
    """`mdm train`: 0 on success; 2 with a one-line error for mistakes a person can fix."""
    from mdm.platform.train.ingest import DataError
    from mdm.platform.train.lease import LeaseError
    from mdm.platform.tracking.tracker import TrackingError

    try:
        result = train_driver(cfg)
    except (DataError, TrackingError, LeaseError, ValueError, FileNotFoundError) as e:
        print(f"mdm train: error: {e}", file=sys.stderr)
        return 2
    m = result.metrics or {}
    print(f"mdm train: done at step {m.get('step')} (eval/loss {m.get('eval/loss')}); model: {m.get('export_dir')}")
    return 0
