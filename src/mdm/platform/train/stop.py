"""A graceful stop: Ctrl-C (or SIGTERM, turned into SIGINT by interrupt.py) to a training driver lets the
workers reach and save their next checkpoint when it comes within `ray.stop_grace_s`, then stops the run.

    trainer = GracefulTorchTrainer(train_fn, ..., stop=StopRequest(run_dir, grace_s, total_steps))
    trainer.fit()    # KeyboardInterrupt once a stop was asked for (interrupt.interruptible says how to resume)

    # in each worker, after a checkpoint was reported (worker.RayTrainReporter):
    if stop_asked(run.stop_marker, rank, world): ...   # collective: every rank gets rank 0's answer

On the first signal the driver writes a marker file, `<run dir>/stop-<token>`, through the storage root (the
workers may run on other nodes; the token is this driver's, so a marker a dead driver left behind stops nobody)
and prints one line. After each checkpoint the workers look for it (rank 0 reads; the answer is broadcast, since
every rank must stop at the same step) and, when it is there, return without training on: `fit` ends with that
checkpoint as the run's latest. Ray Train's own abort (the workers stopped where they are; the last complete
checkpoint is what counts) comes when the grace period runs out, at once on a second signal, or at once with
`ray.stop_grace_s: 0`; a third signal ends the driver (Ray's own rule).

Ray Train registers its SIGINT handler inside `fit()` in the main thread (`_register_sigint_handler`, which
aborts at once): this subclass puts the graceful one there instead. Off the main thread (a Tune trial) no handler
is registered, as with Ray's.
"""

from __future__ import annotations

import signal
import sys
import threading
import uuid
from typing import Any

import ray
from ray.train.torch import TorchTrainer

from mdm.platform import storage


class StopRequest:
    """The driver's side of a graceful stop of one run (see the module docstring)."""

    def __init__(self, run_dir: str, grace_s: float, total_steps: int) -> None:
        # No marker (so the workers look for none) where no graceful stop can be asked for: no grace period, or
        # off the main thread (a Tune trial), where no signal handler is registered.
        graceful = run_dir and grace_s > 0 and threading.current_thread() is threading.main_thread()
        self.marker = storage.join(run_dir, f"stop-{uuid.uuid4().hex}") if graceful else ""
        self.grace_s, self.total_steps = grace_s, total_steps
        self.asked = threading.Event()
        self._aborted = threading.Event()

    def ask(self) -> bool:
        """Write the marker the workers look for after each checkpoint; False when it could not be written."""
        self.asked.set()
        if not self.marker:
            return False
        try:
            storage.write_text(self.marker, "stop at the next checkpoint\n")
        except OSError as e:
            print(f"mdm train: could not ask the workers to stop at a checkpoint ({self.marker}: "
                  f"{str(e).splitlines()[0]}); stopping now", file=sys.stderr)
            return False
        return True

    def abort(self, controller: Any) -> None:
        """Ray Train's abort of the run (once): the workers are stopped where they are."""
        if self._aborted.is_set():
            return
        self._aborted.set()
        try:
            ray.get(controller.abort.remote())
        except ray.exceptions.RayActorError:
            pass  # the controller exits as it aborts

    def clear(self) -> None:
        """Remove the marker (best effort: it names this driver only, so a leftover one stops nobody)."""
        if self.marker and self.asked.is_set():
            try:
                fs, path = storage.resolve(self.marker)
                fs.delete_file(path)
            except OSError:
                pass

    def signal_handler(self, controller: Any):
        """The SIGINT handler `fit` registers: graceful stop, then abort (second), then exit (third)."""
        count = 0

        def handler(signum: int, frame: object) -> None:
            nonlocal count
            count += 1
            if count >= 3:
                sys.exit(0)  # Ray's own third-signal rule: the driver ends; its job's workers go with it
            if count == 1 and self.ask():
                print(f"mdm train: stopping: the workers save their next checkpoint if it comes within "
                      f"{self.grace_s:g} s (ray.stop_grace_s), then stop; Ctrl-C again stops now", file=sys.stderr)
                timer = threading.Timer(self.grace_s, self.abort, args=(controller,))
            else:
                timer = threading.Timer(0, self.abort, args=(controller,))
            timer.daemon = True
            timer.start()

        return handler


class GracefulTorchTrainer(TorchTrainer):
    """Ray Train's TorchTrainer whose Ctrl-C is the graceful stop of `stop` (see the module docstring)."""

    def __init__(self, *args: Any, stop: StopRequest, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop = stop

    def _register_sigint_handler(self, controller: Any) -> None:  # Ray Train's hook (data_parallel_trainer.py)
        signal.signal(signal.SIGINT, self.stop.signal_handler(controller))

    def fit(self) -> Any:
        """Ray Train's fit; KeyboardInterrupt when a stop was asked for and the run did not finish."""
        try:
            result = super().fit()
        except Exception:
            if self.stop.asked.is_set():
                raise KeyboardInterrupt from None
            raise
        finally:
            self.stop.clear()
        if self.stop.asked.is_set() and (result.metrics or {}).get("step") != self.stop.total_steps:
            raise KeyboardInterrupt
        return result


def stop_asked(marker: str, rank: int, world: int) -> bool:
    """In a worker, after a checkpoint: whether the driver asked the run to stop (rank 0 looks for the marker;
    every rank gets its answer). Collective when `world` > 1: every rank calls it at the same step."""
    asked = False
    if rank == 0 and marker:
        try:
            asked = storage.exists(marker)
        except OSError:
            asked = False  # storage unreachable: look again at the next checkpoint
    if world > 1:
        import torch.distributed as dist

        answer = [asked]
        dist.broadcast_object_list(answer, src=0)
        asked = bool(answer[0])
    return asked
