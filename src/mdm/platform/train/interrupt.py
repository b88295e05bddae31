"""Ctrl-C (SIGINT) or SIGTERM to a training driver: the run stops, nothing is left RUNNING, and one line says
where the same command resumes.

    with interruptible(lambda: resume_line(run_name)):   # around TorchTrainer.fit(), in the driver
        result = trainer.fit()
    # RunInterrupted (a KeyboardInterrupt) carries that line; `mdm train` prints it and exits 130

Ray Train's `fit()` registers a SIGINT handler in the main thread; the driver's trainer puts the graceful stop
of `stop.py` there (the workers save their next checkpoint if it comes within `ray.stop_grace_s`, else Ray
Train's abort stops them where they are), and `fit` then raises KeyboardInterrupt. A third signal ends the driver
with a `SystemExit` (Ray's rule), which skips every `except Exception` and would leave the MLflow run FAILED.
Inside this block that exit (fit raises SystemExit for nothing else) and a KeyboardInterrupt become
`RunInterrupted`, so the tracked MLflow run ends KILLED (tracking.session) with the run's spool shipped, the
lease is released (driver.train_driver) and the command exits 130. SIGTERM (what `kill`, a scheduler or a
container stop sends) is turned into SIGINT for the same stop. The signal handlers that were there before are
put back afterwards (the trainer's would otherwise outlive its controller).

The other way a run stops that a person acts on: a worker's `storage.StorageError` (a checkpoint the storage root
could not take: a full disk, storage unreachable past the S3 client's retries) inside Ray Train's
TrainingFailedError. `how_it_stopped(err)` gives the one line and exit status both commands print for either
(interrupted: 130; storage: 1), and None for any other failure, which raises as before.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, Optional

EXIT_STATUS = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT/SIGTERM; the message says where the same command resumes."""


def _term_as_int(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def interruptible(resume_line: Callable[[], str]) -> Iterator[None]:
    """Turn an interrupt inside the block into RunInterrupted(resume_line()) (see the module docstring)."""
    main = threading.current_thread() is threading.main_thread()  # signals reach only the main thread
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    if main:
        signal.signal(signal.SIGTERM, _term_as_int)
    try:
        yield
    except KeyboardInterrupt:
        raise RunInterrupted(resume_line()) from None
    except SystemExit:
        if not main:  # signals reach the main thread only: not an interrupt
            raise
        raise RunInterrupted(resume_line()) from None
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def storage_failure(err: BaseException) -> Optional[str]:
    """The one line a worker's `storage.StorageError` carries (a checkpoint the storage root could not take),
    when that is why `fit` raised TrainingFailedError; None for any other failure."""
    from mdm.platform.storage import StorageError

    for exc in getattr(err, "worker_failures", {}).values():
        while exc is not None:
            if isinstance(exc, StorageError):
                return str(exc.args[0] if exc.args else exc).strip().splitlines()[0]
            exc = getattr(exc, "cause", None) or exc.__cause__
    return None


def how_it_stopped(err: BaseException) -> Optional[tuple[str, int]]:
    """(the one line to print after the program's name, its exit status) for a run that stopped in a way a
    person acts on: interrupted (130) or out of storage (1); None for any other failure (let it raise)."""
    if isinstance(err, RunInterrupted):
        return str(err), EXIT_STATUS
    line = storage_failure(err)
    return (f"error: {line}", 1) if line is not None else None
