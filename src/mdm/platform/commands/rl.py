"""`mdm rl`: reinforcement learning on verifiable rewards (GRPO, d1's diffu-GRPO) on Ray; see
`mdm.platform.rl.driver` and the `rl` section (`mdm.platform.rl.rl_config`).

    mdm rl --config experiments/configs/rl_arithmetic.yaml --set rl.logp_estimator=mirror [--dump_config]

Exit statuses as `mdm train`'s: 2 with one line for a config mistake, 130 after Ctrl-C (the run resumes from
its latest checkpoint with the same command).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from mdm.platform.commands.train import run
from mdm.platform.config_args import add_config_args, config_or_dump
from mdm.platform.rl.driver import rl_driver


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mdm rl", description="GRPO with rollouts on Ray actors and learning on "
                                                                "the Ray Train worker group.")
    add_config_args(parser)
    parser.add_argument("--force", action="store_true",
                        help="train even when the memory plan says the run does not fit its GPUs")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg = config_or_dump(args)
    if cfg is None:
        return 0
    return run(cfg, force=args.force, driver=rl_driver, command="rl")
