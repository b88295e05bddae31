"""Reporters for a Trainer that runs in this process (trainer.Reporter); the Ray Train worker's, which reports
to Ray Train with checkpoints and logs into MLflow, is `worker.RayTrainReporter`.

    reporter = CallbackReporter(log=lambda step, metrics: ...)   # in-process fit, a Tune trial
    reporter.history, reporter.tags_seen                          # [(step, metrics)], {mdm.init_digest: ...}
    reporter = PrintReporter()                                    # one line per logging step on stdout
    reporter.last                                                 # the last logging step's metrics

Neither keeps checkpoints (`train.save_strategy` does not apply). Both pass on the metrics whose key has a
`/` (train/..., diag/..., eval/loss, ppots/...), as MLflow receives them from the Ray Train worker; `step`
is the callback's first argument.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from mdm.platform.train.trainer import Metrics


def tracked(metrics: Metrics) -> Metrics:
    """The metrics that go to a tracker: those whose key has a `/` (not step, epoch, total_steps)."""
    return {k: v for k, v in metrics.items() if "/" in k}


class CallbackReporter:
    """`log(step, metrics)` at the objective's prepare (step 0), re-estimations and every logging step;
    keeps the logging steps in `history` and the digest tags in `tags_seen`."""

    keeps_checkpoints = False
    stopping = False

    def __init__(self, log: Optional[Callable[[int, Metrics], None]] = None) -> None:
        self.callback = log
        self.history: list[tuple[int, Metrics]] = []
        self.tags_seen: dict[str, str] = {}

    def begin(self, kept_through: Optional[int]) -> None:
        pass

    def log(self, step: int, metrics: Metrics) -> None:
        if self.callback is not None:
            self.callback(step, metrics)

    def tags(self, tags: dict[str, str]) -> None:
        self.tags_seen.update(tags)

    def report(self, metrics: Metrics, save: Optional[Callable[[], object]], final: bool) -> None:
        step, out = int(metrics["step"]), tracked(metrics)
        self.history.append((step, out))
        self.log(step, out)


class PrintReporter:
    """`step N  loss L  lr R  Ts` per logging step (T: seconds since the attempt began); keeps `last`."""

    keeps_checkpoints = False
    stopping = False

    def __init__(self) -> None:
        self.t0 = time.time()
        self.last: Metrics = {}

    def begin(self, kept_through: Optional[int]) -> None:
        self.t0 = time.time()

    def log(self, step: int, metrics: Metrics) -> None:
        print(f"step {step:5d}  " + "  ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())), flush=True)

    def tags(self, tags: dict[str, str]) -> None:
        pass

    def report(self, metrics: Metrics, save: Optional[Callable[[], object]], final: bool) -> None:
        self.last = {**metrics, "elapsed_s": time.time() - self.t0}
        print(f"step {int(metrics['step']):5d}  loss {metrics['train/loss']:.4f}  lr {metrics['train/lr']:.2e}  "
              f"{self.last['elapsed_s']:.0f}s" + (f"  eval {metrics['eval/loss']:.4f}" if "eval/loss" in metrics
                                                    else ""), flush=True)
