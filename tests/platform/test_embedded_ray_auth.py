"""The embedded Ray, and a training run on it that meets a full disk, then (resumed) SIGTERM, each in a fresh
process (a new user's shell: RAY_AUTH_MODE unset, HOME in a temporary directory, where Ray writes its token).

- A full disk (issue #25, item 4): the storage root is a 64 MiB tmpfs in a private mount namespace (each run
  enters it with nsenter; the test reads it through /proc/<holder>/root). Once the run holds two checkpoints
  the disk is filled to half a checkpoint's size free: the run stops at its next checkpoint with exit status 1
  and one line naming the path, the space needed and free, and the intact previous checkpoint. With the space
  freed, the same command resumes from that checkpoint (and says so).
- The embedded Ray starts with token authentication and without Ray's warning about choosing it (issue #23,
  item 9: the main job's terminal holds mdm's lines).
- That resumed `mdm train`, sent SIGTERM after its next checkpoint (issue #25, item 5; SIGTERM is turned into
  SIGINT, so this covers Ctrl-C too): the workers train on to their next checkpoint (within `ray.stop_grace_s`,
  60 s by default), save it and stop there: it exits 130 with one line naming that checkpoint, later than any
  complete before the signal, as the one the same command resumes from; the MLflow run holds every step through
  it and none after, and ends KILLED (not RUNNING forever, not FAILED); the lease is released.
- Run again with no checkpoint due (`train.save_steps` past the end) and `ray.stop_grace_s=1`, SIGTERM: the grace
  period runs out and Ray Train's abort stops the workers where they are; the same line names the checkpoint
  the run resumed from, still the latest.

Run: pytest tests/platform/test_embedded_ray_auth.py
"""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mdm.platform.train.lease import LEASE_FILE

CODE = """
import os, sys, types
import ray
from mdm.platform.runtime.ray_runtime import ensure_ray
ensure_ray(types.SimpleNamespace(address=None, num_cpus=2))
print("driver", os.environ.get("RAY_AUTH_MODE"))
print("worker", ray.get(ray.remote(lambda: os.environ.get("RAY_AUTH_MODE")).remote()), flush=True)
from mdm.platform.commands.train import main
sys.exit(main(sys.argv[1:]))  # on this embedded Ray
"""


SAVE_EVERY = 2  # train.save_steps of these runs


