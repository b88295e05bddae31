"""`mdm train` / `python -m mdm.train`: train on Ray with the seed's flags (see `mdm.platform.train.driver`).

    mdm train --config base.yaml --config overlay.yaml --set train.lr=1e-5 [--dump_config] [--force]

A GPU run prints its memory plan per GPU in one line first and stops with exit status 2 when the plan does
not fit the GPUs (`mdm plan` lists the changes that would); `--force` trains anyway. Ctrl-C or SIGTERM stops
the run (its MLflow run ends KILLED), prints the checkpoint the same command resumes from, and exits 130; a
checkpoint the storage root cannot take (a full disk, storage down past the S3 client's retries) stops it with
one line naming the address and the intact checkpoint, exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from mdm.platform.config_args import add_config_args, config_or_dump
from mdm.platform.train.driver import train_driver

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig


def main(argv: Optional[Sequence[str]] = None, *, command: str = "train",
         description: str = "Train on Ray (embedded or cluster).", driver: Optional[Callable[..., Any]] = None) -> int:
    """`mdm train` (and, with its driver, `mdm rl`): the config flags and `--force`, then `run`."""
    parser = argparse.ArgumentParser(prog=f"mdm {command}", description=description)
    add_config_args(parser)
    parser.add_argument("--force", action="store_true",
                        help="train even when the memory plan says the run does not fit its GPUs")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg = config_or_dump(args)
    if cfg is None:
        return 0
    return run(cfg, force=args.force, driver=driver, command=command)


def run(cfg: RunConfig, force: bool = False, driver: Optional[Callable[..., Any]] = None,
        command: str = "train") -> int:
    """`mdm train` (`mdm rl`: driver=rl_driver; None: `train_driver`): 0 on success; 2 with a one-line error for
    mistakes a person can fix."""
    from mdm.platform.train.ingest import DataError
    from ray.train import TrainingFailedError

    from mdm.platform.train.interrupt import RunInterrupted, how_it_stopped
    from mdm.platform.train.lease import LeaseError
    from mdm.platform.tracking.tracker import TrackingError

    try:
        result = (driver or train_driver)(cfg, force=force)
    except (DataError, TrackingError, LeaseError, ValueError, FileNotFoundError) as e:
        print(f"mdm {command}: error: {e}", file=sys.stderr)
        return 2
    except (RunInterrupted, TrainingFailedError) as e:  # Ctrl-C / SIGTERM; a full disk, storage down
        said = how_it_stopped(e)
        if said is None:
            raise
        print(f"mdm {command}: {said[0]}", file=sys.stderr)
        return said[1]
    m = result.metrics or {}
    score = f"eval/loss {m.get('eval/loss')}" if command == "train" else f"rl/reward {m.get('rl/reward')}"
    print(f"mdm {command}: done at step {m.get('step')} ({score}); model: {m.get('export_dir')}")
    return 0
