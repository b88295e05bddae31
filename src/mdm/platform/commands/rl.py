"""`mdm rl`: reinforcement learning on verifiable rewards (GRPO, d1's diffu-GRPO) on Ray; see
`mdm.platform.rl.driver` and the `rl` section (`mdm.platform.rl.rl_config`).

    mdm rl --config experiments/configs/rl_arithmetic.yaml --set rl.logp_estimator=mirror [--dump_config]

Exit statuses as `mdm train`'s: 2 with one line for a config mistake, 130 after Ctrl-C (the run resumes from
its latest checkpoint with the same command).
"""

from __future__ import annotations

from typing import Optional, Sequence

from mdm.platform.commands import train
from mdm.platform.rl.driver import rl_driver


def main(argv: Optional[Sequence[str]] = None) -> int:
    return train.main(argv, command="rl", driver=rl_driver,
                      description="GRPO with rollouts on Ray actors and learning on the Ray Train worker group.")