def _train_args(tmp_path, data, storage) -> list[str]:
    sets = {"train.train_data_path": data["train"], "data.tokenizer": data["tokenizer"], "run_name": "stopped",
            "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.mlp_hidden_size": 64,
            "train.batch_size_per_gpu": 8, "train.max_len": 64, "train.max_steps": 400, "train.logging_steps": 1,
            "train.save_steps": SAVE_EVERY, "train.eval_strategy": "no", "deepspeed.enabled": False,
            "ray.num_workers": 1, "ray.cpus_per_worker": 0.5, "ray.storage_path": storage,
            "train.output_dir": tmp_path / "out",
            # every checkpoint kept: deleting an old one would free the space the full-disk test takes away
            "ray.num_to_keep": 1000,
            "tracking.tracking_uri": f"sqlite:///{tmp_path}/mlruns.db", "tracking.experiment_name": "stop"}
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def _recorded_step(run_dir) -> int:
    """The step of the latest checkpoint Ray Train has recorded as complete (its snapshot; a checkpoint directory
    may still be being written), 0 before the first."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):  # not there yet, or mid-write
        return 0


def _wait_for_checkpoints(run_dir, proc, n: int = 2, timeout_s: float = 300) -> None:
    """Until the run's n-th checkpoint (every SAVE_EVERY steps) is recorded complete."""
    deadline = time.time() + timeout_s
    while _recorded_step(run_dir) < n * SAVE_EVERY:
        assert proc.poll() is None, f"the run ended early:\n{proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.2)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs at tmp_path/disk in a private mount namespace, held by a sleeping process; yields
    (holder pid, the tmpfs's path, a view of it from this namespace)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs -o size=64m tmpfs {disk} && echo ready && exec sleep 3600"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield holder.pid, disk, Path(f"/proc/{holder.pid}/root{disk}")
    finally:
        holder.kill()
        holder.wait()


def _train(holder: int, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """The training command in the small disk's mount namespace (nsenter execs it: the pid is the driver's)."""
    return subprocess.Popen(["nsenter", "-t", str(holder), "-m", "--", sys.executable, "-c", CODE, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _latest_step(run_dir: Path) -> int:
    from mdm.platform.train.driver import previous_result

    return int(previous_result(str(run_dir.parent), run_dir.name).metrics["step"])


def _stop(proc: subprocess.Popen, run_dir: Path, n: int) -> tuple[str, str, int]:
    """SIGTERM once the run holds `n` checkpoints; its (stdout, stderr) and the latest checkpoint's step then."""
    try:
        _wait_for_checkpoints(run_dir, proc, n)
        before = _latest_step(run_dir)
        proc.send_signal(signal.SIGTERM)
        return *proc.communicate(timeout=120), before
    finally:
        proc.kill()


def _stopped_at(err: str, disk: Path, holder: int) -> int:
    """The step of the checkpoint the interrupted run's one line names (it exists on the small disk)."""
    said = re.search(r"mdm train: run stopped interrupted; its MLflow run is ended KILLED; the same command resumes "
                     r"it from its latest complete checkpoint, step (\d+) \((\S+)\)", err)
    assert said, err[-3000:]
    assert said.group(2).startswith(f"{disk}/ray/stopped/") and os.path.isdir(f"/proc/{holder}/root{said.group(2)}")
    return int(said.group(1))


def test_embedded_ray_token_auth_a_full_disk_stops_cleanly_and_a_stopped_run_ends_killed(tmp_path, arithmetic_data,
                                                                                        small_disk):
    holder, disk, view = small_disk
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(HOME=str(tmp_path), OMP_NUM_THREADS="1")
    args = _train_args(tmp_path, arithmetic_data, disk / "ray")
    run_dir = view / "ray" / "stopped"
    kept = _fill_the_disk_mid_run(_train(holder, args, env), view, run_dir)

    (view / "filler").unlink()  # space freed: the same command resumes from the intact checkpoint
    proc = _train(holder, args, env)
    out, err, before = _stop(proc, run_dir, len(list(run_dir.glob("checkpoint_*"))) + 1)
    assert out.split()[:4] == ["driver", "token", "worker", "token"], (out, err[-3000:])
    assert (tmp_path / ".ray" / "auth_token").is_file()  # Ray made the token the cluster checks
    assert "mdm: embedded Ray on 127.0.0.1" in err
    assert "Token authentication" not in err, err
    assert f"; resuming from step {kept} ({disk}/ray/stopped/checkpoint_" in err, err[-3000:]

    assert proc.returncode == 130, err[-3000:]
    assert "mdm train: stopping: the workers save their next checkpoint if it comes within 60 s" in err, err[-3000:]
    step = _stopped_at(err, disk, holder)
    assert step % 2 == 0 and step > before >= kept and "mdm train: done" not in out, (step, before)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    exp = client.get_experiment_by_name("stop")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.runName` = 'stopped'",
                              order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == "KILLED" and "RUNNING" not in {r.info.status for r in runs}
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")}
    assert max(steps) == step and set(range(kept + 1, step + 1)) <= steps  # to the checkpoint, shipped
    assert not (run_dir / LEASE_FILE).exists()  # released: the same command may run now
    assert not list(run_dir.glob("stop-*"))  # the stop request is cleared

    # No checkpoint within the grace period: Ray Train's abort when it runs out.
    proc = _train(holder, args + ["--set", "train.save_steps=1000", "--set", "ray.stop_grace_s=1"], env)
    try:
        deadline = time.time() + 300
        while max((m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")), default=0) < step + 3:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "if it comes within 1 s" in err, err[-3000:]
    assert f"; resuming from step {step} ({disk}/ray/stopped/checkpoint_" in err, err[-3000:]
    assert _stopped_at(err, disk, holder) == step
    assert client.get_run(runs[0].info.run_id).info.status == "KILLED" and not (run_dir / LEASE_FILE).exists()


def _fill(path: Path, leave: int) -> None:
    """Write zeros to `path` until `leave` bytes are free on its disk, or it is full (the run writes too)."""
    vfs = os.statvfs(path.parent)
    todo = vfs.f_bavail * vfs.f_frsize - leave
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while todo > 0:
            todo -= os.write(fd, b"\0" * min(todo, 1 << 20))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def _fill_the_disk_mid_run(proc: subprocess.Popen, view: Path, run_dir: Path) -> int:
    """Once the run holds two checkpoints, fill its disk to half a checkpoint's size free: it stops at its next
    checkpoint with exit status 1 and one line; returns the step of the checkpoint that line calls intact."""
    try:
        _wait_for_checkpoints(run_dir, proc, 2)
        size = max(sum(f.stat().st_size for f in c.rglob("*") if f.is_file()) for c in run_dir.glob("checkpoint_*"))
        _fill(view / "filler", leave=size // 2)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("mdm train: error:")]
    assert len(lines) == 1 and "Traceback" not in err.split(lines[0])[-1], err[-3000:]
    said = re.fullmatch(r"mdm train: error: checkpoint of step (\d+) not saved: no space left on the device "
                        r"holding \S+/ray/stopped: it needs about ([\d.]+) MiB, ([\d.]+) MiB is free; the latest "
                        r"complete checkpoint, step (\d+), is intact: the same command resumes from it once the "
                        r"storage takes writes again", lines[0])
    assert said and float(said.group(2)) > float(said.group(3)), lines[0]
    assert abs(float(said.group(2)) - size / 2**20) < 0.1 + 0.2 * size / 2**20, (lines[0], size)
    assert int(said.group(4)) == int(said.group(1)) - 2 >= 4, lines[0]
    return int(said.group(4))
