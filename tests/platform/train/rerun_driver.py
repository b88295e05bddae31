"""A `train_driver` run in its own process, killed the hard way: used by test_rerun_safety.py.

    python rerun_driver.py CFG_JSON WORK_DIR        # CFG_JSON: the --set overrides, as a JSON object

Joins the Ray cluster named by `ray.address` and trains. At the report of step KILL_AT its controller
callback writes WORK_DIR/reached and waits for WORK_DIR/go (so the test can start a second driver while this
one holds the run), then SIGKILLs the Train worker processes and this driver: no `finally`, no MLflow
`set_terminated`, no lease release -- what a power cut or `kill -9` leaves behind.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from ray.train.v2.api.callback import UserCallback

KILL_AT = 4


class KillAt(UserCallback):
    def __init__(self, work: str, driver_pid: int) -> None:
        self.work, self.driver_pid = work, driver_pid

    def after_report(self, run_context, metrics, checkpoint):
        if metrics[0].get("step") != KILL_AT:
            return
        import ray._private.state

        open(os.path.join(self.work, "reached"), "w").close()
        deadline = time.time() + 300
        while not os.path.exists(os.path.join(self.work, "go")) and time.time() < deadline:
            time.sleep(0.1)
        for actor in ray._private.state.actors().values():
            if actor["ActorClassName"] == "RayTrainWorker" and actor["State"] == "ALIVE":
                os.kill(actor["Pid"], signal.SIGKILL)
        os.kill(self.driver_pid, signal.SIGKILL)


def main() -> None:
    from mdm.platform.config import load_config
    from mdm.platform.train.driver import train_driver

    sets, work = json.loads(sys.argv[1]), sys.argv[2]
    cfg = load_config([], [f"{k}={v}" for k, v in sets.items()])
    train_driver(cfg, callbacks=[KillAt(work, os.getpid())])
    print("finished without being killed", flush=True)


if __name__ == "__main__":
    main()
